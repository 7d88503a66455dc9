//! dicom-inlet's core: a DICOM Storage SCP that streams received instances to disk.
//!
//! Pure Rust modules, each testable alone; `python` is the only one that knows PyO3.

pub mod association;
pub mod connection;
pub mod dimse;
pub mod error;
pub mod file_meta;
pub mod layout;
pub mod pdu;
pub mod scan;
pub mod server;
pub mod store;
pub mod transfer_syntax;

#[cfg(feature = "python")]
mod python;
