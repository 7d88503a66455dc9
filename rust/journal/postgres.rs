//! The journal in a PostgreSQL database shared by the nodes of a cluster: the same rows as the
//! SQLite journal, plus the node that acknowledged each, so the study state is global. Each
//! node heartbeats a lease row; one node at a time holds the timers' lease and fires the
//! study/series events; the undelivered rows of a node whose lease ran out are claimed by the
//! live nodes and delivered there (their held versions are under the shared data_dir).
//!
//! Times are the nodes' clocks for arrivals (as with SQLite) and the database's clock for
//! leases, so a lease never depends on two machines agreeing on the time.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Transaction};

use super::backend::{settle, Location, Store};
use super::{lock, relative, schema, unix_now, Answer, Journal, Replayer, Request, Row};
use super::{HELD_DIR, JOURNAL_DIR};
use crate::error::{Error, Result};
use crate::events::{EventQueue, Level};

/// How long a new connection may take (a server that is down refuses at once on a LAN).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that vanished without closing (a machine gone) is noticed by TCP keepalives.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// How long one statement may take.
const STATEMENT_TIMEOUT: &str = "-c statement_timeout=30s";
/// The lease of the node that runs the study/series timers.
const TIMERS_LEASE: &str = "timers";
/// Rows of dead nodes claimed per heartbeat (bounded; the next beat takes more).
const CLAIM_PAGE: i64 = 256;
/// The database's clock, in Unix seconds.
const NOW: &str = "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)";
/// Serialises the migrations of nodes starting at once (pg_advisory_xact_lock's key).
const MIGRATION_LOCK: i64 = 0x6469_636f_6d6a_6e6c;

/// Migration `n` takes a journal from version `n` to `n + 1` (kept in `journal_schema`).
const MIGRATIONS: &[&str] = &[
    // 1: the SQLite journal's tables, with the acknowledging node and a study index (a
    // shared table grows large: listing a study must not scan it), and the nodes' leases.
    "CREATE TABLE instances (
        id BIGSERIAL PRIMARY KEY,
        received DOUBLE PRECISION NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        patient_id TEXT,
        study_instance_uid TEXT,
        series_instance_uid TEXT,
        accession_number TEXT,
        modality TEXT,
        study_date TEXT,
        path TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        called_ae TEXT NOT NULL,
        peer TEXT NOT NULL,
        held TEXT,
        state BIGINT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        error TEXT,
        node TEXT NOT NULL
    );
    CREATE INDEX instances_waiting ON instances (state, study_instance_uid) WHERE state IN (1, 3);
    CREATE INDEX instances_study ON instances (study_instance_uid);
    CREATE TABLE groups (
        level TEXT NOT NULL,
        uid TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        last_received DOUBLE PRECISION NOT NULL,
        changed BIGINT NOT NULL,
        events BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (level, uid)
    );
    CREATE INDEX groups_changed ON groups (last_received) WHERE changed = 1;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,       -- 'node:<node id>' or 'timers'
        node TEXT NOT NULL,
        expires DOUBLE PRECISION NOT NULL
    );",
    // 2: parked completion events on their groups, as in SQLite's version 2.
    "ALTER TABLE groups ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE groups ADD COLUMN error TEXT;
    ALTER TABLE groups ADD COLUMN failed DOUBLE PRECISION;
    DROP INDEX groups_changed;
    CREATE INDEX groups_due ON groups (last_received) WHERE changed IN (1, 3);
    CREATE INDEX groups_parked ON groups (failed) WHERE changed = 2;",
];

/// The version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// A PostgreSQL journal as one node uses it.
#[derive(Clone)]
pub struct Cluster {
    config: Arc<postgres::Config>,
    /// The URL without its password, for messages.
    pub described: String,
    pub node: String,
    /// How long a node's (and the timers') lease lasts without a heartbeat.
    pub lease: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.described)
    }
}

