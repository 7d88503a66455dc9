//! The journal: an SQLite database (WAL) in `data_dir/.journal/` with one row per acknowledged
//! instance, logged before its C-STORE-RSP leaves, so what a sender was told is stored is
//! never forgotten; the source of at-least-once callbacks and study completion events, and
//! the index of what has arrived.
//!
//! A row is acknowledged once it is in the row log (`log.rs`): one append, in the
//! association's thread, before its C-STORE-RSP. One writer thread copies the logged rows
//! into SQLite behind it, everything waiting in one transaction every few milliseconds, with
//! the delivery marks and other requests in the order they came; a start copies what the
//! last run logged and did not commit. An append survives a crash of the process but not of
//! the machine; with `durable`, the storage's flush of the file system before each answer
//! makes it durable too (one flush for files, names and rows; each append is flushed itself
//! when the journal is on another file system), and the writer's commits are fsynced before
//! the log files they empty are removed. Readers of the index see a row once the writer
//! committed it: within milliseconds, and before its association's A-RELEASE-RP
//! ([`Journal::sync`]).

use std::collections::HashMap;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, Transaction};

use crate::error::{Error, Result};
use crate::events::{EventQueue, Level};

mod feed;
mod index;
// pub(crate): the fuzz target reads logs too.
pub(crate) mod log;
mod schema;

pub use feed::{Feed, Replayer, Timers};
pub use index::{Index, InstanceEntry, SeriesSummary, StudySummary};
pub use schema::VERSION;

/// The journal's folder under `data_dir`, hidden like the spool's.
pub const JOURNAL_DIR: &str = ".journal";
const DATABASE: &str = "journal.sqlite";
/// Hard links to acknowledged versions whose callbacks have not run yet.
const HELD_DIR: &str = "held";
/// How long a connection (the status command, say) waits for another's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the writer gathers logged rows into one commit, unless a request waits for it:
/// long enough that a busy server commits a batch, not a row, at a time (an SQLite commit
/// costs ~10 rows' inserts), short enough that the index lags by nothing a person notices.
const GATHER: Duration = Duration::from_millis(5);
/// Before the writer tries again after a failed commit.
const RETRY: Duration = Duration::from_secs(1);
/// Logged rows waiting for the writer beyond which instances are refused: its commits fail
/// (a full disk), and memory must not grow without end meanwhile.
const MAX_BACKLOG: usize = 100_000;

/// What the journal records of one acknowledged instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub patient_id: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub accession_number: Option<String>,
    pub modality: Option<String>,
    pub study_date: Option<String>,
    /// Absolute, under `data_dir`.
    pub path: PathBuf,
    pub bytes: u64,
    pub calling_ae: String,
    pub called_ae: String,
    pub peer: Option<SocketAddr>,
    /// The hard link that keeps this version for its callbacks.
    pub held: Option<PathBuf>,
    /// Callbacks are to run for it.
    pub pending: bool,
}

type Answer = std::result::Result<i64, String>;

enum Request {
    /// A logged row to insert.
    Record(Box<log::Logged>),
    /// Answered once everything before it is committed.
    Sync,
    Delivered(i64),
    Failed {
        id: i64,
        attempts: u32,
        error: String,
    },
    /// Failed deliveries (these ids, or all) back to pending; answered with how many.
    Replay(Option<Vec<i64>>),
    /// A completion event for everything up to `through` was delivered.
    Completed {
        level: Level,
        uid: String,
        through: f64,
    },
}

impl Request {
    /// Rows are logged and marks not waited for (lost in a crash, an instance is only
    /// delivered once more): only the others are answered.
    fn answered(&self) -> bool {
        !matches!(
            self,
            Request::Record(_) | Request::Delivered(_) | Request::Failed { .. }
        )
    }
}

/// Requests for the writer, the answers of committed ones not yet collected, and the log.
struct Queue {
    pending: Vec<(u64, Request)>,
    next_ticket: u64,
    answers: HashMap<u64, Answer>,
    /// The writer waits for work: the next request wakes it.
    idle: bool,
    stop: bool,
    log: log::Log,
    /// The id the next logged row gets.
    next_id: i64,
}

