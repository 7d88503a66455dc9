"""The storage SCU: send instances with C-STORE and verify peers with C-ECHO.

The Rust core does the network and disk work without the GIL: it reads each file's Part 10
header, proposes the presentation contexts the files need (each SOP class in each file's own
transfer syntax, plus Implicit VR Little Endian for the SOP classes of Explicit VR Little
Endian files), and streams every data set from disk in PDUs of the peer's maximum length.
Data sets go on the wire exactly as stored, except that an Explicit VR Little Endian one is
converted to Implicit VR Little Endian, while it streams, for a peer that accepts only that.
"""

from __future__ import annotations

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
        sop_class_uid: SOP Class UID from the file meta (None if it could not be read).
        sop_instance_uid: SOP Instance UID from the file meta.
        transfer_syntax_uid: Transfer Syntax UID the data set was sent in (the file's own,
            or Implicit VR Little Endian when converted).
        status: The C-STORE-RSP status; None when no response came (not a DICOM file, no
            accepted presentation context, association failure).
        error_comment: The peer's Error Comment (0000,0902), or why there is no status.
        bytes: Data set bytes sent.
    """

    path: Path | None
    sop_class_uid: str | None
    sop_instance_uid: str | None
    transfer_syntax_uid: str | None
    status: int | None
    error_comment: str | None
    bytes: int

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

    Files are streamed from disk, their data sets exactly as stored; an Explicit VR Little
    Endian file goes as Implicit VR Little Endian when the peer accepts its SOP class only
    in that syntax. A file that is not DICOM, or whose SOP class and transfer syntax the
    peer does not accept, gets a result without status and the others are still sent.

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
            An exception from it stops the sending (outstanding instances are answered and
            the associations released) and is raised.
        tls: DICOM TLS: a :class:`~dicom_inlet.tls.ClientTLS`, or True for TLS with the
            system's trust store and the host name checked.
        user_identity: Present this user identity (PS3.7 §D.3.3.7), e.g.
            ``UserIdentity.username("alice", "secret")`` or ``UserIdentity.jwt(token)``.

    Raises:
        FileNotFoundError: A source path does not exist (nothing is sent).
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
        if not _is_dataset(source) and not os.path.exists(source):
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
            )

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
            # Without a progress callback the core makes no Python call per instance.
            progress=None if progress is None else lambda sent: progress(result(sent)),
            tls=_tls(tls),
            user_identity=user_identity,
        )
        return SendResult([result(s) for s in sent], time.monotonic() - started)


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
