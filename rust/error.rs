//! The crate's error type as seen by callers of the server (the binding maps it to Python).

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// An operating system error, with what we were doing when it happened.
    Io { context: String, source: io::Error },
    /// A configuration value that cannot work.
    InvalidConfig(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::InvalidConfig(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::InvalidConfig(_) => None,
        }
    }
}
