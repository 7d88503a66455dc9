"""Store handlers: Python code that decides the C-STORE status of each received instance.

With a handler configured, the Rust core holds every instance that arrived complete and
matches its command in its spool file and asks for a verdict before publishing it and
answering the peer. A pool of Python threads takes these requests (the core waits for them
with the GIL released), so a slow handler holds back only the association whose instance it
is deciding.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from dicom_inlet import _core

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset

__all__ = [
    "HANDLER_FAILED",
    "EchoHandler",
    "Handler",
    "IncomingEcho",
    "IncomingInstance",
    "Verdict",
    "is_stored",
    "load_handler",
]

logger = logging.getLogger("dicom_inlet")

#: The status a raising handler gives, as with pynetdicom (its Storage SCP answers 0xC211
#: when the ``evt.EVT_C_STORE`` handler raises).
HANDLER_FAILED = 0xC211
# pynetdicom's answers to a handler result it cannot use (Storage Service Class,
# validate_status): a Dataset without Status, and a value that is neither int nor Dataset.
_STATUS_DATASET_WITHOUT_STATUS = 0xC001
_STATUS_INVALID = 0xC002
# Error Comment is an LO value: at most 64 characters (PS3.7 Annex C, PS3.5 Table 6.2-1).
_ERROR_COMMENT_MAX = 64


def is_stored(status: int) -> bool:
    """Whether a C-STORE status tells the peer its instance is kept: success or a warning."""
    return status in (0x0000, 0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF


@dataclass(frozen=True)
class Verdict:
    """A handler's full answer, when a status alone does not say it.

    Attributes:
        status: The C-STORE-RSP Status (PS3.4 §B.2.3): 0x0000 success, 0xB000-0xBFFF
            warnings (the instance is stored), anything else a failure (it is not).
        error_comment: Error Comment (0000,0902) sent with the status, up to 64 characters.
        keep: False when the handler stored the data itself: dicom-inlet then keeps no file
            (the peer still hears ``status``).
    """

    status: int
    error_comment: str | None = None
    keep: bool = True


class _Request:
    """What every handler is told of the request it decides: the presentation context, who
    sent it, and its Message ID (the subclasses document them)."""

    # Each attribute is read from the core's request when asked: a handler that answers from
    # a few of them (or none) pays for those only.
    __slots__ = ("__dict__", "_request")

    def __init__(self, request: _core.StoreRequest | _core.EchoRequest) -> None:
        self._request = request

    @property
    def sop_class_uid(self) -> str:
        return self._request.sop_class_uid

    @property
    def transfer_syntax_uid(self) -> str:
        return self._request.transfer_syntax_uid

    @property
    def calling_ae(self) -> str:
        return self._request.calling_ae

    @property
    def called_ae(self) -> str:
        return self._request.called_ae

    @property
    def peer_host(self) -> str:
        return self._request.peer_host

    @property
    def peer_port(self) -> int:
        return self._request.peer_port

    @property
    def message_id(self) -> int:
        return self._request.message_id

    @property
    def context_id(self) -> int:
        return self._request.context_id


class IncomingInstance(_Request):
    """A received instance, complete and checked against its C-STORE-RQ, awaiting a verdict.

    :attr:`dataset` serves the attributes the core scanned (SOP Class and Instance, Study and
    Series UIDs, Modality, Study Date) without reading the file; anything else reads the data
    set once, values larger than 64 KiB (pixel data) only when touched themselves. Its
    ``save_as`` copies the data set as received while nothing in it changed. Once the
    instance is published, the data set reads on from the stored file (``dataset.filename``
    names it); one the handler keeps while its verdict discards the file is read in before
    the answer.

    Attributes:
        file: The complete Part 10 file as received (in ``data_dir/.incoming/`` until
            published).
        path: Where dicom-inlet stores it if the verdict keeps it.
        sop_class_uid: Affected SOP Class UID of the request.
        sop_instance_uid: Affected SOP Instance UID of the request.
        transfer_syntax_uid: The accepted transfer syntax the data set is encoded in.
        calling_ae: The peer's AE title (Calling AE Title).
        called_ae: The AE title the peer called.
        peer_host: The peer's address.
        peer_port: The peer's TCP port.
        bytes: Size of the data set in bytes (file meta excluded).
        message_id: The request's Message ID.
        context_id: The presentation context it came on.
    """

    _request: _core.StoreRequest

    @functools.cached_property
    def file(self) -> Path:
        return Path(self._request.file)

    @functools.cached_property
    def path(self) -> Path:
        return Path(self._request.path)

    @property
    def sop_instance_uid(self) -> str:
        return self._request.sop_instance_uid

    @property
    def bytes(self) -> int:
        return self._request.bytes

    @functools.cached_property
    def dataset(self) -> Dataset:
        """The data set as a pydicom ``FileDataset``, read as it is used (the attributes the
        core scanned without reading the file; ``save_as`` unchanged copies the bytes)."""
        from dicom_inlet.part10 import read_request

        return read_request(self._request)

    @property
    def file_meta(self) -> FileMetaDataset:
        """The file meta information dicom-inlet wrote for it (PS3.10 §7.1)."""
        return self.dataset.file_meta

    def __repr__(self) -> str:
        return (
            f"IncomingInstance({self.sop_instance_uid!r} from {self.calling_ae!r} "
            f"at {self.peer_host}:{self.peer_port}, {self.bytes} bytes)"
        )


#: A handler: called with each :class:`IncomingInstance`; returns its status as an int, a
#: pydicom Dataset with ``Status`` (and optionally ``ErrorComment``), as a pynetdicom
#: ``EVT_C_STORE`` handler does, or a :class:`Verdict`.
Handler: TypeAlias = "Callable[[IncomingInstance], Any]"


def load_handler(spec: str) -> Handler:
    """Import a handler named ``module:function`` (``package.module:object.method`` too).

    The current directory is searched first, as ``python -m`` would.

    Raises:
        ValueError: The name is malformed, the module cannot be imported, the name is
            missing, or it is not callable; the message says which, in one line.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    import importlib

    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    return cast("Handler", target)


