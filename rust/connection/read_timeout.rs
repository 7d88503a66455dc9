//! Socket reads bounded by a deadline, without a `setsockopt` before each one.
//!
//! A read may wait only for what is left until its deadline, so a peer trickling bytes cannot
//! stretch it. Setting that exact remainder before every read costs a system call per read;
//! instead the socket keeps a timeout of half the time left, which stays short enough for every
//! later read until half of it has passed. A deadline a new PDU moves later only leaves more
//! room, so one setting usually serves a whole association. A read that times out before the
//! deadline (the halved timeout) is retried with what is left, so the deadline fires on time.

use std::io::{self, ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Below this much time left the timeout is the exact remainder, so near a deadline the
/// halving ends instead of waking up ever more often.
const EXACT_BELOW: Duration = Duration::from_millis(50);

/// The read timeout the socket has; `Unknown` until one is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ReadTimeout {
    #[default]
    Unknown,
    Set(Option<Duration>),
}

impl ReadTimeout {
    /// The timeout to set before a read starting at `now` that must end by `due` (None: no
    /// limit), or None when the one set already ends in time; `TimedOut` when `due` is past.
    fn before_read(
        self,
        due: Option<Instant>,
        now: Instant,
    ) -> io::Result<Option<Option<Duration>>> {
        let Some(due) = due else {
            return Ok((self != ReadTimeout::Set(None)).then_some(None));
        };
        let left = due.saturating_duration_since(now);
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        match self {
            ReadTimeout::Set(Some(set)) if set <= left => Ok(None),
            _ if left < EXACT_BELOW => Ok(Some(Some(left))),
            _ => Ok(Some(Some(left / 2))),
        }
    }
}

/// Read from `stream` into `buf`, waiting no later than `due` (None: as long as it takes);
/// `timeout` is what the socket has set, kept up to date.
pub(crate) fn read_by(
    stream: &TcpStream,
    timeout: &mut ReadTimeout,
    due: Option<Instant>,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut socket = stream;
    loop {
        if let Some(set) = timeout.before_read(due, Instant::now())? {
            stream.set_read_timeout(set)?;
            *timeout = ReadTimeout::Set(set);
        }
        match socket.read(buf) {
            // A timeout shorter than what is left ran out: wait for the rest.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if due.is_none_or(|due| Instant::now() >= due) {
                    return Err(e);
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_read_sets_half_of_what_is_left_and_later_reads_reuse_it() {
        let now = Instant::now();
        let due = Some(now + 30 * S);
        let first = ReadTimeout::Unknown.before_read(due, now).unwrap();
        assert_eq!(first, Some(Some(15 * S)));
        let set = ReadTimeout::Set(Some(15 * S));
        // Until half the time has passed, and for any later deadline, nothing to set.
        assert_eq!(set.before_read(due, now + 15 * S).unwrap(), None);
        assert_eq!(set.before_read(Some(now + 31 * S), now + S).unwrap(), None);
        // Past that, the set timeout could outlast the deadline: a shorter one.
        let later = set.before_read(due, now + 16 * S).unwrap();
        assert_eq!(later, Some(Some(7 * S)));
    }

    #[test]
    fn near_the_deadline_the_timeout_is_what_is_left_and_past_it_a_read_times_out() {
        let now = Instant::now();
        let due = Some(now + S);
        let set = ReadTimeout::Set(Some(S / 2));
        let left = Duration::from_millis(30);
        assert_eq!(
            set.before_read(due, now + S - left).unwrap(),
            Some(Some(left))
        );
        for at in [now + S, now + 2 * S] {
            let e = set.before_read(due, at).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::TimedOut);
        }
    }

    #[test]
    fn no_deadline_clears_a_timeout_once() {
        let now = Instant::now();
        for state in [ReadTimeout::Unknown, ReadTimeout::Set(Some(S))] {
            assert_eq!(state.before_read(None, now).unwrap(), Some(None));
        }
        assert_eq!(ReadTimeout::Set(None).before_read(None, now).unwrap(), None);
        // A deadline after none sets a timeout again.
        let due = Some(now + 4 * S);
        let set = ReadTimeout::Set(None).before_read(due, now).unwrap();
        assert_eq!(set, Some(Some(2 * S)));
    }
}