fn pg_error(e: &postgres::Error) -> String {
    // "db error: ERROR: ..." says nothing the server's message does not.
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

impl Cluster {
    /// The journal at `url` (postgresql://user:password@host:port/database?options) for node
    /// `node`, with the default lease of 10 seconds.
    pub fn parse(url: &str, node: &str) -> Result<Cluster> {
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            return Err(Error::InvalidConfig(
                "the journal URL must start with postgresql:// (a PostgreSQL database)".into(),
            ));
        }
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| Error::InvalidConfig(format!("invalid journal URL: {}", pg_error(&e))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
        // A database that hangs (a lock never released) fails the statement in bounded time
        // instead of holding every association's commit; a URL's own options stand.
        if config.get_options().is_none() {
            config.options(STATEMENT_TIMEOUT);
        }
        config.application_name(&format!("dicom-inlet {node}"));
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let database = config.get_dbname().unwrap_or_default();
        Ok(Cluster {
            described: format!("postgresql://{user}{host}:{port}/{database}"),
            config: Arc::new(config),
            node: node.to_owned(),
            lease: Duration::from_secs(10),
        })
    }

    /// A new connection; the error names the database and what it said.
    pub fn open(&self) -> Result<Client> {
        self.config.connect(NoTls).map_err(|e| {
            Error::Journal(format!(
                "cannot reach the journal {}: {}",
                self.described,
                pg_error(&e)
            ))
        })
    }

    /// `client`, connected again if the last one was lost.
    pub(super) fn reconnect<'a>(
        &self,
        client: &'a mut Option<Client>,
    ) -> std::result::Result<&'a mut Client, String> {
        if client.as_ref().is_none_or(Client::is_closed) {
            *client = Some(self.open().map_err(|e| e.to_string())?);
        }
        Ok(client.as_mut().expect("connected above"))
    }

    /// What a failed statement says, for the error of the request that ran it.
    pub(super) fn failed(&self, e: postgres::Error) -> String {
        pg_error(&e)
    }

    fn node_lease(&self) -> String {
        format!("node:{}", self.node)
    }
}

/// Bring the database to `VERSION`, one transaction per step, one node at a time; a journal
/// written by a newer release is refused rather than misread.
fn migrate(client: &mut Client) -> std::result::Result<(), String> {
    let fail = |e: postgres::Error| pg_error(&e);
    let mut tx = client.transaction().map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(fail)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS journal_schema (version BIGINT NOT NULL)")
        .map_err(fail)?;
    let found: i64 = tx
        .query_opt("SELECT version FROM journal_schema", &[])
        .map_err(fail)?
        .map_or(0, |r| r.get(0));
    if found > VERSION {
        return Err(format!(
            "schema version {found} is newer than this dicom-inlet knows ({VERSION})"
        ));
    }
    for (version, step) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let next = version as i64 + 1;
        tx.batch_execute(step)
            .and_then(|()| tx.execute("DELETE FROM journal_schema", &[]))
            .and_then(|_| tx.execute("INSERT INTO journal_schema VALUES ($1)", &[&next]))
            .map_err(|e| format!("migration to version {next}: {}", pg_error(&e)))?;
    }
    tx.commit().map_err(fail)
}

