//! The `dicom_inlet._core` extension module: configuration in, events and errors out.
//! Blocking work (binding, waiting for events, shutdown) runs with the GIL released.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::association::AcceptorPolicy;
use crate::error::Error;
use crate::file_meta::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::layout::SortKey;
use crate::server::{self, Event, ServerConfig};
use crate::tls;
use crate::transfer_syntax;

create_exception!(
    dicom_inlet,
    AssociationError,
    PyConnectionError,
    "An association with a peer could not be used."
);
create_exception!(
    dicom_inlet,
    AssociationRejected,
    AssociationError,
    "The peer refused the association (A-ASSOCIATE-RJ); `result`, `source` and `reason` hold \
     its codes (PS3.8 Table 9-21), the message says them in words."
);
create_exception!(
    dicom_inlet,
    AssociationAborted,
    AssociationError,
    "The association ended early: A-ABORT, protocol error, timeout or lost connection."
);

impl From<Error> for PyErr {
    fn from(error: Error) -> PyErr {
        let message = error.to_string();
        match error {
            Error::Io { .. } => PyOSError::new_err(message),
            Error::InvalidConfig(message) => PyValueError::new_err(message),
            Error::ConnectionFailed { .. } => PyConnectionError::new_err(message),
            Error::AssociationRejected {
                result,
                source,
                reason,
            } => Python::attach(|py| {
                let err = AssociationRejected::new_err(message);
                let value = err.value(py);
                for (name, code) in [("result", result), ("source", source), ("reason", reason)] {
                    // Setting an attribute on a fresh exception instance cannot fail.
                    let _ = value.setattr(name, code);
                }
                err
            }),
            Error::AssociationAborted(_) => AssociationAborted::new_err(message),
            Error::NoPresentationContext(_) => AssociationError::new_err(message),
        }
    }
}

fn seconds(value: Option<f64>) -> Result<Option<Duration>, Error> {
    match value {
        None => Ok(None),
        // Past Duration's range (about 5e11 years) is as good as no timeout.
        Some(s) if s > 0.0 => Ok(Duration::try_from_secs_f64(s).ok()),
        Some(s) => Err(Error::InvalidConfig(format!(
            "timeouts must be positive seconds, got {s}"
        ))),
    }
}

/// The TLS service for these files: none without a certificate.
fn server_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    port: Option<u16>,
) -> Result<Option<server::TlsService>, Error> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if ca.is_none() && port.is_none() => return Ok(None),
        _ => {
            return Err(Error::InvalidConfig(
                "TLS needs both a certificate file and a key file".into(),
            ))
        }
    };
    let config = tls::server_config(&tls::ServerFiles { cert, key, ca })?;
    Ok(Some(server::TlsService { config, port }))
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
        dimse_timeout=None, max_instance_size=None, durable=false, emit_stored=false,
        event_queue=64, tls_cert=None, tls_key=None, tls_ca=None, tls_port=None,
        identity_check=None, require_user_identity=false, node_id=String::from("node")))]
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
        dimse_timeout: Option<f64>,
        max_instance_size: Option<u64>,
        durable: bool,
        emit_stored: bool,
        event_queue: usize,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        tls_ca: Option<PathBuf>,
        tls_port: Option<u16>,
        identity_check: Option<Py<PyAny>>,
        require_user_identity: bool,
        node_id: String,
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
        let acse_timeout = seconds(acse_timeout)?;
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
                require_user_identity,
                identity_check: identity_check
                    .map(|callable| identity::PythonCheck::start(callable, acse_timeout))
                    .transpose()?,
            },
            data_dir,
            sort_key,
            durable,
            max_associations,
            acse_timeout,
            network_timeout: seconds(network_timeout)?,
            dimse_timeout: seconds(dimse_timeout)?,
            max_instance_size,
            emit_stored,
            event_queue,
            tls: server_tls(tls_cert, tls_key, tls_ca, tls_port)?,
            node_id,
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

    /// The bound TLS port when TLS is served beside plain TCP (on `port` when alone).
    #[getter]
    fn tls_port(&self) -> Option<u16> {
        self.inner.tls_local_addr().map(|a| a.port())
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

    /// Associations open now, and instances stored, refused and bytes received so far.
    fn stats(&self) -> ServerStats {
        let s = self.inner.stats();
        ServerStats {
            associations: s.associations,
            instances: s.instances,
            failures: s.failures,
            bytes: s.bytes,
        }
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
                Event::StoreFailed(f) => Py::new(py, FailedStore::from(f)).map(Py::into_any),
            })
            .transpose()
    }

    /// Stop accepting, give open associations `timeout` seconds to finish, abort the rest.
    fn shutdown(&self, py: Python<'_>, timeout: f64) {
        // Negative or NaN means no grace; past Duration's range (infinity included), no limit.
        let grace = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
        py.detach(|| self.inner.shutdown(grace));
    }

    /// End the grace of a shutdown under way (or of the next one): abort open associations now.
    fn abort_associations(&self) {
        self.inner.abort_open_associations();
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
    echoes: u64,
    bytes: u64,
    duration: f64,
    outcome: &'static str,
    detail: Option<String>,
    user_identity: Option<String>,
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
            echoes: r.echoes,
            bytes: r.bytes,
            duration: r.duration.as_secs_f64(),
            outcome: r.outcome.as_str(),
            detail: r.detail,
            user_identity: r.user_identity,
        }
    }
}

