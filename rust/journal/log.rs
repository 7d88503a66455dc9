//! The row log of an SQLite journal: the association thread appends each acknowledged
//! instance's row to this run's log, one `write(2)` before its C-STORE-RSP, and the ingest
//! thread commits the rows to SQLite behind it, a batch at a time, with the delivery marks
//! queued after them. An SQLite commit costs ~40 µs of locks and page writes; an append a
//! tenth of that, and no lock another node or a reader can hold.
//!
//! A log is `log/<node_id>.<pid>-<nanos>.log`, one per run, held with `flock` while its
//! process lives: a log whose lock can be taken was left by a run that is gone, and whoever
//! takes it (a start, or a running node's periodic sweep) commits its rows and removes it.
//! Rows carry ids reserved in blocks from the database, so nodes sharing one never collide,
//! and `INSERT OR IGNORE` makes a row committed twice harmless.
//!
//! A file is a sequence of records `length u32 | crc32 u32 | payload`, little endian; the
//! payload is `id i64 | received f64 | bytes u64 | pending u8` and the row's text fields,
//! each `length u32 | UTF-8` (`u32::MAX`: none). A record that does not check (a write cut
//! short by a crash: never acknowledged) ends the file.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{lock, Queue, Request, Row, Shared, Writer};
use crate::events::{CommitState, JournalReport};

/// Longest record written or read: rows hold UIDs, AE titles, a few short attributes and a
/// path.
const MAX_RECORD: usize = 1 << 20;
/// A log past this size is emptied once everything in it is committed (or, while rows keep
/// coming, replaced by a new file, the old one removed once its rows are committed).
const TRIM_AT: u64 = 4 << 20;
const SUFFIX: &str = ".log";
/// Marks an absent field.
const NONE: u32 = u32::MAX;
/// How long the ingest gathers rows into one commit, unless a request waits for an answer
/// or `BATCH` rows came: a busy server commits a batch, not a row, at a time (a commit costs
/// about ten rows' inserts), and the index lags by nothing a person notices. 4 ms cost CT
/// senders ~10% of their rate on two cores (a commit's CPU taken from the answer path, no
/// commits at all 1%); 20 ms, with the thread at nice 10, is within noise of no journal.
const GATHER: Duration = Duration::from_millis(20);
/// The same with `durable`: each commit's pages are flushed again by the next instance's
/// flush of the file system, so fewer commits between flushes (instances come every few ms).
const GATHER_DURABLE: Duration = Duration::from_millis(50);
pub(super) const BATCH: usize = 512;
/// Before the ingest tries again after a failed commit.
const RETRY: Duration = Duration::from_secs(1);
/// How often commits that keep failing are told again (each retry would flood the log).
const REMIND: Duration = Duration::from_secs(60);
/// How often a running node looks for logs of runs that are gone (a node that never
/// restarts would strand them otherwise).
const SWEEP: Duration = Duration::from_secs(60);

/// A row as logged: its id and arrival time are given when it is logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub id: i64,
    pub received: f64,
    pub row: Row,
}

/// This run's log, appended to by the association threads.
pub struct Log {
    dir: PathBuf,
    node: String,
    /// Flush each append (durable, with the journal on a file system the storage's flush
    /// does not cover).
    sync: bool,
    file: Mutex<Appender>,
}

struct Appender {
    path: PathBuf,
    file: File,
    size: u64,
    /// Records appended since the log was opened, counted on across files.
    appended: u64,
    /// Replaced files, each with the `appended` count after its last record: removed once
    /// the ingest is past it, held open (and locked) until then.
    retired: Vec<(u64, PathBuf, File)>,
    buffer: Vec<u8>,
    /// A failed write could not be cut off again: the reader would stop at its partial
    /// record, so nothing more is appended.
    broken: bool,
}

/// Create and lock a new log of `node` in `dir`. Created under a hidden name and renamed
/// once locked, so no sweep sees it unlocked.
fn create(dir: &Path, node: &str) -> io::Result<(PathBuf, File)> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{node}.{}-{nanos}{SUFFIX}", std::process::id());
    let hidden = dir.join(format!(".{name}.new"));
    let file = File::options()
        .append(true)
        .create_new(true)
        .open(&hidden)?;
    file.lock()?;
    let path = dir.join(name);
    fs::rename(&hidden, &path)?;
    Ok((path, file))
}