/// What the association threads and the writer thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits on it for work.
    work: Condvar,
    committed: Condvar,
}

/// The open journal of one server.
pub struct Journal {
    root: PathBuf,
    held: PathBuf,
    database: PathBuf,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking association thread must not take the journal down with it.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `path` relative to `root` as stored in the journal (instances are always under it).
fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn unusable(database: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| journal_error(database, e.to_string())
}

fn journal_error(database: &Path, detail: String) -> Error {
    Error::Journal(format!(
        "journal {} is unusable: {detail} (move it away to start a new one)",
        database.display()
    ))
}

/// Whether `a` and `b` are on one file system (a flush of one flushes the other).
fn same_file_system(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    matches!((fs::metadata(a), fs::metadata(b)), (Ok(a), Ok(b)) if a.dev() == b.dev())
}

/// Open (creating if `create`) and migrate the database of the journal in `root`. Commits
/// are not fsynced (NORMAL, crash-safe, the last ones lost in a power cut): the row log holds
/// what they may lose, until a checkpoint has made them durable.
fn connect(database: &Path, create: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    } else if !database.is_file() {
        return Err(Error::Journal(format!(
            "no journal at {}: has a server with the journal on used this data_dir?",
            database.display()
        )));
    }
    let mut conn = Connection::open_with_flags(database, flags).map_err(unusable(database))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .and_then(|()| {
            conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        })
        .map_err(unusable(database))?;
    schema::migrate(&mut conn).map_err(|e| journal_error(database, e))?;
    Ok(conn)
}

