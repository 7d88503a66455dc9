//! The journal: an SQLite database (WAL) in `data_dir/.journal/` with one row per acknowledged
//! instance, committed before its C-STORE-RSP leaves, so what a sender was told is stored is
//! never forgotten; the source of at-least-once callbacks and study completion events, and
//! the index of what has arrived.
//!
//! One connection writes, and whoever brings a request while no commit is under way commits
//! everything waiting in one transaction (group commit, as databases do it): associations
//! finishing instances at the same time share one commit, each waiting for the commit holding
//! its own row. The committing thread is the association's own, so an instance costs a few
//! row inserts and no thread hand-over: a dedicated writer thread, measured, cost two context
//! switches per commit and a quarter of the small-instance rate on two cores. A commit
//! survives a crash of the process but not of the machine (synchronous=NORMAL); with
//! `durable`, the storage's flush of the file system before each answer makes it durable too
//! (one flush shared by files, names and rows), or, with the journal on another file system,
//! each commit is fsynced (FULL).

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{Error, Result};
use crate::events::{EventQueue, Level};

mod backend;
mod feed;
mod index;
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

/// What the journal records of one acknowledged instance.
#[derive(Debug, Clone, Default)]
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
    /// Answered with the row id.
    Record(Box<Row>),
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
    /// Marks are not waited for: lost in a crash, an instance is only delivered once more.
    fn answered(&self) -> bool {
        !matches!(self, Request::Delivered(_) | Request::Failed { .. })
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
}

/// The open journal of one server.
pub struct Journal {
    root: PathBuf,
    held: PathBuf,
    location: Location,
    queue: Mutex<Queue>,
    committed: Condvar,
    /// Only the committing thread locks it.
    writer: Mutex<backend::Store>,
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
        let conn = connect(&database, durable && !same_file_system(root, &dir), true)?;
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
        let writer = Writer {
            conn,
            root: root.to_path_buf(),
            held: held.clone(),
            notify,
        };
        let location = Location::Sqlite(database);
        let store = backend::Store::Sqlite(writer);
        Ok(Journal::with_store(root, held, location, store))
    }

    fn with_store(root: &Path, held: PathBuf, location: Location, store: backend::Store) -> Self {
        Journal {
            root: root.to_path_buf(),
            held,
            leads: Arc::new(AtomicBool::new(matches!(location, Location::Sqlite(_)))),
            location,
            queue: Mutex::default(),
            committed: Condvar::new(),
            writer: Mutex::new(store),
            heartbeat: Mutex::default(),
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

    /// Queue `request` and see it committed: by this thread if no commit is under way (with
    /// everything else waiting), else by the committing one. With `wait`, returns its answer.
    fn submit(&self, request: Request, wait: bool) -> Option<Answer> {
        let mut queue = lock(&self.queue);
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
                    let answers = lock(&self.writer).commit(batch);
                    queue = lock(&self.queue);
                    queue.answers.extend(answers);
                }
                queue.committing = false;
                self.committed.notify_all();
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
                .committed
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn ask(&self, request: Request) -> Result<i64> {
        let answer = self.submit(request, true).unwrap_or(Ok(0));
        answer.map_err(|e| backend::journal_error(&self.location, e))
    }

    /// Journal one acknowledged instance; returns its row id once committed.
    pub fn record(&self, row: Row) -> std::result::Result<i64, String> {
        self.submit(Request::Record(Box::new(row)), true)
            .unwrap_or(Ok(0))
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

struct Writer {
    conn: Connection,
    root: PathBuf,
    held: PathBuf,
    notify: Option<Arc<EventQueue>>,
}

impl Writer {
    /// Apply a batch in one transaction; the answers of the requests that want one.
    fn commit(&mut self, batch: Vec<(u64, Request)>) -> Vec<(u64, Answer)> {
        let now = unix_now();
        let mut released = Vec::new();
        // Immediate: with several nodes writing one journal, a deferred transaction whose
        // first read came before another node's commit fails at its first write at once
        // (SQLITE_BUSY_SNAPSHOT in WAL mode) instead of waiting its turn (busy_timeout).
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())
            .and_then(|tx| {
                let answers = batch
                    .iter()
                    .map(|(_, request)| {
                        let groups = self.notify.is_some();
                        apply(&tx, &self.root, now, request, groups, &mut released)
                    })
                    .collect::<Vec<_>>();
                tx.commit().map_err(|e| e.to_string())?;
                Ok(answers)
            });
        backend::settle(batch, result, released, &self.held, self.notify.as_deref())
    }
}

/// Apply one request; `groups`: keep the study/series timers' rows too (only while their
/// events are on: two more B-tree pages per commit otherwise paid for nothing).
fn apply(
    tx: &Transaction<'_>,
    root: &Path,
    now: f64,
    request: &Request,
    groups: bool,
    released: &mut Vec<String>,
) -> std::result::Result<i64, String> {
    let sql = |e: rusqlite::Error| e.to_string();
    match request {
        Request::Record(row) => insert(tx, root, now, row, groups).map_err(sql),
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
                s.execute(params![level.as_str(), uid, through, attempts, error, now])
            })
            .map(|_| 0)
            .map_err(sql),
    }
}

fn insert(
    tx: &Transaction<'_>,
    root: &Path,
    now: f64,
    row: &Row,
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
            path, bytes, transfer_syntax_uid, calling_ae, called_ae, peer, held, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
        now,
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
    ])?;
    let id = tx.last_insert_rowid();
    let Some(study) = row.study_instance_uid.as_ref().filter(|_| groups) else {
        return Ok(id);
    };
    let mut group = tx.prepare_cached(
        "INSERT INTO groups (level, uid, study_instance_uid, last_received, changed)
         VALUES (?1, ?2, ?3, ?4, 1)
         ON CONFLICT (level, uid) DO UPDATE SET last_received = excluded.last_received,
            changed = 1",
    )?;
    group.execute(params![Level::Study.as_str(), study, study, now])?;
    if let Some(series) = &row.series_instance_uid {
        group.execute(params![Level::Series.as_str(), series, study, now])?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests;
