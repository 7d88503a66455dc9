//! The journal's tables, versioned with SQLite's `user_version`: each release that changes
//! them appends a migration, and opening a journal runs the ones it has not had yet.

use rusqlite::Connection;

/// Delivery states of an instance row.
pub const NOT_QUEUED: i64 = 0;
pub const PENDING: i64 = 1;
pub const DELIVERED: i64 = 2;
pub const FAILED: i64 = 3;

// A `groups` row's `changed`: 0 its last event is done; 1 instances arrived since, due once
// quiet for the timeout; 2 (version 2) its event's callbacks kept failing: parked, not fired
// again until replayed or until a new instance makes a new event (listing everything, it
// supersedes the parked one); 3 a parked event replayed, due at once.

/// Migration `n` takes a journal from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: one row per acknowledged instance, and the studies/series their timers run on.
    "CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        received REAL NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        patient_id TEXT,
        study_instance_uid TEXT,
        series_instance_uid TEXT,
        accession_number TEXT,
        modality TEXT,
        study_date TEXT,
        path TEXT NOT NULL,          -- relative to data_dir
        bytes INTEGER NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        called_ae TEXT NOT NULL,
        peer TEXT NOT NULL,
        held TEXT,                   -- file name in the journal's held/ folder
        state INTEGER NOT NULL,      -- 0 no callbacks, 1 pending, 2 delivered, 3 failed
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    -- Rows are appended on the hot path, so one index only: the few rows waiting for
    -- delivery. A study index would double the pages each commit writes; listing a study
    -- (a completion event, the status command) scans instead.
    CREATE INDEX instances_waiting ON instances (state, study_instance_uid) WHERE state IN (1, 3);
    CREATE TABLE groups (
        level TEXT NOT NULL,         -- 'study' or 'series'
        uid TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        last_received REAL NOT NULL,
        changed INTEGER NOT NULL,    -- instances arrived since its last completion event
        events INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (level, uid)
    ) WITHOUT ROWID;
    CREATE INDEX groups_changed ON groups (last_received) WHERE changed = 1;",
    // 2: a completion event whose callbacks kept failing is parked on its group (changed 2)
    // with its attempts, last traceback and when; a replayed one is due at once (3). The
    // timers' index covers both states it fires; the parked list has its own, both small.
    "ALTER TABLE groups ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE groups ADD COLUMN error TEXT;
    ALTER TABLE groups ADD COLUMN failed REAL;
    DROP INDEX groups_changed;
    CREATE INDEX groups_due ON groups (last_received) WHERE changed IN (1, 3);
    CREATE INDEX groups_parked ON groups (failed) WHERE changed = 2;",
    // 3: the next row id not reserved yet: nodes sharing the journal take blocks of ids for
    // the rows they log before committing them.
    "CREATE TABLE id_blocks (next INTEGER NOT NULL);
    INSERT INTO id_blocks SELECT coalesce(max(id), 0) + 1 FROM instances;",
];

/// The version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the journal to `VERSION`, each step in its own transaction. A journal written by a
/// newer release is refused rather than misread.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    if found > VERSION {
        return Err(format!(
            "schema version {found} is newer than this dicom-inlet knows ({VERSION})"
        ));
    }
    for (version, step) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(step)
            .and_then(|()| tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1)))
            .and_then(|()| tx.commit())
            .map_err(|e| format!("migration to version {}: {e}", version + 1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::{migrate, MIGRATIONS, VERSION};

    #[test]
    fn a_version_1_journal_migrates_keeping_its_rows_and_timers() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
            INSERT INTO groups (level, uid, study_instance_uid, last_received, changed, events)
                VALUES ('study', '1', '1', 10.0, 1, 2), ('study', '2', '2', 5.0, 0, 1);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        let rows: Vec<(String, i64, i64, i64, Option<String>)> = conn
            .prepare("SELECT uid, changed, events, attempts, error FROM groups ORDER BY uid")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            [("1".into(), 1, 2, 0, None), ("2".into(), 0, 1, 0, None)]
        );
        // The due study is found through the timers' new index.
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT uid FROM groups WHERE changed IN (1, 3)
                 ORDER BY changed = 3 DESC, last_received",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("groups_due"), "{plan}");
        // Run again, nothing to do.
        migrate(&mut conn).unwrap();
    }
}