def verdict_of(result: object) -> Verdict:
    """The verdict a handler's return value means, as pynetdicom reads one."""
    if type(result) is int:
        # The common answer first, made once.
        return _SUCCESS if result == 0 else Verdict(result)
    if isinstance(result, Verdict):
        return result
    if isinstance(result, int) and not isinstance(result, bool):
        return Verdict(result)
    # A Dataset exists only once pydicom is imported: a handler returning ints never pays for it.
    pydicom = sys.modules.get("pydicom")
    if pydicom is not None and isinstance(result, pydicom.Dataset):
        if "Status" not in result:
            logger.error("handler returned a Dataset without a Status element")
            return Verdict(_STATUS_DATASET_WITHOUT_STATUS)
        comment = result.get("ErrorComment")
        return Verdict(int(result.Status), None if comment is None else str(comment))
    logger.error("handler returned %r, neither a status int nor a Dataset", result)
    return Verdict(_STATUS_INVALID)


_SUCCESS = Verdict(0x0000)


def _comment(text: str | None) -> str | None:
    if text is None:
        return None
    # The core encodes it as given: keep it a valid LO (ASCII, no backslash, 64 characters).
    text = text.encode("ascii", "replace").decode().replace("\\", "/")
    return text[:_ERROR_COMMENT_MAX]


def decide(
    request: _core.StoreRequest,
    judge: Callable[[IncomingInstance], Verdict],
    name: str,
) -> None:
    """Run ``judge`` on one request and answer it; a raising judge fails the store."""
    instance = IncomingInstance(request)
    try:
        verdict = judge(instance)
    except Exception as exc:
        logger.exception("%s raised for %s; answering 0x%04X", name, instance, HANDLER_FAILED)
        verdict = Verdict(HANDLER_FAILED, f"{name} failed: {type(exc).__name__}")
    status = verdict.status
    if not 0 <= status <= 0xFFFF:
        logger.error("%s returned status %r, outside 0x0000-0xFFFF", name, status)
        verdict = Verdict(_STATUS_INVALID)
    described: object = instance
    publishes = verdict.keep and is_stored(verdict.status)
    dataset = instance.__dict__.get("dataset")
    if dataset is not None:
        path, described = os.fspath(instance.path), repr(instance)
        kept = weakref.ref(dataset)
        del dataset, instance
        dataset = kept()
        if dataset is not None and not publishes:
            # Kept by the handler (itself or through its instance) while the answer removes
            # its file: read in now. A published one reads on from the stored file.
            dataset.read_all()
    if not request.answer(verdict.status, _comment(verdict.error_comment), verdict.keep):
        # The core answered 0xA700 when the timeout expired, and logged it then.
        logger.info("%s answered %s after handler_timeout: too late", name, described)
        return
    if dataset is not None and publishes:
        from dicom_inlet.part10 import moved

        moved(dataset, path)