impl Journal {
    /// Open the shared journal of `cluster` for the data_dir `root` (migrating it), with
    /// this node's held versions in `held/<node>/`. Held links no undelivered row names are
    /// removed, as with SQLite; other nodes' folders are theirs.
    pub fn open_postgres(
        root: &Path,
        cluster: &Cluster,
        notify: Option<Arc<EventQueue>>,
    ) -> Result<Journal> {
        let held_root = root.join(JOURNAL_DIR).join(HELD_DIR);
        let held = held_root.join(&cluster.node);
        fs::create_dir_all(&held).map_err(Error::io(format!(
            "cannot create the journal folder {}",
            held.display()
        )))?;
        let location = Location::Postgres(cluster.clone());
        let failed = |e: String| super::backend::journal_error(&location, e);
        let mut client = cluster.open()?;
        migrate(&mut client).map_err(failed)?;
        let prefix = format!("{}/", cluster.node);
        let keep: HashSet<String> = client
            .query(
                "SELECT held FROM instances WHERE state IN (1, 3) AND held IS NOT NULL
                    AND left(held, length($1)) = $1",
                &[&prefix],
            )
            .map_err(|e| failed(pg_error(&e)))?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        for entry in fs::read_dir(&held).map_err(Error::io("cannot list held instances"))? {
            let Ok(entry) = entry else { continue };
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if !keep.contains(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let writer = Writer {
            cluster: cluster.clone(),
            client: Some(client),
            root: root.to_path_buf(),
            held: held_root,
            notify,
        };
        Ok(Journal::with_store(
            root,
            held,
            location,
            Store::Postgres(Box::new(writer)),
        ))
    }

    /// Start this node's heartbeat: its lease, the timers' lease when `timers`, and the
    /// claiming of dead nodes' undelivered rows when `callbacks` (handed to `replayer`).
    /// It stops with the journal. Nothing to do with SQLite.
    pub fn start_heartbeat(
        &self,
        events: &Arc<EventQueue>,
        replayer: Replayer,
        timers: bool,
        callbacks: bool,
    ) {
        let Location::Postgres(cluster) = &self.location else {
            return;
        };
        let beat = Beat {
            cluster: cluster.clone(),
            client: None,
            leads: Arc::clone(&self.leads),
            events: Arc::clone(events),
            replayer,
            timers,
            callbacks,
        };
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("dicom-inlet-heartbeat".into())
                .spawn(move || beat.run(&stop))
                .ok()
        };
        *lock(&self.heartbeat) = Some(Heartbeat { stop, thread });
    }
}

/// The running heartbeat of a node; dropping it stops the thread and gives its leases up.
pub(super) struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Beat {
    cluster: Cluster,
    client: Option<Client>,
    leads: Arc<AtomicBool>,
    events: Arc<EventQueue>,
    replayer: Replayer,
    timers: bool,
    callbacks: bool,
}

impl Beat {
    fn run(mut self, stop: &(Mutex<bool>, Condvar)) {
        // Three beats a lease: one lost beat never loses the lease.
        let interval = self.cluster.lease / 3;
        let mut stopped = lock(&stop.0);
        while !*stopped {
            drop(stopped);
            if self.beat().is_err() {
                // Unrenewed, the timers' lease may be another's by now: stop firing.
                self.leads.store(false, Ordering::Relaxed);
            }
            stopped = lock(&stop.0);
            if !*stopped {
                stopped = stop
                    .1
                    .wait_timeout(stopped, interval)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        drop(stopped);
        self.leave();
    }

    /// Renew the leases, claim dead nodes' rows; wake the feed when it has work.
    fn beat(&mut self) -> std::result::Result<(), String> {
        let cluster = &self.cluster;
        let client = cluster.reconnect(&mut self.client)?;
        let lease = cluster.lease.as_secs_f64();
        let take = format!(
            "INSERT INTO leases (name, node, expires) VALUES ($1, $2, {NOW} + $3)
             ON CONFLICT (name) DO UPDATE SET node = EXCLUDED.node, expires = EXCLUDED.expires
                WHERE leases.node = EXCLUDED.node OR leases.expires < {NOW}
             RETURNING node"
        );
        let fail = |e: postgres::Error| pg_error(&e);
        client
            .execute(&take, &[&cluster.node_lease(), &cluster.node, &lease])
            .map_err(fail)?;
        let mut wake = false;
        if self.timers {
            let held = client
                .query_opt(&take, &[&TIMERS_LEASE, &cluster.node, &lease])
                .map_err(fail)?;
            self.leads.store(held.is_some(), Ordering::Relaxed);
            // The leader looks at the studies again each beat: other nodes' arrivals
            // change their timers without telling it.
            wake |= held.is_some();
        }
        if self.callbacks {
            let claimed: Vec<i64> = client
                .query(
                    &format!(
                        "UPDATE instances SET node = $1 WHERE id IN (
                            SELECT id FROM instances i WHERE state = 1 AND node <> $1
                                AND NOT EXISTS (SELECT 1 FROM leases l
                                    WHERE l.name = 'node:' || i.node AND l.expires >= {NOW})
                            ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                         RETURNING id"
                    ),
                    &[&cluster.node, &CLAIM_PAGE],
                )
                .map_err(fail)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !claimed.is_empty() {
                self.replayer.replay(claimed);
            }
        }
        if wake {
            self.events.poke();
        }
        Ok(())
    }

    /// A node stopping gives its leases up: the others take over at once.
    fn leave(&mut self) {
        self.leads.store(false, Ordering::Relaxed);
        if let Some(client) = self.client.as_mut().filter(|c| !c.is_closed()) {
            let _ = client.execute(
                "DELETE FROM leases WHERE node = $1 AND (name = $2 OR name = $3)",
                &[
                    &self.cluster.node,
                    &self.cluster.node_lease(),
                    &TIMERS_LEASE,
                ],
            );
        }
    }
}

/// The committing side of a PostgreSQL journal (one connection, group commit as with SQLite).
/// A batch of instances alone is one statement (rows and their studies/series at once, its
/// own transaction): one round trip, where the sync client would take five per instance.
pub(super) struct Writer {
    cluster: Cluster,
    client: Option<Client>,
    root: PathBuf,
    /// `.journal/held`; held names are relative to it (`<node>/<file>`).
    held: PathBuf,
    notify: Option<Arc<EventQueue>>,
}

/// The columns of a row that differ between instances, in `insert_rows`' order.
const ROW_COLUMNS: &str = "sop_class_uid, sop_instance_uid, patient_id, study_instance_uid,
    series_instance_uid, accession_number, modality, study_date, path, bytes,
    transfer_syntax_uid, calling_ae, called_ae, peer, held, state";

type Param = Box<dyn ToSql + Sync>;
/// A statement holds at most 65,535 parameters (PostgreSQL's protocol): 18 a row at most.
const ROWS_PER_STATEMENT: usize = 1000;

impl Writer {
    /// Apply a batch in one transaction; the answers of the requests that want one. A
    /// failed statement aborts a PostgreSQL transaction, so the batch fails whole.
    pub(super) fn commit(&mut self, batch: Vec<(u64, Request)>) -> Vec<(u64, Answer)> {
        let mut released = Vec::new();
        let result = self.transaction(&batch, &mut released);
        settle(batch, result, released, &self.held, self.notify.as_deref())
    }

    fn transaction(
        &mut self,
        batch: &[(u64, Request)],
        released: &mut Vec<String>,
    ) -> std::result::Result<Vec<Answer>, String> {
        let fail = |e: postgres::Error| pg_error(&e);
        let client = self.cluster.reconnect(&mut self.client)?;
        let rows: Vec<&Row> = batch
            .iter()
            .filter_map(|(_, r)| match r {
                Request::Record(row) => Some(&**row),
                _ => None,
            })
            .collect();
        let now = unix_now();
        let inserts = Inserts {
            root: &self.root,
            held: &self.held,
            node: &self.cluster.node,
            now,
        };
        if rows.len() == batch.len() {
            let ids = inserts.run(client, &rows).map_err(fail)?;
            return Ok(ids.into_iter().map(Ok).collect());
        }
        let mut tx = client.transaction().map_err(fail)?;
        let mut ids = inserts.run(&mut tx, &rows).map_err(fail)?.into_iter();
        let mut answers = Vec::with_capacity(batch.len());
        for (_, request) in batch {
            let answer = match request {
                Request::Record(_) => ids.next().unwrap_or_default(),
                other => apply(&mut tx, other, released).map_err(fail)?,
            };
            answers.push(Ok(answer));
        }
        tx.commit().map_err(fail)?;
        Ok(answers)
    }
}

/// Apply one request other than a row.
fn apply(
    tx: &mut Transaction<'_>,
    request: &Request,
    released: &mut Vec<String>,
) -> std::result::Result<i64, postgres::Error> {
    match request {
        Request::Record(_) | Request::Logged(_) | Request::Reserve(_) | Request::Sync => Ok(0),
        Request::Delivered(ids) => {
            let rows = tx.query(
                "UPDATE instances i SET state = 2, held = NULL
                 FROM (SELECT id, held FROM instances WHERE id = ANY($1) AND state = 1
                       ORDER BY id FOR UPDATE) old
                 WHERE i.id = old.id RETURNING old.held",
                &[ids],
            )?;
            released.extend(rows.iter().filter_map(|r| r.get::<_, Option<String>>(0)));
            Ok(0)
        }
        Request::Failed {
            id,
            attempts,
            error,
        } => tx
            .execute(
                "UPDATE instances SET state = 3, attempts = attempts + $2, error = $3
                 WHERE id = $1 AND state = 1",
                &[id, &i64::from(*attempts), error],
            )
            .map(|_| 0),
        Request::Replay(ids) => {
            let replay = "UPDATE instances SET state = 1 WHERE state = 3";
            let changed = match ids {
                None => tx.execute(replay, &[])?,
                Some(ids) => tx.execute(&format!("{replay} AND id = ANY($1)"), &[ids])?,
            };
            Ok(changed as i64)
        }
        Request::Completed {
            level,
            uid,
            through,
        } => tx
            .execute(
                "UPDATE groups SET events = events + 1,
                    changed = CASE WHEN last_received > $3 THEN 1 ELSE 0 END,
                    attempts = 0, error = NULL, failed = NULL
                 WHERE level = $1 AND uid = $2",
                &[&level.as_str(), uid, through],
            )
            .map(|_| 0),
        Request::Parked {
            level,
            uid,
            through,
            attempts,
            error,
        } => tx
            .execute(
                "UPDATE groups SET changed = CASE WHEN last_received > $3 THEN 1 ELSE 2 END,
                    attempts = attempts + $4, error = $5, failed = $6
                 WHERE level = $1 AND uid = $2",
                &[
                    &level.as_str(),
                    uid,
                    through,
                    &i64::from(*attempts),
                    error,
                    &unix_now(),
                ],
            )
            .map(|_| 0),
    }
}

/// The rows of one commit, inserted by one statement.
struct Inserts<'a> {
    root: &'a Path,
    held: &'a Path,
    node: &'a str,
    now: f64,
}

impl Inserts<'_> {
    /// Insert `rows` and touch their studies and series; their ids, in order.
    fn run(
        &self,
        client: &mut impl GenericClient,
        rows: &[&Row],
    ) -> std::result::Result<Vec<i64>, postgres::Error> {
        let mut ids = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            ids.extend(self.statement(client, chunk)?);
        }
        Ok(ids)
    }