impl Journal {
    /// Open the journal of `root` (the canonical data_dir), creating it if missing. `notify`
    /// is poked after each commit, for the completion timers (which it also turns on). Held links
    /// that no undelivered row names (left by a crash between link and commit) are removed.
    pub fn open(root: &Path, durable: bool, notify: Option<Arc<EventQueue>>) -> Result<Journal> {
        let dir = root.join(JOURNAL_DIR);
        let held = dir.join(HELD_DIR);
        fs::create_dir_all(&held).map_err(Error::io(format!(
            "cannot create the journal folder {}",
            held.display()
        )))?;
        let database = dir.join(DATABASE);
        let conn = connect(&database, true)?;
        let mut writer = Writer {
            conn,
            root: root.to_path_buf(),
            held: held.clone(),
            notify,
            durable,
        };
        // Rows the last run logged and did not commit, before the held links are looked at.
        let (next_id, number) = writer
            .recover(&dir)
            .map_err(|e| journal_error(&database, e))?;
        let conn = &writer.conn;
        let mut keep = std::collections::HashSet::new();
        {
            let mut rows = conn
                .prepare("SELECT held FROM instances WHERE held IS NOT NULL")
                .map_err(unusable(&database))?;
            let names = rows
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(unusable(&database))?;
            for name in names {
                keep.insert(name.map_err(unusable(&database))?);
            }
        }
        for entry in fs::read_dir(&held).map_err(Error::io("cannot list held instances"))? {
            let Ok(entry) = entry else { continue };
            if !keep.contains(&*entry.file_name().to_string_lossy()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        // The storage's flush covers appends on its file system.
        let sync_appends = durable && !same_file_system(root, &dir);
        let log = log::Log::create(&dir, number, sync_appends).map_err(Error::io(format!(
            "cannot create the journal's log in {}",
            dir.display()
        )))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                next_ticket: 0,
                answers: HashMap::new(),
                idle: false,
                stop: false,
                log,
                next_id,
            }),
            work: Condvar::new(),
            committed: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("dicom-inlet journal".into())
                .spawn(move || writer.run(&shared))
                .map_err(Error::io("cannot start the journal's writer"))?
        };
        Ok(Journal {
            root: root.to_path_buf(),
            held,
            database,
            shared,
            writer: Some(thread),
        })
    }

    /// Where the journal keeps the version acknowledged under `name` (unique per spool file).
    pub fn held_path(&self, name: &str) -> PathBuf {
        self.held.join(name)
    }

    /// A new connection for queries (and for the feed's reading), beside the writer.
    pub fn index(&self) -> Result<Index> {
        Index::connect(&self.root, &self.database)
    }

    /// Queue `request` for the writer; with `wait`, returns its answer once committed.
    fn submit(&self, request: Request, wait: bool) -> Option<Answer> {
        let mut queue = lock(&self.shared.queue);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push((ticket, request));
        if queue.idle || wait {
            // Waking it only when idle: a busy writer takes what came at its next batch.
            queue.idle = false;
            self.shared.work.notify_one();
        }
        if !wait {
            return None;
        }
        loop {
            if let Some(answer) = queue.answers.remove(&ticket) {
                return Some(answer);
            }
            queue = self
                .shared
                .committed
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn ask(&self, request: Request) -> Result<i64> {
        let answer = self.submit(request, true).unwrap_or(Ok(0));
        answer.map_err(|e| journal_error(&self.database, e))
    }

    /// Journal one acknowledged instance: once this returns its row id, the row is logged
    /// (and committed to SQLite shortly after, by the writer).
    pub fn record(&self, row: Row) -> std::result::Result<i64, String> {
        let received = unix_now();
        let mut queue = lock(&self.shared.queue);
        if queue.pending.len() >= MAX_BACKLOG {
            return Err("the journal's writer is behind (are its commits failing?)".into());
        }
        let logged = log::Logged {
            id: queue.next_id,
            received,
            row,
        };
        queue
            .log
            .append(&logged)
            .map_err(|e| format!("cannot write the journal's log: {e}"))?;
        let id = logged.id;
        queue.next_id += 1;
        // Queued with its append, under one lock: a log file is retired only with all its
        // rows in the writer's batch.
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue
            .pending
            .push((ticket, Request::Record(Box::new(logged))));
        if queue.idle {
            queue.idle = false;
            self.shared.work.notify_one();
        }
        Ok(id)
    }

    /// Wait until everything journaled before is committed, so the index shows it.
    pub fn sync(&self) -> Result<()> {
        self.ask(Request::Sync).map(drop)
    }

    /// The instance's callbacks returned: mark it delivered and let its held version go. Not
    /// waited for: lost in a crash, it is only delivered once more.
    pub fn delivered(&self, id: i64) {
        self.submit(Request::Delivered(id), false);
    }

    /// The instance's callbacks kept failing: park it with the last error.
    pub fn failed(&self, id: i64, attempts: u32, error: String) {
        let request = Request::Failed {
            id,
            attempts,
            error,
        };
        self.submit(request, false);
    }

    /// Failed deliveries back to pending (these ids, or all of them); how many.
    pub fn replay(&self, ids: Option<Vec<i64>>) -> Result<i64> {
        self.ask(Request::Replay(ids))
    }

    /// A completion event was delivered for `uid` up to `through`.
    pub fn completed(&self, level: Level, uid: String, through: f64) -> Result<()> {
        self.ask(Request::Completed {
            level,
            uid,
            through,
        })
        .map(drop)
    }
}

impl Drop for Journal {
    /// The writer commits what is left, then stops.
    fn drop(&mut self) {
        lock(&self.shared.queue).stop = true;
        self.shared.work.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Writer {
    conn: Connection,
    root: PathBuf,
    held: PathBuf,
    notify: Option<Arc<EventQueue>>,
    /// A log file goes only once its rows survive a power cut in the database.
    durable: bool,
}

impl Writer {
    /// Commit what the association threads queue, a batch at a time, until the journal
    /// stops and nothing is left.
    fn run(mut self, shared: &Shared) {
        // Log files whose rows are all queued: removed once those are committed.
        let mut retired = Vec::new();
        let mut queue = lock(&shared.queue);
        loop {
            while queue.pending.is_empty() && !queue.stop {
                queue.idle = true;
                queue = shared.work.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            queue.idle = false;
            if queue.pending.is_empty() {
                return;
            }
            let waited_for = |q: &Queue| q.pending.iter().any(|(_, r)| r.answered());
            if !queue.stop && !waited_for(&queue) {
                queue = shared
                    .work
                    .wait_timeout_while(queue, GATHER, |q| !q.stop && !waited_for(q))
                    .map_or_else(|p| p.into_inner().0, |(q, _)| q);
            }
            let batch = std::mem::take(&mut queue.pending);
            // Every row of the current file is in this batch or committed before.
            if let Ok(Some(old)) = queue.log.rotate() {
                retired.push(old);
            }
            drop(queue);
            let answers = self.commit(&batch);
            let failed = answers.is_err();
            if !failed && !retired.is_empty() && self.checkpoint() {
                for old in retired.drain(..) {
                    let _ = fs::remove_file(old);
                }
            }
            queue = lock(&shared.queue);
            match answers {
                Ok(answers) => queue.answers.extend(answers),
                Err(e) => {
                    // Rows and marks are kept for the next try, ahead of what came since;
                    // a waiting request is answered with the error.
                    let mut kept = Vec::new();
                    for (ticket, request) in batch {
                        if request.answered() {
                            queue.answers.insert(ticket, Err(e.clone()));
                        } else {
                            kept.push((ticket, request));
                        }
                    }
                    kept.append(&mut queue.pending);
                    queue.pending = kept;
                }
            }
            shared.committed.notify_all();
            if failed && !queue.stop {
                queue = shared
                    .work
                    .wait_timeout(queue, RETRY)
                    .map_or_else(|p| p.into_inner().0, |(q, _)| q);
            }
        }
    }

    /// With durability, make the commits so far durable, about once per log file retired:
    /// they are in the WAL, or in the database file, which SQLite fsyncs after each complete
    /// checkpoint (synchronous=NORMAL), before it starts the WAL over. Whether they are.
    fn checkpoint(&self) -> bool {
        let wal = self.root.join(JOURNAL_DIR).join(format!("{DATABASE}-wal"));
        let synced = || match File::open(&wal) {
            Ok(file) => file.sync_data(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        !self.durable || synced().is_ok()
    }

    /// Commit the rows of the logs in `dir` that the database lacks, and remove the logs:
    /// the next row id and the number of the last log.
    fn recover(&mut self, dir: &Path) -> std::result::Result<(i64, u64), String> {
        let last: i64 = self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM instances", [], |r| {
                r.get(0)
            })
            .map_err(|e| e.to_string())?;
        let files = log::files(dir).map_err(|e| e.to_string())?;
        let mut batch = Vec::new();
        for (_, path) in &files {
            let data = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            batch.extend(log::parse(&data).into_iter().filter(|l| l.id > last));
        }
        let next = batch.iter().map(|l| l.id).max().unwrap_or(last).max(last) + 1;
        let requests: Vec<_> = batch
            .into_iter()
            .map(|logged| (0, Request::Record(Box::new(logged))))
            .collect();
        self.commit(&requests)?;
        if !self.checkpoint() {
            return Err("cannot checkpoint the recovered rows".into());
        }
        for (_, path) in &files {
            fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok((next, files.last().map_or(0, |(n, _)| *n)))
    }

    /// Apply a batch in one transaction: the answers of the requests that want one, or why
    /// the transaction failed.
    fn commit(
        &mut self,
        batch: &[(u64, Request)],
    ) -> std::result::Result<Vec<(u64, Answer)>, String> {
        let mut released = Vec::new();
        let result = self
            .conn
            .transaction()
            .map_err(|e| e.to_string())
            .and_then(|tx| {
                let answers = batch
                    .iter()
                    .map(|(_, request)| {
                        let groups = self.notify.is_some();
                        apply(&tx, &self.root, request, groups, &mut released)
                    })
                    .collect::<Vec<_>>();
                tx.commit().map_err(|e| e.to_string())?;
                Ok(answers)
            });
        let answers = result?;
        // Only after the commit: a crash before it keeps the row pending and its version.
        for name in released {
            let _ = fs::remove_file(self.held.join(name));
        }
        if let Some(notify) = &self.notify {
            notify.poke();
        }
        Ok(batch
            .iter()
            .zip(answers)
            .filter(|((_, request), _)| request.answered())
            .map(|((ticket, _), answer)| (*ticket, answer))
            .collect())
    }
}

/// Apply one request; `groups`: keep the study/series timers' rows too (only while their
/// events are on: two more B-tree pages per commit otherwise paid for nothing).
fn apply(
    tx: &Transaction<'_>,
    root: &Path,
    request: &Request,
    groups: bool,
    released: &mut Vec<String>,
) -> std::result::Result<i64, String> {
    let sql = |e: rusqlite::Error| e.to_string();
    match request {
        Request::Record(logged) => insert(tx, root, logged, groups).map_err(sql),
        Request::Sync => Ok(0),
        Request::Delivered(id) => {
            let held: Option<Option<String>> = tx
                .prepare_cached("SELECT held FROM instances WHERE id = ?1 AND state = 1")
                .and_then(|mut s| s.query_row([id], |r| r.get(0)))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
                .map_err(sql)?;
            tx.prepare_cached(
                "UPDATE instances SET state = 2, held = NULL WHERE id = ?1 AND state = 1",
            )
            .and_then(|mut s| s.execute([id]))
            .map_err(sql)?;
            released.extend(held.flatten());
            Ok(0)
        }
        Request::Failed {
            id,
            attempts,
            error,
        } => tx
            .prepare_cached(
                "UPDATE instances SET state = 3, attempts = attempts + ?2, error = ?3
                 WHERE id = ?1 AND state = 1",
            )
            .and_then(|mut s| s.execute(params![id, attempts, error]))
            .map(|_| 0)
            .map_err(sql),
        Request::Replay(ids) => {
            let changed = match ids {
                None => tx.execute("UPDATE instances SET state = 1 WHERE state = 3", []),
                Some(ids) => {
                    let mut update = tx
                        .prepare_cached(
                            "UPDATE instances SET state = 1 WHERE id = ?1 AND state = 3",
                        )
                        .map_err(sql)?;
                    ids.iter()
                        .try_fold(0, |n, id| Ok(n + update.execute([id])?))
                }
            };
            changed.map(|n| n as i64).map_err(sql)
        }
        Request::Completed {
            level,
            uid,
            through,
            ..
        } => tx
            .prepare_cached(
                "UPDATE groups SET events = events + 1, changed = (last_received > ?3)
                 WHERE level = ?1 AND uid = ?2",
            )
            .and_then(|mut s| s.execute(params![level.as_str(), uid, through]))
            .map(|_| 0)
            .map_err(sql),
    }
}

fn insert(
    tx: &Transaction<'_>,
    root: &Path,
    log::Logged { id, received, row }: &log::Logged,
    groups: bool,
) -> rusqlite::Result<i64> {
    let state = if row.pending {
        schema::PENDING
    } else {
        schema::NOT_QUEUED
    };
    let held = row
        .held
        .as_ref()
        .and_then(|h| h.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    tx.prepare_cached(
        "INSERT INTO instances (received, sop_class_uid, sop_instance_uid, patient_id,
            study_instance_uid, series_instance_uid, accession_number, modality, study_date,
            path, bytes, transfer_syntax_uid, calling_ae, called_ae, peer, held, state, id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18)",
    )?
    .execute(params![
        received,
        row.sop_class_uid,
        row.sop_instance_uid,
        row.patient_id,
        row.study_instance_uid,
        row.series_instance_uid,
        row.accession_number,
        row.modality,
        row.study_date,
        relative(root, &row.path),
        row.bytes as i64,
        row.transfer_syntax_uid,
        row.calling_ae,
        row.called_ae,
        row.peer.map(|p| p.to_string()).unwrap_or_default(),
        held,
        state,
        id,
    ])?;
    let Some(study) = row.study_instance_uid.as_ref().filter(|_| groups) else {
        return Ok(*id);
    };
    let mut group = tx.prepare_cached(
        "INSERT INTO groups (level, uid, study_instance_uid, last_received, changed)
         VALUES (?1, ?2, ?3, ?4, 1)
         ON CONFLICT (level, uid) DO UPDATE SET last_received = excluded.last_received,
            changed = 1",
    )?;
    group.execute(params![Level::Study.as_str(), study, study, received])?;
    if let Some(series) = &row.series_instance_uid {
        group.execute(params![Level::Series.as_str(), series, study, received])?;
    }
    Ok(*id)
}

#[cfg(test)]
mod tests;
