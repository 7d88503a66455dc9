//! The journal: an SQLite database (WAL) in `data_dir/.journal/` with one row per acknowledged
//! instance, committed before its C-STORE-RSP leaves, so what a sender was told is stored is
//! never forgotten; the source of at-least-once callbacks and study completion events, and
//! the index of what has arrived.
//!
//! With SQLite, a row is acknowledged once it is in this run's row log (`log.rs`): one
//! append on the association's thread, before its C-STORE-RSP, with an id from a block the
//! node reserved in the database. One ingest thread commits the logged rows behind it, a
//! batch every ~20 ms, with the delivery marks and other requests in the order they
//! came; a start (and a sweep each minute) commits what runs that are gone logged. An append
//! survives a crash of the process but not of the machine; with `durable`, the storage's
//! flush of the file system before each answer makes it durable too (one flush shared by
//! files, names and rows), or, with the journal on another file system, each append is
//! flushed. Readers see a row once it is committed: within milliseconds, and before its
//! association's A-RELEASE-RP ([`Journal::sync`]).
//!
//! With PostgreSQL (remote, rows claimed across nodes), whoever brings a request while no
//! commit is under way commits everything waiting in one transaction (group commit), each
//! association waiting for the commit holding its own row.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{Error, Result};
use crate::events::{EventQueue, Level};

mod backend;
mod feed;
mod index;
// pub(crate): the fuzz target reads logs too.
pub(crate) mod log;
mod postgres;
mod schema;

pub use backend::Location;
pub use feed::{Completer, Feed, Replayer, Timers};
pub use index::{Index, InstanceEntry, ParkedEvent, SeriesSummary, StudySummary};
pub use postgres::Cluster;
pub use schema::VERSION;

/// The journal's folder under `data_dir`, hidden like the spool's.
pub const JOURNAL_DIR: &str = ".journal";
const DATABASE: &str = "journal.sqlite";
/// Hard links to acknowledged versions whose callbacks have not run yet.
const HELD_DIR: &str = "held";
/// How long a connection (the status command, say) waits for another's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The row logs, one per run, in the journal's folder.
const LOG_DIR: &str = "log";
/// Row ids a node reserves at a time (one small transaction each; gaps are fine).
const ID_BLOCK: i64 = 4096;
/// Logged rows waiting for the ingest beyond which instances are refused: its commits fail
/// (a full disk, say), and memory must not grow without end meanwhile.
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
    /// Answered with the row id (PostgreSQL).
    Record(Box<Row>),
    /// A row in the log, to commit (SQLite).
    Logged(Box<log::Logged>),
    /// Reserve a block of this many row ids; answered with the first.
    Reserve(i64),
    /// Answered once everything queued before it is committed.
    Sync,
    /// Rows whose callbacks returned, marked in one go.
    Delivered(Vec<i64>),
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
    /// A completion event for everything up to `through` kept failing: parked with its last
    /// error, unless newer instances make a new event (which then supersedes it).
    Parked {
        level: Level,
        uid: String,
        through: f64,
        attempts: u32,
        error: String,
    },
}

impl Request {
    /// Marks are not waited for (lost in a crash, an instance is only delivered once more),
    /// nor logged rows (the log keeps them).
    fn answered(&self) -> bool {
        !matches!(
            self,
            Request::Logged(_) | Request::Delivered(_) | Request::Failed { .. }
        )
    }
}

/// Requests waiting for a commit, and the answers of committed ones not yet collected.
#[derive(Default)]
struct Queue {
    pending: Vec<(u64, Request)>,
    next_ticket: u64,
    answers: HashMap<u64, Answer>,
    /// A thread is committing: it takes what comes meanwhile before it stops.
    committing: bool,
    /// The ingest waits for work: the next request wakes it.
    idle: bool,
    /// The journal is closing: the ingest commits what is left and ends.
    stop: bool,
}

