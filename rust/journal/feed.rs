//! The consumer's side: events from the association threads, instances a previous run
//! acknowledged but never delivered (or that were replayed), and study/series completion
//! events when their timers run out, merged into one stream.

use std::collections::{HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{unix_now, Index, InstanceEntry};
use crate::error::Result;
use crate::events::{
    Completed, Event, EventQueue, Level, Outcome, Receipt, Received, StoredInstance,
};

/// Undelivered rows read from the journal at a time.
const BACKLOG_PAGE: usize = 64;
/// How soon to read a shared journal again after it failed (its server went away).
const AWAY_RETRY: Duration = Duration::from_secs(1);

/// When study and series events fire.
#[derive(Debug, Clone)]
pub struct Timers {
    /// Quiet time after a study's (series') last instance before its event.
    pub timeout: Duration,
    pub studies: bool,
    pub series: bool,
    /// Also fire for the studies of an association as soon as it is released.
    pub on_release: bool,
}

/// What the consumer reads events from.
pub struct Feed {
    queue: Arc<EventQueue>,
    index: Option<Index>,
    /// Rows of earlier runs still to deliver: ids in (cursor, through].
    cursor: i64,
    through: i64,
    backlog: VecDeque<InstanceEntry>,
    replays: Arc<Mutex<VecDeque<i64>>>,
    /// Completion events done, told from other threads while this feed waits.
    done: Arc<Mutex<Vec<(Level, String)>>>,
    timers: Option<Timers>,
    /// Studies whose association was released, due at once.
    released: HashSet<String>,
    /// Completion events given out and not yet done: not given again in this run.
    handed: HashSet<(Level, String)>,
    ended: bool,
    /// A shared journal failed to read: try again then, meanwhile deliver what comes.
    away_until: Option<Instant>,
}

impl Feed {
    /// With `index`, deliver the journal's undelivered rows first; with `timers`, fire
    /// completion events (`index` needed).
    pub fn new(
        queue: Arc<EventQueue>,
        index: Option<Index>,
        deliver_backlog: bool,
        timers: Option<Timers>,
    ) -> Result<Feed> {
        let through = match (&index, deliver_backlog) {
            (Some(index), true) => index.last_id()?,
            _ => 0,
        };
        let timers = timers.filter(|_| index.is_some());
        Ok(Feed {
            queue,
            index,
            cursor: 0,
            through,
            backlog: VecDeque::new(),
            replays: Arc::default(),
            done: Arc::default(),
            timers,
            released: HashSet::new(),
            handed: HashSet::new(),
            ended: false,
            away_until: None,
        })
    }

    /// The next event, waiting for one, and after it up to `max - 1` more already queued by
    /// the associations: a batch for one hand-over to the consumer. Empty once the server has
    /// ended and nothing is left to deliver; None if nothing came before `patience` (no limit
    /// when None). Rows of earlier runs and completion events come one at a time, in their
    /// turn, as from [`Feed::next_event`].
    pub fn next_events(
        &mut self,
        max: usize,
        patience: Option<Instant>,
    ) -> Result<Option<Vec<Event>>> {
        let mut events = Vec::new();
        match self.wait(patience)? {
            Next::Event(event) => events.push(event),
            Next::Ended => return Ok(Some(events)),
            Next::Quiet => return Ok(None),
        }
        let backlog = !self.backlog.is_empty()
            || self.cursor < self.through
            || !lock(&self.replays).is_empty();
        if !backlog && max > 1 {
            self.queue.take_ready(max - 1, &mut events);
            for event in &events[1..] {
                self.taken(event);
            }
        }
        Ok(Some(events))
    }

    /// The next event; None once the server has ended and nothing is left to deliver.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        match self.wait(None)? {
            Next::Event(event) => Ok(Some(event)),
            Next::Ended | Next::Quiet => Ok(None),
        }
    }

    fn wait(&mut self, patience: Option<Instant>) -> Result<Next> {
        loop {
            let done = std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()));
            for (level, uid) in done {
                self.completion_done(level, &uid);
            }
            let backlog = self.next_backlog();
            if let Some(stored) = self.unless_away(backlog, None)? {
                return Ok(Next::Event(Event::Stored(stored)));
            }
            let due = self.next_completion();
            let until = match self.unless_away(due, Err(None))? {
                Ok(completed) => return Ok(Next::Event(Event::Completed(completed))),
                Err(until) => until,
            };
            let until = match (until, self.away_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if self.ended {
                return Ok(Next::Ended);
            }
            if patience.is_some_and(|p| p <= Instant::now()) {
                return Ok(Next::Quiet);
            }
            let until = match (until, patience) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match self.queue.recv(until) {
                Received::Event(event) => {
                    self.taken(&event);
                    return Ok(Next::Event(event));
                }
                Received::Woken => {}
                Received::Ended => self.ended = true,
            }
        }
    }

    /// An event from the queue is given out: a released association's studies are due.
    fn taken(&mut self, event: &Event) {
        let Event::AssociationEnded(record) = event else {
            return;
        };
        let timers = self.timers.as_ref();
        if timers.is_some_and(|t| t.on_release) && record.outcome == Outcome::Released {
            self.released.extend(record.studies.iter().cloned());
        }
    }

    /// A shared journal's read error is waited out (`instead` meanwhile), so a database
    /// that went away for a while delays the backlog and the timers but ends nothing.
    fn unless_away<T>(&mut self, result: Result<T>, instead: T) -> Result<T> {
        match result {
            Err(_) if self.index.as_ref().is_some_and(Index::is_remote) => {
                self.away_until = Some(Instant::now() + AWAY_RETRY);
                Ok(instead)
            }
            Ok(value) => {
                self.away_until = None;
                Ok(value)
            }
            Err(e) => Err(e),
        }
    }

    /// A way for other threads to have rows delivered again while this feed waits.
    pub fn replayer(&self) -> Replayer {
        Replayer {
            replays: Arc::clone(&self.replays),
            queue: Arc::clone(&self.queue),
        }
    }

    /// A way for other threads to tell a completion event done while this feed waits (a
    /// broker's confirm arrives on the sink's thread while the consumer waits for events).
    pub fn completer(&self) -> Completer {
        Completer {
            done: Arc::clone(&self.done),
            queue: Arc::clone(&self.queue),
        }
    }

    /// A completion event was delivered (or given up on): it may come again only with a
    /// newer instance, as a revision.
    pub fn completion_done(&mut self, level: Level, uid: &str) {
        self.handed.remove(&(level, uid.to_owned()));
    }

    fn next_backlog(&mut self) -> Result<Option<StoredInstance>> {
        let Some(index) = &self.index else {
            return Ok(None);
        };
        loop {
            let next = lock(&self.replays).pop_front();
            let Some(id) = next else { break };
            if let Some(entry) = index.pending_row(id)? {
                return Ok(Some(stored(entry)));
            }
        }
        if self.backlog.is_empty() && self.cursor < self.through {
            self.backlog = index
                .pending(self.cursor, self.through, BACKLOG_PAGE)?
                .into();
            self.cursor = self.backlog.back().map_or(self.through, |e| e.id);
        }
        Ok(self.backlog.pop_front().map(stored))
    }

    /// A due completion event, or else when the next one is due (None: no timer runs).
    fn next_completion(&mut self) -> Result<std::result::Result<Completed, Option<Instant>>> {
        let (Some(index), Some(timers)) = (&self.index, &self.timers) else {
            return Ok(Err(None));
        };
        // Where nodes share the journal, one runs the timers; its heartbeat wakes this feed
        // when it takes them over.
        if !index.leads() {
            return Ok(Err(None));
        }
        let now = unix_now();
        let timeout = timers.timeout.as_secs_f64();
        let mut found = None;
        // Released studies first: due whatever their last arrival.
        for study in std::mem::take(&mut self.released) {
            // Asked before the candidates: a delivery marked in between (another thread's,
            // a broker's confirm) then still finds the study ready, not dropped.
            let waiting = index.has_pending(&study)?;
            let candidates = index.candidates(timers.studies, timers.series, Some(&study), 64)?;
            let ready = candidates
                .into_iter()
                .find(|c| !self.handed.contains(&(c.level, c.uid.clone())));
            // Kept while it has one more group to fire (its series, say) or callbacks to wait
            // for: the writer's poke after their delivery brings it back here.
            if ready.is_some() || waiting {
                self.released.insert(study);
            }
            if found.is_none() {
                found = ready;
            }
        }
        let mut next_due = None;
        if found.is_none() {
            let limit = self.handed.len() + 1;
            let candidates = index.candidates(timers.studies, timers.series, None, limit)?;
            let waiting = candidates
                .into_iter()
                .find(|c| !self.handed.contains(&(c.level, c.uid.clone())));
            match waiting {
                Some(c) if c.replayed || c.last_received + timeout <= now => found = Some(c),
                Some(c) => next_due = Some(c.last_received + timeout - now),
                None => {}
            }
        }
        let Some(candidate) = found else {
            let until = next_due.map(|left| {
                let left = Duration::try_from_secs_f64(left.max(0.0)).unwrap_or(Duration::MAX);
                Instant::now()
                    .checked_add(left)
                    .unwrap_or_else(Instant::now)
            });
            return Ok(Err(until));
        };
        let (members, patient_id) = index.members(candidate.level, &candidate.uid)?;
        self.handed.insert((candidate.level, candidate.uid.clone()));
        Ok(Ok(Completed {
            level: candidate.level,
            uid: candidate.uid,
            study_instance_uid: candidate.study_instance_uid,
            patient_id,
            revision: u32::try_from(candidate.events).unwrap_or(u32::MAX),
            last_received: candidate.last_received,
            members,
        }))
    }
}

