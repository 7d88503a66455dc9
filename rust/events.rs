//! What the core reports to its consumer (stored instances, finished associations, completed
//! studies and series, the journal's commits failing and resuming) and the queue that carries
//! them from the association and journal threads.
//!
//! The queue is bounded for instances only: a full queue makes an association wait for the
//! consumer (back-pressure, never loss). Association records and journal reports never wait
//! and are never dropped: a few small records, so a stuck callback can neither pin finished
//! associations or the journal nor lose their log lines.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::scan::Element;

/// What is known of a received instance without reading it: where it is (or goes), what it
/// is, in which syntax, from whom, how big. Handlers and callbacks are both told this.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub calling_ae: String,
    pub called_ae: String,
    pub peer: SocketAddr,
    /// Data set bytes received (file meta excluded).
    pub bytes: u64,
}

/// One instance written under `data_dir` (at `receipt.path`).
#[derive(Debug, Clone)]
pub struct StoredInstance {
    pub receipt: Receipt,
    /// The journal's hard link to exactly the version acknowledged, kept until its callbacks
    /// ran (a later instance with the same UID may replace `path`); None without a journal.
    pub held: Option<PathBuf>,
    /// Its row in the journal, to mark it delivered; None without a journal.
    pub journal_id: Option<i64>,
    /// The attributes the scan captured, as encoded (empty for instances of earlier runs): the
    /// callbacks' data set serves them without reading the file.
    pub elements: Vec<Element>,
}

/// One C-STORE answered with a failure status (PS3.4 §B.2.3), nothing stored.
#[derive(Debug, Clone)]
pub struct FailedStore {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub calling_ae: String,
    pub called_ae: String,
    pub peer: SocketAddr,
    pub status: u16,
    pub error_comment: String,
}

/// How an association ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Released,
    Rejected,
    AbortedByPeer,
    /// We aborted: a protocol error, a timeout, or shutdown.
    Aborted,
    /// The connection dropped without release or abort.
    Closed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Released => "released",
            Outcome::Rejected => "rejected",
            Outcome::AbortedByPeer => "aborted by peer",
            Outcome::Aborted => "aborted",
            Outcome::Closed => "connection closed",
        }
    }
}

/// Summary of one association, reported when it ends.
#[derive(Debug, Clone)]
pub struct AssociationRecord {
    pub peer: SocketAddr,
    pub calling_ae: String,
    pub called_ae: String,
    pub instances: u64,
    pub failures: u64,
    /// C-ECHO requests answered.
    pub echoes: u64,
    pub bytes: u64,
    pub duration: Duration,
    pub outcome: Outcome,
    /// Why we rejected or aborted, when we did.
    pub detail: Option<String>,
    /// The user identity the requestor presented, in words (PS3.7 §D.3.3.7).
    pub user_identity: Option<String>,
    /// Study Instance UIDs of the instances it stored, each once, in order of arrival.
    pub studies: Vec<String>,
}

/// A study or a series: what a completion event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Study,
    Series,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Study => "study",
            Level::Series => "series",
        }
    }
}

/// One instance of a completed study or series, as the journal lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub modality: String,
    pub path: PathBuf,
}

/// A study or series that has been quiet for the study timeout (or whose association was
/// released), with every instance the journal holds for it.
#[derive(Debug, Clone)]
pub struct Completed {
    pub level: Level,
    /// The Study or Series Instance UID.
    pub uid: String,
    pub study_instance_uid: String,
    pub patient_id: String,
    /// 0 for the first event, then one more for each later event (instances arrived after it).
    pub revision: u32,
    /// Arrival time (Unix seconds) of the newest instance included, to mark the event done.
    pub last_received: f64,
    pub members: Vec<Member>,
}

/// Where the journal's commits stand, told when that changes (and reminded while failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    /// The first commit failing after one succeeded (or after the start).
    Failing,
    /// Still failing, some time after it was told.
    StillFailing,
    /// The first commit succeeding after failures.
    Resumed,
}

impl CommitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Failing => "failing",
            CommitState::StillFailing => "still failing",
            CommitState::Resumed => "resumed",
        }
    }
}