impl Log {
    /// Start this run's log in `dir` (created if missing).
    pub fn open(dir: &Path, node: &str, sync: bool) -> io::Result<Log> {
        fs::create_dir_all(dir)?;
        let (path, file) = create(dir, node)?;
        Ok(Log {
            dir: dir.to_path_buf(),
            node: node.to_owned(),
            sync,
            file: Mutex::new(Appender {
                path,
                file,
                size: 0,
                appended: 0,
                retired: Vec::new(),
                buffer: Vec::with_capacity(512),
                broken: false,
            }),
        })
    }

    /// The file rows go to now.
    pub fn path(&self) -> PathBuf {
        lock(&self.file).path.clone()
    }

    /// Append one row in one write, then, still under the log's lock, hand it to `queued`:
    /// the ingest sees rows in the order of the file. A failed write is cut off again, so
    /// the rows after it are read.
    pub fn append(&self, logged: Logged, queued: impl FnOnce(Logged)) -> io::Result<()> {
        let mut guard = lock(&self.file);
        let log = &mut *guard;
        if log.broken {
            return Err(io::Error::other(
                "an earlier write to it could not be undone",
            ));
        }
        log.buffer.clear();
        encode(&logged, &mut log.buffer);
        if log.buffer.len() - 8 > MAX_RECORD {
            return Err(io::Error::other("the row is too long for it"));
        }
        let written = log
            .file
            .write_all(&log.buffer)
            .and_then(|()| match self.sync {
                true => log.file.sync_data(),
                false => Ok(()),
            });
        match written {
            Ok(()) => {
                log.size += log.buffer.len() as u64;
                log.appended += 1;
                queued(logged);
                Ok(())
            }
            Err(e) => {
                log.broken = log.file.set_len(log.size).is_err();
                Err(e)
            }
        }
    }

    /// The ingest committed the first `ingested` rows appended: retired files it is past
    /// are removed, and a large file is emptied if that was all of them, else replaced (rows
    /// keep coming) and retired. `settle` runs before anything is dropped: what makes the
    /// commits durable.
    pub fn trim(&self, ingested: u64, settle: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut guard = lock(&self.file);
        let log = &mut *guard;
        let done = log.retired.iter().any(|(through, ..)| *through <= ingested);
        let large = log.size >= TRIM_AT && !log.broken;
        if !done && !large {
            return Ok(());
        }
        settle()?;
        log.retired
            .retain(|(through, path, _)| *through > ingested || fs::remove_file(path).is_err());
        if !large {
            return Ok(());
        }
        if log.appended == ingested {
            // Under the append lock: no append slips between the check and the cut.
            log.file.set_len(0)?;
            log.size = 0;
            return Ok(());
        }
        let (path, file) = create(&self.dir, &self.node)?;
        let old = std::mem::replace(&mut log.file, file);
        let old_path = std::mem::replace(&mut log.path, path);
        log.retired.push((log.appended, old_path, old));
        log.size = 0;
        Ok(())
    }

