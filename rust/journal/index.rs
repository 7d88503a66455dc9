//! Reading the journal: what has arrived, by study, series and instance, with delivery states;
//! the undelivered rows the feed delivers; and replaying failed deliveries without a server.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::backend::{journal_error, Arg, Cells, Location, Reader, Remote, Value};
use super::{connect, schema, DATABASE, HELD_DIR, JOURNAL_DIR};
use crate::error::{Error, Result};
use crate::events::{Level, Member};

/// One study as the journal knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StudySummary {
    pub study_instance_uid: String,
    pub patient_id: Option<String>,
    pub accession_number: Option<String>,
    pub study_date: Option<String>,
    /// Modalities of its series, comma-separated.
    pub modalities: String,
    pub series: i64,
    /// Distinct files (a replaced duplicate counts once).
    pub instances: i64,
    pub last_received: f64,
    pub pending: i64,
    pub failed: i64,
    /// Completion events delivered for it.
    pub events: i64,
}

/// One series as the journal knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSummary {
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    pub modality: Option<String>,
    pub instances: i64,
    pub last_received: f64,
    pub pending: i64,
    pub failed: i64,
}

/// One journal row: an acknowledged instance and its delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceEntry {
    pub id: i64,
    pub received: f64,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub patient_id: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub transfer_syntax_uid: String,
    pub path: PathBuf,
    /// The version kept for its callbacks, while they have not run.
    pub held: Option<PathBuf>,
    pub bytes: u64,
    pub calling_ae: String,
    pub called_ae: String,
    pub peer: String,
    /// "-" (no callbacks), "pending", "delivered" or "failed".
    pub state: &'static str,
    pub attempts: i64,
    pub error: Option<String>,
    /// The node that acknowledged it, where nodes share the journal.
    pub node: Option<String>,
}

fn state_name(state: i64) -> &'static str {
    match state {
        schema::PENDING => "pending",
        schema::DELIVERED => "delivered",
        schema::FAILED => "failed",
        _ => "-",
    }
}

/// The last, `node`, is NULL in SQLite's journal (one node's): see `Reader::node_column`.
const INSTANCE_COLUMNS: &str = "id, received, sop_class_uid, sop_instance_uid, patient_id,
    study_instance_uid, series_instance_uid, transfer_syntax_uid, path, held, bytes,
    calling_ae, called_ae, peer, state, attempts, error, {node}";

/// A changed study or series whose completion timer runs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Candidate {
    pub level: Level,
    pub uid: String,
    pub study_instance_uid: String,
    pub last_received: f64,
    pub events: i64,
    /// A parked event replayed: due at once.
    pub replayed: bool,
}

/// A study or series completion event whose callbacks kept failing, parked until replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedEvent {
    pub level: Level,
    pub uid: String,
    pub study_instance_uid: String,
    pub last_received: f64,
    /// Completion events delivered for it before (its revision).
    pub events: i64,
    pub attempts: i64,
    /// The last traceback.
    pub error: Option<String>,
    /// When it was parked (Unix seconds).
    pub failed: f64,
}

/// The columns a listing of groups starts with: level, uid, study, last arrival, events.
fn group_head(c: &mut Cells) -> (Level, String, String, f64, i64) {
    (
        level_of(c.text()),
        c.string(),
        c.string(),
        c.real(),
        c.int(),
    )
}

fn level_of(name: Option<String>) -> Level {
    match name.as_deref() {
        Some("study") => Level::Study,
        _ => Level::Series,
    }
}

/// A connection for reading the journal (and for replaying failed deliveries).
pub struct Index {
    conn: RefCell<Reader>,
    root: PathBuf,
    held: PathBuf,
    location: Location,
}

impl Index {
    /// The journal of `data_dir`, which must exist: its SQLite file, or the PostgreSQL
    /// database `url` (paths in it are relative to `data_dir`).
    pub fn open(data_dir: &Path, url: Option<&str>) -> Result<Index> {
        let root = std::fs::canonicalize(data_dir).map_err(Error::io(format!(
            "cannot use data_dir {}",
            data_dir.display()
        )))?;
        let location = match url {
            None => Location::Sqlite(root.join(JOURNAL_DIR).join(DATABASE)),
            Some(url) => Location::Postgres(super::postgres::Cluster::parse(url, "status")?),
        };
        Index::connect(&root, &location, None)
    }

