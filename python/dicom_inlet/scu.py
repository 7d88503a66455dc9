"""The storage SCU: send instances with C-STORE and verify peers with C-ECHO.

The Rust core does the network and disk work without the GIL: it reads each file's Part 10
header and the data set's own SOP Class and Instance UIDs (which the peer checks the request
against; a file meta that disagrees is logged as a warning), proposes the presentation
contexts the files need (each SOP class in each file's own transfer syntax, plus the syntaxes
it can be converted to), and streams every data set from disk in PDUs of the peer's maximum
length. Data sets go on the wire exactly as stored (a deflated one of odd length padded to
even, PS3.5 §A.5), except when the peer accepts a SOP class neither in a file's own transfer
syntax nor in a better fallback: then Explicit VR Big Endian and Deflated Explicit VR Little
Endian data sets are converted to Explicit VR Little Endian, and those three to Implicit VR
Little Endian, while they stream.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from dicom_inlet import _core
from dicom_inlet._core import AssociationAborted, AssociationError, AssociationRejected
from dicom_inlet.identity import UserIdentity
from dicom_inlet.models import DEFAULT_AE_TITLE
from dicom_inlet.tls import ClientTLS

if TYPE_CHECKING:
    from pydicom import Dataset
    from typing_extensions import TypeIs

__all__ = [
    "DEFAULT_CALLED_AET",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "InstanceResult",
    "SendResult",
    "Source",
    "echo",
    "files_in",
    "send",
    "status_text",
]

_log = logging.getLogger("dicom_inlet.scu")

#: The Called AE Title used when none is given; most SCPs accept any.
DEFAULT_CALLED_AET = "ANY-SCP"
_DEFAULT_MAX_PDU = 262_144

#: What :func:`send` takes: a file, a directory (searched recursively) or a pydicom Dataset.
Source: TypeAlias = "str | os.PathLike[str] | Dataset"


def status_text(status: int | None) -> str:
    """Say what a C-STORE-RSP status means (PS3.4 §B.2.3, PS3.7 Annex C)."""
    if status is None:
        return "no response"
    words = {
        0x0000: "success",
        0x0001: "warning",
        0x0107: "warning: attribute list error",
        0x0116: "warning: attribute value out of range",
        0xB000: "warning: coercion of data elements",
        0xB006: "warning: elements discarded",
        0xB007: "warning: data set does not match SOP class",
        0x0122: "refused: SOP class not supported",
        0x0124: "refused: not authorized",
        0x0210: "failed: duplicate invocation",
        0x0211: "failed: unrecognized operation",
        0x0212: "failed: mistyped argument",
    }
    ranges = [
        (0xA700, 0xA7FF, "refused: out of resources"),
        (0xA900, 0xA9FF, "error: data set does not match SOP class"),
        (0xC000, 0xCFFF, "error: cannot understand"),
        (0xB000, 0xBFFF, "warning"),
    ]
    text = words.get(status) or next(
        (text for low, high, text in ranges if low <= status <= high), "failure"
    )
    return f"0x{status:04X} {text}"


def _is_stored(status: int | None) -> bool:
    # Success and the warnings: the peer kept the instance (PS3.7 Annex C).
    return status is not None and (
        status in (0x0000, 0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF
    )


@dataclass(frozen=True)
class InstanceResult:
    """What became of one instance given to :func:`send`.

    Attributes:
        path: The file sent; None for a Dataset source.
        sop_class_uid: SOP Class UID (0008,0016) of the data set, as sent in the C-STORE-RQ
            (the file meta's Media Storage SOP Class UID if the data set has none; None if
            the file could not be read).
        sop_instance_uid: SOP Instance UID (0008,0018) of the data set, likewise.
        transfer_syntax_uid: Transfer Syntax UID the data set was sent in (the file's own,
            or the one it was converted to).
        status: The C-STORE-RSP status; None when no response came (not a DICOM file,
            unreadable, no accepted presentation context, association failure).
        error_comment: The peer's Error Comment (0000,0902), or why there is no status.
        bytes: Data set bytes sent.
        warning: What was odd about the file even if it was stored: a file meta whose
            Media Storage SOP Class/Instance UIDs differ from the data set's. Also logged
            at WARNING on the ``dicom_inlet.scu`` logger.
    """

    path: Path | None
    sop_class_uid: str | None
    sop_instance_uid: str | None
    transfer_syntax_uid: str | None
    status: int | None
    error_comment: str | None
    bytes: int
    warning: str | None = None

    @property
    def ok(self) -> bool:
        """True when the peer stored the instance (success or a warning status)."""
        return _is_stored(self.status)


@dataclass(frozen=True)
class SendResult:
    """Results of :func:`send`: one :class:`InstanceResult` per instance, in input order.

    Attributes:
        results: One result per file or Dataset, in the order given (directories expanded
            in sorted order).
        seconds: Wall time of the whole send, associations included.
    """

    results: list[InstanceResult]
    seconds: float

    @property
    def instances(self) -> int:
        """Instances attempted."""
        return len(self.results)

    @property
    def stored(self) -> int:
        """Instances the peer stored (success or a warning status)."""
        return sum(r.ok for r in self.results)

    @property
    def failed(self) -> int:
        """Instances the peer did not store (failure status, or no response)."""
        return sum(not r.ok for r in self.results)

    @property
    def bytes(self) -> int:
        """Data set bytes sent."""
        return sum(r.bytes for r in self.results)

    @property
    def failures(self) -> list[InstanceResult]:
        """The results of the instances the peer did not store."""
        return [r for r in self.results if not r.ok]


def echo(
    host: str,
    port: int,
    *,
    called_aet: str = DEFAULT_CALLED_AET,
    calling_aet: str = DEFAULT_AE_TITLE,
    timeout: float | None = 30.0,
    tls: ClientTLS | bool = False,
    user_identity: UserIdentity | None = None,
) -> int:
    """Verify a peer with C-ECHO (Verification SOP Class); returns the status (0 = success).

    Args:
        host: The peer's host name or address.
        port: The peer's TCP port.
        called_aet: The peer's AE title (Called AE Title of the A-ASSOCIATE-RQ).
        calling_aet: Our AE title (Calling AE Title).
        timeout: Seconds to wait to connect and for each answer; None waits forever.
        tls: DICOM TLS: a :class:`~dicom_inlet.tls.ClientTLS`, or True for TLS with the
            system's trust store and the host name checked.
        user_identity: Present this user identity (PS3.7 §D.3.3.7), e.g.
            ``UserIdentity.username("alice", "secret")`` or ``UserIdentity.jwt(token)``.

    Raises:
        ConnectionError: The peer cannot be reached.
        AssociationRejected: The peer answered A-ASSOCIATE-RJ; the message gives the reason.
        AssociationError: The association failed otherwise (aborted, no Verification).
    """
    return _core.echo(
        host,
        _port(port),
        called_ae=called_aet,
        calling_ae=calling_aet,
        timeout=timeout,
        tls=_tls(tls),
        user_identity=user_identity,
    )


def send(
    host: str,
    port: int,
    sources: Source | Iterable[Source],
    *,
    called_aet: str = DEFAULT_CALLED_AET,
    calling_aet: str = DEFAULT_AE_TITLE,
    associations: int = 1,
    max_pdu: int = _DEFAULT_MAX_PDU,
    timeout: float | None = 30.0,
    async_window: int = 1,
    progress: Callable[[InstanceResult], object] | None = None,
    tls: ClientTLS | bool = False,
    user_identity: UserIdentity | None = None,
) -> SendResult:
    """Send instances to a Storage SCP with C-STORE (Storage Service Class, SCU role).

    Files are streamed from disk, their data sets exactly as stored; when the peer accepts
    a SOP class neither in a file's own transfer syntax nor in a better fallback, an
    Explicit VR Big Endian or Deflated Explicit VR Little Endian data set goes as Explicit
    VR Little Endian, and those and Explicit VR Little Endian ones as Implicit VR Little
    Endian, converted while they stream (values kept). The C-STORE-RQ names the data set's
    own SOP Class and Instance UIDs; a file meta that disagrees is a warning. A file that is
    not DICOM, cannot be read (a dangling link, a FIFO, a file removed meanwhile) or whose
    SOP class and transfer syntax the peer does not accept gets a result without status and
    a reason, and the others are still sent.

    Args:
        host: The peer's host name or address.
        port: The peer's TCP port.
        sources: Files (DICOM Part 10), directories (all files below, recursively, in
            sorted order) and pydicom Datasets (written in their file meta's transfer
            syntax, Explicit VR Little Endian when they have none), or one of these.
        called_aet: The peer's AE title (Called AE Title).
        calling_aet: Our AE title (Calling AE Title).
        associations: Parallel associations sharing the instances, each negotiated with
            the same presentation contexts.
        max_pdu: Largest P-DATA-TF PDU we receive (Maximum Length sub-item); 0 is no limit.
        timeout: Seconds to wait to connect and for each read or write; None waits forever.
        async_window: Requests to keep outstanding per association, 1 to 64 (Asynchronous
            Operations Window, proposed when above 1 and used as far as the peer grants it).
        progress: Called with each :class:`InstanceResult` as it completes, on this thread.
            An exception from it (or Ctrl-C) stops the sending (outstanding instances are
            answered and the associations released) and is raised; after Ctrl-C it is still
            called for the instances answered meanwhile.
        tls: DICOM TLS: a :class:`~dicom_inlet.tls.ClientTLS`, or True for TLS with the
            system's trust store and the host name checked.
        user_identity: Present this user identity (PS3.7 §D.3.3.7), e.g.
            ``UserIdentity.username("alice", "secret")`` or ``UserIdentity.jwt(token)``.

    Raises:
        FileNotFoundError: A source path does not exist (nothing is sent); a dangling
            symbolic link exists, and fails as an instance.
        ConnectionError: The peer cannot be reached.
        AssociationRejected: The peer rejected every association; the message gives the
            reason (result, source and reason are attributes).
        AssociationError: The peer accepted none of the presentation contexts needed.
    """
    for name, value, lowest, highest in [
        ("associations", associations, 1, 1024),
        ("max_pdu", max_pdu, 0, 2**32 - 1),
        ("async_window", async_window, 1, 64),
    ]:
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
            raise ValueError(f"{name} must be an integer from {lowest} to {highest}, got {value!r}")
    if isinstance(sources, (str, os.PathLike)) or _is_dataset(sources):
        sources = [sources]
    sources = list(sources)
    for source in sources:
        if not _is_dataset(source) and not os.path.lexists(source):
            raise FileNotFoundError(f"no such file or directory: {os.fspath(source)}")
    with tempfile.TemporaryDirectory(prefix="dicom-inlet-send-") as scratch:
        paths: list[Path] = []
        written: set[Path] = set()  # Datasets, as temporary files
        for source in sources:
            if _is_dataset(source):
                from dicom_inlet.part10 import write_dataset

                path = Path(scratch, f"{len(written)}.dcm")
                write_dataset(source, path)
                written.add(path)
                paths.append(path)
            else:
                paths.extend(files_in(Path(source)))

        def result(sent: _core.SentInstance) -> InstanceResult:
            return InstanceResult(
                path=None if sent.path in written else sent.path,
                sop_class_uid=sent.sop_class_uid,
                sop_instance_uid=sent.sop_instance_uid,
                transfer_syntax_uid=sent.transfer_syntax_uid,
                status=sent.status,
                error_comment=sent.error_comment,
                bytes=sent.bytes,
                warning=sent.warning,
            )

        def completed(sent: _core.SentInstance) -> None:
            instance = result(sent)
            _warn(instance)
            if progress is not None:
                progress(instance)

        started = time.monotonic()
        sent = _core.send(
            host,
            _port(port),
            paths,
            called_ae=called_aet,
            calling_ae=calling_aet,
            associations=associations,
            max_pdu=max_pdu,
            timeout=timeout,
            async_window=async_window,
            # Without a progress callback the core makes no Python call per instance, and
            # warnings are logged at the end.
            progress=None if progress is None else completed,
            tls=_tls(tls),
            user_identity=user_identity,
        )
        results = [result(s) for s in sent]
        if progress is None:
            for instance in results:
                _warn(instance)
        return SendResult(results, time.monotonic() - started)


def _warn(result: InstanceResult) -> None:
    if result.warning is not None:
        _log.warning("%s: %s", result.path or result.sop_instance_uid, result.warning)


def _tls(tls: ClientTLS | bool) -> ClientTLS | None:
    if tls is True:
        return ClientTLS()
    return tls or None


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer from 1 to 65535, got {port!r}")
    return port


def files_in(path: Path) -> list[Path]:
    """A file as is; a directory's files below it, recursively, in sorted order."""
    if not path.is_dir():
        return [path]
    found: list[Path] = []
    for directory, subdirs, names in os.walk(path):
        subdirs.sort()
        found.extend(Path(directory, name) for name in sorted(names))
    return found


def _is_dataset(source: object) -> TypeIs[Dataset]:
    """Whether ``source`` is a pydicom Dataset, without importing pydicom (and numpy).

    A Dataset can only exist once pydicom is imported, so a process sending files never
    pays for it.
    """
    pydicom = sys.modules.get("pydicom")
    return pydicom is not None and isinstance(source, pydicom.Dataset)