/// The journal's ingest cannot commit acknowledged rows (they wait in its row log, safe, and
/// are retried), or can again: for the operator's log, once per change.
#[derive(Debug, Clone)]
pub struct JournalReport {
    pub state: CommitState,
    /// The journal database, as its errors name it.
    pub database: String,
    /// The row log the rows wait in.
    pub log: PathBuf,
    /// The database's error (the last one, once resumed).
    pub error: String,
    /// Failing: rows waiting in the log; resumed: rows the first good commit caught up.
    pub rows: u64,
    /// Since the first failure.
    pub failing_for: Duration,
}

#[derive(Debug)]
pub enum Event {
    Stored(StoredInstance),
    AssociationEnded(AssociationRecord),
    StoreFailed(FailedStore),
    Completed(Completed),
    Journal(JournalReport),
}

/// What a wait on the queue gave.
// Moved out once per event; boxing would cost an allocation per instance instead.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Received {
    Event(Event),
    /// Woken by `poke` (the journal committed something) or the wait's time ran out.
    Woken,
    /// The server has ended and every event was taken.
    Ended,
}

#[derive(Default)]
struct State {
    events: VecDeque<Event>,
    /// Instances among `events`: what the capacity bounds.
    instances: usize,
    /// The consumer is gone: nothing waits for room any more.
    closed: bool,
    /// No more events will come.
    ended: bool,
    poked: bool,
}

/// The association threads' events on their way to the one consumer.
pub struct EventQueue {
    state: Mutex<State>,
    ready: Condvar,
    room: Condvar,
    capacity: usize,
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking association thread must not stop the others from reporting.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventQueue {
    /// A queue holding up to `capacity` instances (at least one).
    pub fn new(capacity: usize) -> EventQueue {
        EventQueue {
            state: Mutex::default(),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queue a stored instance, waiting while the queue is full. False once the consumer is
    /// gone (the instance is not queued).
    pub fn push_stored(&self, stored: StoredInstance) -> bool {
        self.push_instance(Event::Stored(stored))
    }

    /// Queue a refused C-STORE for the log, as an instance: it waits for room, never dropped.
    pub fn push_failed(&self, failed: FailedStore) -> bool {
        self.push_instance(Event::StoreFailed(failed))
    }

    fn push_instance(&self, event: Event) -> bool {
        let mut state = lock(&self.state);
        while state.instances >= self.capacity && !state.closed {
            state = self.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.closed {
            return false;
        }
        state.instances += 1;
        state.events.push_back(event);
        self.ready.notify_one();
        true
    }

    /// Queue an association record: never waits, never dropped (kept even past the capacity).
    pub fn push_record(&self, record: AssociationRecord) {
        self.push_unbounded(Event::AssociationEnded(record));
    }

    /// Queue a journal report: never waits, never dropped, like an association record.
    pub fn push_report(&self, report: JournalReport) {
        self.push_unbounded(Event::Journal(report));
    }

    fn push_unbounded(&self, event: Event) {
        let mut state = lock(&self.state);
        state.events.push_back(event);
        self.ready.notify_one();
    }

    /// Wake a waiting consumer without an event: the journal has news for its timers.
    pub fn poke(&self) {
        let mut state = lock(&self.state);
        state.poked = true;
        self.ready.notify_one();
    }

    /// The next event, waiting until `until` (None: no limit).
    pub fn recv(&self, until: Option<Instant>) -> Received {
        let mut state = lock(&self.state);
        loop {
            if let Some(event) = state.events.pop_front() {
                if matches!(event, Event::Stored(_) | Event::StoreFailed(_)) {
                    state.instances -= 1;
                    self.room.notify_one();
                }
                return Received::Event(event);
            }
            if state.ended {
                return Received::Ended;
            }
            if std::mem::take(&mut state.poked) {
                return Received::Woken;
            }
            state = match until {
                None => self.ready.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Received::Woken;
                    }
                    self.ready
                        .wait_timeout(state, left)
                        .map_or_else(|p| p.into_inner().0, |r| r.0)
                }
            };
        }
    }

    /// Move up to `max` events already queued into `into`, without waiting: one lock for a
    /// batch, so a consumer that fell behind catches up at a fraction of the cost per event.
    pub fn take_ready(&self, max: usize, into: &mut Vec<Event>) {
        let mut state = lock(&self.state);
        let state = &mut *state;
        let take = max.min(state.events.len());
        let mut instances = 0;
        for event in state.events.drain(..take) {
            instances += usize::from(matches!(event, Event::Stored(_) | Event::StoreFailed(_)));
            into.push(event);
        }
        if instances > 0 {
            state.instances -= instances;
            self.room.notify_all();
        }
    }

    /// The consumer is gone: senders stop waiting for room (at interpreter exit, say).
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.room.notify_all();
    }

    /// Every association has ended: once the queue is empty, `recv` says so.
    pub fn end(&self) {
        lock(&self.state).ended = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    fn stored(n: u64) -> StoredInstance {
        StoredInstance {
            receipt: Receipt {
                path: PathBuf::from(format!("{n}.dcm")),
                sop_class_uid: String::new(),
                sop_instance_uid: n.to_string(),
                transfer_syntax_uid: String::new(),
                calling_ae: String::new(),
                called_ae: String::new(),
                peer: "127.0.0.1:1".parse().unwrap(),
                bytes: n,
            },
            held: None,
            journal_id: None,
            elements: Vec::new(),
        }
    }

    fn record() -> AssociationRecord {
        AssociationRecord {
            peer: "127.0.0.1:1".parse().unwrap(),
            calling_ae: String::new(),
            called_ae: String::new(),
            instances: 0,
            failures: 0,
            echoes: 0,
            bytes: 0,
            duration: Duration::ZERO,
            outcome: Outcome::Released,
            detail: None,
            user_identity: None,
            studies: Vec::new(),
        }
    }

    #[test]
    fn records_never_wait_and_keep_their_order() {
        let queue = EventQueue::new(1);
        assert!(queue.push_stored(stored(1)));
        // The queue is full of instances, yet records still go in, any number of them.
        for _ in 0..100 {
            queue.push_record(record());
        }
        queue.end();
        assert!(matches!(
            queue.recv(None),
            Received::Event(Event::Stored(s)) if s.receipt.bytes == 1
        ));
        for _ in 0..100 {
            assert!(matches!(
                queue.recv(None),
                Received::Event(Event::AssociationEnded(_))
            ));
        }
        assert!(matches!(queue.recv(None), Received::Ended));
    }

    #[test]
    fn a_full_queue_holds_instances_back_until_taken_or_closed() {
        let queue = Arc::new(EventQueue::new(1));
        assert!(queue.push_stored(stored(1)));
        let sender = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.push_stored(stored(2)))
        };
        assert!(matches!(
            queue.recv(None),
            Received::Event(Event::Stored(_))
        ));
        assert!(sender.join().unwrap());
        queue.close();
        // Full again, but the consumer is gone: the sender is told at once.
        assert!(!queue.push_stored(stored(3)));
    }

