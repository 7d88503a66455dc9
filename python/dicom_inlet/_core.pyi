"""Types of the native module ``dicom_inlet._core`` (Rust, PyO3)."""

import builtins
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path

from typing_extensions import Self, final

from dicom_inlet.identity import UserIdentity
from dicom_inlet.tls import ClientTLS

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "JOURNAL_VERSION",
    "TRANSFER_SYNTAXES",
    "AssociationAborted",
    "AssociationError",
    "AssociationRecord",
    "AssociationRejected",
    "Completed",
    "EchoRequest",
    "FailedStore",
    "Journal",
    "JournalEntry",
    "JournalReport",
    "ParkedEvent",
    "ScuAssociation",
    "SentInstance",
    "SeriesSummary",
    "Server",
    "ServerStats",
    "StoreRequest",
    "StoredInstance",
    "StudySummary",
    "UserIdentityRequest",
    "_bench_parse_pdata",
    "_bench_scan",
    "_bench_store",
    "associate",
    "echo",
    "send",
]

TRANSFER_SYNTAXES: list[str]
IMPLEMENTATION_CLASS_UID: str
IMPLEMENTATION_VERSION_NAME: str
JOURNAL_VERSION: int

# PyO3 classes cannot be subclassed.
@final
class StoredInstance:
    """An instance written under data_dir."""

    @property
    def path(self) -> Path: ...
    @property
    def held(self) -> Path | None: ...
    @property
    def journal_id(self) -> int | None: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def transfer_syntax_uid(self) -> str: ...
    @property
    def calling_ae(self) -> str: ...
    @property
    def called_ae(self) -> str: ...
    @property
    def peer_host(self) -> str: ...
    @property
    def peer_port(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def elements(self) -> list[tuple[int, str | None, builtins.bytes]]:
        """The attributes the core's scan captured, as encoded: (tag, VR or None in
        implicit VR, whole value with its padding); empty for instances of earlier runs."""

@final
class AssociationRecord:
    """Summary of a finished association."""

    @property
    def peer_host(self) -> str: ...
    @property
    def peer_port(self) -> int: ...
    @property
    def calling_ae(self) -> str: ...
    @property
    def called_ae(self) -> str: ...
    @property
    def instances(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def echoes(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def duration(self) -> float: ...
    @property
    def outcome(self) -> str: ...
    @property
    def detail(self) -> str | None: ...
    @property
    def user_identity(self) -> str | None: ...
    @property
    def studies(self) -> list[str]: ...

@final
class UserIdentityRequest:
    """What a user identity callable is asked about."""

    @property
    def identity_type(self) -> int: ...
    @property
    def positive_response_requested(self) -> bool: ...
    @property
    def primary(self) -> bytes: ...
    @property
    def secondary(self) -> bytes: ...
    @property
    def calling_ae(self) -> str: ...

@final
class FailedStore:
    """A C-STORE the server refused: the failure status and Error Comment the peer was sent."""

    @property
    def peer_host(self) -> str: ...
    @property
    def peer_port(self) -> int: ...
    @property
    def calling_ae(self) -> str: ...
    @property
    def called_ae(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def error_comment(self) -> str: ...

@final
class JournalReport:
    """The journal's commits began failing ("failing"), still fail ("still failing"), or
    "resumed": ``rows`` wait in the row log ``log`` (resumed: were caught up)."""

    @property
    def state(self) -> str: ...
    @property
    def database(self) -> str: ...
    @property
    def log(self) -> Path: ...
    @property
    def error(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def failing_for(self) -> float: ...

@final
class Completed:
    """A study or series quiet for the study timeout (or released), with its instances:
    (Series Instance UID, SOP Instance UID, SOP Class UID, Modality, path) each."""

    @property
    def level(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def revision(self) -> int: ...
    @property
    def last_received(self) -> float: ...
    @property
    def members(self) -> list[tuple[str, str, str, str, Path]]: ...

@final
class ServerStats:
    """A server's activity: associations open now, and running totals since it started."""

    @property
    def associations(self) -> int: ...
    @property
    def instances(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def bytes(self) -> int: ...

@final
class Server:
    """A running Storage SCP; listening as soon as it is constructed."""

    def __new__(
        cls,
        *,
        host: str,
        port: int,
        ae_title: str,
        data_dir: str | PathLike[str],
        sort_by: str,
        sop_classes: list[str],
        transfer_syntaxes: list[str] | None = None,
        require_called_ae: bool = False,
        allowed_calling_aes: list[str] = ...,
        max_associations: int = 64,
        max_pdu: int = 262144,
        acse_timeout: float | None = None,
        network_timeout: float | None = None,
        dimse_timeout: float | None = None,
        max_instance_size: int | None = None,
        durable: bool = False,
        emit_stored: bool = False,
        event_queue: int = 64,
        tls_cert: str | PathLike[str] | None = None,
        tls_key: str | PathLike[str] | None = None,
        tls_ca: str | PathLike[str] | None = None,
        tls_crl: str | PathLike[str] | None = None,
        tls_port: int | None = None,
        identity_check: Callable[[UserIdentityRequest], tuple[bool, bytes | None]] | None = None,
        require_user_identity: bool = False,
        handler_stage: str | None = None,
        handler_timeout: float | None = None,
        journal: bool = True,
        duplicates: str = "replace",
        study_timeout: float | None = None,
        study_events: bool = False,
        series_events: bool = False,
        events_on_release: bool = False,
        node_id: str = ...,
        echo_handler: bool = False,
        journal_url: str | None = None,
        journal_lease: float = 10.0,
    ) -> Self: ...
    @property
    def port(self) -> int: ...
    @property
    def tls_port(self) -> int | None:
        """The bound TLS port when TLS is served beside plain TCP."""
    def reload_tls(self) -> bool:
        """Read the TLS files again for the associations that begin from now on."""
    def tls_certificate(self) -> tuple[str, int, int | None] | None:
        """The subject and notAfter (seconds since the epoch) of the TLS certificate served,
        and the earliest nextUpdate of the CRLs (None without)."""
    @property
    def host(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    def stats(self) -> ServerStats:
        """Associations open now, and instances stored, refused and bytes received so far."""
    def next_event(
        self,
    ) -> StoredInstance | AssociationRecord | FailedStore | Completed | JournalReport | None:
        """Wait for the next event; None once shut down and drained."""
    def next_events(
        self, max: int = 64, delivered: list[int] = ...
    ) -> list[StoredInstance | AssociationRecord | FailedStore | Completed | JournalReport]:
        """Wait for the next event and take up to ``max - 1`` more already waiting with it;
        empty once shut down and drained. ``delivered``: journal rows whose callbacks
        returned, marked in batches (64, or after 5 ms without an event)."""
    def delivered(self, journal_id: int) -> None:
        """Mark journal row ``journal_id`` delivered now (the events sink, once confirmed)."""
    def failed(self, journal_id: int, attempts: int, error: str) -> None:
        """The callbacks of journal row ``journal_id`` kept failing: park it."""
    def replay(self, ids: list[int] | None = None) -> int:
        """Deliver failed instances again (these journal ids, or all); how many."""
    def completed(self, event: Completed, done: bool) -> None:
        """A completion event was handled (``done``), or given up on at shutdown (then it
        is not given again by this run; the next start fires it)."""
    def completion_failed(self, event: Completed, attempts: int, error: str) -> None:
        """A completion event's callbacks kept failing: park it until replayed."""
    def replay_events(self, study: str | None = None, series: str | None = None) -> int:
        """Fire parked completion events again now (those of ``study``, that of ``series``,
        or all); how many."""
    def shutdown(self, timeout: float) -> None:
        """Stop accepting, let open associations finish for ``timeout`` s, abort the rest."""
    def abort_associations(self) -> None:
        """End a shutdown's grace now (or the next one's): abort the open associations."""
    def next_store_request(self) -> StoreRequest | None:
        """Wait for the next instance awaiting a verdict; None once shut down (or no handler)."""
    def next_echo_request(self) -> EchoRequest | None:
        """Wait for the next C-ECHO awaiting its status; None once shut down (or no handler)."""
    def sync_journal(self) -> None:
        """Wait until the journal committed everything recorded and marked so far."""

@final
class StoreRequest:
    """A received instance waiting for its verdict: answer it once with ``answer``."""

    @property
    def file(self) -> Path: ...
    @property
    def path(self) -> Path: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def transfer_syntax_uid(self) -> str: ...
    @property
    def calling_ae(self) -> str: ...
    @property
    def called_ae(self) -> str: ...
    @property
    def peer_host(self) -> str: ...
    @property
    def peer_port(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def elements(self) -> list[tuple[int, str | None, builtins.bytes]]: ...
    @property
    def message_id(self) -> int: ...
    @property
    def context_id(self) -> int: ...
    def answer(self, status: int, error_comment: str | None = None, keep: bool = True) -> bool:
        """Give the verdict; False when the association no longer waits for it."""

@final
class EchoRequest:
    """A C-ECHO-RQ waiting for the echo handler's status: answer it once with ``answer``."""

    @property
    def sop_class_uid(self) -> str: ...
    @property
    def transfer_syntax_uid(self) -> str: ...
    @property
    def calling_ae(self) -> str: ...
    @property
    def called_ae(self) -> str: ...
    @property
    def peer_host(self) -> str: ...
    @property
    def peer_port(self) -> int: ...
    @property
    def message_id(self) -> int: ...
    @property
    def context_id(self) -> int: ...
    def answer(self, status: int, error_comment: str | None = None) -> bool:
        """Give the status; False when the association no longer waits for it."""

# The journal as an index.
@final
class StudySummary:
    """One study in the journal."""

    @property
    def study_instance_uid(self) -> str: ...
    @property
    def patient_id(self) -> str | None: ...
    @property
    def accession_number(self) -> str | None: ...
    @property
    def study_date(self) -> str | None: ...
    @property
    def modalities(self) -> str: ...
    @property
    def series(self) -> int: ...
    @property
    def instances(self) -> int: ...
    @property
    def last_received(self) -> float: ...
    @property
    def pending(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def events(self) -> int: ...

@final
class SeriesSummary:
    """One series in the journal."""

    @property
    def series_instance_uid(self) -> str: ...
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def modality(self) -> str | None: ...
    @property
    def instances(self) -> int: ...
    @property
    def last_received(self) -> float: ...
    @property
    def pending(self) -> int: ...
    @property
    def failed(self) -> int: ...

@final
class JournalEntry:
    """One journal row: an acknowledged instance and its delivery state."""

    @property
    def id(self) -> int: ...
    @property
    def received(self) -> float: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def patient_id(self) -> str | None: ...
    @property
    def study_instance_uid(self) -> str | None: ...
    @property
    def series_instance_uid(self) -> str | None: ...
    @property
    def transfer_syntax_uid(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def held(self) -> Path | None: ...
    @property
    def bytes(self) -> int: ...
    @property
    def calling_ae(self) -> str: ...
    @property
    def called_ae(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def node(self) -> str | None:
        """The node that acknowledged it (a PostgreSQL journal; None with SQLite)."""

@final
class Journal:
    """The journal of a data_dir, opened for reading (and replaying failed deliveries)."""

    def __new__(cls, data_dir: str | PathLike[str], url: str | None = None) -> Self: ...
    def studies(self) -> list[StudySummary]:
        """Every study, oldest first."""
    def series(self, study_instance_uid: str | None = None) -> list[SeriesSummary]:
        """The series of one study, or of all."""
    def instances(
        self,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        state: str | None = None,
    ) -> list[JournalEntry]:
        """Rows in arrival order, filtered by study, series and state."""
    def replay(self, ids: list[int] | None = None) -> int:
        """Failed deliveries (these ids, or all) back to pending for the next start."""
    def backlog(self) -> tuple[int, float | None]:
        """Rows waiting for delivery, and the arrival time (Unix seconds) of the oldest."""
    def parked_events(self) -> list[ParkedEvent]:
        """Parked completion events, oldest parked first."""
    def replay_events(self, study: str | None = None, series: str | None = None) -> int:
        """Parked completion events (those of a study, that of a series, or all) due again
        at once, at the next start; how many."""

@final
class ParkedEvent:
    """A study or series completion event whose callbacks kept failing, parked."""

    @property
    def level(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def last_received(self) -> float: ...
    @property
    def events(self) -> int:
        """Events delivered for it before: the revision it would have been."""
    @property
    def attempts(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def failed(self) -> float:
        """When it was parked (Unix seconds)."""

# The storage SCU.
class AssociationError(ConnectionError):
    """An association with a peer could not be used."""

class AssociationRejected(AssociationError):
    """The peer refused the association (A-ASSOCIATE-RJ); codes of PS3.8 Table 9-21."""

    result: int
    source: int
    reason: int

class AssociationAborted(AssociationError):
    """The association ended early: A-ABORT, protocol error, timeout or lost connection."""

@final
class SentInstance:
    """What became of one instance sent with C-STORE."""

    @property
    def path(self) -> Path: ...
    @property
    def sop_class_uid(self) -> str | None: ...
    @property
    def sop_instance_uid(self) -> str | None: ...
    @property
    def transfer_syntax_uid(self) -> str | None: ...
    @property
    def status(self) -> int | None: ...
    @property
    def error_comment(self) -> str | None: ...
    @property
    def bytes(self) -> int: ...
    @property
    def warning(self) -> str | None: ...

def echo(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str,
    timeout: float | None = None,
    tls: ClientTLS | None = None,
    user_identity: UserIdentity | None = None,
) -> int:
    """C-ECHO the peer; returns the status it answers."""

def send(
    host: str,
    port: int,
    paths: Sequence[str | PathLike[str]],
    *,
    called_ae: str,
    calling_ae: str,
    associations: int = 1,
    max_pdu: int = 262144,
    timeout: float | None = None,
    async_window: int = 1,
    progress: Callable[[SentInstance], object] | None = None,
    tls: ClientTLS | None = None,
    user_identity: UserIdentity | None = None,
) -> list[SentInstance]:
    """C-STORE Part 10 files; one result per path, in order. An exception from ``progress``
    or a signal (Ctrl-C) stops taking files and is raised once the associations are
    released; after a signal ``progress`` still sees the instances answered meanwhile."""

@final
class ScuAssociation:
    """An established association, requestor side (for dicom_inlet.pynetdicom)."""

    @property
    def accepted(self) -> list[tuple[int, str, str]]:
        """The accepted contexts: (id, abstract syntax, transfer syntax)."""
    @property
    def is_open(self) -> bool: ...
    def send_c_store(
        self, context_id: int, sop_class_uid: str, sop_instance_uid: str, data_set: bytes
    ) -> tuple[int, str | None]:
        """C-STORE one encoded data set; (status, error comment)."""
    def send_c_echo(self, context_id: int) -> tuple[int, str | None]:
        """C-ECHO on a Verification context; (status, error comment)."""
    def release(self) -> None:
        """A-RELEASE-RQ and wait for the A-RELEASE-RP."""
    def abort(self) -> None:
        """A-ABORT at once."""

def associate(
    host: str,
    port: int,
    contexts: Sequence[tuple[str, str]],
    *,
    called_ae: str,
    calling_ae: str,
    max_pdu: int = 16382,
    timeout: float | None = None,
) -> ScuAssociation:
    """Associate proposing each (abstract syntax, transfer syntax) pair as its own context."""

# Benchmark entry points (benches/test_bench_core.py); not API.
def _bench_parse_pdata(pdu: bytes) -> int:
    """Parse one P-DATA-TF PDU (header included); return its PDV fragment bytes."""

def _bench_scan(
    data_set: bytes, transfer_syntax: str
) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """Scan a data set: (SOP Class, SOP Instance, Patient ID, Study, Series UIDs)."""

def _bench_store(data_dir: str | PathLike[str], data_set: bytes, count: int = 1) -> Path:
    """Scan, spool and publish an Explicit VR LE data set ``count`` times; the final path."""
