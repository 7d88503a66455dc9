//! The crate's error type as seen by callers of the server and the SCU (the binding maps it to
//! Python).

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// An operating system error, with what we were doing when it happened.
    Io { context: String, source: io::Error },
    /// A configuration value that cannot work.
    InvalidConfig(String),
    /// The peer cannot be reached: no TCP connection to `address`.
    ConnectionFailed { address: String, source: io::Error },
    /// The peer answered our A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ (PS3.8 §9.3.4).
    AssociationRejected { result: u8, source: u8, reason: u8 },
    /// An established association ended early: the peer sent an A-ABORT, broke the protocol
    /// (we sent one), went silent past the timeout, or dropped the connection.
    AssociationAborted(String),
    /// The peer accepted the association but none of the presentation contexts we need.
    NoPresentationContext(String),
    /// The journal cannot be opened, read or written; says which file and why.
    Journal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// A-ASSOCIATE-RJ result, source and reason in words (PS3.8 Table 9-21).
pub(crate) fn rejection_words(
    result: u8,
    source: u8,
    reason: u8,
) -> (&'static str, &'static str, String) {
    let result = match result {
        1 => "permanent",
        2 => "transient",
        _ => "unknown result",
    };
    let words = match (source, reason) {
        (1 | 2, 1) => "no reason given",
        (1, 2) => "application context name not supported",
        (1, 3) => "calling AE title not recognized",
        (1, 7) => "called AE title not recognized",
        (2, 2) => "protocol version not supported",
        (3, 1) => "temporary congestion",
        (3, 2) => "local limit exceeded",
        _ => "",
    };
    let reason = match words {
        "" => format!("reason {reason}"),
        words => words.to_owned(),
    };
    let source = match source {
        1 => "the called AE (service user)",
        2 => "the ACSE service provider",
        3 => "the presentation service provider",
        _ => "an unknown source",
    };
    (result, source, reason)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::InvalidConfig(message) => f.write_str(message),
            Error::ConnectionFailed { address, source } => {
                write!(f, "cannot connect to {address}: {source}")
            }
            Error::AssociationRejected {
                result,
                source,
                reason,
            } => {
                let (r, s, why) = rejection_words(*result, *source, *reason);
                write!(
                    f,
                    "association rejected ({r}) by {s}: {why} \
                     [result {result}, source {source}, reason {reason}]"
                )
            }
            Error::AssociationAborted(detail) => write!(f, "association aborted: {detail}"),
            Error::NoPresentationContext(detail) | Error::Journal(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::ConnectionFailed { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_told_in_words() {
        let text = |result, source, reason| {
            Error::AssociationRejected {
                result,
                source,
                reason,
            }
            .to_string()
        };
        assert_eq!(
            text(1, 1, 7),
            "association rejected (permanent) by the called AE (service user): \
             called AE title not recognized [result 1, source 1, reason 7]"
        );
        assert!(text(2, 3, 2)
            .contains("(transient) by the presentation service provider: local limit exceeded"));
        assert!(text(1, 2, 2).contains("protocol version not supported"));
        assert!(text(1, 1, 3).contains("calling AE title not recognized"));
        assert!(text(9, 9, 9).contains("unknown result) by an unknown source: reason 9"));
    }
}