class HandlerPool:
    """Python threads taking the core's requests for a verdict until the server stops."""

    def __init__(
        self,
        scp: _core.Server,
        judge: Callable[[IncomingInstance], Verdict],
        name: str,
        threads: int,
    ) -> None:
        self._threads = [
            threading.Thread(
                target=self._serve,
                args=(scp, judge, name),
                name=f"dicom-inlet-handler-{i}",
                daemon=True,
            )
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _serve(
        scp: _core.Server,
        judge: Callable[[IncomingInstance], Verdict],
        name: str,
    ) -> None:
        while (request := scp.next_store_request()) is not None:
            decide(request, judge, name)

    def join(self) -> None:
        """Wait for every thread to end (they end once the server has shut down)."""
        for thread in self._threads:
            thread.join()

    def __contains__(self, thread: threading.Thread) -> bool:
        return thread in self._threads


class IncomingEcho(_Request):
    """A C-ECHO-RQ (Verification, PS3.7 §9.1.5) awaiting its status from the echo handler.

    Attributes:
        sop_class_uid: The presentation context's abstract syntax (Verification).
        transfer_syntax_uid: The presentation context's transfer syntax.
        calling_ae: The peer's AE title (Calling AE Title).
        called_ae: The AE title the peer called.
        peer_host: The peer's address.
        peer_port: The peer's TCP port.
        message_id: The request's Message ID.
        context_id: The presentation context it came on.
    """

    def __repr__(self) -> str:
        return f"IncomingEcho(from {self.calling_ae!r} at {self.peer_host}:{self.peer_port})"


#: An echo handler: called with each :class:`IncomingEcho`; returns the C-ECHO-RSP status as
#: an int or a pydicom Dataset with ``Status`` (and optionally ``ErrorComment``), as a
#: pynetdicom ``EVT_C_ECHO`` handler does.
EchoHandler: TypeAlias = "Callable[[IncomingEcho], Any]"


def _echo_verdict(result: object) -> Verdict:
    """The status an echo handler's return value means; raises for one pynetdicom refuses."""
    if isinstance(result, int) and not isinstance(result, bool):
        verdict = Verdict(result)
    else:
        pydicom = sys.modules.get("pydicom")
        if pydicom is None or not isinstance(result, pydicom.Dataset):
            raise TypeError(f"returned {result!r}, neither a status int nor a Dataset")
        if "Status" not in result:
            raise AttributeError("returned a Dataset without a Status element")
        comment = result.get("ErrorComment")
        verdict = Verdict(int(result.Status), None if comment is None else str(comment))
    if not 0 <= verdict.status <= 0xFFFF:
        raise ValueError(f"returned status {verdict.status!r}, outside 0x0000-0xFFFF")
    return verdict


def answer_echo(request: _core.EchoRequest, handler: EchoHandler, name: str) -> None:
    """Run ``handler`` on one C-ECHO and answer it. One that raises or returns something
    unusable answers 0x0000 (Success), as pynetdicom's Verification SCP does."""
    echo = IncomingEcho(request)
    try:
        verdict = _echo_verdict(handler(echo))
    except Exception:
        logger.exception("%s failed for %s; answering 0x0000 (Success)", name, echo)
        verdict = Verdict(0x0000)
    # An Error Comment goes with a failure only.
    comment = None if verdict.status == 0 else _comment(verdict.error_comment)
    if not request.answer(verdict.status, comment):
        logger.warning(
            "%s answered %s after handler_timeout: the peer was answered 0x0000 (Success)",
            name,
            echo,
        )


class EchoPool(HandlerPool):
    """Python threads answering the core's C-ECHO requests until the server stops."""

    def __init__(self, scp: _core.Server, handler: EchoHandler, name: str, threads: int) -> None:
        # The threads run this class's _serve, which calls `handler` as an echo handler.
        super().__init__(scp, cast("Callable[[IncomingInstance], Verdict]", handler), name, threads)

    @staticmethod
    def _serve(  # type: ignore[override]
        scp: _core.Server,
        handler: EchoHandler,
        name: str,
    ) -> None:
        while (request := scp.next_echo_request()) is not None:
            answer_echo(request, handler, name)