    /// Remove the files of this run's log if the ingest committed all `ingested` rows
    /// appended (a closing journal).
    fn close(&self, ingested: u64) {
        let log = lock(&self.file);
        if log.appended == ingested && !log.broken {
            for path in log
                .retired
                .iter()
                .map(|(_, path, _)| path)
                .chain([&log.path])
            {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// Commit the rows of every log in `dir` whose run is gone (its lock can be taken; running
/// nodes' logs, this run's included, are skipped), then remove it; how many logs. Files left
/// half-created by a crash (never renamed, so never appended to) go too, once older than a
/// sweep: a younger one may be a running node's, between its creation and its lock.
pub(super) fn recover(
    dir: &Path,
    mut commit: impl FnMut(Vec<Logged>) -> Result<(), String>,
) -> Result<usize, String> {
    let failed = |path: &Path, e: io::Error| format!("{}: {e}", path.display());
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        entries => entries.map_err(|e| failed(dir, e))?,
    };
    let mut recovered = 0;
    for entry in entries {
        let path = entry.map_err(|e| failed(dir, e))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let log = !name.starts_with('.') && name.ends_with(SUFFIX);
        let half_created = name.starts_with('.')
            && name.ends_with(".new")
            && fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > SWEEP);
        if !log && !half_created {
            continue;
        }
        let Some(mut file) =
            crate::store::try_lock_file(&path, false).map_err(|e| failed(&path, e))?
        else {
            continue;
        };
        if log {
            let mut data = Vec::new();
            file.read_to_end(&mut data).map_err(|e| failed(&path, e))?;
            commit(parse(&data))?;
            recovered += 1;
        }
        fs::remove_file(&path).map_err(|e| failed(&path, e))?;
    }
    Ok(recovered)
}

/// Whether the ingest's commits fail, told to the consumer when that changes: rows keep
/// being acknowledged into the log meanwhile, and nothing else would show it until the
/// backlog bound refuses stores.
#[derive(Default)]
struct Health {
    failing: Option<Failing>,
}

struct Failing {
    since: Instant,
    /// When it was last told (None: not yet, no consumer to tell).
    told: Option<Instant>,
    error: String,
}

impl Health {
    /// A commit failed with `error`: told if it is the first failure, or a reminder is due.
    fn failed(&mut self, shared: &Shared, writer: &Writer, log: &Log, error: &str) {
        let failing = self.failing.get_or_insert_with(|| Failing {
            since: Instant::now(),
            told: None,
            error: String::new(),
        });
        error.clone_into(&mut failing.error);
        let state = match failing.told {
            None => CommitState::Failing,
            Some(told) if told.elapsed() >= REMIND => CommitState::StillFailing,
            Some(_) => return,
        };
        let rows = shared.backlog.load(Ordering::Relaxed) as u64;
        if report(shared, writer, log, failing, state, rows) {
            failing.told = Some(Instant::now());
        }
    }

    /// A commit of `rows` logged rows succeeded: told if failures were.
    fn succeeded(&mut self, shared: &Shared, writer: &Writer, log: &Log, rows: u64) {
        if let Some(failing) = self.failing.take().filter(|f| f.told.is_some()) {
            report(shared, writer, log, &failing, CommitState::Resumed, rows);
        }
    }
}

/// Tell the consumer, if there is one yet.
fn report(
    shared: &Shared,
    writer: &Writer,
    log: &Log,
    failing: &Failing,
    state: CommitState,
    rows: u64,
) -> bool {
    let Some(events) = shared.reports.get() else {
        return false;
    };
    events.push_report(JournalReport {
        state,
        database: writer.database(),
        log: log.path(),
        error: failing.error.clone(),
        rows,
        failing_for: failing.since.elapsed(),
    });
    true
}

/// Whether the ingest is to commit now rather than gather more.
fn due(queue: &Queue) -> bool {
    queue.stop || queue.pending.len() >= BATCH || queue.pending.iter().any(|(_, r)| r.answered())
}

/// The ingest thread: commit what the association threads queue, a batch at a time, until
/// the journal stops and nothing is left; trim the log behind it and sweep for logs of runs
/// that are gone. With `durable`, it gathers longer, and a log is trimmed only once the rows
/// it held are flushed to disk.
pub(super) fn ingest(shared: &Shared, mut writer: Writer, log: &Log, durable: bool) {
    let gather = if durable { GATHER_DURABLE } else { GATHER };
    let dir = log.dir.clone();
    let mut ingested = 0;
    let mut health = Health::default();
    let mut swept = Instant::now();
    let mut queue = lock(&shared.queue);
    loop {
        while queue.pending.is_empty() && !queue.stop && swept.elapsed() < SWEEP {
            queue.idle = true;
            let left = SWEEP.saturating_sub(swept.elapsed());
            queue = shared
                .work
                .wait_timeout(queue, left)
                .map_or_else(|p| p.into_inner().0, |(q, _)| q);
        }
        queue.idle = false;
        if queue.pending.is_empty() {
            if queue.stop {
                drop(queue);
                // Everything is committed: nothing for a later start to take up.
                log.close(ingested);
                return;
            }
            drop(queue);
            // Cheap: a directory listing and a lock attempt per running node's log.
            let _ = recover(&dir, |rows| writer.ingest(rows));
            swept = Instant::now();
            queue = lock(&shared.queue);
            continue;
        }
        if !due(&queue) {
            // Woken early only by a row making the batch full or a request waiting.
            queue = shared
                .work
                .wait_timeout_while(queue, gather, |q| !due(q))
                .map_or_else(|p| p.into_inner().0, |(q, _)| q);
        }
        let batch = std::mem::take(&mut queue.pending);
        drop(queue);
        let rows = batch
            .iter()
            .filter(|(_, r)| matches!(r, Request::Logged(_)))
            .count();
        let outcome = writer.commit(batch);
        queue = lock(&shared.queue);
        match outcome {
            Ok(answers) => {
                queue.answers.extend(answers);
                shared.backlog.fetch_sub(rows, Ordering::Relaxed);
                ingested += rows as u64;
                shared.committed.notify_all();
                drop(queue);
                health.succeeded(shared, &writer, log, rows as u64);
                // A failed trim leaves the file as it is: it is trimmed at a later batch, or
                // committed again (harmlessly) at the next start.
                let _ = log.trim(ingested, || match durable {
                    true => writer.flush(),
                    false => Ok(()),
                });
                queue = lock(&shared.queue);
            }
            Err((error, batch)) => {
                health.failed(shared, &writer, log, &error);
                // Rows and marks are kept for the next try, ahead of what came since; a
                // request waiting for an answer gets the error. Stopping, they are left to
                // the log (rows) or lost (marks: the instance is only delivered once more).
                let mut kept = Vec::new();
                for (ticket, request) in batch {
                    if request.answered() {
                        queue.answers.insert(ticket, Err(error.clone()));
                    } else if !queue.stop {
                        kept.push((ticket, request));
                    }
                }
                shared.committed.notify_all();
                if queue.stop {
                    return;
                }
                kept.append(&mut queue.pending);
                queue.pending = kept;
                queue = shared
                    .work
                    .wait_timeout_while(queue, RETRY, |q| !q.stop)
                    .map_or_else(|p| p.into_inner().0, |(q, _)| q);
            }
        }
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        // A field this long makes a record over MAX_RECORD, which is never written.
        Some(bytes) => {
            put_u32(out, u32::try_from(bytes.len()).unwrap_or(NONE - 1));
            out.extend_from_slice(bytes);
        }
        None => put_u32(out, NONE),
    }
}

fn crc(payload: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(payload);
    crc.sum()
}

/// Append the record of `logged` to `out`.
pub fn encode(logged: &Logged, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    let Logged { id, received, row } = logged;
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&received.to_le_bytes());
    out.extend_from_slice(&row.bytes.to_le_bytes());
    out.push(u8::from(row.pending));
    fn text(s: &Option<String>) -> Option<&[u8]> {
        s.as_deref().map(str::as_bytes)
    }
    let peer = row.peer.map(|p| p.to_string());
    for field in [
        Some(row.sop_class_uid.as_bytes()),
        Some(row.sop_instance_uid.as_bytes()),
        Some(row.transfer_syntax_uid.as_bytes()),
        text(&row.patient_id),
        text(&row.study_instance_uid),
        text(&row.series_instance_uid),
        text(&row.accession_number),
        text(&row.modality),
        text(&row.study_date),
        Some(row.path.as_os_str().as_bytes()),
        Some(row.calling_ae.as_bytes()),
        Some(row.called_ae.as_bytes()),
        peer.as_deref().map(str::as_bytes),
        row.held.as_deref().map(|h| h.as_os_str().as_bytes()),
    ] {
        put_bytes(out, field);
    }
    let length = u32::try_from(out.len() - start - 8).unwrap_or(u32::MAX);
    let sum = crc(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
}

/// Reads a payload's fields in order; None once it runs short.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    /// A field: Some(None) when absent.
    fn bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let length = u32::from_le_bytes(self.take()?);
        if length == NONE {
            return Some(None);
        }
        // Bounded by what is left, before anything is taken.
        let length = usize::try_from(length)
            .ok()
            .filter(|l| *l <= self.0.len())?;
        let (value, rest) = self.0.split_at(length);
        self.0 = rest;
        Some(Some(value))
    }

