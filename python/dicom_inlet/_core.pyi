"""Types of the native module ``dicom_inlet._core`` (Rust, PyO3)."""

from os import PathLike
from pathlib import Path

TRANSFER_SYNTAXES: list[str]
IMPLEMENTATION_CLASS_UID: str
IMPLEMENTATION_VERSION_NAME: str

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
    def bytes(self) -> int: ...
    @property
    def duration(self) -> float: ...
    @property
    def outcome(self) -> str: ...
    @property
    def detail(self) -> str | None: ...

class Server:
    """A running Storage SCP; listening as soon as it is constructed."""

    def __init__(
        self,
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
        durable: bool = False,
        emit_stored: bool = False,
        event_queue: int = 64,
    ) -> None: ...
    @property
    def port(self) -> int: ...
    @property
    def host(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    def next_event(self) -> StoredInstance | AssociationRecord | None:
        """Wait for the next event; None once shut down and drained."""
    def shutdown(self, timeout: float) -> None:
        """Stop accepting, let open associations finish for ``timeout`` s, abort the rest."""
