//! Reading the journal: what has arrived, by study, series and instance, with delivery states;
//! the undelivered rows the feed delivers; and replaying failed deliveries without a server.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, Row as SqlRow};

use super::{connect, schema, unusable, DATABASE, HELD_DIR, JOURNAL_DIR};
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
}

fn state_name(state: i64) -> &'static str {
    match state {
        schema::PENDING => "pending",
        schema::DELIVERED => "delivered",
        schema::FAILED => "failed",
        _ => "-",
    }
}

const INSTANCE_COLUMNS: &str = "id, received, sop_class_uid, sop_instance_uid, patient_id,
    study_instance_uid, series_instance_uid, transfer_syntax_uid, path, held, bytes,
    calling_ae, called_ae, peer, state, attempts, error";

/// A changed study or series whose completion timer runs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Candidate {
    pub level: Level,
    pub uid: String,
    pub study_instance_uid: String,
    pub last_received: f64,
    pub events: i64,
}

/// A connection for reading the journal (and for replaying failed deliveries).
pub struct Index {
    conn: Connection,
    root: PathBuf,
    held: PathBuf,
    database: PathBuf,
}

impl Index {
    /// The journal of `data_dir`, which must exist.
    pub fn open(data_dir: &Path) -> Result<Index> {
        let root = std::fs::canonicalize(data_dir).map_err(Error::io(format!(
            "cannot use data_dir {}",
            data_dir.display()
        )))?;
        let database = root.join(JOURNAL_DIR).join(DATABASE);
        Index::connect(&root, &database)
    }

    pub(super) fn connect(root: &Path, database: &Path) -> Result<Index> {
        Ok(Index {
            // A reader never asks for durability: it writes only replays.
            conn: connect(database, false, false)?,
            root: root.to_path_buf(),
            held: root.join(JOURNAL_DIR).join(HELD_DIR),
            database: database.to_path_buf(),
        })
    }

    fn error(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        unusable(&self.database)
    }

    fn entry(&self, row: &SqlRow<'_>) -> rusqlite::Result<InstanceEntry> {
        Ok(InstanceEntry {
            id: row.get(0)?,
            received: row.get(1)?,
            sop_class_uid: row.get(2)?,
            sop_instance_uid: row.get(3)?,
            patient_id: row.get(4)?,
            study_instance_uid: row.get(5)?,
            series_instance_uid: row.get(6)?,
            transfer_syntax_uid: row.get(7)?,
            path: self.root.join(row.get::<_, String>(8)?),
            held: row.get::<_, Option<String>>(9)?.map(|n| self.held.join(n)),
            bytes: row.get::<_, i64>(10)?.max(0) as u64,
            calling_ae: row.get(11)?,
            called_ae: row.get(12)?,
            peer: row.get(13)?,
            state: state_name(row.get(14)?),
            attempts: row.get(15)?,
            error: row.get(16)?,
        })
    }

    fn entries(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<InstanceEntry>> {
        let mut statement = self.conn.prepare_cached(sql).map_err(self.error())?;
        let rows = statement
            .query_map(args, |row| self.entry(row))
            .map_err(self.error())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.error())
    }

