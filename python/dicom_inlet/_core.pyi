"""Types of the native module ``dicom_inlet._core`` (Rust, PyO3)."""

from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path

from typing_extensions import Self, final

from dicom_inlet.identity import UserIdentity
from dicom_inlet.tls import ClientTLS

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "TRANSFER_SYNTAXES",
    "AssociationAborted",
    "AssociationError",
    "AssociationRecord",
    "AssociationRejected",
    "FailedStore",
    "SentInstance",
    "Server",
    "ServerStats",
    "StoredInstance",
    "UserIdentityRequest",
    "_bench_parse_pdata",
    "_bench_scan",
    "_bench_store",
    "echo",
    "send",
]

TRANSFER_SYNTAXES: list[str]
IMPLEMENTATION_CLASS_UID: str
IMPLEMENTATION_VERSION_NAME: str

# PyO3 classes cannot be subclassed.
@final
class StoredInstance:
    """An instance written under data_dir."""

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
        tls_port: int | None = None,
        identity_check: Callable[[UserIdentityRequest], tuple[bool, bytes | None]] | None = None,
        require_user_identity: bool = False,
        node_id: str = ...,
    ) -> Self: ...
    @property
    def port(self) -> int: ...
    @property
    def tls_port(self) -> int | None:
        """The bound TLS port when TLS is served beside plain TCP."""
    @property
    def host(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    def stats(self) -> ServerStats:
        """Associations open now, and instances stored, refused and bytes received so far."""
    def next_event(self) -> StoredInstance | AssociationRecord | FailedStore | None:
        """Wait for the next event; None once shut down and drained."""
    def shutdown(self, timeout: float) -> None:
        """Stop accepting, let open associations finish for ``timeout`` s, abort the rest."""
    def abort_associations(self) -> None:
        """End a shutdown's grace now (or the next one's): abort the open associations."""

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

# Benchmark entry points (benches/test_bench_core.py); not API.
def _bench_parse_pdata(pdu: bytes) -> int:
    """Parse one P-DATA-TF PDU (header included); return its PDV fragment bytes."""

def _bench_scan(
    data_set: bytes, transfer_syntax: str
) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """Scan a data set: (SOP Class, SOP Instance, Patient ID, Study, Series UIDs)."""

def _bench_store(data_dir: str | PathLike[str], data_set: bytes, count: int = 1) -> Path:
    """Scan, spool and publish an Explicit VR LE data set ``count`` times; the final path."""
