"""The pacsanini-compatible Storage SCP: configuration, lifecycle and callback dispatch.

The Rust core (``dicom_inlet._core``) does all network and disk work without the GIL; this
module only starts it, stops it, and feeds stored instances to the user's callbacks on one
Python thread, in arrival order.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

from dicom_inlet import _core
from dicom_inlet.delivery import Completion, Dispatcher, JournalEntry
from dicom_inlet.models import DicomNode, StorageSortKey
from dicom_inlet.sop_classes import STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = ["Callback", "CompletionCallback", "StoreSCPServer", "run_server"]

logger = logging.getLogger("dicom_inlet")

#: A callback receives each stored instance as a pydicom Dataset.
Callback: TypeAlias = "Callable[[Dataset], Any]"
#: A study or series callback receives a :class:`~dicom_inlet.delivery.Completion`.
CompletionCallback: TypeAlias = "Callable[[Completion], Any]"
#: Quiet seconds before a study counts as complete: a modality pauses between series (a
#: reconstruction, the next scan of the exam) for tens of seconds, so a shorter wait would
#: mostly produce revisions; Orthanc's StableAge has the same default.
DEFAULT_STUDY_TIMEOUT = 60.0


class StoreSCPServer:
    """A DICOM Storage SCP that writes every received instance under ``data_dir``.

    Each instance is stored as a DICOM Part 10 file (the data set exactly as received,
    preceded by file meta information) in the layout chosen by ``sort_by``, then every
    callback is called with it as a ``pydicom.Dataset``.

    Args:
        node: This node: a :class:`DicomNode` or a dict with ``aetitle``, ``port`` and
            optionally ``ip`` (the address to bind; default all interfaces).
        data_dir: Storage root, created if missing; ``""`` means the current directory.
        sort_by: The directory layout (:class:`StorageSortKey`).
        callbacks: Called with each stored instance, after its file is complete on disk,
            on a dispatcher thread in arrival order, at least once (see ``journal``). A
            raising callback is logged on the ``dicom_inlet`` logger, the others still run,
            and it is retried (``callback_retries``) before the instance is parked as failed.
            The Dataset is read from exactly the version acknowledged, even if a later
            duplicate replaced the file; read what you need during the call.
        require_called_aet: Reject associations whose Called AE Title is not ours
            (A-ASSOCIATE-RJ, reason 7 "called AE title not recognized").
        require_calling_aet: If not empty, the only Calling AE Titles accepted
            (others get A-ASSOCIATE-RJ, reason 3 "calling AE title not recognized").
        maximum_associations: Associations served at once; the next one is rejected as
            transient "local limit exceeded".
        maximum_pdu_size: The largest P-DATA-TF PDU we accept, advertised to peers; 0 means
            the largest we support (1 MiB).
        acse_timeout: Seconds a new connection has to send its whole A-ASSOCIATE-RQ (the
            ARTIM timer); past it the connection is closed.
        network_timeout: Seconds an association may stay idle between messages before it
            is aborted (A-ABORT).
        dimse_timeout: Seconds each PDU of a message under way (a command or data set being
            received) may take to start and to arrive in full; past it the association is
            aborted and the unfinished instance discarded.
        max_instance_size: Largest data set accepted, in bytes (None: no limit). A larger
            instance is received to its end without being stored and refused with status
            0xA700 (out of resources) and an Error Comment; the association goes on.
        sop_classes: SOP Class UIDs to accept; default Verification plus every storage
            SOP class of the current standard.
        transfer_syntaxes: Transfer Syntax UIDs to accept, in order of preference; default
            all supported ones, taking the first the peer proposes (no conversion needed).
        durable: fsync each file and its directory (and the journal's commit) before
            answering success.
        callback_queue_size: Stored instances waiting for callbacks before associations
            wait for the callbacks to catch up (back-pressure; nothing is dropped).
        shutdown_timeout: Seconds :meth:`shutdown` lets open associations finish before
            aborting them.
        journal: Record every acknowledged instance in ``data_dir/.journal/`` before
            answering, so callbacks and study events survive a crash (delivered at the next
            start); also the index behind ``dicom-inlet status``. False: callbacks are lost
            with the process, and study events are not available.
        duplicates: An instance whose file exists already: ``"replace"`` it (default),
            ``"keep-first"`` (acknowledged, dropped), ``"reject"`` (status 0x0111 Duplicate
            SOP Instance with an Error Comment) or ``"keep-both"`` (``UID~2.dcm``...).
        study_callbacks: Called with a :class:`~dicom_inlet.delivery.Completion` once a
            study has been quiet for ``study_timeout`` seconds; again, as a revision, if
            more of it arrives later. At least once, after its instances' callbacks.
        series_callbacks: The same per series.
        study_timeout: Quiet seconds before a study (series) counts as complete.
        events_on_release: Also fire the study (series) events of an association as soon
            as it is released, for senders that send one study per association.
        callback_retries: Retries of a raising callback before the instance is parked.
        retry_backoff: Seconds before the first retry; doubled for each next one.
    """

    def __init__(
        self,
        node: DicomNode | Mapping[str, Any],
        data_dir: str | os.PathLike[str] = "",
        sort_by: StorageSortKey | str = StorageSortKey.PATIENT,
        callbacks: Iterable[Callback] | None = None,
        *,
        require_called_aet: bool = False,
        require_calling_aet: Sequence[str] = (),
        maximum_associations: int = 64,
        maximum_pdu_size: int = 262_144,
        acse_timeout: float | None = 30.0,
        network_timeout: float | None = 60.0,
        dimse_timeout: float | None = 30.0,
        max_instance_size: int | None = None,
        sop_classes: Iterable[str] | None = None,
        transfer_syntaxes: Sequence[str] | None = None,
        durable: bool = False,
        callback_queue_size: int = 64,
        shutdown_timeout: float = 10.0,
        journal: bool = True,
        duplicates: str = "replace",
        study_callbacks: Iterable[CompletionCallback] | None = None,
        series_callbacks: Iterable[CompletionCallback] | None = None,
        study_timeout: float = DEFAULT_STUDY_TIMEOUT,
        events_on_release: bool = False,
        callback_retries: int = 3,
        retry_backoff: float = 1.0,
    ) -> None:
        self.node = DicomNode.coerce(node)
        self.data_dir = os.path.abspath(os.fspath(data_dir) or os.getcwd())
        self.sort_by = StorageSortKey(sort_by.upper() if isinstance(sort_by, str) else sort_by)
        self.callbacks: list[Callback] = list(callbacks or [])
        self.study_callbacks: list[CompletionCallback] = list(study_callbacks or [])
        self.series_callbacks: list[CompletionCallback] = list(series_callbacks or [])
        for callback in [*self.callbacks, *self.study_callbacks, *self.series_callbacks]:
            if not callable(callback):
                raise TypeError(f"callbacks must be callable, got {callback!r}")
        if (self.study_callbacks or self.series_callbacks) and not journal:
            raise ValueError("study and series callbacks need the journal (journal=True)")
        if study_timeout < 0 or callback_retries < 0 or retry_backoff < 0:
            raise ValueError("study_timeout, callback_retries and retry_backoff must be >= 0")
        self.journal = journal
        self.duplicates = duplicates
        self.study_timeout = study_timeout
        self.events_on_release = events_on_release
        self.callback_retries = callback_retries
        self.retry_backoff = retry_backoff
        if maximum_associations < 1:
            raise ValueError("maximum_associations must be at least 1")
        if not 0 <= maximum_pdu_size < 2**32:
            raise ValueError("maximum_pdu_size must fit in 32 bits (0: the largest supported)")
        self.require_called_aet = require_called_aet
        self.require_calling_aet = [str(t).strip() for t in require_calling_aet]
        self.maximum_associations = maximum_associations
        self.maximum_pdu_size = maximum_pdu_size
        self.acse_timeout = acse_timeout
        self.network_timeout = network_timeout
        self.dimse_timeout = dimse_timeout
        if max_instance_size is not None and max_instance_size < 0:
            raise ValueError("max_instance_size must be a number of bytes (None: no limit)")
        self.max_instance_size = max_instance_size
        default_classes = STORAGE_SOP_CLASSES | {VERIFICATION_SOP_CLASS}
        self.sop_classes = frozenset(default_classes if sop_classes is None else sop_classes)
        self.transfer_syntaxes = None if transfer_syntaxes is None else list(transfer_syntaxes)
        self.durable = durable
        self.callback_queue_size = callback_queue_size
        self.shutdown_timeout = shutdown_timeout
        #: The running core server while serving; None before :meth:`run` and after shutdown.
        self.scp: _core.Server | None = None
        self._lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._bound_port = self.node.port
        self._stop = threading.Event()
        # Set whenever no server runs, so a concurrent shutdown() can wait for the first one.
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def port(self) -> int:
        """The TCP port: the bound one while serving (useful with ``port=0``)."""
        scp = self.scp
        return scp.port if scp is not None else self._bound_port

    def run(self, block: bool = False) -> None:
        """Start serving.

        Args:
            block: False (the default) returns once the server listens; True serves until
                :meth:`shutdown` is called from another thread, or SIGINT/SIGTERM.

        Raises:
            RuntimeError: The server is already running.
            OSError: The port cannot be bound or ``data_dir`` cannot be used.
        """
        with self._lock:
            if self.scp is not None:
                raise RuntimeError("this StoreSCPServer is already running")
            self._stop.clear()
            self._stopped.clear()
            self.scp = _core.Server(
                host=self.node.ip or "0.0.0.0",
                port=self.node.port,
                ae_title=self.node.aetitle,
                data_dir=self.data_dir,
                sort_by=self.sort_by.value,
                sop_classes=sorted(self.sop_classes),
                transfer_syntaxes=self.transfer_syntaxes,
                require_called_ae=self.require_called_aet,
                allowed_calling_aes=self.require_calling_aet,
                max_associations=self.maximum_associations,
                max_pdu=self.maximum_pdu_size,
                acse_timeout=self.acse_timeout,
                network_timeout=self.network_timeout,
                dimse_timeout=self.dimse_timeout,
                max_instance_size=self.max_instance_size,
                durable=self.durable,
                emit_stored=bool(self.callbacks),
                event_queue=self.callback_queue_size,
                journal=self.journal,
                duplicates=self.duplicates,
                study_timeout=self.study_timeout,
                study_events=bool(self.study_callbacks),
                series_events=bool(self.series_callbacks),
                events_on_release=self.events_on_release,
            )
            self._bound_port = self.scp.port
            dispatcher = Dispatcher(
                self.scp,
                self.callbacks,
                self.study_callbacks,
                self.series_callbacks,
                retries=self.callback_retries,
                backoff=self.retry_backoff,
                stop=self._stop,
                log_association=_log_association,
            )
            self._dispatcher = threading.Thread(
                target=dispatcher.run, name="dicom-inlet-callbacks", daemon=True
            )
            self._dispatcher.start()
        logger.info(
            "listening on %s:%d as %s, storing in %s (sort by %s)",
            self.scp.host,
            self._bound_port,
            self.node.aetitle,
            self.data_dir,
            self.sort_by.value.lower(),
        )
        if block:
            self._serve_until_stopped()

    def _serve_until_stopped(self) -> None:
        restore: list[tuple[int, Any]] = []
        if threading.current_thread() is threading.main_thread():

            def request_stop(signum: int, frame: FrameType | None) -> None:
                self._stop.set()

            for signum in (signal.SIGINT, signal.SIGTERM):
                restore.append((signum, signal.signal(signum, request_stop)))
        try:
            self._stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            for number, handler in restore:
                signal.signal(number, handler)
            self.shutdown()

    def shutdown(self) -> None:
        """Stop serving; idempotent.

        Stops accepting associations, lets open ones finish (up to ``shutdown_timeout``
        seconds, then aborts them), and returns once the callbacks of every stored instance
        have run.
        """
        if threading.current_thread() is self._dispatcher:
            # From a callback: waiting here would stop the very thread that drains the queue.
            threading.Thread(target=self.shutdown, name="dicom-inlet-shutdown").start()
            return
        with self._lock:
            scp, self.scp = self.scp, None
            dispatcher = self._dispatcher
        self._stop.set()
        if scp is None:
            self._stopped.wait()
            return
        scp.shutdown(self.shutdown_timeout)
        if dispatcher is not None:
            dispatcher.join()
        self._dispatcher = None
        self._stopped.set()

    def parked(self) -> list[JournalEntry]:
        """Instances whose callbacks kept failing, with the traceback in ``error``."""
        return _core.Journal(self.data_dir).instances(state="failed")

    def replay(self, ids: Iterable[int] | None = None) -> int:
        """Deliver parked instances again now (these journal ids, or all); how many.

        Raises:
            RuntimeError: The server is not running (use :func:`dicom_inlet.delivery.replay`).
        """
        scp = self.scp
        if scp is None:
            raise RuntimeError("this StoreSCPServer is not running")
        return scp.replay(None if ids is None else list(ids))

    def __enter__(self) -> StoreSCPServer:
        self.run(block=False)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "running" if self.scp is not None else "stopped"
        return (
            f"StoreSCPServer(aetitle={self.node.aetitle!r}, port={self.port}, "
            f"data_dir={self.data_dir!r}, sort_by={self.sort_by.name}, {state})"
        )


def _size(count: int) -> str:
    if count < 1000:
        return f"{count} bytes"
    exponent = min(3, (len(str(count)) - 1) // 3)
    return f"{count / 1000**exponent:.1f} {('kB', 'MB', 'GB')[exponent - 1]}"


def _log_association(record: _core.AssociationRecord) -> None:
    detail = f": {record.detail}" if record.detail else ""
    logger.info(
        "association %s:%d %s -> %s: %d instances, %d failed, %s in %.2f s (%s%s)",
        record.peer_host,
        record.peer_port,
        record.calling_ae or "?",
        record.called_ae or "?",
        record.instances,
        record.failures,
        _size(record.bytes),
        record.duration,
        record.outcome,
        detail,
    )


def run_server(
    node: DicomNode | Mapping[str, Any],
    data_dir: str | os.PathLike[str] = "",
    sort_by: StorageSortKey | str = StorageSortKey.PATIENT,
    callbacks: Iterable[Callback] | None = None,
    block: bool = False,
) -> StoreSCPServer:
    """Create a :class:`StoreSCPServer`, start it and return it (pacsanini's helper).

    With ``block=True`` this returns only after the server has been shut down.
    """
    server = StoreSCPServer(node, data_dir=data_dir, sort_by=sort_by, callbacks=callbacks)
    server.run(block=block)
    return server
