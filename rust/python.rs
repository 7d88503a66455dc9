//! The `dicom_inlet._core` extension module: configuration in, events and errors out.
//! Blocking work (binding, waiting for events, shutdown) runs with the GIL released.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::association::AcceptorPolicy;
use crate::error::Error;
use crate::events::{self, Event, Level};
use crate::file_meta::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::journal::{Cluster, Completer, Feed, Replayer, Timers};
use crate::layout::SortKey;
use crate::scan::Element;
use crate::server::{self, ServerConfig};
use crate::store::Duplicates;
use crate::tls;
use crate::transfer_syntax;
use crate::verdict::EchoConfig;

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
            Error::Io { .. } | Error::Journal(_) => PyOSError::new_err(message),
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
    crl: Option<PathBuf>,
    port: Option<u16>,
) -> Result<Option<server::TlsService>, Error> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if ca.is_none() && crl.is_none() && port.is_none() => return Ok(None),
        _ => {
            return Err(Error::InvalidConfig(
                "TLS needs both a certificate file and a key file".into(),
            ))
        }
    };
    let credentials = Arc::new(tls::ServerCredentials::load(tls::ServerFiles {
        cert,
        key,
        ca,
        crl,
    })?);
    Ok(Some(server::TlsService { credentials, port }))
}

/// The shared PostgreSQL journal at `url` for this node, its lease `lease` seconds.
fn cluster(url: Option<&str>, node_id: &str, lease: f64) -> Result<Option<Cluster>, Error> {
    let Some(url) = url else { return Ok(None) };
    let mut cluster = Cluster::parse(url, node_id)?;
    cluster.lease = Duration::try_from_secs_f64(lease)
        .ok()
        .filter(|l| *l >= Duration::from_millis(300))
        .ok_or_else(|| Error::InvalidConfig("journal_lease must be 0.3 seconds or more".into()))?;
    Ok(Some(cluster))
}