/// A C-STORE the server refused: the failure status and Error Comment the peer was sent.
#[pyclass(frozen, get_all, module = "dicom_inlet._core")]
struct FailedStore {
    peer_host: String,
    peer_port: u16,
    calling_ae: String,
    called_ae: String,
    sop_class_uid: String,
    sop_instance_uid: String,
    status: u16,
    error_comment: String,
}

impl From<server::FailedStore> for FailedStore {
    fn from(f: server::FailedStore) -> Self {
        FailedStore {
            peer_host: f.peer.ip().to_string(),
            peer_port: f.peer.port(),
            calling_ae: f.calling_ae,
            called_ae: f.called_ae,
            sop_class_uid: f.sop_class_uid,
            sop_instance_uid: f.sop_instance_uid,
            status: f.status,
            error_comment: f.error_comment,
        }
    }
}

/// A server's activity: associations open now, and running totals since it started.
#[pyclass(frozen, get_all, module = "dicom_inlet._core")]
struct ServerStats {
    associations: usize,
    instances: u64,
    failures: u64,
    bytes: u64,
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Server>()?;
    m.add_class::<StoredInstance>()?;
    m.add_class::<AssociationRecord>()?;
    m.add_class::<ServerStats>()?;
    m.add_class::<FailedStore>()?;
    m.add_class::<identity::UserIdentityRequest>()?;
    m.add("TRANSFER_SYNTAXES", transfer_syntax::SUPPORTED.to_vec())?;
    m.add("IMPLEMENTATION_CLASS_UID", IMPLEMENTATION_CLASS_UID)?;
    m.add("IMPLEMENTATION_VERSION_NAME", IMPLEMENTATION_VERSION_NAME)?;
    storage_scu::register(m)?;
    bench::register(m)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// User identity checks by a Python callable (PS3.7 §D.3.3.7), on a Python thread of their own:
// an association thread waits for the answer at most acse_timeout, so a slow or stuck callable
// delays only the associations it is asked about, and never holds the GIL for them.
mod identity {
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use pyo3::prelude::*;

    use crate::association::{IdentityCheck, IdentityVerdict};
    use crate::error::Error;
    use crate::pdu::UserIdentityRq;

    /// Checks waiting for the Python thread; past this, associations are refused at once.
    const QUEUE: usize = 64;

    type Request = (UserIdentityRequest, SyncSender<IdentityVerdict>);

    /// What a user identity callable is asked about.
    #[pyclass(frozen, get_all, module = "dicom_inlet._core")]
    pub(super) struct UserIdentityRequest {
        identity_type: u8,
        positive_response_requested: bool,
        primary: Vec<u8>,
        secondary: Vec<u8>,
        calling_ae: String,
    }

    #[derive(Debug)]
    pub(super) struct PythonCheck {
        requests: SyncSender<Request>,
        timeout: Option<Duration>,
    }