    #[test]
    fn ready_events_are_taken_in_order_up_to_the_limit_and_free_room() {
        let queue = Arc::new(EventQueue::new(2));
        assert!(queue.push_stored(stored(1)));
        queue.push_record(record());
        assert!(queue.push_stored(stored(2)));
        let sender = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.push_stored(stored(3)))
        };
        let mut taken = Vec::new();
        queue.take_ready(2, &mut taken);
        assert!(
            matches!(&taken[..], [Event::Stored(s), Event::AssociationEnded(_)] if s.receipt.bytes == 1)
        );
        // Room for the waiting sender: one instance left of two.
        assert!(sender.join().unwrap());
        queue.take_ready(10, &mut taken);
        let bytes: Vec<u64> = taken
            .iter()
            .filter_map(|e| match e {
                Event::Stored(s) => Some(s.receipt.bytes),
                _ => None,
            })
            .collect();
        assert_eq!(bytes, [1, 2, 3]);
        queue.take_ready(10, &mut taken);
        assert_eq!(taken.len(), 4, "nothing more was queued");
    }

    #[test]
    fn pokes_and_deadlines_wake_the_consumer() {
        let queue = EventQueue::new(4);
        queue.poke();
        assert!(matches!(queue.recv(None), Received::Woken));
        let soon = Instant::now() + Duration::from_millis(1);
        assert!(matches!(queue.recv(Some(soon)), Received::Woken));
    }
}
