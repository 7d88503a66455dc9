//! The verdict: with a user handler configured, an instance complete in its spool file and
//! checked against its command waits for the handler to decide its C-STORE status before it is
//! published (DESIGN.md, "verdict?"). Requests queue for a pool of handler threads, so a slow
//! handler holds back only the association waiting for it; each wait is bounded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::dimse::status;
use crate::events::Receipt;
use crate::scan::Element;
use crate::store::Spool;

/// A failed step: the status to answer and its Error Comment.
pub type Failure = (u16, String);

/// The status pynetdicom answers when the EVT_C_STORE handler raises (its Storage Service
/// Class, `ctx.error_status`), which pacsanini's callbacks inherit: 0xC211, "cannot
/// understand" range of PS3.4 §B.2.3.
pub const HANDLER_FAILED: u16 = 0xC211;

/// When the handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Between "complete and checked" and "publish": the handler's status decides whether
    /// the instance is stored.
    BeforePublish,
    /// After the file is in place, before the answer (pacsanini's order): the status only
    /// changes what the peer hears; the file stays, as with pacsanini.
    AfterPublish,
}

/// How the server consults the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerConfig {
    /// How long an association waits for a verdict (None: no limit); past it the store fails
    /// with 0xA700 and an Error Comment.
    pub timeout: Option<Duration>,
    pub stage: Stage,
}

/// What the handler is shown: the instance and where it came from.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Its `path` is where the instance is (or will be) stored; the data set is the file's
    /// last `bytes` bytes.
    pub receipt: Receipt,
    /// The complete Part 10 file to read: the spool file before publishing, the stored file
    /// after.
    pub file: PathBuf,
    /// The attributes the scan captured, as encoded: the handler's data set serves them
    /// without reading the file.
    pub elements: Vec<Element>,
    pub message_id: u16,
    pub context_id: u8,
}

/// The handler's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: u16,
    pub error_comment: Option<String>,
    /// False when the handler stored the data itself: dicom-inlet then keeps no file.
    pub keep: bool,
}

impl Verdict {
    /// Success, dicom-inlet keeping the file: the answer when no handler is configured.
    pub fn success() -> Verdict {
        Verdict {
            status: status::SUCCESS,
            error_comment: None,
            keep: true,
        }
    }

    pub fn failure(status: u16, comment: impl Into<String>) -> Verdict {
        Verdict {
            status,
            error_comment: Some(comment.into()),
            keep: false,
        }
    }

    /// Whether dicom-inlet publishes its file: a success or warning status (the peer is told
    /// the instance is kept, PS3.4 §B.2.3) that the handler did not take over.
    pub fn publishes(&self) -> bool {
        self.keep && is_stored(self.status)
    }
}

/// Success (0000) or a warning (0001, 0107, 0116, Bxxx) of a C-STORE-RSP (PS3.7 Annex C).
pub fn is_stored(status: u16) -> bool {
    matches!(status, 0x0000 | 0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF)
}

#[derive(Debug)]
enum State {
    Waiting,
    Answered(Verdict),
    /// The handler side dropped the request unanswered.
    Dropped,
    /// The association stopped waiting (timeout).
    Abandoned,
}

#[derive(Debug)]
struct Slot {
    state: Mutex<State>,
    changed: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One question waiting for its verdict: an instance (`Request<Instance>`) or a C-ECHO
/// (`Request<Echo>`). Dropped unanswered, it counts as a handler that failed.
#[derive(Debug)]
pub struct Request<T> {
    pub subject: T,
    slot: Arc<Slot>,
}

impl<T> Request<T> {
    /// Deliver the verdict; false when the association no longer waits for it (timed out).
    pub fn answer(self, verdict: Verdict) -> bool {
        self.settle(State::Answered(verdict))
    }

    fn settle(&self, new: State) -> bool {
        let mut state = lock(&self.slot.state);
        if !matches!(*state, State::Waiting) {
            return false;
        }
        *state = new;
        self.slot.changed.notify_all();
        true
    }

    fn abandoned(&self) -> bool {
        matches!(*lock(&self.slot.state), State::Abandoned)
    }
}

impl<T> Drop for Request<T> {
    fn drop(&mut self) {
        self.settle(State::Dropped);
    }
}

/// Why a question got no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The handlers have stopped (the server is shutting down).
    Closed,
    /// The handler side dropped the request: the handler failed.
    Dropped,
    /// No verdict within this timeout.
    TimedOut(Duration),
}