    impl PythonCheck {
        /// Start the thread that calls `callable` with each request; it ends with the server.
        pub(super) fn start(
            callable: Py<PyAny>,
            timeout: Option<Duration>,
        ) -> Result<Arc<dyn IdentityCheck>, Error> {
            let (requests, queue) = sync_channel(QUEUE);
            thread::Builder::new()
                .name("dicom-inlet-identity".into())
                .spawn(move || answer(&callable, &queue))
                .map_err(Error::io("cannot start the user identity thread"))?;
            Ok(Arc::new(PythonCheck { requests, timeout }))
        }
    }

    fn answer(callable: &Py<PyAny>, queue: &Receiver<Request>) {
        for (request, reply) in queue {
            let verdict = Python::attach(|py| {
                let answer = callable
                    .call1(py, (request,))
                    .and_then(|a| a.extract::<(bool, Option<Vec<u8>>)>(py));
                match answer {
                    Ok((true, response)) => IdentityVerdict::Accept(response),
                    Ok((false, _)) => {
                        IdentityVerdict::Reject("the identity check refused it".into())
                    }
                    Err(e) => IdentityVerdict::Reject(format!("the identity check failed: {e}")),
                }
            });
            // The association may have stopped waiting; then nobody needs the answer.
            let _ = reply.send(verdict);
        }
    }