/// What a wait on the feed gave.
// Moved out once per event, as `Received` is.
#[allow(clippy::large_enum_variant)]
enum Next {
    Event(Event),
    /// The server has ended and nothing is left.
    Ended,
    /// Nothing came before the wait's patience ran out.
    Quiet,
}

/// Hands replayed rows to a feed from another thread.
#[derive(Clone)]
pub struct Replayer {
    replays: Arc<Mutex<VecDeque<i64>>>,
    queue: Arc<EventQueue>,
}

impl Replayer {
    /// Deliver these rows again (set pending in the journal already), waking the feed.
    pub fn replay(&self, ids: impl IntoIterator<Item = i64>) {
        lock(&self.replays).extend(ids);
        self.queue.poke();
    }

    /// Parked completion events were replayed in the journal: the feed looks at its timers.
    pub fn wake(&self) {
        self.queue.poke();
    }
}

/// Tells a feed from another thread that completion events are done.
#[derive(Clone)]
pub struct Completer {
    done: Arc<Mutex<Vec<(Level, String)>>>,
    queue: Arc<EventQueue>,
}

impl Completer {
    /// As [`Feed::completion_done`], taken up by the feed at its next turn (woken now).
    pub fn done(&self, level: Level, uid: String) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((level, uid));
        self.queue.poke();
    }
}

fn stored(entry: InstanceEntry) -> StoredInstance {
    let unknown = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    StoredInstance {
        receipt: Receipt {
            peer: entry.peer.parse().unwrap_or(unknown),
            path: entry.path,
            sop_class_uid: entry.sop_class_uid,
            sop_instance_uid: entry.sop_instance_uid,
            transfer_syntax_uid: entry.transfer_syntax_uid,
            calling_ae: entry.calling_ae,
            called_ae: entry.called_ae,
            bytes: entry.bytes,
        },
        held: entry.held,
        journal_id: Some(entry.id),
        elements: Vec::new(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The events until the end; a journal that fails to read ends them too (tests, mostly).
impl Iterator for Feed {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.next_event().ok().flatten()
    }
}

impl Drop for Feed {
    /// The consumer is gone: associations waiting for room stop waiting.
    fn drop(&mut self) {
        self.queue.close();
    }
}