/// A running Storage SCP.
#[pyclass(frozen, module = "dicom_inlet._core")]
struct Server {
    // Declared first so it drops first: association threads blocked on a full queue then stop
    // waiting instead of deadlocking the server's drop (e.g. at interpreter exit).
    events: Mutex<Feed>,
    /// Journal rows delivered, not yet marked so (see `next_events`).
    marks: Mutex<Vec<i64>>,
    replayer: Replayer,
    completer: Completer,
    inner: server::Server,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Delivered marks are committed once this many wait, or once no event came for this long.
const MARKS_BATCH: usize = 64;
const MARKS_DELAY: Duration = Duration::from_millis(5);

fn level(name: &str) -> Result<Level, Error> {
    match name {
        "study" => Ok(Level::Study),
        "series" => Ok(Level::Series),
        other => Err(Error::InvalidConfig(format!(
            "unknown level {other:?} (study or series)"
        ))),
    }
}

#[pymethods]
impl Server {
    #[new]
    #[pyo3(signature = (*, host, port, ae_title, data_dir, sort_by, sop_classes,
        transfer_syntaxes=None, require_called_ae=false, allowed_calling_aes=Vec::new(),
        max_associations=64, max_pdu=262_144, acse_timeout=None, network_timeout=None,
        dimse_timeout=None, max_instance_size=None, durable=false, emit_stored=false,
        event_queue=64, tls_cert=None, tls_key=None, tls_ca=None, tls_crl=None, tls_port=None,
        identity_check=None, require_user_identity=false, handler_stage=None,
        handler_timeout=None, journal=true, duplicates="replace", study_timeout=None,
        study_events=false, series_events=false, events_on_release=false,
        node_id=String::from("node"), echo_handler=false, journal_url=None,
        journal_lease=10.0))]
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
        tls_crl: Option<PathBuf>,
        tls_port: Option<u16>,
        identity_check: Option<Py<PyAny>>,
        require_user_identity: bool,
        handler_stage: Option<&str>,
        handler_timeout: Option<f64>,
        journal: bool,
        duplicates: &str,
        study_timeout: Option<f64>,
        study_events: bool,
        series_events: bool,
        events_on_release: bool,
        node_id: String,
        echo_handler: bool,
        journal_url: Option<String>,
        journal_lease: f64,
    ) -> PyResult<Server> {
        let handler = handlers::config(handler_stage, seconds(handler_timeout)?)?;
        let duplicates = Duplicates::parse(duplicates).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "unknown duplicates policy {duplicates:?} (replace, keep-first, reject, keep-both)"
            ))
        })?;
        let timers = match (study_events || series_events, study_timeout) {
            (false, _) => None,
            (true, timeout) => Some(Timers {
                timeout: match timeout {
                    Some(t) if t >= 0.0 => Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX),
                    _ => {
                        return Err(Error::InvalidConfig(
                            "study_timeout must be seconds, zero or more".into(),
                        )
                        .into())
                    }
                },
                studies: study_events,
                series: series_events,
                on_release: events_on_release,
            }),
        };
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
            tls: server_tls(tls_cert, tls_key, tls_ca, tls_crl, tls_port)?,
            handler,
            journal,
            duplicates,
            timers,
            cluster: cluster(journal_url.as_deref(), &node_id, journal_lease)?,
            node_id,
            echo_handler: echo_handler.then_some(EchoConfig {
                timeout: seconds(handler_timeout)?,
            }),
        };
        let (inner, events) = py.detach(|| server::Server::start(config))?;
        Ok(Server {
            inner,
            replayer: events.replayer(),
            completer: events.completer(),
            events: Mutex::new(events),
            marks: Mutex::default(),
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

    /// Read the TLS files again for the associations that begin from now on; False without
    /// TLS.
    fn reload_tls(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(py.detach(|| self.inner.reload_tls())?)
    }

    /// The subject and notAfter (seconds since the epoch) of the TLS certificate served now,
    /// and the earliest nextUpdate of its CRLs (None without); None without TLS.
    fn tls_certificate(&self) -> Option<(String, i64, Option<i64>)> {
        self.inner
            .tls_certificate()
            .map(|s| (s.subject, s.not_after, s.crl_next_update))
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
        let event = py.detach(|| lock(&self.events).next_event())?;
        event.map(|event| event_object(py, event)).transpose()
    }

    /// Wait for the next event, and take with it up to `max - 1` more already waiting: one
    /// hand-over (and one GIL acquisition) for a batch. Empty once the server has shut down
    /// and every event was taken. `delivered`: journal rows whose callbacks returned, marked
    /// in one commit once 64 are waiting or no event came for 5 ms, so a steady stream of
    /// instances costs no commit of its own per instance (marks are not waited for anyway:
    /// lost in a crash, an instance is only delivered once more).
    #[pyo3(signature = (max=64, delivered=Vec::new()))]
    fn next_events(
        &self,
        py: Python<'_>,
        max: usize,
        delivered: Vec<i64>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let events = py.detach(|| {
            let mut feed = lock(&self.events);
            let mut marks = lock(&self.marks);
            marks.extend(delivered);
            let flush = |marks: &mut Vec<i64>| {
                if let (false, Some(journal)) = (marks.is_empty(), self.inner.journal()) {
                    journal.delivered(std::mem::take(marks));
                }
            };
            loop {
                let patience = (!marks.is_empty()).then(|| Instant::now() + MARKS_DELAY);
                match feed.next_events(max, patience)? {
                    Some(events) => {
                        if events.is_empty() || marks.len() >= MARKS_BATCH {
                            flush(&mut marks);
                        }
                        return Ok::<_, Error>(events);
                    }
                    None => flush(&mut marks),
                }
            }
        })?;
        events
            .into_iter()
            .map(|event| event_object(py, event))
            .collect()
    }

    /// Wait for the next instance awaiting a handler's verdict; None once the server has shut
    /// down (or has no handler).
    fn next_store_request(&self, py: Python<'_>) -> Option<handlers::StoreRequest> {
        py.detach(|| self.inner.next_store_request())
            .map(handlers::StoreRequest::from)
    }

    /// Wait for the next C-ECHO awaiting the echo handler's status; None once the server has
    /// shut down (or has no echo handler).
    fn next_echo_request(&self, py: Python<'_>) -> Option<handlers::EchoRequest> {
        py.detach(|| self.inner.next_echo_request())
            .map(handlers::EchoRequest::from)
    }

    /// Journal row `journal_id` was delivered other than through `next_events` (by the events
    /// sink, once the broker confirmed it): mark it now.
    fn delivered(&self, py: Python<'_>, journal_id: i64) {
        if let Some(journal) = self.inner.journal() {
            py.detach(|| journal.delivered(vec![journal_id]));
        }
    }

    /// The callbacks of journal row `journal_id` kept failing: park it with `error`.
    fn failed(&self, py: Python<'_>, journal_id: i64, attempts: u32, error: String) {
        if let Some(journal) = self.inner.journal() {
            py.detach(|| journal.failed(journal_id, attempts, error));
        }
    }

    /// Deliver failed instances again (these journal ids, or all); returns how many.
    #[pyo3(signature = (ids=None))]
    fn replay(&self, py: Python<'_>, ids: Option<Vec<i64>>) -> PyResult<i64> {
        let Some(journal) = self.inner.journal() else {
            return Err(Error::InvalidConfig("the journal is off".into()).into());
        };
        py.detach(|| {
            journal.sync()?;
            let failed = journal.index()?.instances(None, None, Some("failed"))?;
            let chosen: Vec<i64> = failed
                .iter()
                .map(|e| e.id)
                .filter(|id| ids.as_ref().is_none_or(|ids| ids.contains(id)))
                .collect();
            let count = journal.replay(Some(chosen.clone()))?;
            self.replayer.replay(chosen);
            Ok::<_, Error>(count)
        })
        .map_err(PyErr::from)
    }

    /// A completion event was handled (or, `done` false, given up on at shutdown: it stays
    /// handed out, so this run, ending, does not give it again; the next start does).
    fn completed(&self, py: Python<'_>, event: &Completed, done: bool) -> PyResult<()> {
        if !done {
            return Ok(());
        }
        let level = level(event.level)?;
        py.detach(|| {
            if let Some(journal) = self.inner.journal() {
                journal.completed(level, event.uid.clone(), event.last_received)?;
            }
            // Not through the feed's lock: a sink's thread tells this while the consumer
            // holds the feed, waiting for events.
            self.completer.done(level, event.uid.clone());
            Ok::<_, Error>(())
        })
        .map_err(PyErr::from)
    }

    /// A completion event's callbacks kept failing: park it with `error` (its `attempts`)
    /// until replayed; the feed may then fire the group's next event.
    fn completion_failed(
        &self,
        py: Python<'_>,
        event: &Completed,
        attempts: u32,
        error: String,
    ) -> PyResult<()> {
        let level = level(event.level)?;
        py.detach(|| {
            if let Some(journal) = self.inner.journal() {
                let (uid, through) = (event.uid.clone(), event.last_received);
                journal.parked(level, uid, through, attempts, error)?;
            }
            self.completer.done(level, event.uid.clone());
            Ok::<_, Error>(())
        })
        .map_err(PyErr::from)
    }

    /// Fire parked completion events again now (those of `study`, that of `series`, or all);
    /// returns how many.
    #[pyo3(signature = (study=None, series=None))]
    fn replay_events(
        &self,
        py: Python<'_>,
        study: Option<String>,
        series: Option<String>,
    ) -> PyResult<i64> {
        let Some(journal) = self.inner.journal() else {
            return Err(Error::InvalidConfig("the journal is off".into()).into());
        };
        py.detach(|| {
            let count = journal
                .index()?
                .replay_events(study.as_deref(), series.as_deref())?;
            self.replayer.wake();
            Ok::<_, Error>(count)
        })
        .map_err(PyErr::from)
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

    /// Wait until the journal committed everything recorded and marked so far, so that its
    /// index (another connection's included) shows it.
    fn sync_journal(&self, py: Python<'_>) -> PyResult<()> {
        match self.inner.journal() {
            Some(journal) => py.detach(|| journal.sync()).map_err(PyErr::from),
            None => Ok(()),
        }
    }
}

fn event_object(py: Python<'_>, event: Event) -> PyResult<Py<PyAny>> {
    match event {
        Event::Stored(s) => Py::new(py, StoredInstance::from(s)).map(Py::into_any),
        Event::AssociationEnded(r) => Py::new(py, AssociationRecord::from(r)).map(Py::into_any),
        Event::StoreFailed(f) => Py::new(py, FailedStore::from(f)).map(Py::into_any),
        Event::Completed(c) => Py::new(py, Completed::from(c)).map(Py::into_any),
        Event::Journal(r) => Py::new(py, JournalReport::from(r)).map(Py::into_any),
    }
}

/// The attributes the scan captured, as encoded: `(tag, VR, value)` each, VR None in implicit
/// VR; built into Python objects only when read.
struct Elements(Vec<Element>);

impl<'py> IntoPyObject<'py> for &Elements {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self.0.iter().map(|e| {
            let vr = e.vr.map(|vr| String::from_utf8_lossy(&vr).into_owned());
            (e.tag, vr, PyBytes::new(py, &e.value))
        });
        PyList::new(py, items)
    }
}

/// An instance written under data_dir.
#[pyclass(frozen, get_all, module = "dicom_inlet._core")]
struct StoredInstance {
    path: PathBuf,
    held: Option<PathBuf>,
    journal_id: Option<i64>,
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax_uid: String,
    calling_ae: String,
    called_ae: String,
    peer_host: String,
    peer_port: u16,
    bytes: u64,
    elements: Elements,
}

impl From<events::StoredInstance> for StoredInstance {
    fn from(s: events::StoredInstance) -> Self {
        let r = s.receipt;
        StoredInstance {
            path: r.path,
            held: s.held,
            journal_id: s.journal_id,
            sop_class_uid: r.sop_class_uid,
            sop_instance_uid: r.sop_instance_uid,
            transfer_syntax_uid: r.transfer_syntax_uid,
            calling_ae: r.calling_ae,
            called_ae: r.called_ae,
            peer_host: r.peer.ip().to_string(),
            peer_port: r.peer.port(),
            bytes: r.bytes,
            elements: Elements(s.elements),
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
    studies: Vec<String>,
}

impl From<events::AssociationRecord> for AssociationRecord {
    fn from(r: events::AssociationRecord) -> Self {
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
            studies: r.studies,
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

impl From<events::FailedStore> for FailedStore {
    fn from(f: events::FailedStore) -> Self {
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

/// The journal's commits began failing ("failing"), still fail ("still failing"), or
/// "resumed": `rows` wait in the row log `log` (resumed: were caught up).
#[pyclass(frozen, get_all, module = "dicom_inlet._core")]
struct JournalReport {
    state: &'static str,
    database: String,
    log: PathBuf,
    error: String,
    rows: u64,
    failing_for: f64,
}

impl From<events::JournalReport> for JournalReport {
    fn from(r: events::JournalReport) -> Self {
        JournalReport {
            state: r.state.as_str(),
            database: r.database,
            log: r.log,
            error: r.error,
            rows: r.rows,
            failing_for: r.failing_for.as_secs_f64(),
        }
    }
}

/// A study or series quiet for the study timeout (or released), with its instances:
/// (Series Instance UID, SOP Instance UID, SOP Class UID, Modality, path) each.
#[pyclass(frozen, get_all, module = "dicom_inlet._core")]
struct Completed {
    level: &'static str,
    uid: String,
    study_instance_uid: String,
    patient_id: String,
    revision: u32,
    last_received: f64,
    members: Vec<(String, String, String, String, PathBuf)>,
}

impl From<events::Completed> for Completed {
    fn from(c: events::Completed) -> Self {
        Completed {
            level: c.level.as_str(),
            uid: c.uid,
            study_instance_uid: c.study_instance_uid,
            patient_id: c.patient_id,
            revision: c.revision,
            last_received: c.last_received,
            members: c
                .members
                .into_iter()
                .map(|m| {
                    let events::Member {
                        series_instance_uid,
                        sop_instance_uid,
                        sop_class_uid,
                        modality,
                        path,
                    } = m;
                    (
                        series_instance_uid,
                        sop_instance_uid,
                        sop_class_uid,
                        modality,
                        path,
                    )
                })
                .collect(),
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
    m.add_class::<Completed>()?;
    m.add_class::<JournalReport>()?;
    m.add("TRANSFER_SYNTAXES", transfer_syntax::SUPPORTED.to_vec())?;
    m.add("IMPLEMENTATION_CLASS_UID", IMPLEMENTATION_CLASS_UID)?;
    m.add("IMPLEMENTATION_VERSION_NAME", IMPLEMENTATION_VERSION_NAME)?;
    storage_scu::register(m)?;
    handlers::register(m)?;
    requestor::register(m)?;
    journal_index::register(m)?;
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
// Store handlers: instances waiting for a verdict, taken by Python handler threads.
mod handlers {
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Duration;

    use pyo3::exceptions::PyRuntimeError;
    use pyo3::prelude::*;

    use super::Elements;
    use crate::error::Error;
    use crate::verdict::{Echo, HandlerConfig, Instance, Request, Stage, Verdict};

    pub(super) fn config(
        stage: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Option<HandlerConfig>, Error> {
        let stage = match stage {
            None => return Ok(None),
            Some("before_publish") => Stage::BeforePublish,
            Some("after_publish") => Stage::AfterPublish,
            Some(other) => {
                return Err(Error::InvalidConfig(format!(
                    "handler_stage must be 'before_publish' or 'after_publish', got {other:?}"
                )))
            }
        };
        Ok(Some(HandlerConfig { timeout, stage }))
    }

    /// A received instance waiting for its verdict: answer it once with `answer`.
    #[pyclass(frozen, module = "dicom_inlet._core")]
    pub(super) struct StoreRequest {
        request: Mutex<Option<Request<Instance>>>,
        /// The complete Part 10 file to read (the spool file before publishing).
        #[pyo3(get)]
        file: PathBuf,
        /// Where the instance is (or will be) stored.
        #[pyo3(get)]
        path: PathBuf,
        #[pyo3(get)]
        sop_class_uid: String,
        #[pyo3(get)]
        sop_instance_uid: String,
        #[pyo3(get)]
        transfer_syntax_uid: String,
        #[pyo3(get)]
        calling_ae: String,
        #[pyo3(get)]
        called_ae: String,
        #[pyo3(get)]
        peer_host: String,
        #[pyo3(get)]
        peer_port: u16,
        /// Data set bytes: the file's last `bytes` bytes.
        #[pyo3(get)]
        bytes: u64,
        #[pyo3(get)]
        elements: Elements,
        #[pyo3(get)]
        message_id: u16,
        #[pyo3(get)]
        context_id: u8,
    }

    impl From<Request<Instance>> for StoreRequest {
        fn from(request: Request<Instance>) -> Self {
            let i = request.subject.clone();
            let r = i.receipt;
            StoreRequest {
                request: Mutex::new(Some(request)),
                file: i.file,
                path: r.path,
                sop_class_uid: r.sop_class_uid,
                sop_instance_uid: r.sop_instance_uid,
                transfer_syntax_uid: r.transfer_syntax_uid,
                calling_ae: r.calling_ae,
                called_ae: r.called_ae,
                peer_host: r.peer.ip().to_string(),
                peer_port: r.peer.port(),
                bytes: r.bytes,
                elements: Elements(i.elements),
                message_id: i.message_id,
                context_id: i.context_id,
            }
        }
    }

    #[pymethods]
    impl StoreRequest {
        /// Give the verdict: the C-STORE-RSP status, its Error Comment, and whether
        /// dicom-inlet keeps its file (False: the handler stored the data itself). Returns
        /// False when the association no longer waits (the handler timeout expired).
        #[pyo3(signature = (status, error_comment=None, keep=true))]
        fn answer(&self, status: u16, error_comment: Option<String>, keep: bool) -> PyResult<bool> {
            Ok(once(&self.request)?.answer(Verdict {
                status,
                error_comment,
                keep,
            }))
        }
    }

    /// The request, the first time only.
    fn once<T>(request: &Mutex<Option<Request<T>>>) -> PyResult<Request<T>> {
        request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this request was answered already"))
    }

    /// A C-ECHO-RQ waiting for the echo handler's status: answer it once with `answer`.
    #[pyclass(frozen, module = "dicom_inlet._core")]
    pub(super) struct EchoRequest {
        request: Mutex<Option<Request<Echo>>>,
        #[pyo3(get)]
        sop_class_uid: String,
        #[pyo3(get)]
        transfer_syntax_uid: String,
        #[pyo3(get)]
        calling_ae: String,
        #[pyo3(get)]
        called_ae: String,
        #[pyo3(get)]
        peer_host: String,
        #[pyo3(get)]
        peer_port: u16,
        #[pyo3(get)]
        message_id: u16,
        #[pyo3(get)]
        context_id: u8,
    }

    impl From<Request<Echo>> for EchoRequest {
        fn from(request: Request<Echo>) -> Self {
            let e = request.subject.clone();
            EchoRequest {
                request: Mutex::new(Some(request)),
                sop_class_uid: e.sop_class_uid,
                transfer_syntax_uid: e.transfer_syntax_uid,
                calling_ae: e.calling_ae,
                called_ae: e.called_ae,
                peer_host: e.peer.ip().to_string(),
                peer_port: e.peer.port(),
                message_id: e.message_id,
                context_id: e.context_id,
            }
        }
    }

    #[pymethods]
    impl EchoRequest {
        /// Give the C-ECHO-RSP status and its Error Comment. Returns False when the
        /// association no longer waits (the handler timeout expired: it answered success).
        #[pyo3(signature = (status, error_comment=None))]
        fn answer(&self, status: u16, error_comment: Option<String>) -> PyResult<bool> {
            Ok(once(&self.request)?.answer(Verdict {
                status,
                error_comment,
                keep: false,
            }))
        }
    }

    pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<StoreRequest>()?;
        m.add_class::<EchoRequest>()
    }
}

// ---------------------------------------------------------------------------------------------
// One SCU association driven from Python (dicom_inlet.pynetdicom): associate with the given
// contexts, C-STORE encoded data sets and C-ECHO one at a time, release or abort. The core's
// requestor does the work with the GIL released.
mod requestor {
    use std::sync::Mutex;

    use pyo3::exceptions::PyRuntimeError;
    use pyo3::prelude::*;

    use super::seconds;
    use crate::association::VERIFICATION_SOP_CLASS;
    use crate::dimse::{self, Command};
    use crate::error::Error;
    use crate::scu::{Proposal, Requestor, ScuConfig};

    /// An established association, requestor side.
    #[pyclass(frozen, module = "dicom_inlet._core")]
    struct ScuAssociation {
        requestor: Mutex<Option<Requestor>>,
        /// The accepted presentation contexts: (id, abstract syntax, transfer syntax).
        #[pyo3(get)]
        accepted: Vec<(u8, String, String)>,
    }

    impl ScuAssociation {
        /// Run `work` on the open association, GIL released; a failure ends it.
        fn with<T: Send>(
            &self,
            py: Python<'_>,
            work: impl FnOnce(&mut Requestor) -> Result<T, Error> + Send,
        ) -> PyResult<T> {
            py.detach(|| {
                let mut guard = self.requestor.lock().unwrap_or_else(|p| p.into_inner());
                let requestor = guard
                    .as_mut()
                    .ok_or_else(|| PyRuntimeError::new_err("the association is not open"))?;
                let result = work(requestor);
                if result.is_err() {
                    // The requestor aborted or lost the association already.
                    *guard = None;
                }
                result.map_err(PyErr::from)
            })
        }

        fn request(
            &self,
            py: Python<'_>,
            context_id: u8,
            mut command: Command,
            data_set: Option<&[u8]>,
        ) -> PyResult<(u16, Option<String>)> {
            self.with(py, |requestor| {
                let message_id = requestor.message_id();
                command.message_id = Some(message_id);
                requestor.queue_command(context_id, &command);
                match data_set {
                    Some(mut data) => {
                        let length = data.len() as u64;
                        // Reading a byte slice cannot fail.
                        let _ = requestor.send_data_set(context_id, &mut data, length)?;
                    }
                    None => requestor.flush()?,
                }
                let reply = requestor.reply()?;
                if reply.message_id != message_id {
                    return Err(requestor.unexpected_reply(reply.message_id));
                }
                Ok((reply.status, reply.error_comment))
            })
        }
    }

    #[pymethods]
    impl ScuAssociation {
        /// C-STORE one encoded data set on an accepted context; (status, error comment).
        fn send_c_store(
            &self,
            py: Python<'_>,
            context_id: u8,
            sop_class_uid: String,
            sop_instance_uid: String,
            data_set: &[u8],
        ) -> PyResult<(u16, Option<String>)> {
            let command = Command {
                command_field: dimse::C_STORE_RQ,
                affected_sop_class_uid: Some(sop_class_uid),
                affected_sop_instance_uid: Some(sop_instance_uid),
                has_data_set: true,
                ..Command::default()
            };
            self.request(py, context_id, command, Some(data_set))
        }

        /// C-ECHO on an accepted Verification context; (status, error comment).
        fn send_c_echo(&self, py: Python<'_>, context_id: u8) -> PyResult<(u16, Option<String>)> {
            let command = Command {
                command_field: dimse::C_ECHO_RQ,
                affected_sop_class_uid: Some(VERIFICATION_SOP_CLASS.into()),
                ..Command::default()
            };
            self.request(py, context_id, command, None)
        }

        /// A-RELEASE-RQ and wait for the A-RELEASE-RP; nothing if already ended.
        fn release(&self, py: Python<'_>) -> PyResult<()> {
            let requestor = self
                .requestor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            match requestor {
                Some(requestor) => Ok(py.detach(|| requestor.release())?),
                None => Ok(()),
            }
        }

        /// A-ABORT at once; nothing if already ended.
        fn abort(&self, py: Python<'_>) {
            let requestor = self
                .requestor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(requestor) = requestor {
                py.detach(|| requestor.abort());
            }
        }

        /// Whether the association is still open.
        #[getter]
        fn is_open(&self) -> bool {
            self.requestor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
        }
    }

    /// Associate proposing each (abstract syntax, transfer syntax) pair as its own context.
    #[pyfunction]
    #[pyo3(signature = (host, port, contexts, *, called_ae, calling_ae, max_pdu=16_382,
        timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn associate(
        py: Python<'_>,
        host: String,
        port: u16,
        contexts: Vec<(String, String)>,
        called_ae: String,
        calling_ae: String,
        max_pdu: u32,
        timeout: Option<f64>,
    ) -> PyResult<ScuAssociation> {
        let config = ScuConfig {
            host,
            port,
            called_ae,
            calling_ae,
            max_pdu,
            timeout: seconds(timeout)?,
            async_window: 1,
            // dicom_inlet.pynetdicom offers neither (pynetdicom's tls_args raise there).
            tls: None,
            user_identity: None,
        };
        config.validate()?;
        let proposals: Vec<Proposal> = contexts
            .into_iter()
            .map(|(abstract_syntax, transfer_syntax)| Proposal {
                abstract_syntax,
                transfer_syntax,
            })
            .collect();
        let requestor = py.detach(|| Requestor::open(&config, &proposals))?;
        let accepted = proposals
            .iter()
            .filter_map(|p| {
                let id = requestor.context_for(&p.abstract_syntax, &p.transfer_syntax)?;
                Some((id, p.abstract_syntax.clone(), p.transfer_syntax.clone()))
            })
            .collect();
        Ok(ScuAssociation {
            requestor: Mutex::new(Some(requestor)),
            accepted,
        })
    }

    pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<ScuAssociation>()?;
        m.add_function(wrap_pyfunction!(associate, m)?)
    }
}

// ---------------------------------------------------------------------------------------------
// The journal read as an index of what has arrived, without a running server.
mod journal_index {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use pyo3::prelude::*;

    use super::lock;
    use crate::journal::{self, Index};

    /// One study in the journal.
    #[pyclass(frozen, get_all, module = "dicom_inlet._core")]
    struct StudySummary {
        study_instance_uid: String,
        patient_id: Option<String>,
        accession_number: Option<String>,
        study_date: Option<String>,
        modalities: String,
        series: i64,
        instances: i64,
        last_received: f64,
        pending: i64,
        failed: i64,
        events: i64,
    }

    /// One series in the journal.
    #[pyclass(frozen, get_all, module = "dicom_inlet._core")]
    struct SeriesSummary {
        series_instance_uid: String,
        study_instance_uid: String,
        modality: Option<String>,
        instances: i64,
        last_received: f64,
        pending: i64,
        failed: i64,
    }

    /// One journal row: an acknowledged instance and its delivery state.
    #[pyclass(frozen, get_all, module = "dicom_inlet._core")]
    struct JournalEntry {
        id: i64,
        received: f64,
        sop_class_uid: String,
        sop_instance_uid: String,
        patient_id: Option<String>,
        study_instance_uid: Option<String>,
        series_instance_uid: Option<String>,
        transfer_syntax_uid: String,
        path: PathBuf,
        held: Option<PathBuf>,
        bytes: u64,
        calling_ae: String,
        called_ae: String,
        peer: String,
        state: &'static str,
        attempts: i64,
        error: Option<String>,
        /// The node that acknowledged it (a PostgreSQL journal; None with SQLite).
        node: Option<String>,
    }

    /// A study or series completion event whose callbacks kept failing, parked.
    #[pyclass(frozen, get_all, module = "dicom_inlet._core")]
    struct ParkedEvent {
        level: &'static str,
        uid: String,
        study_instance_uid: String,
        last_received: f64,
        /// Events delivered for it before: the revision it would have been.
        events: i64,
        attempts: i64,
        error: Option<String>,
        /// When it was parked (Unix seconds).
        failed: f64,
    }

    /// The journal of a data_dir, opened for reading (and replaying failed deliveries).
    #[pyclass(frozen, module = "dicom_inlet._core")]
    struct Journal {
        index: Mutex<Index>,
    }

    #[pymethods]
    impl Journal {
        #[new]
        #[pyo3(signature = (data_dir, url=None))]
        fn new(py: Python<'_>, data_dir: PathBuf, url: Option<String>) -> PyResult<Journal> {
            let index = py.detach(|| Index::open(&data_dir, url.as_deref()))?;
            Ok(Journal {
                index: Mutex::new(index),
            })
        }

        /// Every study, oldest first.
        fn studies(&self, py: Python<'_>) -> PyResult<Vec<StudySummary>> {
            let studies = py.detach(|| lock(&self.index).studies())?;
            Ok(studies
                .into_iter()
                .map(|s| StudySummary {
                    study_instance_uid: s.study_instance_uid,
                    patient_id: s.patient_id,
                    accession_number: s.accession_number,
                    study_date: s.study_date,
                    modalities: s.modalities,
                    series: s.series,
                    instances: s.instances,
                    last_received: s.last_received,
                    pending: s.pending,
                    failed: s.failed,
                    events: s.events,
                })
                .collect())
        }

        /// The series of one study, or of all.
        #[pyo3(signature = (study_instance_uid=None))]
        fn series(
            &self,
            py: Python<'_>,
            study_instance_uid: Option<String>,
        ) -> PyResult<Vec<SeriesSummary>> {
            let series = py.detach(|| lock(&self.index).series(study_instance_uid.as_deref()))?;
            Ok(series
                .into_iter()
                .map(|s| SeriesSummary {
                    series_instance_uid: s.series_instance_uid,
                    study_instance_uid: s.study_instance_uid,
                    modality: s.modality,
                    instances: s.instances,
                    last_received: s.last_received,
                    pending: s.pending,
                    failed: s.failed,
                })
                .collect())
        }

        /// Rows in arrival order, filtered by study, series and state.
        #[pyo3(signature = (study_instance_uid=None, series_instance_uid=None, state=None))]
        fn instances(
            &self,
            py: Python<'_>,
            study_instance_uid: Option<String>,
            series_instance_uid: Option<String>,
            state: Option<String>,
        ) -> PyResult<Vec<JournalEntry>> {
            let rows = py.detach(|| {
                lock(&self.index).instances(
                    study_instance_uid.as_deref(),
                    series_instance_uid.as_deref(),
                    state.as_deref(),
                )
            })?;
            Ok(rows.into_iter().map(entry).collect())
        }

        /// Failed deliveries (these ids, or all) back to pending for the next start.
        #[pyo3(signature = (ids=None))]
        fn replay(&self, py: Python<'_>, ids: Option<Vec<i64>>) -> PyResult<i64> {
            Ok(py.detach(|| lock(&self.index).replay(ids.as_deref()))?)
        }

        /// Rows waiting for delivery, and the arrival time (Unix seconds) of the oldest.
        fn backlog(&self, py: Python<'_>) -> PyResult<(i64, Option<f64>)> {
            Ok(py.detach(|| lock(&self.index).backlog())?)
        }

        /// Parked completion events, oldest parked first.
        fn parked_events(&self, py: Python<'_>) -> PyResult<Vec<ParkedEvent>> {
            let parked = py.detach(|| lock(&self.index).parked_events())?;
            Ok(parked
                .into_iter()
                .map(|p| ParkedEvent {
                    level: p.level.as_str(),
                    uid: p.uid,
                    study_instance_uid: p.study_instance_uid,
                    last_received: p.last_received,
                    events: p.events,
                    attempts: p.attempts,
                    error: p.error,
                    failed: p.failed,
                })
                .collect())
        }

        /// Parked completion events (those of a study, that of a series, or all) due again
        /// at once, at the next start; how many.
        #[pyo3(signature = (study=None, series=None))]
        fn replay_events(
            &self,
            py: Python<'_>,
            study: Option<String>,
            series: Option<String>,
        ) -> PyResult<i64> {
            let index = &self.index;
            Ok(py.detach(|| lock(index).replay_events(study.as_deref(), series.as_deref()))?)
        }
    }

    fn entry(e: journal::InstanceEntry) -> JournalEntry {
        JournalEntry {
            id: e.id,
            received: e.received,
            sop_class_uid: e.sop_class_uid,
            sop_instance_uid: e.sop_instance_uid,
            patient_id: e.patient_id,
            study_instance_uid: e.study_instance_uid,
            series_instance_uid: e.series_instance_uid,
            transfer_syntax_uid: e.transfer_syntax_uid,
            path: e.path,
            held: e.held,
            bytes: e.bytes,
            calling_ae: e.calling_ae,
            called_ae: e.called_ae,
            peer: e.peer,
            state: e.state,
            attempts: e.attempts,
            error: e.error,
            node: e.node,
        }
    }

    pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<Journal>()?;
        m.add_class::<StudySummary>()?;
        m.add_class::<SeriesSummary>()?;
        m.add_class::<JournalEntry>()?;
        m.add_class::<ParkedEvent>()?;
        m.add("JOURNAL_VERSION", journal::VERSION)?;
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
    use crate::store::{Duplicates, Placed, Storage};

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
                let placed = storage
                    .publish(spool, &relative, Duplicates::Replace, None)
                    .map_err(Error::io("publish"))?;
                if let Placed::Stored(stored) = placed {
                    path = stored;
                }
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
