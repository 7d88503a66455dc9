//! The journal: an SQLite database (WAL) in `data_dir/.journal/` with one row per acknowledged
//! instance, committed before its C-STORE-RSP leaves, so what a sender was told is stored is
//! never forgotten; the source of at-least-once callbacks and study completion events, and
//! the index of what has arrived.
//!
//! One writer thread owns the connection and commits whatever requests are waiting in one
//! transaction (group commit): associations finishing instances at the same time share one
//! commit, so the cost per instance stays a few row inserts. Each association waits for the
//! commit that holds its own row. With `durable`, commits are fsynced (synchronous=FULL);
//! otherwise a commit survives a crash of the process but not of the machine (NORMAL).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, Transaction};

use crate::error::{Error, Result};
use crate::events::{EventQueue, Level};

mod feed;
mod index;
mod schema;

pub use feed::{Feed, Replayer, Timers};
pub use index::{Index, InstanceEntry, SeriesSummary, StudySummary};
pub use schema::VERSION;

/// The journal's folder under `data_dir`, hidden like the spool's.
pub const JOURNAL_DIR: &str = ".journal";
const DATABASE: &str = "journal.sqlite";
/// Hard links to acknowledged versions whose callbacks have not run yet.
const HELD_DIR: &str = "held";
/// Requests committed in one transaction at most, so a long queue still gets answers soon.
const MAX_BATCH: usize = 512;
/// How long a reader (the status command, say) waits for the writer's lock.
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

type Reply = SyncSender<std::result::Result<i64, String>>;

enum Request {
    Record(Box<Row>, Reply),
    Delivered(i64),
    Failed {
        id: i64,
        attempts: u32,
        error: String,
    },
    /// Failed deliveries (these ids, or all) back to pending; replies how many.
    Replay(Option<Vec<i64>>, Reply),
    /// A completion event for everything up to `through` was delivered.
    Completed {
        level: Level,
        uid: String,
        through: f64,
        reply: Reply,
    },
}

