//! The journal alone: rows, group commit across threads, delivery states, replays, completion
//! timers and their revisions, restarts, migrations and unusable files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::*;
use crate::events::{AssociationRecord, CommitState, Event, EventQueue, Outcome, Received};

fn temp_root(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("dicom-inlet-journal-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::canonicalize(dir).unwrap()
}

fn row(root: &Path, study: &str, series: &str, sop: &str, pending: bool) -> Row {
    Row {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        sop_instance_uid: sop.into(),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        patient_id: Some("PID".into()),
        study_instance_uid: Some(study.into()),
        series_instance_uid: Some(series.into()),
        modality: Some("CT".into()),
        path: root.join(series).join(format!("{sop}.dcm")),
        bytes: 10,
        calling_ae: "SCU".into(),
        called_ae: "INLET".into(),
        pending,
        ..Row::default()
    }
}

fn timers(studies: bool, series: bool, on_release: bool) -> Timers {
    Timers {
        timeout: Duration::ZERO,
        studies,
        series,
        on_release,
    }
}

#[test]
fn rows_from_many_threads_are_all_committed_in_order_of_their_ids() {
    let root = temp_root("group");
    let journal = Arc::new(Journal::open(&root, "n1", false, None).unwrap());
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let journal = Arc::clone(&journal);
            let root = root.clone();
            thread::spawn(move || {
                let recorder = &journal;
                (0..50)
                    .map(|i| recorder.record(row(&root, "1", "1.1", &format!("{t}.{i}"), true)))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .unwrap()
            })
        })
        .collect();
    let mut ids: Vec<i64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>());
    journal.sync().unwrap();
    let index = journal.index().unwrap();
    let pending = index.instances(None, None, Some("pending")).unwrap();
    assert_eq!(pending.len(), 200);
    assert_eq!(
        pending[0].path,
        root.join("1.1")
            .join(format!("{}.dcm", pending[0].sop_instance_uid))
    );
    let studies = index.studies().unwrap();
    assert_eq!(studies.len(), 1);
    assert_eq!(
        (studies[0].instances, studies[0].pending, studies[0].series),
        (200, 200, 1)
    );
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn undelivered_rows_survive_a_restart_and_failed_ones_wait_for_a_replay() {
    let root = temp_root("restart");
    {
        let journal = Journal::open(&root, "n1", true, None).unwrap();
        let recorder = &journal;
        for i in 0..5 {
            recorder
                .record(row(&root, "1", "1.1", &i.to_string(), true))
                .unwrap();
        }
        recorder
            .record(row(&root, "1", "1.1", "quiet", false))
            .unwrap();
        journal.delivered(vec![1]);
        journal.failed(2, 3, "Traceback: boom".into());
        // Dropped without any shutdown of the rows' deliveries: as after kill -9.
    }
    let journal = Journal::open(&root, "n1", false, None).unwrap();
    let queue = Arc::new(EventQueue::new(4));
    queue.end();
    let feed = Feed::new(
        Arc::clone(&queue),
        Some(journal.index().unwrap()),
        true,
        None,
    )
    .unwrap();
    let ids: Vec<i64> = feed
        .map(|e| match e {
            Event::Stored(s) => s.journal_id.unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, [3, 4, 5]);
    let index = journal.index().unwrap();
    let failed = index.instances(None, None, Some("failed")).unwrap();
    assert_eq!((failed[0].id, failed[0].attempts), (2, 3));
    assert_eq!(failed[0].error.as_deref(), Some("Traceback: boom"));
    assert_eq!(journal.replay(None).unwrap(), 1);
    assert_eq!(index.instances(None, None, Some("failed")).unwrap(), []);
    assert_eq!(index.instances(None, None, Some("-")).unwrap().len(), 1);
    assert!(index.instances(None, None, Some("lost")).is_err());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn held_versions_go_once_delivered_and_strays_at_open() {
    let root = temp_root("held");
    let journal = Journal::open(&root, "n1", false, None).unwrap();
    let held = journal.held_path("kept.dcm");
    fs::write(&held, b"acknowledged").unwrap();
    let stray = journal.held_path("stray.dcm");
    fs::write(&stray, b"crashed before its commit").unwrap();
    let recorder = &journal;
    let id = recorder
        .record(Row {
            held: Some(held.clone()),
            ..row(&root, "1", "1.1", "1", true)
        })
        .unwrap();
    drop(journal);
    let journal = Journal::open(&root, "n1", false, None).unwrap();
    assert!(held.exists() && !stray.exists());
    // Committed (and the link removed) by the ingest.
    journal.delivered(vec![id]);
    journal.sync().unwrap();
    assert!(!held.exists());
    fs::remove_dir_all(&root).unwrap();
}

/// The next completion event of a feed whose queue has ended.
fn next_completed(feed: &mut Feed) -> Option<crate::events::Completed> {
    match feed.next_event().unwrap() {
        Some(Event::Completed(c)) => Some(c),
        None => None,
        Some(other) => panic!("{other:?}"),
    }
}

#[test]
fn completion_events_list_their_instances_then_come_as_revisions() {
    let root = temp_root("completion");
    let queue = Arc::new(EventQueue::new(4));
    // With a queue to poke the timers are on: the journal keeps their rows.
    let journal = Journal::open(&root, "n1", false, Some(Arc::clone(&queue))).unwrap();
    let recorder = &journal;
    for (series, sop) in [("1.1", "a"), ("1.2", "b"), ("1.1", "a"), ("1.1", "c")] {
        recorder
            .record(row(&root, "1", series, sop, false))
            .unwrap();
    }
    journal.sync().unwrap();
    queue.end();
    let index = journal.index().unwrap();
    let mut feed = Feed::new(
        Arc::clone(&queue),
        Some(index),
        false,
        Some(timers(true, false, false)),
    )
    .unwrap();
    let study = next_completed(&mut feed).unwrap();
    assert_eq!(
        (study.level, study.uid.as_str(), study.revision),
        (Level::Study, "1", 0)
    );
    assert_eq!(study.patient_id, "PID");
    // The replaced duplicate (same path) is listed once.
    let sops: Vec<&str> = study
        .members
        .iter()
        .map(|m| m.sop_instance_uid.as_str())
        .collect();
    assert_eq!(sops, ["b", "a", "c"]);
    // Given out, not yet done: not given again.
    assert!(next_completed(&mut feed).is_none());
    journal
        .completed(Level::Study, "1".into(), study.last_received)
        .unwrap();
    feed.completion_done(Level::Study, "1");
    assert!(next_completed(&mut feed).is_none());
    let index = journal.index().unwrap();
    assert_eq!(index.group_events(Level::Study, "1"), Some((1, false)));
    // A late instance: the study comes again, as revision 1, with all its instances.
    recorder.record(row(&root, "1", "1.3", "d", false)).unwrap();
    journal.sync().unwrap();
    let revision = next_completed(&mut feed).unwrap();
    assert_eq!((revision.revision, revision.members.len()), (1, 4));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn completion_waits_for_pending_callbacks_and_fires_on_release() {
    let root = temp_root("release");
    let queue = Arc::new(EventQueue::new(4));
    let journal = Journal::open(&root, "n1", false, Some(Arc::clone(&queue))).unwrap();
    let recorder = &journal;
    recorder.record(row(&root, "7", "7.1", "x", true)).unwrap();
    journal.sync().unwrap();
    let mut feed = Feed::new(
        Arc::clone(&queue),
        Some(journal.index().unwrap()),
        true,
        Some(Timers {
            timeout: Duration::from_secs(3600),
            ..timers(true, true, true)
        }),
    )
    .unwrap();
    assert!(matches!(feed.next_event().unwrap(), Some(Event::Stored(_))));
    queue.push_record(AssociationRecord {
        peer: "127.0.0.1:1".parse().unwrap(),
        calling_ae: String::new(),
        called_ae: String::new(),
        instances: 1,
        failures: 0,
        echoes: 0,
        user_identity: None,
        bytes: 0,
        duration: Duration::ZERO,
        outcome: Outcome::Released,
        detail: None,
        studies: vec!["7".into()],
    });
    assert!(matches!(
        feed.next_event().unwrap(),
        Some(Event::AssociationEnded(_))
    ));
    // Its callbacks have not returned yet: no event, though released and the hour not over.
    journal.delivered(vec![1]);
    journal.sync().unwrap();
    queue.end();
    let mut levels = vec![];
    while let Some(c) = next_completed(&mut feed) {
        levels.push((c.level, c.uid));
    }
    levels.sort_by_key(|(l, _)| l.as_str());
    assert_eq!(
        levels,
        [(Level::Series, "7.1".into()), (Level::Study, "7".into())]
    );
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn schema_versions_and_unusable_files_are_told() {
    let root = temp_root("schema");
    drop(Journal::open(&root, "n1", false, None).unwrap());
    let database = root.join(JOURNAL_DIR).join(DATABASE);
    let conn = rusqlite::Connection::open(&database).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, VERSION);
    conn.execute_batch(&format!("PRAGMA user_version = {}", VERSION + 1))
        .unwrap();
    drop(conn);
    let newer = Journal::open(&root, "n1", false, None)
        .err()
        .unwrap()
        .to_string();
    assert!(newer.contains("newer than this dicom-inlet"), "{newer}");
    for garbage in [
        b"not a database at all, just some bytes".repeat(200),
        vec![],
    ] {
        for suffix in ["-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", database.display()));
        }
        fs::write(&database, &garbage).unwrap();
        match Journal::open(&root, "n1", false, None) {
            // An empty file is a new database.
            Ok(_) => assert!(garbage.is_empty()),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains("is unusable") && message.contains("journal.sqlite"),
                    "{message}"
                );
            }
        }
    }
    let missing = Index::open(&root.join("nowhere"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("cannot use data_dir"), "{missing}");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn backlog_counts_pending_rows_only_and_names_the_oldest() {
    let root = temp_root("backlog");
    let journal = Journal::open(&root, "n1", false, None).unwrap();
    let index = journal.index().unwrap();
    assert_eq!(index.backlog().unwrap(), (0, None));
    for i in 0..4 {
        journal
            .record(row(&root, "1", "1.1", &i.to_string(), true))
            .unwrap();
    }
    journal
        .record(row(&root, "1", "1.1", "quiet", false))
        .unwrap();
    journal.sync().unwrap();
    let first = index.instances(None, None, Some("pending")).unwrap()[0].received;
    journal.delivered(vec![1]);
    journal.failed(2, 3, "boom".into());
    journal.sync().unwrap();
    let (waiting, oldest) = index.backlog().unwrap();
    assert_eq!(waiting, 2);
    assert!(oldest.unwrap() >= first);
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_completion_told_done_from_another_thread_wakes_the_waiting_feed() {
    let root = temp_root("completer");
    let queue = Arc::new(EventQueue::new(4));
    let journal = Journal::open(&root, "n1", false, Some(Arc::clone(&queue))).unwrap();
    journal.record(row(&root, "5", "5.1", "a", false)).unwrap();
    journal.sync().unwrap();
    let mut feed = Feed::new(
        Arc::clone(&queue),
        Some(journal.index().unwrap()),
        false,
        Some(timers(true, false, false)),
    )
    .unwrap();
    let completer = feed.completer();
    let first = next_completed(&mut feed).unwrap();
    let (sender, received) = std::sync::mpsc::channel();
    // The consumer waits in the feed (holding it) while a sink's thread gets the confirm.
    let consumer = thread::spawn(move || {
        sender.send(next_completed(&mut feed)).unwrap();
    });
    journal
        .completed(Level::Study, "5".into(), first.last_received)
        .unwrap();
    // A late instance: due at once, but the first event is still handed out.
    journal.record(row(&root, "5", "5.1", "b", false)).unwrap();
    journal.sync().unwrap();
    completer.done(Level::Study, "5".into());
    let revision = received
        .recv_timeout(Duration::from_secs(30))
        .expect("the feed took the completion up")
        .unwrap();
    assert_eq!((revision.revision, revision.members.len()), (1, 2));
    queue.end();
    consumer.join().unwrap();
    fs::remove_dir_all(&root).unwrap();
}

/// A feed of `journal` with the study timers on, `timeout` long, its queue ended.
fn study_feed(journal: &Journal, timeout: Duration) -> Feed {
    let queue = Arc::new(EventQueue::new(4));
    queue.end();
    let timers = Timers {
        timeout,
        ..timers(true, false, false)
    };
    Feed::new(queue, Some(journal.index().unwrap()), false, Some(timers)).unwrap()
}

#[test]
fn a_parked_completion_waits_for_its_replay_then_fires_at_once() {
    let root = temp_root("parked");
    let queue = Arc::new(EventQueue::new(4));
    let journal = Journal::open(&root, "n1", false, Some(Arc::clone(&queue))).unwrap();
    journal.record(row(&root, "8", "8.1", "a", false)).unwrap();
    journal.sync().unwrap();
    let mut feed = study_feed(&journal, Duration::ZERO);
    let first = next_completed(&mut feed).unwrap();
    let error = "Traceback\nRuntimeError: down".to_owned();
    journal
        .parked(
            Level::Study,
            "8".into(),
            first.last_received,
            3,
            error.clone(),
        )
        .unwrap();
    feed.completion_done(Level::Study, "8");
    // Parked: neither this feed nor the next start's fires it again.
    assert!(next_completed(&mut feed).is_none());
    assert!(next_completed(&mut study_feed(&journal, Duration::ZERO)).is_none());
    let index = journal.index().unwrap();
    let [parked] = &index.parked_events().unwrap()[..] else {
        panic!("one parked event expected")
    };
    assert_eq!(
        (
            parked.level,
            parked.uid.as_str(),
            parked.attempts,
            parked.events
        ),
        (Level::Study, "8", 3, 0)
    );
    assert_eq!(parked.error.as_deref(), Some(error.as_str()));
    assert!(parked.failed >= parked.last_received);
    // Replayed: due at once, though the timeout is an hour; the same revision.
    assert_eq!(index.replay_events(Some("other"), None).unwrap(), 0);
    assert_eq!(index.replay_events(Some("8"), None).unwrap(), 1);
    assert!(index.parked_events().unwrap().is_empty());
    let mut feed = study_feed(&journal, Duration::from_secs(3600));
    let again = next_completed(&mut feed).unwrap();
    assert_eq!((again.uid.as_str(), again.revision), ("8", 0));
    journal
        .completed(Level::Study, "8".into(), again.last_received)
        .unwrap();
    assert_eq!(index.group_events(Level::Study, "8"), Some((1, false)));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn rows_only_in_the_log_of_a_killed_run_are_committed_at_the_next_start() {
    let root = temp_root("killed");
    let journal = Journal::open(&root, "n1", false, None).unwrap();
    let first = journal.record(row(&root, "1", "1.1", "a", true)).unwrap();
    drop(journal);
    // What a kill -9 leaves: a log of rows committed or not, its lock gone with the
    // process, and a record cut short by the kill (never acknowledged).
    let logs = root.join(JOURNAL_DIR).join(LOG_DIR);
    let dead = log::Log::open(&logs, "n1", false).unwrap();
    for (id, sop) in [(first, "a"), (first + 1, "b"), (first + 2, "c")] {
        let logged = log::Logged {
            id,
            received: 1.0e9 + id as f64,
            row: row(&root, "1", "1.1", sop, true),
        };
        dead.append(logged, drop).unwrap();
    }
    let mut cut = Vec::new();
    let torn = log::Logged {
        id: first + 3,
        received: 0.0,
        row: row(&root, "1", "1.1", "d", true),
    };
    log::encode(&torn, &mut cut);
    let mut file = fs::File::options().append(true).open(dead.path()).unwrap();
    std::io::Write::write_all(&mut file, &cut[..cut.len() / 2]).unwrap();
    let dead_path = dead.path();
    // Closed without its ingest: the file stays, its lock goes.
    drop((dead, file));
    let journal = Journal::open(&root, "n1", false, None).unwrap();
    let pending = journal
        .index()
        .unwrap()
        .instances(None, None, Some("pending"))
        .unwrap();
    let found: Vec<_> = pending
        .iter()
        .map(|e| (e.id, e.sop_instance_uid.as_str(), e.received))
        .collect();
    assert_eq!(
        found,
        [
            (first, "a", found[0].2),
            (first + 1, "b", 1.0e9 + (first + 1) as f64),
            (first + 2, "c", 1.0e9 + (first + 2) as f64)
        ]
    );
    // The dead run's log is gone; this run's is the only one.
    assert!(!dead_path.exists());
    let left: Vec<_> = fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    match &journal.committer {
        Committer::Ingest(ingest) => assert_eq!(left, [ingest.log.path()]),
        Committer::Group(_) => unreachable!(),
    }
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_new_instance_supersedes_a_parked_completion() {
    let root = temp_root("superseded");
    let queue = Arc::new(EventQueue::new(4));
    let journal = Journal::open(&root, "n1", false, Some(Arc::clone(&queue))).unwrap();
    journal.record(row(&root, "9", "9.1", "a", false)).unwrap();
    journal.sync().unwrap();
    let first = next_completed(&mut study_feed(&journal, Duration::ZERO)).unwrap();
    let through = first.last_received;
    journal
        .parked(Level::Study, "9".into(), through, 1, "e".into())
        .unwrap();
    journal.record(row(&root, "9", "9.1", "b", false)).unwrap();
    journal.sync().unwrap();
    // The new event lists everything: the parked one is no longer listed, and the next
    // is still the first revision (none was delivered).
    let index = journal.index().unwrap();
    assert!(index.parked_events().unwrap().is_empty());
    let next = next_completed(&mut study_feed(&journal, Duration::ZERO)).unwrap();
    assert_eq!((next.revision, next.members.len()), (0, 2));
    // Parked while a newer instance arrived (during the retries): that one's event is due.
    journal
        .parked(Level::Study, "9".into(), through, 1, "e".into())
        .unwrap();
    assert!(index.parked_events().unwrap().is_empty());
    assert!(next_completed(&mut study_feed(&journal, Duration::ZERO)).is_some());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn nodes_sharing_a_journal_take_distinct_ids_and_leave_each_others_live_logs_alone() {
    let root = temp_root("nodes");
    let a = Journal::open(&root, "a", false, None).unwrap();
    let first = a.record(row(&root, "1", "1.1", "a1", true)).unwrap();
    // The second node's start sees the first one's log held: not recovered, not removed.
    let b = Journal::open(&root, "b", false, None).unwrap();
    let second = b.record(row(&root, "1", "1.1", "b1", true)).unwrap();
    let third = a.record(row(&root, "1", "1.1", "a2", true)).unwrap();
    assert_eq!((first, third), (1, 2));
    assert!(second > ID_BLOCK, "{second}: from a block of its own");
    a.sync().unwrap();
    b.sync().unwrap();
    let logs = root.join(JOURNAL_DIR).join(LOG_DIR);
    assert_eq!(fs::read_dir(&logs).unwrap().count(), 2);
    let sops: Vec<_> = a
        .index()
        .unwrap()
        .instances(None, None, Some("pending"))
        .unwrap()
        .into_iter()
        .map(|e| e.sop_instance_uid)
        .collect();
    assert_eq!(sops, ["a1", "a2", "b1"]);
    // A node that stops removes its own log, all committed, and nothing of the other's.
    drop(b);
    assert_eq!(fs::read_dir(&logs).unwrap().count(), 1);
    let c = Journal::open(&root, "c", false, None).unwrap();
    assert_eq!(fs::read_dir(&logs).unwrap().count(), 2);
    let next = c.record(row(&root, "1", "1.1", "c1", true)).unwrap();
    assert!(next > 2 * ID_BLOCK, "{next}");
    drop((a, c));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn failing_commits_are_reported_once_and_resumed_with_every_row() {
    let root = temp_root("failing");
    let journal = Journal::open(&root, "n1", false, None).unwrap();
    let queue = Arc::new(EventQueue::new(4));
    journal.report_to(&queue);
    journal.record(row(&root, "1", "1.1", "0", false)).unwrap();
    journal.sync().unwrap();
    // Another program takes the table away: every commit of the ingest fails.
    let database = root.join(JOURNAL_DIR).join(DATABASE);
    let other = Connection::open(&database).unwrap();
    other
        .execute_batch("ALTER TABLE instances RENAME TO away")
        .unwrap();
    for sop in 1..=5 {
        // Acknowledged all the same: the rows are in the log.
        journal
            .record(row(&root, "1", "1.1", &sop.to_string(), false))
            .unwrap();
    }
    let next_report = || match queue.recv(None) {
        Received::Event(Event::Journal(report)) => report,
        other => panic!("{other:?}"),
    };
    let failing = next_report();
    assert_eq!(failing.state, CommitState::Failing);
    assert_eq!(failing.database, database.to_string_lossy());
    assert_eq!(failing.log, journal_log(&journal));
    assert!(failing.error.contains("no such table"), "{}", failing.error);
    assert!((1..=5).contains(&failing.rows), "{}", failing.rows);
    // Each sync is answered by a retry that failed too: no report of its own.
    for _ in 0..2 {
        assert!(journal
            .sync()
            .unwrap_err()
            .to_string()
            .contains("no such table"));
    }
    let mut more = Vec::new();
    queue.take_ready(10, &mut more);
    assert!(more.is_empty(), "{more:?}");
    other
        .execute_batch("ALTER TABLE away RENAME TO instances")
        .unwrap();
    journal.sync().unwrap();
    let resumed = next_report();
    assert_eq!((resumed.state, resumed.rows), (CommitState::Resumed, 5));
    let count: i64 = other
        .query_row("SELECT count(*) FROM instances", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 6);
    drop(journal);
    fs::remove_dir_all(&root).unwrap();
}

fn journal_log(journal: &Journal) -> PathBuf {
    match &journal.committer {
        Committer::Ingest(ingest) => ingest.log.path(),
        Committer::Group(_) => panic!("not SQLite"),
    }
}

#[test]
fn paths_are_stored_relative_to_data_dir_only_when_under_it() {
    let root = Path::new("/data/in");
    assert_eq!(
        relative(root, Path::new("/data/in/P1/S1/1.dcm")),
        "P1/S1/1.dcm"
    );
    // A sibling whose name starts with the root's is not under it.
    assert_eq!(
        relative(root, Path::new("/data/inbox/1.dcm")),
        "/data/inbox/1.dcm"
    );
    assert_eq!(relative(Path::new("/"), Path::new("/a/1.dcm")), "a/1.dcm");
}

#[test]
fn a_batch_upserts_each_group_as_its_rows_in_order_would() {
    let root = temp_root("touched");
    let database = root.join(DATABASE);
    let mut writer = Writer {
        conn: connect(&database, false, true).unwrap(),
        root: root.clone(),
        held: root.clone(),
        notify: Some(Arc::new(EventQueue::new(1))),
    };
    let logged = |id: i64, received: f64, series: &str| {
        let row = row(&root, "1", series, &id.to_string(), false);
        Request::Logged(Box::new(log::Logged { id, received, row }))
    };
    let completed = |through: f64| Request::Completed {
        level: Level::Study,
        uid: "1".into(),
        through,
    };
    let groups = |writer: &Writer| -> Vec<(String, String, f64, i64, i64)> {
        let sql = "SELECT level, uid, last_received, changed, events FROM groups ORDER BY 1, 2";
        let mut statement = writer.conn.prepare(sql).unwrap();
        let rows = statement.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        });
        rows.unwrap().collect::<rusqlite::Result<_>>().unwrap()
    };
    let commit = |writer: &mut Writer, batch: Vec<Request>| {
        let batch = batch.into_iter().enumerate().map(|(i, r)| (i as u64, r));
        assert!(writer.commit(batch.collect()).is_ok());
    };
    // The last row of a group sets its arrival, even an earlier one (recovered late).
    commit(
        &mut writer,
        vec![logged(1, 20.0, "1.1"), logged(2, 5.0, "1.2")],
    );
    let study = |received, changed, events| ("study".into(), "1".into(), received, changed, events);
    let series = |uid: &str, received| ("series".to_string(), uid.to_string(), received, 1, 0);
    assert_eq!(
        groups(&writer),
        [series("1.1", 20.0), series("1.2", 5.0), study(5.0, 1, 0)]
    );
    // A completion sees the rows before it in its batch, not those after.
    commit(
        &mut writer,
        vec![
            logged(3, 30.0, "1.1"),
            completed(30.0),
            logged(4, 31.0, "1.1"),
        ],
    );
    assert_eq!(groups(&writer)[2], study(31.0, 1, 1));
    commit(&mut writer, vec![logged(5, 40.0, "1.1"), completed(40.0)]);
    assert_eq!(groups(&writer)[2], study(40.0, 0, 2));
    // Rows committed already (a log recovered twice) touch nothing.
    commit(&mut writer, vec![logged(5, 50.0, "1.1")]);
    assert_eq!(groups(&writer)[2], study(40.0, 0, 2));
    fs::remove_dir_all(&root).unwrap();
}
