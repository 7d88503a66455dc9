//! The `dicom_inlet._core` extension module: configuration in, events and errors out.
//! Blocking work (binding, waiting for events, shutdown) runs with the GIL released.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::association::AcceptorPolicy;
use crate::error::Error;
use crate::events::{self, Event, Level};
use crate::file_meta::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::journal::{Feed, Replayer, Timers};
use crate::layout::SortKey;
use crate::server::{self, ServerConfig};
use crate::store::Duplicates;
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

/// A running Storage SCP.
#[pyclass(frozen, module = "dicom_inlet._core")]
struct Server {
    // Declared first so it drops first: association threads blocked on a full queue then stop
    // waiting instead of deadlocking the server's drop (e.g. at interpreter exit).
    events: Mutex<Feed>,
    replayer: Replayer,
    inner: server::Server,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

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
        event_queue=64, journal=true, duplicates="replace", study_timeout=None,
        study_events=false, series_events=false, events_on_release=false))]
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
        journal: bool,
        duplicates: &str,
        study_timeout: Option<f64>,
        study_events: bool,
        series_events: bool,
        events_on_release: bool,
    ) -> PyResult<Server> {
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
            dimse_timeout: seconds(dimse_timeout)?,
            max_instance_size,
            emit_stored,
            event_queue,
            journal,
            duplicates,
            timers,
        };
        let (inner, events) = py.detach(|| server::Server::start(config))?;
        Ok(Server {
            inner,
            replayer: events.replayer(),
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
        event
            .map(|event| match event {
                Event::Stored(s) => Py::new(py, StoredInstance::from(s)).map(Py::into_any),
                Event::AssociationEnded(r) => {
                    Py::new(py, AssociationRecord::from(r)).map(Py::into_any)
                }
                Event::Completed(c) => Py::new(py, Completed::from(c)).map(Py::into_any),
            })
            .transpose()
    }

    /// The callbacks of journal row `journal_id` returned: mark it delivered.
    fn delivered(&self, py: Python<'_>, journal_id: i64) {
        if let Some(journal) = self.inner.journal() {
            py.detach(|| journal.delivered(journal_id));
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

    /// A completion event was handled (or given up on: then it comes again at the next start
    /// when `done` is false).
    fn completed(&self, py: Python<'_>, event: &Completed, done: bool) -> PyResult<()> {
        let level = level(event.level)?;
        py.detach(|| {
            if let (true, Some(journal)) = (done, self.inner.journal()) {
                journal.completed(level, event.uid.clone(), event.last_received)?;
            }
            lock(&self.events).completion_done(level, &event.uid);
            Ok::<_, Error>(())
        })
        .map_err(PyErr::from)
    }

    /// Stop accepting, give open associations `timeout` seconds to finish, abort the rest.
    fn shutdown(&self, py: Python<'_>, timeout: f64) {
        // Negative or NaN means no grace; past Duration's range (infinity included), no limit.
        let grace = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
        py.detach(|| self.inner.shutdown(grace));
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
}

impl From<events::StoredInstance> for StoredInstance {
    fn from(s: events::StoredInstance) -> Self {
        StoredInstance {
            path: s.path,
            held: s.held,
            journal_id: s.journal_id,
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
            bytes: r.bytes,
            duration: r.duration.as_secs_f64(),
            outcome: r.outcome.as_str(),
            detail: r.detail,
            studies: r.studies,
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
    m.add_class::<Completed>()?;
    m.add("TRANSFER_SYNTAXES", transfer_syntax::SUPPORTED.to_vec())?;
    m.add("IMPLEMENTATION_CLASS_UID", IMPLEMENTATION_CLASS_UID)?;
    m.add("IMPLEMENTATION_VERSION_NAME", IMPLEMENTATION_VERSION_NAME)?;
    storage_scu::register(m)?;
    journal_index::register(m)?;
    bench::register(m)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The storage SCU: C-ECHO and C-STORE, with the GIL released for all network and disk work.
mod storage_scu {
    use std::ops::ControlFlow;
    use std::path::PathBuf;

    use pyo3::prelude::*;

    use super::{seconds, AssociationAborted, AssociationError, AssociationRejected};
    use crate::error::Error;
    use crate::scu::{self, InstanceResult, ScuConfig};

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
            }
        }
    }

    fn config(
        host: String,
        port: u16,
        called_ae: String,
        calling_ae: String,
        max_pdu: u32,
        timeout: Option<f64>,
        async_window: u16,
    ) -> Result<ScuConfig, Error> {
        Ok(ScuConfig {
            host,
            port,
            called_ae,
            calling_ae,
            max_pdu,
            timeout: seconds(timeout)?,
            async_window,
        })
    }

    /// C-ECHO the peer; returns the status it answers.
    #[pyfunction]
    #[pyo3(signature = (host, port, *, called_ae, calling_ae, timeout=None))]
    fn echo(
        py: Python<'_>,
        host: String,
        port: u16,
        called_ae: String,
        calling_ae: String,
        timeout: Option<f64>,
    ) -> PyResult<u16> {
        let config = config(host, port, called_ae, calling_ae, 262_144, timeout, 1)?;
        Ok(py.detach(|| scu::echo(&config))?)
    }

    /// C-STORE Part 10 files; one result per path, in order. `progress` is called with each
    /// result as it completes; an exception from it (or a signal such as Ctrl-C) stops the
    /// sending and is raised once the open associations are released.
    #[pyfunction]
    #[pyo3(signature = (host, port, paths, *, called_ae, calling_ae, associations=1,
        max_pdu=262_144, timeout=None, async_window=1, progress=None))]
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
    ) -> PyResult<Vec<SentInstance>> {
        let config = config(
            host,
            port,
            called_ae,
            calling_ae,
            max_pdu,
            timeout,
            async_window,
        )?;
        let mut failure = None;
        let results = py.detach(|| {
            scu::send(&config, &paths, associations, &mut |result| {
                Python::attach(|py| {
                    let called = py.check_signals().and_then(|()| match (&progress, result) {
                        (Some(progress), Some(result)) => progress
                            .call1(py, (SentInstance::from(result.clone()),))
                            .map(drop),
                        _ => Ok(()),
                    });
                    called.map_or_else(
                        |e| {
                            failure = Some(e);
                            ControlFlow::Break(())
                        },
                        ControlFlow::Continue,
                    )
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
    }

    /// The journal of a data_dir, opened for reading (and replaying failed deliveries).
    #[pyclass(frozen, module = "dicom_inlet._core")]
    struct Journal {
        index: Mutex<Index>,
    }

    #[pymethods]
    impl Journal {
        #[new]
        fn new(py: Python<'_>, data_dir: PathBuf) -> PyResult<Journal> {
            let index = py.detach(|| Index::open(&data_dir))?;
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
        }
    }

    pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<Journal>()?;
        m.add_class::<StudySummary>()?;
        m.add_class::<SeriesSummary>()?;
        m.add_class::<JournalEntry>()?;
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
    /// scan, spool under `data_dir/.incoming`, publish to its PATIENT layout path (each time
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
            let storage = Storage::open(&data_dir, false).map_err(Error::io("open data_dir"))?;
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