    /// `leads`: the flag the node's heartbeat keeps (None: never leads, e.g. a status reader).
    pub(super) fn connect(
        root: &Path,
        location: &Location,
        leads: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<Index> {
        let conn = match location {
            // A reader never asks for durability: it writes only replays.
            Location::Sqlite(database) => Reader::Sqlite(connect(database, false, false)?),
            Location::Postgres(cluster) => Reader::Postgres(Box::new(Remote {
                client: Some(cluster.open()?),
                cluster: cluster.clone(),
                leads: leads.unwrap_or_default(),
            })),
        };
        Ok(Index {
            conn: RefCell::new(conn),
            root: root.to_path_buf(),
            held: root.join(JOURNAL_DIR).join(HELD_DIR),
            location: location.clone(),
        })
    }

    fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Vec<Value>>> {
        let rows = self.conn.borrow_mut().rows(sql, args);
        rows.map_err(|e| journal_error(&self.location, e))
    }

    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64> {
        let changed = self.conn.borrow_mut().execute(sql, args);
        changed.map_err(|e| journal_error(&self.location, e))
    }

    fn entry(&self, row: Vec<Value>) -> InstanceEntry {
        let mut c = Cells::new(row);
        InstanceEntry {
            id: c.int(),
            received: c.real(),
            sop_class_uid: c.string(),
            sop_instance_uid: c.string(),
            patient_id: c.text(),
            study_instance_uid: c.text(),
            series_instance_uid: c.text(),
            transfer_syntax_uid: c.string(),
            path: self.root.join(c.string()),
            held: c.text().map(|n| self.held.join(n)),
            bytes: c.int().max(0) as u64,
            calling_ae: c.string(),
            called_ae: c.string(),
            peer: c.string(),
            state: state_name(c.int()),
            attempts: c.int(),
            error: c.text(),
            node: c.text(),
        }
    }

    fn entries(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<InstanceEntry>> {
        let sql = sql.replace("{node}", self.conn.borrow().node_column());
        let rows = self.rows(&sql, args)?;
        Ok(rows.into_iter().map(|row| self.entry(row)).collect())
    }

    /// Whether read errors are a shared server gone for a while (waited out), not a file.
    pub(super) fn is_remote(&self) -> bool {
        self.conn.borrow().is_remote()
    }

    /// Whether this node runs the completion timers (always, with SQLite).
    pub(super) fn leads(&self) -> bool {
        self.conn.borrow().leads()
    }

    /// Every study, oldest arrival first.
    pub fn studies(&self) -> Result<Vec<StudySummary>> {
        let modalities = self.conn.borrow().distinct_list("i.modality");
        let rows = self.rows(
            &format!(
                "SELECT i.study_instance_uid, MAX(i.patient_id), MAX(i.accession_number),
                    MAX(i.study_date), COALESCE({modalities}, ''),
                    COUNT(DISTINCT i.series_instance_uid), COUNT(DISTINCT i.path),
                    MAX(i.received), COUNT(*) FILTER (WHERE i.state = 1),
                    COUNT(*) FILTER (WHERE i.state = 3),
                    COALESCE((SELECT events FROM groups g
                            WHERE g.level = 'study' AND g.uid = i.study_instance_uid), 0)
                 FROM instances i WHERE i.study_instance_uid IS NOT NULL
                 GROUP BY i.study_instance_uid ORDER BY MIN(i.id)"
            ),
            &[],
        )?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut c = Cells::new(row);
                StudySummary {
                    study_instance_uid: c.string(),
                    patient_id: c.text(),
                    accession_number: c.text(),
                    study_date: c.text(),
                    modalities: c.string(),
                    series: c.int(),
                    instances: c.int(),
                    last_received: c.real(),
                    pending: c.int(),
                    failed: c.int(),
                    events: c.int(),
                }
            })
            .collect())
    }

    /// The series of one study, or of all, oldest arrival first.
    pub fn series(&self, study: Option<&str>) -> Result<Vec<SeriesSummary>> {
        let rows = self.rows(
            "SELECT series_instance_uid, study_instance_uid, MAX(modality),
                COUNT(DISTINCT path), MAX(received), COUNT(*) FILTER (WHERE state = 1),
                COUNT(*) FILTER (WHERE state = 3)
             FROM instances
             WHERE series_instance_uid IS NOT NULL AND study_instance_uid IS NOT NULL
                AND (CAST(?1 AS TEXT) IS NULL OR study_instance_uid = ?1)
             GROUP BY study_instance_uid, series_instance_uid ORDER BY MIN(id)",
            &[Arg::Text(study)],
        )?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut c = Cells::new(row);
                SeriesSummary {
                    series_instance_uid: c.string(),
                    study_instance_uid: c.string(),
                    modality: c.text(),
                    instances: c.int(),
                    last_received: c.real(),
                    pending: c.int(),
                    failed: c.int(),
                }
            })
            .collect())
    }

    /// Journal rows in arrival order, filtered by study, series and delivery state.
    pub fn instances(
        &self,
        study: Option<&str>,
        series: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<InstanceEntry>> {
        let state = match state {
            None => None,
            Some("-") => Some(schema::NOT_QUEUED),
            Some("pending") => Some(schema::PENDING),
            Some("delivered") => Some(schema::DELIVERED),
            Some("failed") => Some(schema::FAILED),
            Some(other) => {
                return Err(Error::InvalidConfig(format!(
                    "unknown delivery state {other:?} (pending, delivered, failed or -)"
                )))
            }
        };
        self.entries(
            &format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances
                 WHERE (CAST(?1 AS TEXT) IS NULL OR study_instance_uid = ?1)
                    AND (CAST(?2 AS TEXT) IS NULL OR series_instance_uid = ?2)
                    AND (CAST(?3 AS BIGINT) IS NULL OR state = ?3)
                 ORDER BY id"
            ),
            &[Arg::Text(study), Arg::Text(series), Arg::Int(state)],
        )
    }

    /// Failed deliveries (these ids, or all) back to pending, for the next server start;
    /// how many. A running server replays through its own writer instead.
    pub fn replay(&self, ids: Option<&[i64]>) -> Result<i64> {
        let changed = match ids {
            None => self.execute("UPDATE instances SET state = 1 WHERE state = 3", &[])?,
            Some(ids) => ids.iter().try_fold(0, |n, id| {
                let sql = "UPDATE instances SET state = 1 WHERE id = ?1 AND state = 3";
                Ok::<_, Error>(n + self.execute(sql, &[Arg::Int(Some(*id))])?)
            })?,
        };
        Ok(changed as i64)
    }

    /// Parked completion events, oldest parked first.
    pub fn parked_events(&self) -> Result<Vec<ParkedEvent>> {
        let rows = self.rows(
            "SELECT level, uid, study_instance_uid, last_received, events, attempts, error,
                failed
             FROM groups WHERE changed = 2 ORDER BY failed",
            &[],
        )?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut c = Cells::new(row);
                let (level, uid, study_instance_uid, last_received, events) = group_head(&mut c);
                ParkedEvent {
                    level,
                    uid,
                    study_instance_uid,
                    last_received,
                    events,
                    attempts: c.int(),
                    error: c.text(),
                    failed: c.real(),
                }
            })
            .collect())
    }

    /// Parked completion events due again at once (those of `study`, that of `series`, or
    /// all); how many. The timers of a running server (woken by its caller) or of the next
    /// start fire them: a reader's write, not the writer's, so it works without a server.
    pub fn replay_events(&self, study: Option<&str>, series: Option<&str>) -> Result<i64> {
        let changed = self.execute(
            "UPDATE groups SET changed = 3
             WHERE changed = 2 AND (CAST(?1 AS TEXT) IS NULL OR study_instance_uid = ?1)
                AND (CAST(?2 AS TEXT) IS NULL OR (level = 'series' AND uid = ?2))",
            &[Arg::Text(study), Arg::Text(series)],
        )?;
        Ok(changed as i64)
    }

    /// The newest row's id (0 for an empty journal).
    pub(super) fn last_id(&self) -> Result<i64> {
        let rows = self.rows("SELECT COALESCE(MAX(id), 0) FROM instances", &[])?;
        Ok(rows.first().and_then(|r| r.first()).map_or(0, Value::int))
    }

    /// Up to `limit` pending rows (of this node, where nodes share the journal) with ids in
    /// (after, through], in order.
    pub(super) fn pending(
        &self,
        after: i64,
        through: i64,
        limit: usize,
    ) -> Result<Vec<InstanceEntry>> {
        let node = self.conn.borrow().node().map(str::to_owned);
        let own = if node.is_some() { "AND node = ?4" } else { "" };
        let mut args = vec![
            Arg::Int(Some(after)),
            Arg::Int(Some(through)),
            Arg::Int(Some(limit as i64)),
        ];
        args.extend(node.as_deref().map(|n| Arg::Text(Some(n))));
        self.entries(
            &format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances
                 WHERE state = 1 AND id > ?1 AND id <= ?2 {own} ORDER BY id LIMIT ?3"
            ),
            &args,
        )
    }

    /// The pending row `id`, if it still is.
    pub(super) fn pending_row(&self, id: i64) -> Result<Option<InstanceEntry>> {
        Ok(self
            .entries(
                &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1 AND state = 1"),
                &[Arg::Int(Some(id))],
            )?
            .pop())
    }

    /// Changed groups of the wanted levels whose instances all had their callbacks (none
    /// pending, on any node), oldest first; only those of `study` when given.
    pub(super) fn candidates(
        &self,
        studies: bool,
        series: bool,
        study: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Candidate>> {
        let rows = self.rows(
            "SELECT level, uid, study_instance_uid, last_received, events, changed = 3
             FROM groups g
             WHERE changed IN (1, 3)
                AND ((?1 AND level = 'study') OR (?2 AND level = 'series'))
                AND (CAST(?3 AS TEXT) IS NULL OR study_instance_uid = ?3)
                AND NOT EXISTS (SELECT 1 FROM instances i
                    WHERE i.study_instance_uid = g.study_instance_uid AND i.state = 1)
             ORDER BY changed = 3 DESC, last_received LIMIT ?4",
            &[
                Arg::Bool(studies),
                Arg::Bool(series),
                Arg::Text(study),
                Arg::Int(Some(limit as i64)),
            ],
        )?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut c = Cells::new(row);
                let (level, uid, study_instance_uid, last_received, events) = group_head(&mut c);
                Candidate {
                    level,
                    uid,
                    study_instance_uid,
                    last_received,
                    events,
                    replayed: c.int() != 0,
                }
            })
            .collect())
    }

    /// Rows waiting for delivery (pending: not yet delivered nor parked) and the arrival
    /// time of the oldest, for the backlog and lag metrics; through the waiting-rows index.
    pub fn backlog(&self) -> Result<(i64, Option<f64>)> {
        let rows = self.rows(
            "SELECT COUNT(*), MIN(received) FROM instances WHERE state = 1",
            &[],
        )?;
        let row = rows.first();
        let count = row.and_then(|r| r.first()).map_or(0, Value::int);
        let oldest = match row.and_then(|r| r.get(1)) {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.real()),
        };
        Ok((count, oldest))
    }

    /// Whether instances of `study` wait for their callbacks.
    pub(super) fn has_pending(&self, study: &str) -> Result<bool> {
        let rows = self.rows(
            "SELECT 1 FROM instances WHERE study_instance_uid = ?1 AND state = 1 LIMIT 1",
            &[Arg::Text(Some(study))],
        )?;
        Ok(!rows.is_empty())
    }

    /// The instances of a study or series, one per file (the newest row of a replaced
    /// duplicate), in arrival order; and the study's Patient ID.
    pub(super) fn members(&self, level: Level, uid: &str) -> Result<(Vec<Member>, String)> {
        let column = match level {
            Level::Study => "study_instance_uid",
            Level::Series => "series_instance_uid",
        };
        let rows = self.rows(
            &format!(
                "SELECT COALESCE(series_instance_uid, ''), sop_instance_uid, sop_class_uid,
                    COALESCE(modality, ''), path, COALESCE(patient_id, '')
                 FROM instances WHERE id IN
                    (SELECT MAX(id) FROM instances WHERE {column} = ?1 GROUP BY path)
                 ORDER BY id"
            ),
            &[Arg::Text(Some(uid))],
        )?;
        let mut patient = String::new();
        let members = rows
            .into_iter()
            .map(|row| {
                let mut c = Cells::new(row);
                let member = Member {
                    series_instance_uid: c.string(),
                    sop_instance_uid: c.string(),
                    sop_class_uid: c.string(),
                    modality: c.string(),
                    path: self.root.join(c.string()),
                };
                patient = c.string();
                member
            })
            .collect();
        Ok((members, patient))
    }

    #[cfg(test)]
    pub(super) fn group_events(&self, level: Level, uid: &str) -> Option<(i64, bool)> {
        let rows = self
            .rows(
                "SELECT events, changed FROM groups WHERE level = ?1 AND uid = ?2",
                &[Arg::Text(Some(level.as_str())), Arg::Text(Some(uid))],
            )
            .unwrap();
        rows.first().map(|r| (r[0].int(), r[1].int() != 0))
    }
}