/// The open journal of one server.
pub struct Journal {
    root: PathBuf,
    held: PathBuf,
    database: PathBuf,
    requests: Mutex<Option<Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
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

/// Open (creating if `create`) and migrate the database of the journal in `root`.
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
    /// Open the journal of `root` (the canonical data_dir), creating it if missing, and start
    /// its writer. `notify` is poked after each commit, for the completion timers. Held links
    /// that no undelivered row names (left by a crash between link and commit) are removed.
    pub fn open(root: &Path, durable: bool, notify: Option<Arc<EventQueue>>) -> Result<Journal> {
        let dir = root.join(JOURNAL_DIR);
        let held = dir.join(HELD_DIR);
        fs::create_dir_all(&held).map_err(Error::io(format!(
            "cannot create the journal folder {}",
            held.display()
        )))?;
        let database = dir.join(DATABASE);
        let conn = connect(&database, durable, true)?;
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
        let (requests, received) = channel();
        let writer = Writer {
            conn,
            root: root.to_path_buf(),
            held: held.clone(),
            notify,
        };
        let handle = thread::Builder::new()
            .name("dicom-inlet-journal".into())
            .spawn(move || writer.run(&received))
            .map_err(Error::io("cannot start the journal writer"))?;
        Ok(Journal {
            root: root.to_path_buf(),
            held,
            database,
            requests: Mutex::new(Some(requests)),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Where the journal keeps the version acknowledged under `name` (unique per spool file).
    pub fn held_path(&self, name: &str) -> PathBuf {
        self.held.join(name)
    }

    /// A handle for one association: records its instances, each call waiting for its commit.
    pub fn recorder(&self) -> Option<Recorder> {
        let requests = self.sender()?;
        let (reply, replies) = sync_channel(1);
        Some(Recorder {
            requests,
            reply,
            replies,
        })
    }

    /// A new connection for queries (and for the feed's reading), beside the writer.
    pub fn index(&self) -> Result<Index> {
        Index::connect(&self.root, &self.database)
    }

    fn sender(&self) -> Option<Sender<Request>> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn send(&self, request: Request) {
        if let Some(requests) = self.sender() {
            // After close the row stays pending: delivered again at the next start.
            let _ = requests.send(request);
        }
    }

    /// Wait for the writer's answer to a request that carries `reply`.
    fn ask(&self, request: impl FnOnce(Reply) -> Request) -> Result<i64> {
        let (reply, answer) = sync_channel(1);
        self.send(request(reply));
        answer
            .recv()
            .map_err(|_| Error::Journal("the journal is closed".into()))?
            .map_err(|e| journal_error(&self.database, e))
    }

    /// The instance's callbacks returned: mark it delivered and let its held version go. Not
    /// waited for: lost in a crash, it is only delivered once more.
    pub fn delivered(&self, id: i64) {
        self.send(Request::Delivered(id));
    }

    /// The instance's callbacks kept failing: park it with the last error.
    pub fn failed(&self, id: i64, attempts: u32, error: String) {
        self.send(Request::Failed {
            id,
            attempts,
            error,
        });
    }

    /// Failed deliveries back to pending (these ids, or all of them); how many.
    pub fn replay(&self, ids: Option<Vec<i64>>) -> Result<i64> {
        self.ask(|reply| Request::Replay(ids, reply))
    }

    /// A completion event was delivered for `uid` up to `through`.
    pub fn completed(&self, level: Level, uid: String, through: f64) -> Result<()> {
        self.ask(|reply| Request::Completed {
            level,
            uid,
            through,
            reply,
        })
        .map(drop)
    }

    /// Commit what is queued and stop the writer, once every recorder is dropped (their
    /// associations ended). Idempotent.
    pub fn close(&self) {
        drop(
            self.requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// One association's way to the writer.
pub struct Recorder {
    requests: Sender<Request>,
    reply: Reply,
    replies: Receiver<std::result::Result<i64, String>>,
}

impl Recorder {
    /// Journal one acknowledged instance; returns its row id once committed.
    pub fn record(&self, row: Row) -> std::result::Result<i64, String> {
        self.requests
            .send(Request::Record(Box::new(row), self.reply.clone()))
            .map_err(|_| "the journal is closed".to_owned())?;
        self.replies
            .recv()
            .map_err(|_| "the journal writer stopped".to_owned())?
    }
}

struct Writer {
    conn: Connection,
    root: PathBuf,
    held: PathBuf,
    notify: Option<Arc<EventQueue>>,
}

impl Writer {
    fn run(mut self, requests: &Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = requests.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
    }

    /// Apply a batch in one transaction and answer each request with its own outcome.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let now = unix_now();
        let mut released = Vec::new();
        let result = self
            .conn
            .transaction()
            .map_err(|e| e.to_string())
            .and_then(|tx| {
                let answers = batch
                    .iter()
                    .map(|request| apply(&tx, &self.root, now, request, &mut released))
                    .collect::<Vec<_>>();
                tx.commit().map_err(|e| e.to_string())?;
                Ok(answers)
            });
        let answers = match result {
            Ok(answers) => answers,
            Err(e) => {
                released.clear();
                vec![Err(e); batch.len()]
            }
        };
        for (request, answer) in batch.drain(..).zip(answers) {
            let reply = match request {
                Request::Record(_, reply)
                | Request::Replay(_, reply)
                | Request::Completed { reply, .. } => reply,
                Request::Delivered(_) | Request::Failed { .. } => continue,
            };
            let _ = reply.send(answer);
        }
        // Only after the commit: a crash before it keeps the row pending and its version.
        for name in released {
            let _ = fs::remove_file(self.held.join(name));
        }
        if let Some(notify) = &self.notify {
            notify.poke();
        }
    }
}

fn apply(
    tx: &Transaction<'_>,
    root: &Path,
    now: f64,
    request: &Request,
    released: &mut Vec<String>,
) -> std::result::Result<i64, String> {
    let sql = |e: rusqlite::Error| e.to_string();
    match request {
        Request::Record(row, _) => insert(tx, root, now, row).map_err(sql),
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
        Request::Replay(ids, _) => {
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

fn insert(tx: &Transaction<'_>, root: &Path, now: f64, row: &Row) -> rusqlite::Result<i64> {
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
    let Some(study) = &row.study_instance_uid else {
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