    impl IdentityCheck for PythonCheck {
        fn check(&self, identity: &UserIdentityRq, calling_ae: &str) -> IdentityVerdict {
            let (reply, answer) = sync_channel(1);
            let request = UserIdentityRequest {
                identity_type: identity.identity_type,
                positive_response_requested: identity.positive_response_requested,
                primary: identity.primary.clone(),
                secondary: identity.secondary.clone(),
                calling_ae: calling_ae.to_owned(),
            };
            match self.requests.try_send((request, reply)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    return IdentityVerdict::Reject("too many identity checks waiting".into())
                }
                Err(TrySendError::Disconnected(_)) => {
                    return IdentityVerdict::Reject("the identity check has stopped".into())
                }
            }
            let answered = match self.timeout {
                Some(timeout) => answer.recv_timeout(timeout).ok(),
                None => answer.recv().ok(),
            };
            answered.unwrap_or_else(|| {
                IdentityVerdict::Reject(
                    "the identity check did not answer within acse_timeout".into(),
                )
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The storage SCU: C-ECHO and C-STORE, with the GIL released for all network and disk work.
mod storage_scu {
    use std::ops::ControlFlow;
    use std::path::PathBuf;
    use std::sync::Arc;

    use pyo3::prelude::*;

    use super::{seconds, AssociationAborted, AssociationError, AssociationRejected};
    use crate::error::Error;
    use crate::pdu::UserIdentityRq;
    use crate::scu::{self, InstanceResult, ScuConfig};
    use crate::tls;

    /// What became of one instance sent with C-STORE.
    #[pyclass(frozen, get_all, module = "dicom_inlet._core")]
    struct SentInstance {
        path: PathBuf,
        sop_class_uid: Option<String>,
        sop_instance_uid: Option<String>,
        transfer_syntax_uid: Option<String>,
        status: Option<u16>,
        error_comment: Option<String>,
        bytes: u64,
        warning: Option<String>,
    }

    impl From<InstanceResult> for SentInstance {
        fn from(r: InstanceResult) -> Self {
            SentInstance {
                path: r.path,
                sop_class_uid: r.sop_class_uid,
                sop_instance_uid: r.sop_instance_uid,
                transfer_syntax_uid: r.transfer_syntax_uid,
                status: r.status,
                error_comment: r.error_comment,
                bytes: r.bytes,
                warning: r.warning,
            }
        }
    }

    /// TLS options of `echo` and `send`.
    #[derive(FromPyObject)]
    struct Tls {
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        verify_hostname: bool,
    }

    fn client_tls(tls: Option<Tls>) -> Result<Option<Arc<rustls::ClientConfig>>, Error> {
        let Some(tls) = tls else { return Ok(None) };
        let cert_and_key = match (tls.cert, tls.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidConfig(
                    "a TLS client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        let files = tls::ClientFiles {
            ca: tls.ca,
            cert_and_key,
            verify_hostname: tls.verify_hostname,
        };
        tls::client_config(&files).map(Some)
    }

    /// The user identity `echo` and `send` present (PS3.7 §D.3.3.7).
    #[derive(FromPyObject)]
    struct UserIdentity {
        identity_type: u8,
        positive_response_requested: bool,
        primary: Vec<u8>,
        secondary: Vec<u8>,
    }

    #[allow(clippy::too_many_arguments)]
    fn config(
        host: String,
        port: u16,
        called_ae: String,
        calling_ae: String,
        max_pdu: u32,
        timeout: Option<f64>,
        async_window: u16,
        tls: Option<Tls>,
        user_identity: Option<UserIdentity>,
    ) -> Result<ScuConfig, Error> {
        Ok(ScuConfig {
            host,
            port,
            called_ae,
            calling_ae,
            max_pdu,
            timeout: seconds(timeout)?,
            async_window,
            tls: client_tls(tls)?,
            user_identity: user_identity.map(|identity| UserIdentityRq {
                identity_type: identity.identity_type,
                positive_response_requested: identity.positive_response_requested,
                primary: identity.primary,
                secondary: identity.secondary,
            }),
        })
    }

    /// C-ECHO the peer; returns the status it answers.
    #[pyfunction]
    #[pyo3(signature = (host, port, *, called_ae, calling_ae, timeout=None, tls=None,
        user_identity=None))]
    #[allow(clippy::too_many_arguments)]
    fn echo(
        py: Python<'_>,
        host: String,
        port: u16,
        called_ae: String,
        calling_ae: String,
        timeout: Option<f64>,
        tls: Option<Tls>,
        user_identity: Option<UserIdentity>,
    ) -> PyResult<u16> {
        let config = config(
            host,
            port,
            called_ae,
            calling_ae,
            262_144,
            timeout,
            1,
            tls,
            user_identity,
        )?;
        Ok(py.detach(|| scu::echo(&config))?)
    }

    /// C-STORE Part 10 files; one result per path, in order. `progress` is called with each
    /// result as it completes; an exception from it (or a signal such as Ctrl-C) stops the
    /// sending and is raised once the open associations are released.
    #[pyfunction]
    #[pyo3(signature = (host, port, paths, *, called_ae, calling_ae, associations=1,
        max_pdu=262_144, timeout=None, async_window=1, progress=None, tls=None,
        user_identity=None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        py: Python<'_>,
        host: String,
        port: u16,
        paths: Vec<PathBuf>,
        called_ae: String,
        calling_ae: String,
        associations: usize,
        max_pdu: u32,
        timeout: Option<f64>,
        async_window: u16,
        progress: Option<Py<PyAny>>,
        tls: Option<Tls>,
        user_identity: Option<UserIdentity>,
    ) -> PyResult<Vec<SentInstance>> {
        let config = config(
            host,
            port,
            called_ae,
            calling_ae,
            max_pdu,
            timeout,
            async_window,
            tls,
            user_identity,
        )?;
        // The first exception is raised at the end. After a signal (Ctrl-C) the callback
        // still sees the instances answered meanwhile; after its own exception it does not.
        let mut failure = None;
        let mut callback_failed = false;
        let results = py.detach(|| {
            scu::send(&config, &paths, associations, &mut |result| {
                Python::attach(|py| {
                    if let Err(e) = py.check_signals() {
                        failure.get_or_insert(e);
                    }
                    if let (Some(progress), Some(result), false) =
                        (&progress, result, callback_failed)
                    {
                        if let Err(e) = progress.call1(py, (SentInstance::from(result.clone()),)) {
                            callback_failed = true;
                            failure.get_or_insert(e);
                        }
                    }
                    match failure {
                        Some(_) => ControlFlow::Break(()),
                        None => ControlFlow::Continue(()),
                    }
                })
            })
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(results.into_iter().map(SentInstance::from).collect())
    }

    pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add_class::<SentInstance>()?;
        m.add_function(wrap_pyfunction!(echo, m)?)?;
        m.add_function(wrap_pyfunction!(send, m)?)?;
        m.add("AssociationError", py.get_type::<AssociationError>())?;
        m.add("AssociationRejected", py.get_type::<AssociationRejected>())?;
        m.add("AssociationAborted", py.get_type::<AssociationAborted>())?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Benchmark entry points for benches/test_bench_core.py: thin wrappers over the core functions
// the receive path runs, so each can be timed alone. Not API (leading underscore).
mod bench {
    use std::path::PathBuf;

    use pyo3::prelude::*;

    use crate::error::Error;
    use crate::file_meta::FileMeta;
    use crate::layout::{self, SortKey};
    use crate::pdu;
    use crate::scan::{Encoding, Scanner, SortAttributes};
    use crate::store::Storage;

    fn bad_input(what: impl std::fmt::Display) -> Error {
        Error::InvalidConfig(format!("benchmark input: {what}"))
    }

    /// Parse one P-DATA-TF PDU (header included) into its PDVs; returns the fragment bytes.
    #[pyfunction]
    fn _bench_parse_pdata(pdu: &[u8]) -> PyResult<usize> {
        let (header, body) = pdu
            .split_first_chunk::<{ pdu::HEADER_LEN }>()
            .ok_or_else(|| bad_input("shorter than a PDU header"))?;
        let (pdu_type, length) = pdu::parse_header(header);
        if pdu_type != pdu::P_DATA_TF || length as usize != body.len() {
            return Err(bad_input("not one complete P-DATA-TF PDU").into());
        }
        let mut fragments = 0;
        for pdv in pdu::pdvs(body) {
            fragments += pdv.map_err(bad_input)?.data.len();
        }
        Ok(fragments)
    }

    fn scan(data_set: &[u8], transfer_syntax: &str) -> Result<SortAttributes, Error> {
        let mut scanner = Scanner::new(Encoding::for_transfer_syntax(transfer_syntax));
        scanner.feed(data_set).map_err(bad_input)?;
        scanner.finish().map_err(bad_input)
    }

    /// Scan a data set for its filing attributes: (SOP Class UID, SOP Instance UID,
    /// Patient ID, Study Instance UID, Series Instance UID), each None when absent.
    #[pyfunction]
    #[allow(clippy::type_complexity)]
    fn _bench_scan(
        data_set: &[u8],
        transfer_syntax: &str,
    ) -> PyResult<(
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    )> {
        let attrs = scan(data_set, transfer_syntax)?;
        let text = |v: Option<Vec<u8>>| v.map(|v| String::from_utf8_lossy(&v).into_owned());
        Ok((
            text(attrs.sop_class_uid),
            text(attrs.sop_instance_uid),
            text(attrs.patient_id),
            text(attrs.study_instance_uid),
            text(attrs.series_instance_uid),
        ))
    }

    /// Store an Explicit VR Little Endian data set `count` times as the receive path does:
    /// scan, spool under `data_dir/.incoming/bench`, publish to its PATIENT layout path (each time
    /// replacing the previous copy). Returns the final path.
    #[pyfunction]
    #[pyo3(signature = (data_dir, data_set, count=1))]
    fn _bench_store(
        py: Python<'_>,
        data_dir: PathBuf,
        data_set: &[u8],
        count: usize,
    ) -> PyResult<PathBuf> {
        const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
        py.detach(|| {
            let storage =
                Storage::open(&data_dir, false, "bench").map_err(Error::io("open data_dir"))?;
            let mut path = PathBuf::new();
            for _ in 0..count {
                let attrs = scan(data_set, EXPLICIT_LE)?;
                let uid = |v: &Option<Vec<u8>>| {
                    String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()
                };
                let (sop_class, sop_instance) =
                    (uid(&attrs.sop_class_uid), uid(&attrs.sop_instance_uid));
                let meta = FileMeta {
                    sop_class_uid: &sop_class,
                    sop_instance_uid: &sop_instance,
                    transfer_syntax_uid: EXPLICIT_LE,
                    source_ae_title: "BENCH",
                };
                let mut spool = storage.spool(&meta).map_err(Error::io("spool"))?;
                spool.write(data_set).map_err(Error::io("write"))?;
                let relative =
                    layout::relative_path(SortKey::Patient, &attrs, sop_instance.as_bytes())
                        .map_err(bad_input)?;
                path = storage
                    .publish(spool, &relative)
                    .map_err(Error::io("publish"))?;
            }
            Ok::<_, Error>(path)
        })
        .map_err(PyErr::from)
    }

    pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(_bench_parse_pdata, m)?)?;
        m.add_function(wrap_pyfunction!(_bench_scan, m)?)?;
        m.add_function(wrap_pyfunction!(_bench_store, m)?)?;
        Ok(())
    }
}