    fn text(&mut self) -> Option<Option<String>> {
        match self.bytes()? {
            Some(bytes) => Some(Some(std::str::from_utf8(bytes).ok()?.to_owned())),
            None => Some(None),
        }
    }

    fn required(&mut self) -> Option<String> {
        self.text()?
    }

    fn path(&mut self) -> Option<Option<PathBuf>> {
        Some(self.bytes()?.map(|b| PathBuf::from(OsStr::from_bytes(b))))
    }
}

fn decode(payload: &[u8]) -> Option<Logged> {
    let mut f = Fields(payload);
    let id = i64::from_le_bytes(f.take()?);
    let received = f64::from_le_bytes(f.take()?);
    let bytes = u64::from_le_bytes(f.take()?);
    let pending = match f.take::<1>()? {
        [0] => false,
        [1] => true,
        _ => return None,
    };
    let row = Row {
        sop_class_uid: f.required()?,
        sop_instance_uid: f.required()?,
        transfer_syntax_uid: f.required()?,
        patient_id: f.text()?,
        study_instance_uid: f.text()?,
        series_instance_uid: f.text()?,
        accession_number: f.text()?,
        modality: f.text()?,
        study_date: f.text()?,
        path: f.path()??,
        bytes,
        calling_ae: f.required()?,
        called_ae: f.required()?,
        peer: match f.text()? {
            Some(peer) => Some(peer.parse().ok()?),
            None => None,
        },
        held: f.path()?,
        pending,
    };
    f.0.is_empty().then_some(Logged { id, received, row })
}