    fn statement(
        &self,
        client: &mut impl GenericClient,
        rows: &[&Row],
    ) -> std::result::Result<Vec<i64>, postgres::Error> {
        let mut params: Vec<(Param, Type)> = vec![
            (Box::new(self.now), Type::FLOAT8),
            (Box::new(self.node.to_owned()), Type::TEXT),
        ];
        let mut values = Vec::with_capacity(rows.len());
        // Groups in one order for every node: two commits touching the same studies then
        // never wait for each other in a cycle (a deadlock); one entry per group, as an
        // upsert may touch a row once.
        let mut groups = BTreeMap::new();
        for row in rows {
            let first = params.len() + 1;
            params.extend(self.row_params(row));
            let placeholders: Vec<String> =
                (first..params.len() + 1).map(|i| format!("${i}")).collect();
            values.push(format!("($1, $2, {})", placeholders.join(", ")));
            if let Some(study) = &row.study_instance_uid {
                groups.insert((Level::Study.as_str(), study.clone()), study.clone());
                if let Some(series) = &row.series_instance_uid {
                    groups.insert((Level::Series.as_str(), series.clone()), study.clone());
                }
            }
        }
        let mut touched = Vec::with_capacity(groups.len());
        for ((level, uid), study) in groups {
            let n = params.len();
            params.push((Box::new(uid), Type::TEXT));
            params.push((Box::new(study), Type::TEXT));
            touched.push(format!("('{level}', ${}, ${}, $1, 1)", n + 1, n + 2));
        }
        let mut sql = format!(
            "WITH new AS (INSERT INTO instances (received, node, {ROW_COLUMNS})
                VALUES {} RETURNING id)",
            values.join(", ")
        );
        if !touched.is_empty() {
            sql += &format!(
                ", touched AS (INSERT INTO groups (level, uid, study_instance_uid,
                    last_received, changed) VALUES {}
                 ON CONFLICT (level, uid) DO UPDATE SET changed = 1,
                    last_received = GREATEST(groups.last_received, EXCLUDED.last_received))",
                touched.join(", ")
            );
        }
        sql += " SELECT id FROM new";
        let typed: Vec<(&(dyn ToSql + Sync), Type)> =
            params.iter().map(|(p, t)| (&**p, t.clone())).collect();
        // Ids are drawn in VALUES order within one statement: sorted, they follow `rows`.
        let mut ids: Vec<i64> = client
            .query_typed(&sql, &typed)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn row_params(&self, row: &Row) -> [(Param, Type); 16] {
        fn text(value: impl ToSql + Sync + 'static) -> (Param, Type) {
            (Box::new(value), Type::TEXT)
        }
        let state = if row.pending {
            schema::PENDING
        } else {
            schema::NOT_QUEUED
        };
        let held = row.held.as_ref().map(|h| {
            h.strip_prefix(self.held)
                .unwrap_or(h)
                .to_string_lossy()
                .into_owned()
        });
        [
            text(row.sop_class_uid.clone()),
            text(row.sop_instance_uid.clone()),
            text(row.patient_id.clone()),
            text(row.study_instance_uid.clone()),
            text(row.series_instance_uid.clone()),
            text(row.accession_number.clone()),
            text(row.modality.clone()),
            text(row.study_date.clone()),
            text(relative(self.root, &row.path).into_owned()),
            (Box::new(row.bytes as i64), Type::INT8),
            text(row.transfer_syntax_uid.clone()),
            text(row.calling_ae.clone()),
            text(row.called_ae.clone()),
            text(row.peer.map(|p| p.to_string()).unwrap_or_default()),
            text(held),
            (Box::new(state), Type::INT8),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::Cluster;
    use crate::error::Error;

    #[test]
    fn urls_are_checked_and_told_without_their_password() {
        let cluster = Cluster::parse("postgresql://inlet:secret@db.example:6543/journal", "n1")
            .expect("a valid URL");
        assert_eq!(
            cluster.described,
            "postgresql://inlet@db.example:6543/journal"
        );
        assert!(!format!("{cluster:?}").contains("secret"));
        assert_eq!(cluster.node, "n1");
        for (url, said) in [
            ("mysql://db/journal", "must start with postgresql://"),
            ("postgresql://db:notaport/journal", "invalid journal URL"),
        ] {
            match Cluster::parse(url, "n1") {
                Err(Error::InvalidConfig(message)) => assert!(message.contains(said), "{message}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
