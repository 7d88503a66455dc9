//! The `dicom_inlet._core` extension module: configuration in, events and errors out.
//! Blocking work (binding, waiting for events, shutdown) runs with the GIL released.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::association::AcceptorPolicy;
use crate::error::Error;
use crate::file_meta::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::layout::SortKey;
use crate::server::{self, Event, ServerConfig};
use crate::transfer_syntax;

impl From<Error> for PyErr {
    fn from(error: Error) -> PyErr {
        match error {
            Error::Io { .. } => PyOSError::new_err(error.to_string()),
            Error::InvalidConfig(message) => PyValueError::new_err(message),
        }
    }
}

fn seconds(value: Option<f64>) -> Result<Option<Duration>, Error> {
    match value {
        None => Ok(None),
        Some(s) if s > 0.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(Error::InvalidConfig(format!(
            "timeouts must be positive seconds, got {s}"
        ))),
    }
}

/// A running Storage SCP.
#[pyclass(frozen, module = "dicom_inlet._core")]
struct Server {
    // Declared first so it drops first: association threads blocked on a full queue then fail
    // their send instead of deadlocking the server's drop (e.g. at interpreter exit).
    events: Mutex<Receiver<Event>>,
    inner: server::Server,
}

#[pymethods]
impl Server {
    #[new]
    #[pyo3(signature = (*, host, port, ae_title, data_dir, sort_by, sop_classes,
        transfer_syntaxes=None, require_called_ae=false, allowed_calling_aes=Vec::new(),
        max_associations=64, max_pdu=262_144, acse_timeout=None, network_timeout=None,
        durable=false, emit_stored=false, event_queue=64))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        ae_title: String,
        data_dir: PathBuf,
        sort_by: &str,
        sop_classes: Vec<String>,
        transfer_syntaxes: Option<Vec<String>>,
        require_called_ae: bool,
        allowed_calling_aes: Vec<String>,
        max_associations: usize,
        max_pdu: u32,
        acse_timeout: Option<f64>,
        network_timeout: Option<f64>,
        durable: bool,
        emit_stored: bool,
        event_queue: usize,
    ) -> PyResult<Server> {
        let sort_key = SortKey::parse(sort_by)
            .ok_or_else(|| Error::InvalidConfig(format!("unknown sort key {sort_by:?}")))?;
        if let Some(unsupported) = transfer_syntaxes
            .iter()
            .flatten()
            .find(|ts| !transfer_syntax::is_supported(ts))
        {
            return Err(
                Error::InvalidConfig(format!("unsupported transfer syntax {unsupported}")).into(),
            );
        }
        let config = ServerConfig {
            host,
            port,
            policy: AcceptorPolicy {
                ae_title,
                require_called_ae,
                allowed_calling_aes,
                sop_classes: sop_classes.into_iter().collect(),
                transfer_syntaxes,
                max_pdu,
            },
            data_dir,
            sort_key,
            durable,
            max_associations,
            acse_timeout: seconds(acse_timeout)?,
            network_timeout: seconds(network_timeout)?,
            emit_stored,
            event_queue,
        };
        let (inner, events) = py.detach(|| server::Server::start(config))?;
        Ok(Server {
            inner,
            events: Mutex::new(events),
        })
    }

    /// The bound TCP port.
    #[getter]
    fn port(&self) -> u16 {
        self.inner.local_addr().port()
    }

    /// The bound address.
    #[getter]
    fn host(&self) -> String {
        self.inner.local_addr().ip().to_string()
    }

    /// The absolute storage root.
    #[getter]
    fn data_dir(&self) -> PathBuf {
        self.inner.storage_root().to_path_buf()
    }

    /// Wait for the next event; None once the server has shut down and every event was taken.
    fn next_event(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let event = py.detach(|| {
            let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            events.recv().ok()
        });
        event
            .map(|event| match event {
                Event::Stored(s) => Py::new(py, StoredInstance::from(s)).map(Py::into_any),
                Event::AssociationEnded(r) => {
                    Py::new(py, AssociationRecord::from(r)).map(Py::into_any)
                }
            })
            .transpose()
    }

    /// Stop accepting, give open associations `timeout` seconds to finish, abort the rest.
    fn shutdown(&self, py: Python<'_>, timeout: f64) {
        let grace = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
        py.detach(|| self.inner.shutdown(grace));
    }
}

/// An instance written under data_dir.
#[pyclass(frozen, get_all, module = "dicom_inlet._core")]
struct StoredInstance {
    path: PathBuf,
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax_uid: String,
    calling_ae: String,
    called_ae: String,
    peer_host: String,
    peer_port: u16,
    bytes: u64,
}

impl From<server::StoredInstance> for StoredInstance {
    fn from(s: server::StoredInstance) -> Self {
        StoredInstance {
            path: s.path,
            sop_class_uid: s.sop_class_uid,
            sop_instance_uid: s.sop_instance_uid,
            transfer_syntax_uid: s.transfer_syntax_uid,
            calling_ae: s.calling_ae,
            called_ae: s.called_ae,
            peer_host: s.peer.ip().to_string(),
            peer_port: s.peer.port(),
            bytes: s.bytes,
        }
    }
}

/// Summary of a finished association.
#[pyclass(frozen, get_all, module = "dicom_inlet._core")]
struct AssociationRecord {
    peer_host: String,
    peer_port: u16,
    calling_ae: String,
    called_ae: String,
    instances: u64,
    failures: u64,
    bytes: u64,
    duration: f64,
    outcome: &'static str,
    detail: Option<String>,
}

impl From<server::AssociationRecord> for AssociationRecord {
    fn from(r: server::AssociationRecord) -> Self {
        AssociationRecord {
            peer_host: r.peer.ip().to_string(),
            peer_port: r.peer.port(),
            calling_ae: r.calling_ae,
            called_ae: r.called_ae,
            instances: r.instances,
            failures: r.failures,
            bytes: r.bytes,
            duration: r.duration.as_secs_f64(),
            outcome: r.outcome.as_str(),
            detail: r.detail,
        }
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Server>()?;
    m.add_class::<StoredInstance>()?;
    m.add_class::<AssociationRecord>()?;
    m.add("TRANSFER_SYNTAXES", transfer_syntax::SUPPORTED.to_vec())?;
    m.add("IMPLEMENTATION_CLASS_UID", IMPLEMENTATION_CLASS_UID)?;
    m.add("IMPLEMENTATION_VERSION_NAME", IMPLEMENTATION_VERSION_NAME)?;
    Ok(())
}