    /// Every study, oldest arrival first.
    pub fn studies(&self) -> Result<Vec<StudySummary>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT i.study_instance_uid, MAX(i.patient_id), MAX(i.accession_number),
                    MAX(i.study_date), IFNULL(GROUP_CONCAT(DISTINCT i.modality), ''),
                    COUNT(DISTINCT i.series_instance_uid), COUNT(DISTINCT i.path),
                    MAX(i.received), SUM(i.state = 1), SUM(i.state = 3),
                    IFNULL((SELECT events FROM groups g
                            WHERE g.level = 'study' AND g.uid = i.study_instance_uid), 0)
                 FROM instances i WHERE i.study_instance_uid IS NOT NULL
                 GROUP BY i.study_instance_uid ORDER BY MIN(i.id)",
            )
            .map_err(self.error())?;
        let rows = statement
            .query_map([], |row| {
                Ok(StudySummary {
                    study_instance_uid: row.get(0)?,
                    patient_id: row.get(1)?,
                    accession_number: row.get(2)?,
                    study_date: row.get(3)?,
                    modalities: row.get(4)?,
                    series: row.get(5)?,
                    instances: row.get(6)?,
                    last_received: row.get(7)?,
                    pending: row.get(8)?,
                    failed: row.get(9)?,
                    events: row.get(10)?,
                })
            })
            .map_err(self.error())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.error())
    }

    /// The series of one study, or of all, oldest arrival first.
    pub fn series(&self, study: Option<&str>) -> Result<Vec<SeriesSummary>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT series_instance_uid, study_instance_uid, MAX(modality),
                    COUNT(DISTINCT path), MAX(received), SUM(state = 1), SUM(state = 3)
                 FROM instances
                 WHERE series_instance_uid IS NOT NULL AND study_instance_uid IS NOT NULL
                    AND (?1 IS NULL OR study_instance_uid = ?1)
                 GROUP BY study_instance_uid, series_instance_uid ORDER BY MIN(id)",
            )
            .map_err(self.error())?;
        let rows = statement
            .query_map([study], |row| {
                Ok(SeriesSummary {
                    series_instance_uid: row.get(0)?,
                    study_instance_uid: row.get(1)?,
                    modality: row.get(2)?,
                    instances: row.get(3)?,
                    last_received: row.get(4)?,
                    pending: row.get(5)?,
                    failed: row.get(6)?,
                })
            })
            .map_err(self.error())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.error())
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
                 WHERE (?1 IS NULL OR study_instance_uid = ?1)
                    AND (?2 IS NULL OR series_instance_uid = ?2)
                    AND (?3 IS NULL OR state = ?3)
                 ORDER BY id"
            ),
            params![study, series, state],
        )
    }

    /// Failed deliveries (these ids, or all) back to pending, for the next server start;
    /// how many. A running server replays through its own writer instead.
    pub fn replay(&self, ids: Option<&[i64]>) -> Result<i64> {
        let changed = match ids {
            None => self
                .conn
                .execute("UPDATE instances SET state = 1 WHERE state = 3", []),
            Some(ids) => {
                let mut update = self
                    .conn
                    .prepare_cached("UPDATE instances SET state = 1 WHERE id = ?1 AND state = 3")
                    .map_err(self.error())?;
                ids.iter()
                    .try_fold(0, |n, id| Ok(n + update.execute([id])?))
            }
        };
        changed.map(|n| n as i64).map_err(self.error())
    }

    /// The newest row's id (0 for an empty journal).
    pub(super) fn last_id(&self) -> Result<i64> {
        self.conn
            .query_row("SELECT IFNULL(MAX(id), 0) FROM instances", [], |r| r.get(0))
            .map_err(self.error())
    }

    /// Up to `limit` pending rows with ids in (after, through], in order.
    pub(super) fn pending(
        &self,
        after: i64,
        through: i64,
        limit: usize,
    ) -> Result<Vec<InstanceEntry>> {
        self.entries(
            &format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances
                 WHERE state = 1 AND id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3"
            ),
            params![after, through, limit as i64],
        )
    }

    /// The pending row `id`, if it still is.
    pub(super) fn pending_row(&self, id: i64) -> Result<Option<InstanceEntry>> {
        Ok(self
            .entries(
                &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1 AND state = 1"),
                [id],
            )?
            .pop())
    }

    /// Changed groups of the wanted levels whose instances all had their callbacks (none
    /// pending), oldest first; only those of `study` when given.
    pub(super) fn candidates(
        &self,
        studies: bool,
        series: bool,
        study: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Candidate>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT level, uid, study_instance_uid, last_received, events FROM groups g
                 WHERE changed = 1
                    AND ((?1 AND level = 'study') OR (?2 AND level = 'series'))
                    AND (?3 IS NULL OR study_instance_uid = ?3)
                    AND NOT EXISTS (SELECT 1 FROM instances i
                        WHERE i.study_instance_uid = g.study_instance_uid AND i.state = 1)
                 ORDER BY last_received LIMIT ?4",
            )
            .map_err(self.error())?;
        let rows = statement
            .query_map(params![studies, series, study, limit as i64], |row| {
                let level = match row.get::<_, String>(0)?.as_str() {
                    "study" => Level::Study,
                    _ => Level::Series,
                };
                Ok(Candidate {
                    level,
                    uid: row.get(1)?,
                    study_instance_uid: row.get(2)?,
                    last_received: row.get(3)?,
                    events: row.get(4)?,
                })
            })
            .map_err(self.error())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.error())
    }

    /// Rows waiting for delivery (pending: not yet delivered nor parked) and the arrival
    /// time of the oldest, for the backlog and lag metrics; through the waiting-rows index.
    pub fn backlog(&self) -> Result<(i64, Option<f64>)> {
        self.conn
            .query_row(
                "SELECT COUNT(*), MIN(received) FROM instances WHERE state = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.error())
    }

    /// Whether instances of `study` wait for their callbacks.
    pub(super) fn has_pending(&self, study: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM instances
                    WHERE study_instance_uid = ?1 AND state = 1)",
                [study],
                |r| r.get(0),
            )
            .map_err(self.error())
    }

    /// The instances of a study or series, one per file (the newest row of a replaced
    /// duplicate), in arrival order; and the study's Patient ID.
    pub(super) fn members(&self, level: Level, uid: &str) -> Result<(Vec<Member>, String)> {
        let column = match level {
            Level::Study => "study_instance_uid",
            Level::Series => "series_instance_uid",
        };
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT IFNULL(series_instance_uid, ''), sop_instance_uid, sop_class_uid,
                    IFNULL(modality, ''), path, IFNULL(patient_id, ''), MAX(id)
                 FROM instances WHERE {column} = ?1 GROUP BY path ORDER BY MAX(id)"
            ))
            .map_err(self.error())?;
        let mut patient = String::new();
        let rows = statement
            .query_map([uid], |row| {
                patient = row.get(5)?;
                Ok(Member {
                    series_instance_uid: row.get(0)?,
                    sop_instance_uid: row.get(1)?,
                    sop_class_uid: row.get(2)?,
                    modality: row.get(3)?,
                    path: self.root.join(row.get::<_, String>(4)?),
                })
            })
            .map_err(self.error())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.error())?;
        Ok((rows, patient))
    }

    #[cfg(test)]
    pub(super) fn group_events(&self, level: Level, uid: &str) -> Option<(i64, bool)> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                "SELECT events, changed FROM groups WHERE level = ?1 AND uid = ?2",
                params![level.as_str(), uid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .unwrap()
    }
}