#[derive(Debug)]
struct Queue<T> {
    requests: VecDeque<Request<T>>,
    closed: bool,
    /// Handler threads waiting for a request, the most recently idle last: a request wakes
    /// that one. A condvar would wake the longest idle, so one association's requests would
    /// go round the whole pool (64 threads by default), each to a thread gone cold: 12% of
    /// small instances' rate with a handler answering 0x0000, against one thread.
    idle: Vec<Arc<Condvar>>,
}

/// Questions waiting for a handler thread, each asker waiting (bounded) for its verdict.
#[derive(Debug)]
pub struct Pending<T> {
    /// How long an asker waits (None: no limit).
    timeout: Option<Duration>,
    queue: Mutex<Queue<T>>,
}

impl<T> Pending<T> {
    pub fn new(timeout: Option<Duration>) -> Pending<T> {
        Pending {
            timeout,
            queue: Mutex::new(Queue {
                requests: VecDeque::new(),
                closed: false,
                idle: Vec::new(),
            }),
        }
    }

    /// Queue `subject` for a handler and wait, up to the timeout, for its verdict.
    pub fn ask(&self, subject: T) -> Result<Verdict, Unanswered> {
        let slot = Arc::new(Slot {
            state: Mutex::new(State::Waiting),
            changed: Condvar::new(),
        });
        {
            let mut queue = lock(&self.queue);
            if queue.closed {
                return Err(Unanswered::Closed);
            }
            queue.requests.push_back(Request {
                subject,
                slot: Arc::clone(&slot),
            });
            if let Some(handler) = queue.idle.pop() {
                handler.notify_one();
            }
        }
        let state = lock(&slot.state);
        let waiting = |s: &mut State| matches!(s, State::Waiting);
        let mut state = match self.timeout {
            None => slot
                .changed
                .wait_while(state, waiting)
                .unwrap_or_else(|p| p.into_inner()),
            Some(timeout) => {
                slot.changed
                    .wait_timeout_while(state, timeout, waiting)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        match std::mem::replace(&mut *state, State::Abandoned) {
            State::Answered(verdict) => Ok(verdict),
            State::Dropped => Err(Unanswered::Dropped),
            State::Waiting | State::Abandoned => {
                Err(Unanswered::TimedOut(self.timeout.unwrap_or_default()))
            }
        }
    }

    /// The next request still awaited, waiting for one; None once closed and empty.
    pub fn next(&self) -> Option<Request<T>> {
        let mut queue = lock(&self.queue);
        let me = Arc::new(Condvar::new());
        loop {
            while let Some(request) = queue.requests.pop_front() {
                if !request.abandoned() {
                    return Some(request);
                }
            }
            if queue.closed {
                return None;
            }
            queue.idle.push(Arc::clone(&me));
            queue = me.wait(queue).unwrap_or_else(|p| p.into_inner());
            // Popped by the asker that woke it, or still listed if woken otherwise: unlisted
            // either way, listed again (last) only if it waits again.
            queue.idle.retain(|other| !Arc::ptr_eq(other, &me));
        }
    }

    /// Wake every handler thread to end (once no association can ask any more).
    pub fn close(&self) {
        let mut queue = lock(&self.queue);
        queue.closed = true;
        for handler in queue.idle.drain(..) {
            handler.notify_one();
        }
    }
}

/// The instances waiting for the store handler.
#[derive(Debug)]
pub struct Verdicts {
    pub config: HandlerConfig,
    pending: Pending<Instance>,
}

impl Verdicts {
    pub fn new(config: HandlerConfig) -> Verdicts {
        Verdicts {
            config,
            pending: Pending::new(config.timeout),
        }
    }

    /// Ask the handler about `instance`; no verdict fails the store.
    pub fn ask(&self, instance: Instance) -> Verdict {
        match self.pending.ask(instance) {
            Ok(verdict) => verdict,
            Err(Unanswered::Closed) => {
                Verdict::failure(status::OUT_OF_RESOURCES, "the handlers have stopped")
            }
            Err(Unanswered::Dropped) => {
                Verdict::failure(HANDLER_FAILED, "the handler gave no verdict")
            }
            // PS3.4 §B.2.3: A7xx "refused: out of resources" for what we cannot finish.
            Err(Unanswered::TimedOut(timeout)) => Verdict::failure(
                status::OUT_OF_RESOURCES,
                format!(
                    "the handler gave no verdict within {} s",
                    timeout.as_secs_f64()
                ),
            ),
        }
    }

    /// Publish a complete, checked spool file with `place`, asking the handler as its stage
    /// says: before (a verdict that does not publish drops the spool, so no file is left) or
    /// after (the verdict changes only the answer). `instance` describes it for the handler,
    /// given the file to read. Returns the verdict to answer and the stored path, if any.
    pub fn around_publish<P: AsRef<Path>>(
        &self,
        mut spool: Spool,
        instance: impl FnOnce(&Path) -> Instance,
        place: impl FnOnce(Spool) -> Result<P, Failure>,
    ) -> (Verdict, Option<P>) {
        let failed = |(status, comment): Failure| (Verdict::failure(status, comment), None);
        match self.config.stage {
            Stage::BeforePublish => {
                if let Err(e) = spool.flush() {
                    let comment = format!("cannot write the data set: {e}");
                    return failed((status::OUT_OF_RESOURCES, comment));
                }
                let verdict = self.ask(instance(spool.path()));
                if !verdict.publishes() {
                    return (verdict, None);
                }
                match place(spool) {
                    Ok(stored) => (verdict, Some(stored)),
                    Err(failure) => failed(failure),
                }
            }
            Stage::AfterPublish => match place(spool) {
                Ok(stored) => (self.ask(instance(stored.as_ref())), Some(stored)),
                Err(failure) => failed(failure),
            },
        }
    }

    /// The next instance awaiting a verdict, waiting for one; None once closed.
    pub fn next(&self) -> Option<Request<Instance>> {
        self.pending.next()
    }

    pub fn close(&self) {
        self.pending.close();
    }
}

/// How the server consults the echo handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoConfig {
    /// How long an association waits for the status (None: no limit); past it the C-ECHO
    /// is answered with success.
    pub timeout: Option<Duration>,
}

/// A C-ECHO-RQ waiting for the echo handler's status (PS3.7 §9.1.5).
#[derive(Debug, Clone)]
pub struct Echo {
    /// The presentation context's abstract syntax (Verification) and transfer syntax.
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub calling_ae: String,
    pub called_ae: String,
    pub peer: SocketAddr,
    pub message_id: u16,
    pub context_id: u8,
}

impl Pending<Echo> {
    /// The C-ECHO-RSP status the echo handler gives. One that fails or gives none answers
    /// success, as pynetdicom's Verification SCP does for a raising handler: the peer still
    /// learns that the SCP is there.
    pub fn echo_verdict(&self, echo: Echo) -> Verdict {
        self.ask(echo).unwrap_or(Verdict::success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn instance(uid: &str) -> Instance {
        Instance {
            receipt: Receipt {
                path: PathBuf::from("a/b.dcm"),
                sop_class_uid: "1.2".into(),
                sop_instance_uid: uid.into(),
                transfer_syntax_uid: "1.2.840.10008.1.2".into(),
                calling_ae: "SCU".into(),
                called_ae: "SCP".into(),
                peer: "127.0.0.1:1".parse().unwrap(),
                bytes: 10,
            },
            file: PathBuf::from("spool"),
            elements: Vec::new(),
            message_id: 1,
            context_id: 1,
        }
    }

    fn verdicts(timeout: Option<Duration>) -> Arc<Verdicts> {
        Arc::new(Verdicts::new(HandlerConfig {
            timeout,
            stage: Stage::BeforePublish,
        }))
    }

    #[test]
    fn a_request_goes_to_the_handler_idle_last_and_none_is_lost() {
        let pending = Arc::new(Pending::<u32>::new(None));
        let (tx, rx) = std::sync::mpsc::channel();
        let handler = |name: &'static str| {
            let (pending, tx) = (Arc::clone(&pending), tx.clone());
            thread::spawn(move || {
                while let Some(request) = pending.next() {
                    tx.send((name, request.subject)).unwrap();
                    request.answer(Verdict {
                        status: 0,
                        error_comment: None,
                        keep: true,
                    });
                }
            })
        };
        let idle = |n: usize| {
            while lock(&pending.queue).idle.len() < n {
                thread::yield_now();
            }
        };
        let mut handlers = vec![handler("first")];
        idle(1);
        handlers.push(handler("second"));
        idle(2);
        // One asker at a time: every request to the thread that went idle last.
        for i in 0..10 {
            assert!(pending.ask(i).is_ok());
            assert_eq!(rx.recv().unwrap(), ("second", i));
            idle(2);
        }
        handlers.push(handler("third"));
        // Many at once: each answered, by whichever thread.
        let askers: Vec<_> = (0..4)
            .map(|a| {
                let pending = Arc::clone(&pending);
                thread::spawn(move || (0..200).all(|i| pending.ask(1000 * a + i).is_ok()))
            })
            .collect();
        assert!(askers.into_iter().all(|a| a.join().unwrap()));
        assert_eq!(rx.try_iter().count(), 800);
        pending.close();
        for handler in handlers {
            handler.join().unwrap();
        }
    }

    #[test]
    fn the_answer_reaches_the_asker() {
        let v = verdicts(None);
        let handler = {
            let v = Arc::clone(&v);
            thread::spawn(move || {
                let request = v.next().unwrap();
                assert_eq!(request.subject.receipt.sop_instance_uid, "1.2.3");
                assert!(request.answer(Verdict {
                    status: 0xB000,
                    error_comment: None,
                    keep: true
                }));
            })
        };
        let verdict = v.ask(instance("1.2.3"));
        handler.join().unwrap();
        assert_eq!(verdict.status, 0xB000);
        assert!(verdict.publishes());
    }

    #[test]
    fn a_dropped_request_fails_like_a_raising_handler() {
        let v = verdicts(None);
        let handler = {
            let v = Arc::clone(&v);
            thread::spawn(move || drop(v.next().unwrap()))
        };
        let verdict = v.ask(instance("1"));
        handler.join().unwrap();
        assert_eq!(verdict.status, HANDLER_FAILED);
        assert!(!verdict.publishes());
    }

    #[test]
    fn an_unanswered_request_times_out_and_is_skipped_by_the_handlers() {
        let v = verdicts(Some(Duration::from_millis(1)));
        // No handler thread yet: the wait expires with the request still queued.
        let verdict = v.ask(instance("late"));
        assert_eq!(verdict.status, status::OUT_OF_RESOURCES);
        assert!(verdict.error_comment.unwrap().contains("no verdict within"));
        v.close();
        assert!(
            v.next().is_none(),
            "an abandoned request reaches no handler"
        );
    }

    #[test]
    fn a_late_answer_is_refused_and_close_ends_the_handlers() {
        let v = verdicts(None);
        // A request whose association stopped waiting, as after a timeout.
        let request = Request {
            subject: instance("x"),
            slot: Arc::new(Slot {
                state: Mutex::new(State::Abandoned),
                changed: Condvar::new(),
            }),
        };
        assert!(!request.answer(Verdict::failure(0, "too late")));
        let handler = {
            let v = Arc::clone(&v);
            thread::spawn(move || v.next().is_none())
        };
        v.close();
        assert!(handler.join().unwrap(), "a waiting handler thread ends");
        assert_eq!(
            v.ask(instance("after")).status,
            status::OUT_OF_RESOURCES,
            "nobody is asked once closed"
        );
    }

    #[test]
    fn statuses_that_publish() {
        for (status, keep, publishes) in [
            (0x0000, true, true),
            (0xB007, true, true),
            (0x0107, true, true),
            (0x0000, false, false),
            (0xA700, true, false),
            (0xC211, true, false),
            (0x0122, true, false),
        ] {
            let verdict = Verdict {
                status,
                error_comment: None,
                keep,
            };
            assert_eq!(verdict.publishes(), publishes, "{status:#06x} keep={keep}");
        }
    }

    fn echo() -> Echo {
        Echo {
            sop_class_uid: "1.2.840.10008.1.1".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2".into(),
            calling_ae: "SCU".into(),
            called_ae: "SCP".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            message_id: 7,
            context_id: 3,
        }
    }

    #[test]
    fn an_echo_answers_the_handlers_status_or_success_when_it_gives_none() {
        let echoes = Arc::new(Pending::<Echo>::new(None));
        let handler = {
            let echoes = Arc::clone(&echoes);
            thread::spawn(move || {
                let request = echoes.next().unwrap();
                assert_eq!(
                    (request.subject.message_id, request.subject.context_id),
                    (7, 3)
                );
                assert!(request.answer(Verdict::failure(0x0122, "not today")));
                // The next one the handler fails to answer.
                drop(echoes.next().unwrap());
            })
        };
        let refused = echoes.echo_verdict(echo());
        assert_eq!(
            (refused.status, refused.error_comment.as_deref()),
            (0x0122, Some("not today"))
        );
        assert_eq!(echoes.echo_verdict(echo()), Verdict::success());
        handler.join().unwrap();
        let late = Pending::<Echo>::new(Some(Duration::from_millis(1)));
        assert_eq!(
            late.ask(echo()).unwrap_err(),
            Unanswered::TimedOut(Duration::from_millis(1))
        );
        assert_eq!(late.echo_verdict(echo()), Verdict::success());
        late.close();
        assert!(late.next().is_none(), "timed-out echoes reach no handler");
        assert_eq!(
            late.echo_verdict(echo()),
            Verdict::success(),
            "nor once closed"
        );
    }
}