/// What the association threads and the ingest thread share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    committed: Condvar,
    /// The ingest waits on it for work.
    work: Condvar,
    /// Logged rows not committed yet.
    backlog: AtomicUsize,
    /// Where the ingest tells that its commits fail or resumed.
    reports: OnceLock<Arc<EventQueue>>,
}

impl Shared {
    /// Queue `request` for the ingest thread; with `wait`, its answer once committed.
    fn hand_over(&self, request: Request, wait: bool) -> Option<Answer> {
        let mut queue = lock(&self.queue);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push((ticket, request));
        // Waking it only when idle, or to end its gathering early: a busy ingest takes what
        // came at its next batch.
        if queue.idle || wait || queue.pending.len() == log::BATCH {
            queue.idle = false;
            self.work.notify_one();
        }
        if !wait {
            return None;
        }
        loop {
            if let Some(answer) = queue.answers.remove(&ticket) {
                return Some(answer);
            }
            queue = self
                .committed
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Who commits.
enum Committer {
    /// PostgreSQL: the thread bringing a request while no commit is under way. Only the
    /// committing thread locks it.
    Group(Mutex<backend::Store>),
    /// SQLite: the ingest thread, behind the row log.
    Ingest(Ingest),
}

struct Ingest {
    log: Arc<log::Log>,
    /// Row ids reserved and not handed out yet.
    ids: Mutex<Range<i64>>,
    thread: Option<JoinHandle<()>>,
}

/// The open journal of one server.
pub struct Journal {
    root: PathBuf,
    held: PathBuf,
    location: Location,
    shared: Arc<Shared>,
    committer: Committer,
    /// This node runs the completion timers (PostgreSQL: while it holds their lease).
    leads: Arc<AtomicBool>,
    heartbeat: Mutex<Option<postgres::Heartbeat>>,
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

/// `path` relative to `root` as stored in the journal (instances are always under it, a
/// join of the canonical root: its bytes start with the root's, which is cheaper to check
/// than comparing components).
fn relative<'p>(root: &Path, path: &'p Path) -> std::borrow::Cow<'p, str> {
    use std::os::unix::ffi::OsStrExt;
    let under = path
        .as_os_str()
        .as_bytes()
        .strip_prefix(root.as_os_str().as_bytes())
        .and_then(|rest| rest.strip_prefix(b"/"))
        .map(|rest| Path::new(std::ffi::OsStr::from_bytes(rest)));
    under
        .or_else(|| path.strip_prefix(root).ok())
        .unwrap_or(path)
        .to_string_lossy()
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

/// Open (creating if `create`) and migrate the database of the journal in `root`; with
/// `durable`, each commit is fsynced.
fn connect(database: &Path, durable: bool, create: bool) -> Result<Connection> {
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
    let synchronous = if durable { "FULL" } else { "NORMAL" };
    conn.busy_timeout(BUSY_TIMEOUT)
        .and_then(|()| {
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};"
            ))
        })
        .map_err(unusable(database))?;
    schema::migrate(&mut conn).map_err(|e| journal_error(database, e))?;
    Ok(conn)
}

