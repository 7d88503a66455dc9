//! dicom-inlet's core: a DICOM Storage SCP that streams received instances to disk.
//!
//! Pure Rust modules, each testable alone; `python` is the only one that knows PyO3.

pub mod association;
pub mod connection;
pub mod dimse;
pub mod error;
pub mod events;
pub mod file_meta;
// The fuzz targets' bodies; `fuzzing` is the cfg cargo-fuzz sets.
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod journal;
pub mod layout;
pub mod pdu;
pub mod scan;
pub mod scu;
pub mod server;
pub mod store;
pub mod tls;
pub mod transfer_syntax;
pub mod verdict;
pub mod vr;

#[cfg(feature = "python")]
mod python;