/// The rows of a log file's bytes, up to the first record that does not check.
pub fn parse(mut data: &[u8]) -> Vec<Logged> {
    let mut rows = Vec::new();
    while let Some((header, rest)) = data.split_first_chunk::<8>() {
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let sum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if length > MAX_RECORD || length > rest.len() {
            break;
        }
        let (payload, next) = rest.split_at(length);
        let Some(logged) = decode(payload).filter(|_| crc(payload) == sum) else {
            break;
        };
        rows.push(logged);
        data = next;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(id: i64, study: Option<&str>) -> Logged {
        Logged {
            id,
            received: 1.5e9 + id as f64,
            row: Row {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: format!("1.2.3.{id}"),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                patient_id: Some("PAT é".into()),
                study_instance_uid: study.map(Into::into),
                path: PathBuf::from("/data/a/b.dcm"),
                bytes: 1234,
                calling_ae: "SCU".into(),
                called_ae: "INLET".into(),
                peer: Some("127.0.0.1:4242".parse().unwrap()),
                held: Some(PathBuf::from("/data/.journal/held/7.dcm")),
                pending: id % 2 == 0,
                ..Row::default()
            },
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dicom-inlet-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_round_trip_and_a_cut_damaged_or_oversized_record_ends_the_log() {
        let rows = [logged(1, Some("9.8")), logged(2, None), logged(3, Some(""))];
        let mut data = Vec::new();
        let mut ends = Vec::new();
        for row in &rows {
            encode(row, &mut data);
            ends.push(data.len());
        }
        assert_eq!(parse(&data), rows);
        // A write cut short (a torn tail): the rows before it stand.
        assert_eq!(parse(&data[..data.len() - 1]), rows[..2]);
        assert_eq!(parse(&data[..ends[0] + 6]), rows[..1]);
        // A flipped byte fails its checksum: it and what follows are not read.
        let mut damaged = data.clone();
        damaged[ends[0] + 30] ^= 0x40;
        assert_eq!(parse(&damaged), rows[..1]);
        // A length over the bound is refused before anything is read, however much follows.
        let mut oversized = data.clone();
        let huge = (MAX_RECORD as u32 + 1).to_le_bytes();
        oversized[..4].copy_from_slice(&huge);
        oversized.resize(MAX_RECORD * 2 + 16, 0);
        assert!(parse(&oversized).is_empty());
        assert!(parse(&[0xff; 12]).is_empty());
        // The fuzz target's seed is a log of two good rows.
        let seed = parse(include_bytes!("../testdata/fuzz/journal_log/two_rows"));
        assert_eq!(seed.len(), 2);
        assert_eq!(seed[1].row.peer, Some("[::1]:104".parse().unwrap()));
    }

    #[test]
    fn a_row_too_long_is_refused_and_the_log_stays_readable() {
        let dir = temp_dir("long");
        let log = Log::open(&dir, "n1", false).unwrap();
        let mut long = logged(1, None);
        long.row.patient_id = Some("x".repeat(MAX_RECORD));
        assert!(log.append(long, |_| panic!("not queued")).is_err());
        log.append(logged(2, None), drop).unwrap();
        let rows = parse(&fs::read(log.path()).unwrap());
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_large_log_is_emptied_once_caught_up_or_else_replaced() {
        let dir = temp_dir("trim");
        let log = Log::open(&dir, "node.a", false).unwrap();
        let first = log.path();
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("node.a.") && name.ends_with(".log"),
            "{name}"
        );
        let mut id = 0;
        let fill = |id: &mut i64| {
            while fs::metadata(log.path()).unwrap().len() < TRIM_AT {
                *id += 1;
                log.append(logged(*id, Some("1")), drop).unwrap();
            }
        };
        fill(&mut id);
        let settled = std::cell::Cell::new(0);
        let settle = || {
            settled.set(settled.get() + 1);
            Ok(())
        };
        // Not caught up: the file is replaced, the old one kept until its rows are in.
        log.trim(id as u64 - 1, settle).unwrap();
        let second = log.path();
        assert_ne!(second, first);
        assert_eq!(parse(&fs::read(&first).unwrap()).len(), id as usize);
        log.append(logged(id + 1, None), drop).unwrap();
        // Small, nothing retired is past: nothing to do, nothing flushed.
        log.trim(id as u64 - 1, settle).unwrap();
        assert_eq!(settled.get(), 1);
        assert!(first.exists());
        log.trim(id as u64, settle).unwrap();
        assert!(!first.exists());
        id += 1;
        fill(&mut id);
        // Caught up: the same file, emptied under the append lock.
        log.trim(id as u64, settle).unwrap();
        assert_eq!(log.path(), second);
        assert_eq!(fs::metadata(&second).unwrap().len(), 0);
        log.append(logged(id + 1, None), drop).unwrap();
        assert_eq!(parse(&fs::read(&second).unwrap())[0].id, id + 1);
        assert_eq!(settled.get(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_logs_whose_run_is_gone_are_recovered_and_removed() {
        let dir = temp_dir("recover");
        let live = Log::open(&dir, "live", false).unwrap();
        live.append(logged(1, None), drop).unwrap();
        let dead = {
            let dead = Log::open(&dir, "dead", false).unwrap();
            dead.append(logged(2, None), drop).unwrap();
            dead.append(logged(3, None), drop).unwrap();
            dead.path()
            // Dropped: its lock goes, as with a killed process.
        };
        let half = fs::File::create(dir.join(".half.1-2.log.new")).unwrap();
        half.set_modified(SystemTime::now() - 2 * SWEEP).unwrap();
        // A younger one may be a node's being created: left alone.
        fs::write(dir.join(".young.1-2.log.new"), b"").unwrap();
        let mut seen = Vec::new();
        let count = recover(&dir, |rows| {
            seen.extend(rows.into_iter().map(|r| r.id));
            Ok(())
        })
        .unwrap();
        assert_eq!((count, seen), (1, vec![2, 3]));
        assert!(!dead.exists() && live.path().exists());
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.sort();
        assert_eq!(left, [dir.join(".young.1-2.log.new"), live.path()]);
        fs::remove_file(dir.join(".young.1-2.log.new")).unwrap();
        // A failed commit keeps the log for the next try.
        let again = Log::open(&dir, "dead", false).unwrap().path();
        assert!(recover(&dir, |_| Err("disk full".into())).is_err());
        assert!(again.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