impl Journal {
    /// Open the journal of `root` (the canonical data_dir) for node `node`, creating it if
    /// missing. `notify` is poked after each commit, for the completion timers (which it also
    /// turns on). The rows of runs that are gone and left their logs are committed first; then
    /// held links that no undelivered row names (left by a crash between link and log) are
    /// removed.
    pub fn open(
        root: &Path,
        node: &str,
        durable: bool,
        notify: Option<Arc<EventQueue>>,
    ) -> Result<Journal> {
        let dir = root.join(JOURNAL_DIR);
        let held = dir.join(HELD_DIR);
        fs::create_dir_all(&held).map_err(Error::io(format!(
            "cannot create the journal folder {}",
            held.display()
        )))?;
        let database = dir.join(DATABASE);
        let logs = dir.join(LOG_DIR);
        // The log, not the database, is what a sender's answer waits for: commits need no
        // flush of their own until the log they empty is trimmed.
        let conn = connect(&database, false, true)?;
        let mut writer = Writer {
            conn,
            root: root.to_path_buf(),
            held: held.clone(),
            notify,
        };
        log::recover(&logs, |rows| writer.ingest(rows))
            .map_err(|e| journal_error(&database, format!("recovering its log: {e}")))?;
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
        let log = log::Log::open(&logs, node, sync_appends)
            .map(Arc::new)
            .map_err(Error::io(format!(
                "cannot create the journal's log in {}",
                logs.display()
            )))?;
        let shared = Arc::new(Shared::default());
        let thread = {
            let (shared, log) = (Arc::clone(&shared), Arc::clone(&log));
            std::thread::Builder::new()
                .name("dicom-inlet-journal".into())
                .spawn(move || {
                    // Behind the answers: on a busy machine a commit waits for a free core
                    // rather than delaying an association's next response (nice 10).
                    // SAFETY: setpriority and gettid only read their arguments.
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
                    }
                    log::ingest(&shared, writer, &log, durable)
                })
                .map_err(Error::io("cannot start the journal's ingest thread"))?
        };
        let ingest = Ingest {
            log,
            ids: Mutex::new(0..0),
            thread: Some(thread),
        };
        let location = Location::Sqlite(database);
        Ok(Journal::with(
            root,
            held,
            location,
            shared,
            Committer::Ingest(ingest),
        ))
    }

    fn with_store(root: &Path, held: PathBuf, location: Location, store: backend::Store) -> Self {
        let committer = Committer::Group(Mutex::new(store));
        Journal::with(root, held, location, Arc::default(), committer)
    }

    fn with(
        root: &Path,
        held: PathBuf,
        location: Location,
        shared: Arc<Shared>,
        committer: Committer,
    ) -> Self {
        Journal {
            root: root.to_path_buf(),
            held,
            leads: Arc::new(AtomicBool::new(matches!(location, Location::Sqlite(_)))),
            location,
            shared,
            committer,
            heartbeat: Mutex::default(),
        }
    }

    /// Tell `events` when the ingest's commits start failing (the rows wait in the log, the
    /// index lags) and when they resume. PostgreSQL's commits need not: each
    /// failure fails the store that waits for it, and the store's failure is reported.
    pub fn report_to(&self, events: &Arc<EventQueue>) {
        if let Committer::Ingest(_) = self.committer {
            let _ = self.shared.reports.set(Arc::clone(events));
        }
    }

    /// Where the journal keeps the version acknowledged under `name` (unique per spool file).
    pub fn held_path(&self, name: &str) -> PathBuf {
        self.held.join(name)
    }

    /// A new connection for queries (and for the feed's reading), beside the writer.
    pub fn index(&self) -> Result<Index> {
        Index::connect(&self.root, &self.location, Some(Arc::clone(&self.leads)))
    }

    /// Queue `request` and see it committed: by the ingest thread (SQLite), or by this
    /// thread if no commit is under way (with everything else waiting), else by the committing
    /// one. With `wait`, returns its answer.
    fn submit(&self, request: Request, wait: bool) -> Option<Answer> {
        let writer = match &self.committer {
            Committer::Group(writer) => writer,
            Committer::Ingest(_) => return self.shared.hand_over(request, wait),
        };
        let mut queue = lock(&self.shared.queue);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push((ticket, request));
        loop {
            if let Some(answer) = queue.answers.remove(&ticket) {
                return Some(answer);
            }
            if !queue.committing {
                queue.committing = true;
                while !queue.pending.is_empty() {
                    let batch = std::mem::take(&mut queue.pending);
                    drop(queue);
                    let answers = lock(writer).commit(batch);
                    queue = lock(&self.shared.queue);
                    queue.answers.extend(answers);
                }
                queue.committing = false;
                self.shared.committed.notify_all();
                if !wait {
                    return None;
                }
                continue;
            }
            if !wait {
                // Committed, or the committing thread takes it before it stops.
                return None;
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
        answer.map_err(|e| backend::journal_error(&self.location, e))
    }

    /// Journal one acknowledged instance; returns its row id once it is logged (SQLite: the
    /// ingest commits it shortly after) or committed (PostgreSQL).
    pub fn record(&self, row: Row) -> std::result::Result<i64, String> {
        let Committer::Ingest(ingest) = &self.committer else {
            return self
                .submit(Request::Record(Box::new(row)), true)
                .unwrap_or(Ok(0));
        };
        if self.shared.backlog.load(Ordering::Relaxed) >= MAX_BACKLOG {
            return Err("the journal's commits are behind (are they failing?)".into());
        }
        let id = {
            let mut ids = lock(&ingest.ids);
            if ids.is_empty() {
                let first = self.submit(Request::Reserve(ID_BLOCK), true);
                let first = first.unwrap_or(Ok(0))?;
                *ids = first..first + ID_BLOCK;
            }
            let id = ids.start;
            ids.start += 1;
            id
        };
        let logged = log::Logged {
            id,
            received: unix_now(),
            row,
        };
        let queued = |logged| {
            self.shared.backlog.fetch_add(1, Ordering::Relaxed);
            self.shared
                .hand_over(Request::Logged(Box::new(logged)), false);
        };
        ingest
            .log
            .append(logged, queued)
            .map_err(|e| format!("cannot append to {}: {e}", ingest.log.path().display()))?;
        Ok(id)
    }

    /// Wait until everything journaled before is committed, so the index shows it
    /// (PostgreSQL: it is already).
    pub fn sync(&self) -> Result<()> {
        match self.committer {
            Committer::Ingest(_) => self.ask(Request::Sync).map(drop),
            Committer::Group(_) => Ok(()),
        }
    }

    /// These instances' callbacks returned: mark them delivered and let their held versions go.
    /// Not waited for: lost in a crash, they are only delivered once more.
    pub fn delivered(&self, ids: Vec<i64>) {
        self.submit(Request::Delivered(ids), false);
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

    /// The completion event of `uid` up to `through` kept failing: park it with `error`.
    pub fn parked(
        &self,
        level: Level,
        uid: String,
        through: f64,
        attempts: u32,
        error: String,
    ) -> Result<()> {
        self.ask(Request::Parked {
            level,
            uid,
            through,
            attempts,
            error,
        })
        .map(drop)
    }
}

impl Drop for Journal {
    /// The ingest commits what is queued, then stops.
    fn drop(&mut self) {
        if let Committer::Ingest(ingest) = &mut self.committer {
            lock(&self.shared.queue).stop = true;
            self.shared.work.notify_one();
            if let Some(thread) = ingest.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

struct Writer {
    conn: Connection,
    root: PathBuf,
    held: PathBuf,
    notify: Option<Arc<EventQueue>>,
}

impl Writer {
    /// Commit the rows of a log left by a run that is gone (each one once: committed
    /// already, it is ignored), flushed to disk: the log is removed next, and its rows may
    /// have been durable there (a `durable` run's).
    fn ingest(&mut self, rows: Vec<log::Logged>) -> std::result::Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = rows
            .into_iter()
            .map(|row| (0, Request::Logged(Box::new(row))))
            .collect();
        self.commit(batch).map(drop).map_err(|(e, _)| e)?;
        self.flush()
            .map_err(|e| format!("cannot flush the journal: {e}"))
    }

    /// The database file, as reports name it.
    fn database(&self) -> String {
        self.conn.path().unwrap_or_default().to_owned()
    }

    /// Flush what was committed to disk (the WAL holds it until a checkpoint; committed
    /// with synchronous=NORMAL, it is not flushed on its own).
    fn flush(&self) -> std::io::Result<()> {
        let database = PathBuf::from(self.database());
        let mut wal = database.clone().into_os_string();
        wal.push("-wal");
        for file in [PathBuf::from(wal), database] {
            match fs::File::open(&file) {
                Ok(f) => f.sync_data()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Apply a batch in one transaction: the answers of the requests that want one, or the
    /// error with the batch, to try again.
    #[allow(clippy::type_complexity)]
    fn commit(
        &mut self,
        batch: Vec<(u64, Request)>,
    ) -> std::result::Result<Vec<(u64, Answer)>, (String, Vec<(u64, Request)>)> {
        let mut released = Vec::new();
        // Immediate: with several nodes writing one journal, a deferred transaction whose
        // first read came before another node's commit fails at its first write at once
        // (SQLITE_BUSY_SNAPSHOT in WAL mode) instead of waiting its turn (busy_timeout).
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())
            .and_then(|tx| {
                let sql = |e: rusqlite::Error| e.to_string();
                let mut rows = Rows {
                    root: &self.root,
                    insert: None,
                    peer: None,
                    touched: self.notify.is_some().then(Touched::default),
                };
                let mut answers = Vec::with_capacity(batch.len());
                for (_, request) in &batch {
                    if let (Some(touched), Request::Completed { .. } | Request::Parked { .. }) =
                        (&mut rows.touched, request)
                    {
                        // In order: a completion reads what the rows before it changed.
                        touched.upsert(&tx).map_err(sql)?;
                    }
                    let answer = apply(&tx, request, &mut rows, &mut released);
                    // A logged row not committed is tried again, never dropped.
                    if let (Request::Logged(_), Err(e)) = (request, &answer) {
                        return Err(e.clone());
                    }
                    answers.push(answer);
                }
                if let Some(touched) = &mut rows.touched {
                    touched.upsert(&tx).map_err(sql)?;
                }
                drop(rows);
                tx.commit().map_err(sql)?;
                Ok(answers)
            });
        match result {
            Ok(answers) => Ok(backend::settle(
                batch,
                Ok(answers),
                released,
                &self.held,
                self.notify.as_deref(),
            )),
            Err(e) => Err((e, batch)),
        }
    }
}

/// Apply one request; logged rows through `rows`.
fn apply<'a, 'tx>(
    tx: &'tx Transaction<'_>,
    request: &'a Request,
    rows: &mut Rows<'a, 'tx>,
    released: &mut Vec<String>,
) -> std::result::Result<i64, String> {
    let sql = |e: rusqlite::Error| e.to_string();
    match request {
        Request::Record(_) => Err("an SQLite journal takes rows through its log".into()),
        Request::Logged(logged) => rows.insert(tx, logged).map(|()| logged.id).map_err(sql),
        // Above the highest id committed too: journals written before the counter, or
        // rows recovered from elsewhere, never collide with a new block.
        Request::Reserve(count) => tx
            .prepare_cached(
                "UPDATE id_blocks SET next = max(next,
                    (SELECT coalesce(max(id), 0) + 1 FROM instances)) + ?1
                 RETURNING next - ?1",
            )
            .and_then(|mut s| s.query_row([count], |r| r.get(0)))
            .map_err(sql),
        Request::Sync => Ok(0),
        Request::Delivered(ids) => {
            for id in ids {
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
            }
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
                "UPDATE groups SET events = events + 1, changed = (last_received > ?3),
                    attempts = 0, error = NULL, failed = NULL
                 WHERE level = ?1 AND uid = ?2",
            )
            .and_then(|mut s| s.execute(params![level.as_str(), uid, through]))
            .map(|_| 0)
            .map_err(sql),
        Request::Parked {
            level,
            uid,
            through,
            attempts,
            error,
        } => tx
            .prepare_cached(
                "UPDATE groups SET changed = CASE WHEN last_received > ?3 THEN 1 ELSE 2 END,
                    attempts = attempts + ?4, error = ?5, failed = ?6
                 WHERE level = ?1 AND uid = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    level.as_str(),
                    uid,
                    through,
                    attempts,
                    error,
                    unix_now()
                ])
            })
            .map(|_| 0)
            .map_err(sql),
    }
}

/// What a batch's logged rows share: one statement, looked up once (the cache hashes its
/// text), the text of the last peer (a batch's rows mostly come from a few associations),
/// and with study or series events, the groups the rows touched.
struct Rows<'a, 'tx> {
    root: &'a Path,
    insert: Option<rusqlite::CachedStatement<'tx>>,
    peer: Option<(SocketAddr, String)>,
    /// The timers' rows are kept only while their events are on: two more B-tree pages per
    /// commit otherwise paid for nothing.
    touched: Option<Touched<'a>>,
}

impl<'a, 'tx> Rows<'a, 'tx> {
    /// Insert a logged row with its id, unless it is there already (committed before a
    /// crash left its log behind).
    fn insert(
        &mut self,
        tx: &'tx Transaction<'_>,
        logged: &'a log::Logged,
    ) -> rusqlite::Result<()> {
        let log::Logged { id, received, row } = logged;
        let state = if row.pending {
            schema::PENDING
        } else {
            schema::NOT_QUEUED
        };
        let held = row
            .held
            .as_ref()
            .and_then(|h| h.file_name())
            .map(|n| n.to_string_lossy());
        let peer = match (row.peer, &mut self.peer) {
            (None, _) => "",
            (Some(peer), Some((last, text))) if peer == *last => text,
            (Some(peer), last) => &last.insert((peer, peer.to_string())).1,
        };
        let insert = match &mut self.insert {
            Some(insert) => insert,
            none => none.insert(tx.prepare_cached(
                "INSERT OR IGNORE INTO instances (received, sop_class_uid, sop_instance_uid,
                patient_id, study_instance_uid, series_instance_uid, accession_number,
                modality, study_date, path, bytes, transfer_syntax_uid, calling_ae, called_ae,
                peer, held, state, id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                ?17, ?18)",
            )?),
        };
        let inserted = insert.execute(params![
            received,
            row.sop_class_uid,
            row.sop_instance_uid,
            row.patient_id,
            row.study_instance_uid,
            row.series_instance_uid,
            row.accession_number,
            row.modality,
            row.study_date,
            relative(self.root, &row.path),
            row.bytes as i64,
            row.transfer_syntax_uid,
            row.calling_ae,
            row.called_ae,
            peer,
            held,
            state,
            id,
        ])?;
        if let (1.., Some(touched)) = (inserted, &mut self.touched) {
            touched.add(row, *received);
        }
        Ok(())
    }
}

/// The studies and series of the rows a batch inserted, each upserted once with its last
/// row's arrival: what an upsert per row would leave (`changed = 1`, the study of the row
/// that made it), at one statement per group instead of two per row.
#[derive(Default)]
struct Touched<'a> {
    /// (level, uid) -> (study, last row's arrival).
    groups: HashMap<(Level, &'a str), (&'a str, f64)>,
}

impl<'a> Touched<'a> {
    fn add(&mut self, row: &'a Row, received: f64) {
        let Some(study) = row.study_instance_uid.as_deref() else {
            return;
        };
        let series = row.series_instance_uid.as_deref();
        for (level, uid) in [(Level::Study, Some(study)), (Level::Series, series)] {
            if let Some(uid) = uid {
                self.groups
                    .entry((level, uid))
                    .and_modify(|(_, last)| *last = received)
                    .or_insert((study, received));
            }
        }
    }

    /// Upsert the groups noted so far, then forget them.
    fn upsert(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.groups.is_empty() {
            return Ok(());
        }
        let mut group = tx.prepare_cached(
            "INSERT INTO groups (level, uid, study_instance_uid, last_received, changed)
             VALUES (?1, ?2, ?3, ?4, 1)
             ON CONFLICT (level, uid) DO UPDATE SET last_received = excluded.last_received,
                changed = 1",
        )?;
        for ((level, uid), (study, received)) in self.groups.drain() {
            group.execute(params![level.as_str(), uid, study, received])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
