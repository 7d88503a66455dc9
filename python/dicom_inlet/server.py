"""The pacsanini-compatible Storage SCP: configuration, lifecycle and callback dispatch.

The Rust core (``dicom_inlet._core``) does all network and disk work without the GIL; this
module only starts it, stops it, and feeds stored instances to the user's callbacks on one
Python thread, in arrival order.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

from dicom_inlet import _core
from dicom_inlet.delivery import Completion, Dispatcher, JournalEntry, ParkedEvent, _replay_with
from dicom_inlet.handlers import (
    EchoHandler,
    EchoPool,
    Handler,
    HandlerPool,
    IncomingInstance,
    Verdict,
    verdict_of,
)
from dicom_inlet.identity import IdentityCheck, UserIdentity, UsersFile
from dicom_inlet.models import DicomNode, StorageSortKey
from dicom_inlet.scu import status_text
from dicom_inlet.sop_classes import STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS
from dicom_inlet.tls import ServerTLS

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicom_inlet.amqp import AmqpSink
    from dicom_inlet.metrics import Metrics

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


def _wake_for_signals(wait: Callable[[float], bool]) -> None:
    """Call ``wait(timeout)`` until it returns True, waking each second.

    A signal the kernel gives to another thread (POSIX lets it pick any thread not blocking
    it: the core's and the callbacks' threads too) does not interrupt this one's wait, and
    Python runs handlers only in the main thread: an endless wait would never run them."""
    while not wait(1.0):
        pass


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
        db_session: pacsanini's SQLAlchemy session for recording instances in its tables;
            not supported (a value raises ``NotImplementedError``): record from a callback,
            e.g. with :func:`dicom_inlet.convert.dcm2dict`. pacsanini records an image once
            its file is written, before its callbacks and the answer, and never a store it
            refuses; a callback with ``callbacks_before_response=True`` records the same.
        callbacks: Called with each stored instance, after its file is complete on disk,
            on a dispatcher thread in arrival order, after the peer was answered, at least
            once (see ``journal``). A raising callback is logged on the ``dicom_inlet``
            logger, the others still run, and it is retried (``callback_retries``) before
            the instance is parked as failed. The Dataset
            (:class:`~dicom_inlet.part10.StoredDataset`) is read as it is used, from exactly
            the version acknowledged, even if a later duplicate replaced the file; the UIDs,
            Modality and Study Date need no read of the file at all. See
            ``callbacks_before_response`` for pacsanini's order.
        handler: Decides each instance's C-STORE status before it is stored: called with an
            :class:`~dicom_inlet.handlers.IncomingInstance` (its ``dataset`` read lazily
            from the complete spool file) on a pool of handler threads; returns the status
            as an int, a pydicom Dataset with ``Status`` and optionally ``ErrorComment``
            (as a pynetdicom ``EVT_C_STORE`` handler does), or a
            :class:`~dicom_inlet.handlers.Verdict`. Success and warning statuses store the
            file (unless the verdict says ``keep=False``), others leave none. A raising
            handler is logged with its traceback and answers 0xC211, as pynetdicom does.
        handler_threads: Python threads running the handler (default:
            ``maximum_associations``, so a slow handler holds back only its own
            association).
        handler_timeout: Seconds an association waits for the handler's verdict (None: no
            limit); past it the store fails with 0xA700 and an Error Comment, logged at
            WARNING. :meth:`shutdown` waits for running handlers up to this long.
        callbacks_before_response: pacsanini's order: run ``callbacks`` on the handler
            threads after the file is stored and before the peer is answered, the first
            raising callback failing the store with 0xC211 (the file stays, as with
            pacsanini). The sender waits for the callbacks.
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
        durable: have each file, its name and its journal row on disk before answering
            success (one flush of the file system shared by the instances waiting for one).
        callback_queue_size: Stored instances waiting for callbacks before associations
            wait for the callbacks to catch up (back-pressure; nothing is dropped).
        shutdown_timeout: Seconds :meth:`shutdown` lets open associations finish before
            aborting them.
        tls: DICOM TLS (:class:`~dicom_inlet.tls.ServerTLS`): our certificate and key, and
            optionally the CA that client certificates must chain to (mutual TLS) and its
            revocation lists. Without ``tls_port`` the node's port speaks TLS only. A failed
            handshake (plain TCP, an untrusted, expired or revoked certificate, a stall past
            ``acse_timeout``) closes that connection and is logged with its reason.
        tls_port: With ``tls``, serve TLS on this port as well as plain TCP on the node's
            port (0 picks a free one).
        user_identity: Decides on the user identity a requestor presents (PS3.7 §D.3.3.7):
            called with a :class:`~dicom_inlet.identity.UserIdentity` on a thread of its own,
            it returns True to accept, False to reject (A-ASSOCIATE-RJ: permanent, service
            user, no reason given), or bytes to accept with that server response. It must
            answer within ``acse_timeout``; an exception rejects and is logged. E.g. a
            :class:`~dicom_inlet.identity.UsersFile`. Without it identities are accepted
            and recorded in the association log line.
        require_user_identity: Reject associations that present no user identity.
        journal: Record every acknowledged instance in ``data_dir/.journal/`` before
            answering, so callbacks and study events survive a crash (delivered at the next
            start); also the index behind ``dicom-inlet status``. False: callbacks are lost
            with the process, and study events are not available. A
            ``"postgresql://user:password@host:port/database"`` URL: the journal in that
            PostgreSQL database, one for all the nodes sharing ``data_dir``, so study state
            is global: one node at a time (holding a lease) fires the study/series events,
            and a node's undelivered instances are delivered by the others once its lease
            expires.
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
        node_id: This node's name among the servers sharing ``data_dir`` (processes or
            machines): its unfinished instances are spooled in ``data_dir/.incoming/<node_id>/``,
            held by a lock for its lifetime, and a node starting removes only the areas whose
            lock is free (their node is gone). Letters, digits, ``-``, ``_``, ``.``, up to 64;
            default ``<hostname>-<pid>``. Two running nodes cannot share one.
        metrics_port: Serve Prometheus metrics on ``/metrics``, ``/healthz`` (alive) and
            ``/readyz`` (accepting associations) over HTTP on this port of the node's address
            (0 picks a free one: :attr:`metrics_port`). Needs ``pip install
            "dicom-inlet[metrics]"``. None (the default): no metrics, and no cost.
        drain_delay: Seconds :meth:`drain` (and SIGTERM/SIGINT) keeps accepting associations
            after ``/readyz`` starts failing, so a load balancer sees the node go down before
            it stops listening: more than its health check's interval times its fall count.
        echo_handler: Decides each C-ECHO's status: called with an
            :class:`~dicom_inlet.handlers.IncomingEcho` on ``handler_threads`` threads of
            its own; returns the C-ECHO-RSP status as an int or a pydicom Dataset with
            ``Status`` (and optionally ``ErrorComment``), as a pynetdicom ``EVT_C_ECHO``
            handler does. One that raises (logged with its traceback) or returns something
            else answers 0x0000, as pynetdicom does; so does one that takes longer than
            ``handler_timeout`` (logged at WARNING when it returns). Without it every
            C-ECHO is answered 0x0000 at once.
        journal_lease: With a PostgreSQL journal, seconds a node's lease (and the timers'
            lease) lasts without a heartbeat (three a lease): how soon a dead node's
            undelivered instances and its study timers are taken over.
        events: Publish instance and study events to RabbitMQ: an ``amqp://`` URL (exchange
            ``dicom-inlet``) or an :class:`~dicom_inlet.amqp.AmqpSink`. Beside the callbacks,
            after them; a row counts as delivered once the broker confirmed its event, and
            while the broker is down or refuses, rows wait in the journal (never parked).
            Needs the journal and ``pip install "dicom-inlet[amqp]"``.
    """

    def __init__(
        self,
        node: DicomNode | Mapping[str, Any],
        data_dir: str | os.PathLike[str] = "",
        sort_by: StorageSortKey | str = StorageSortKey.PATIENT,
        db_session: Any = None,
        callbacks: Iterable[Callback] | None = None,
        *,
        handler: Handler | None = None,
        handler_threads: int | None = None,
        handler_timeout: float | None = 30.0,
        callbacks_before_response: bool = False,
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
        tls: ServerTLS | None = None,
        tls_port: int | None = None,
        user_identity: IdentityCheck | None = None,
        require_user_identity: bool = False,
        journal: bool | str = True,
        duplicates: str = "replace",
        study_callbacks: Iterable[CompletionCallback] | None = None,
        series_callbacks: Iterable[CompletionCallback] | None = None,
        study_timeout: float = DEFAULT_STUDY_TIMEOUT,
        events_on_release: bool = False,
        callback_retries: int = 3,
        retry_backoff: float = 1.0,
        node_id: str | None = None,
        metrics_port: int | None = None,
        drain_delay: float = 0.0,
        echo_handler: EchoHandler | None = None,
        journal_lease: float = 10.0,
        events: str | AmqpSink | None = None,
    ) -> None:
        if db_session is not None:
            if isinstance(db_session, (list, tuple)):
                hint = "; callbacks go by keyword: callbacks=[...]"
            else:
                hint = ": record from a handler or callback (dicom_inlet.convert.dcm2dict)"
            raise NotImplementedError(
                "db_session: dicom-inlet does not record into pacsanini's database tables "
                f"(the 4th positional parameter is pacsanini's db_session){hint}"
            )
        self.node = DicomNode.coerce(node)
        if self.node.port is None:
            raise ValueError(f"{self.node} needs a port to listen on")
        self._listen_port: int = self.node.port
        self.data_dir = os.path.abspath(os.fspath(data_dir) or os.getcwd())
        self.sort_by = StorageSortKey(sort_by.upper() if isinstance(sort_by, str) else sort_by)
        self.callbacks: list[Callback] = list(callbacks or [])
        self.study_callbacks: list[CompletionCallback] = list(study_callbacks or [])
        self.series_callbacks: list[CompletionCallback] = list(series_callbacks or [])
        for callback in [*self.callbacks, *self.study_callbacks, *self.series_callbacks]:
            if not callable(callback):
                raise TypeError(f"callbacks must be callable, got {callback!r}")
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        if echo_handler is not None and not callable(echo_handler):
            raise TypeError(f"echo_handler must be callable, got {echo_handler!r}")
        self.echo_handler = echo_handler
        if handler is not None and callbacks_before_response:
            raise ValueError(
                "handler and callbacks_before_response=True: give one (a handler can call "
                "the callbacks itself)"
            )
        self.handler = handler
        self.callbacks_before_response = callbacks_before_response
        if (self.study_callbacks or self.series_callbacks) and not journal:
            raise ValueError("study and series callbacks need the journal (journal=True)")
        if study_timeout < 0 or callback_retries < 0 or retry_backoff < 0:
            raise ValueError("study_timeout, callback_retries and retry_backoff must be >= 0")
        if isinstance(journal, str) and not journal.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"journal must be True, False or a postgresql:// URL, got {journal!r}")
        if not journal_lease > 0:
            raise ValueError("journal_lease must be positive seconds")
        self.journal = journal
        self.journal_lease = journal_lease
        self.duplicates = duplicates
        self.study_timeout = study_timeout
        self.events_on_release = events_on_release
        self.callback_retries = callback_retries
        self.retry_backoff = retry_backoff
        if maximum_associations < 1:
            raise ValueError("maximum_associations must be at least 1")
        self.handler_threads = maximum_associations if handler_threads is None else handler_threads
        if self.handler_threads < 1:
            raise ValueError("handler_threads must be at least 1")
        if handler_timeout is not None and not handler_timeout > 0:
            raise ValueError("handler_timeout must be positive seconds (None: no limit)")
        self.handler_timeout = handler_timeout
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
        if tls_port is not None and tls is None:
            raise ValueError("tls_port needs tls (a ServerTLS with certificate and key)")
        self.tls = tls
        self.tls_port = tls_port
        if user_identity is not None and not callable(user_identity):
            raise TypeError(f"user_identity must be callable, got {user_identity!r}")
        self.user_identity = user_identity
        self.require_user_identity = require_user_identity
        self.node_id = _default_node_id() if node_id is None else node_id
        if metrics_port is not None and not 0 <= metrics_port < 65536:
            raise ValueError("metrics_port must be a TCP port (0 picks a free one)")
        self.metrics_port = metrics_port
        if drain_delay < 0:
            raise ValueError("drain_delay must be a number of seconds, at least 0")
        self.drain_delay = drain_delay
        self.events = _events_sink(events, journal)
        self._metrics: Metrics | None = None
        # Set by drain() and shutdown(): /readyz fails from then on.
        self._draining = False
        # A second signal during the drain delay ends it.
        self._hurry = threading.Event()
        #: The running core server while serving; None before :meth:`run` and after shutdown.
        self.scp: _core.Server | None = None
        self._lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._handlers: HandlerPool | None = None
        self._echoes: EchoPool | None = None
        self._bound_port = self._listen_port
        self._stop = threading.Event()
        # Set whenever no server runs, so a concurrent shutdown() can wait for the first one.
        self._stopped = threading.Event()
        self._stopped.set()
        self._started = 0.0
        # The core server while shutdown() waits for it, for a second signal to cut short.
        self._closing: _core.Server | None = None

    @property
    def port(self) -> int:
        """The TCP port: the bound one while serving (useful with ``port=0``)."""
        scp = self.scp
        return scp.port if scp is not None else self._bound_port

    def run(self, block: bool = False) -> None:
        """Start serving.

        Args:
            block: False (the default) returns once the server listens; True serves until
                :meth:`shutdown` is called from another thread, or SIGINT/SIGTERM. In the
                main thread, a second SIGINT/SIGTERM ends the wait for open associations
                (``shutdown_timeout``) at once, aborting them, and SIGHUP reloads the TLS
                files (:meth:`reload_tls`) and a ``UsersFile`` given as ``user_identity``.

        Raises:
            RuntimeError: The server is already running.
            OSError: The port cannot be bound or ``data_dir`` cannot be used.
            ImportError: ``metrics_port`` without ``prometheus_client`` installed.
        """
        if block and threading.current_thread() is threading.main_thread():
            # Signals are ours before the server listens, so none can come unhandled.
            self._stop.clear()
            with self._stopping_on_signals():
                self._start()
                _wake_for_signals(self._stop.wait)
                # In a thread of its own, so this one stays free to run the handler of a
                # second signal.
                stopper = threading.Thread(
                    target=self._shutdown,
                    args=("; Ctrl-C again aborts them", self.drain_delay),
                    name="dicom-inlet-shutdown",
                )
                stopper.start()

                def stopped(timeout: float) -> bool:
                    stopper.join(timeout)
                    return not stopper.is_alive()

                _wake_for_signals(stopped)
            return
        self._stop.clear()
        self._start()
        if block:
            self._stop.wait()
            self.shutdown()

    def _start(self) -> None:
        with self._lock:
            if self.scp is not None:
                raise RuntimeError("this StoreSCPServer is already running")
            self._started = time.monotonic()
            self.scp = _core.Server(
                host=self.node.ip or "0.0.0.0",
                port=self._listen_port,
                ae_title=self.node.ae_title,
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
                emit_stored=(bool(self.callbacks) and not self.callbacks_before_response)
                or self.events is not None,
                event_queue=self.callback_queue_size,
                handler_stage=self._handler_stage(),
                handler_timeout=self.handler_timeout,
                **_tls_arguments(self.tls, self.tls_port),
                identity_check=_identity_check(self.user_identity),
                require_user_identity=self.require_user_identity,
                journal=bool(self.journal),
                duplicates=self.duplicates,
                study_timeout=self.study_timeout,
                study_events=bool(self.study_callbacks) or self.events is not None,
                series_events=bool(self.series_callbacks)
                or (self.events is not None and self.events.series),
                events_on_release=self.events_on_release,
                node_id=self.node_id,
                echo_handler=self.echo_handler is not None,
                journal_url=self._journal_url,
                journal_lease=self.journal_lease,
            )
            # Only once it runs: a server that failed to start leaves shutdown() nothing to await.
            self._stopped.clear()
            if self.scp.tls_port is not None:
                self.tls_port = self.scp.tls_port
            self._bound_port = self.scp.port
            self._draining = False
            self._hurry.clear()
            self._handlers = self._start_handlers(self.scp)
            if self.echo_handler is not None:
                name = getattr(self.echo_handler, "__name__", repr(self.echo_handler))
                self._echoes = EchoPool(self.scp, self.echo_handler, name, self.handler_threads)
            # Run before the response already (with the events, the stored ones come here).
            callbacks = [] if self.callbacks_before_response else self.callbacks
            if self.events is not None:
                self.events.start(self.node_id, self.data_dir, self.retry_backoff, self._stop)
            if self.metrics_port is not None:
                self._metrics = self._serve_metrics(self.scp)
                callbacks = [self._metrics.timed(c) for c in callbacks]
            dispatcher = Dispatcher(
                self.scp,
                callbacks,
                self.study_callbacks,
                self.series_callbacks,
                retries=self.callback_retries,
                backoff=self.retry_backoff,
                stop=self._stop,
                log_association=self._association_ended,
                log_failure=self._store_failed,
                log_journal=_log_journal,
                sink=self.events,
            )
            self._dispatcher = threading.Thread(
                target=dispatcher.run, name="dicom-inlet-callbacks", daemon=True
            )
            self._dispatcher.start()
        logger.info(
            "listening on %s:%d as %s, storing in %s (sort by %s, %s); %s",
            self.scp.host,
            self._bound_port,
            self.node.ae_title,
            self.data_dir,
            self.sort_by.value.lower(),
            "durable: fsync before each success" if self.durable else "not durable: no fsync",
            self._limits(),
        )
        if self.tls is not None:
            where = f"port {self.tls_port}" if self.tls_port is not None else "that port alone"
            mutual = ", client certificates required" if self.tls.ca is not None else ""
            crl = f", checked against CRL {self.tls.crl}" if self.tls.crl is not None else ""
            logger.info("DICOM TLS on %s%s%s", where, mutual, crl)
            _log_certificate(self.scp)
        if self._metrics is not None:
            logger.info(
                "node %s: metrics on http://%s:%d/metrics, /healthz and /readyz",
                self.node_id,
                self.scp.host,
                self.metrics_port,
            )

    def _serve_metrics(self, scp: _core.Server) -> Metrics:
        try:
            # Here, not at the top: a server without metrics does not load prometheus_client.
            from dicom_inlet.metrics import Metrics

            backlog = self._journal_backlog if self.journal else None
            certificate = self._tls_certificate if self.tls is not None else None
            metrics = Metrics(
                self._live_stats, self.ready, self.node_id, backlog, self.events, certificate
            )
            self.metrics_port = metrics.serve(self.node.ip or "0.0.0.0", self.metrics_port or 0)
        except BaseException as error:
            # Not half a node: without its health checks, the DICOM port closes too.
            scp.shutdown(0)
            self.scp = None
            self._stopped.set()
            if isinstance(error, ImportError):
                raise ImportError(
                    f"metrics_port needs prometheus_client ({error}): "
                    "pip install 'dicom-inlet[metrics]'"
                ) from None
            raise
        return metrics

    def _live_stats(self) -> _core.ServerStats | None:
        scp = self.scp or self._closing
        return None if scp is None else scp.stats()

    def _tls_certificate(self) -> tuple[str, int, int | None] | None:
        scp = self.scp or self._closing
        return None if scp is None else scp.tls_certificate()

    def _journal_backlog(self) -> tuple[int, float | None]:
        # A connection of its own each time: a journal moved or gone fails here, as it
        # would for the next instance.
        return _core.Journal(self.data_dir, self._journal_url).backlog()

    def ready(self) -> str | None:
        """Why this server would not take a new association now; None when it would.

        What ``/readyz`` answers (HTTP 503 with the reason, or 200).
        """
        if self._draining:
            return "draining"
        if self.scp is None:
            return "not running"
        if self.journal:
            try:
                self._journal_backlog()
            except Exception as error:
                return f"journal unreachable: {error}"
        return None

    def _handler_stage(self) -> str | None:
        if self.handler is not None:
            return "before_publish"
        if self.callbacks_before_response and self.callbacks:
            return "after_publish"
        return None

    def _start_handlers(self, scp: _core.Server) -> HandlerPool | None:
        handler = self.handler
        if handler is not None:
            name = getattr(handler, "__name__", repr(handler))
            return HandlerPool(
                scp,
                lambda i: verdict_of(handler(i)),
                name,
                self.handler_threads,
            )
        if self._handler_stage() is not None:
            return HandlerPool(
                scp,
                self._run_callbacks_first,
                "callback",
                self.handler_threads,
            )
        return None

    def _run_callbacks_first(self, instance: IncomingInstance) -> Verdict:
        # pacsanini's order: a raising callback propagates and fails the store (0xC211).
        for callback in self.callbacks:
            callback(instance.dataset)
        return Verdict(0x0000)

    def _limits(self) -> str:
        def seconds(value: float | None) -> str:
            return "none" if value is None else f"{value:g} s"

        pdu = self.maximum_pdu_size or "the largest supported (1 MiB)"
        size = self.max_instance_size
        return (
            f"limits: {self.maximum_associations} associations, max PDU {pdu}, "
            f"max instance {'none' if size is None else _size(size)}, "
            f"timeouts ACSE {seconds(self.acse_timeout)}, network "
            f"{seconds(self.network_timeout)}, DIMSE {seconds(self.dimse_timeout)}, "
            f"shutdown {seconds(self.shutdown_timeout)}"
        )

    @contextlib.contextmanager
    def _stopping_on_signals(self) -> Iterator[None]:
        """SIGINT or SIGTERM stops the server; a second one aborts what is still open. SIGHUP
        reloads the TLS files and a :class:`~dicom_inlet.identity.UsersFile`."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if not self._stop.is_set():
                self._stop.set()
                return
            self._hurry.set()
            scp = self._closing or self.scp
            if scp is not None:
                logger.warning("aborting the open associations now")
                scp.abort_associations()

        users = self.user_identity if isinstance(self.user_identity, UsersFile) else None

        def on_hangup(signum: int, frame: FrameType | None) -> None:
            if self.tls is not None:
                try:
                    self.reload_tls()
                except ValueError as error:
                    logger.error("TLS files not reloaded, the old ones still served: %s", error)
            if users is not None:
                try:
                    users.reload()
                    logger.info("users file %s reloaded", users.path)
                except (OSError, ValueError) as error:
                    logger.error("users file not reloaded, the old users still apply: %s", error)

        restore = [(n, signal.signal(n, on_signal)) for n in (signal.SIGINT, signal.SIGTERM)]
        if self.tls is not None or users is not None:
            # The daemons' convention (sshd, nginx): SIGHUP reads the configuration again.
            restore.append((signal.SIGHUP, signal.signal(signal.SIGHUP, on_hangup)))
        try:
            yield
        finally:
            for number, handler in restore:
                signal.signal(number, handler)
            self.shutdown()

    def reload_tls(self) -> bool:
        """Read the TLS certificate, key, CA and CRL files again, e.g. after a renewal.

        Associations that begin from now on are served with the files as they are now; those
        open keep what they began with. ``run(block=True)`` in the main thread does this at
        SIGHUP.

        Returns:
            True once reloaded; False when the server serves no TLS or is not running (a
            start reads the files anyway).

        Raises:
            ValueError: A file is unusable (missing, half-written, a key that does not match
                the certificate), named in the message. The server goes on with the files it
                had.
        """
        scp, tls = self.scp, self.tls
        if scp is None or tls is None or not scp.reload_tls():
            return False
        ca = f", CA {tls.ca}" if tls.ca is not None else ""
        crl = f", CRL {tls.crl}" if tls.crl is not None else ""
        logger.info("TLS files reloaded: certificate %s, key %s%s%s", tls.cert, tls.key, ca, crl)
        _log_certificate(scp)
        return True

    def shutdown(self) -> None:
        """Stop serving; idempotent.

        Stops accepting associations, lets open ones finish (up to ``shutdown_timeout``
        seconds, then aborts them), and returns once the callbacks of every stored instance
        have run.
        """
        self._shutdown("", 0.0)

    def drain(self) -> None:
        """Shut down the way a load balancer wants it: what SIGTERM does.

        ``/readyz`` fails at once; associations are still accepted for ``drain_delay``
        seconds, then no longer; open ones finish as in :meth:`shutdown`, and this returns
        once they have and every stored instance's callbacks have run.
        """
        self._shutdown("", self.drain_delay)

    def _shutdown(self, hint: str, drain_delay: float) -> None:
        current = threading.current_thread()
        if current is self._dispatcher or any(
            pool is not None and current in pool for pool in (self._handlers, self._echoes)
        ):
            # From a callback or handler: waiting here would stop a thread the shutdown
            # waits for.
            threading.Thread(target=self.shutdown, name="dicom-inlet-shutdown").start()
            return
        self._draining = True
        if drain_delay > 0 and self.scp is not None:
            logger.info(
                "draining: /readyz fails, accepting for %s more before stopping",
                f"{drain_delay:g} s",
            )
            self._hurry.wait(drain_delay)
        with self._lock:
            scp, self.scp = self.scp, None
            dispatcher = self._dispatcher
            handlers, self._handlers = self._handlers, None
            echoes, self._echoes = self._echoes, None
            self._closing = scp or self._closing
        self._stop.set()
        if scp is None:
            self._stopped.wait()
            return
        waiting = scp.stats().associations
        if waiting:
            logger.info(
                "stopping: waiting up to %s for %s to finish%s",
                f"{self.shutdown_timeout:g} s",
                _count(waiting, "open association"),
                hint,
            )
        else:
            logger.info("stopping: no open associations")
        scp.shutdown(self.shutdown_timeout)
        for pool in (handlers, echoes):
            if pool is not None:
                pool.join()
        if dispatcher is not None:
            dispatcher.join()
        self._dispatcher = None
        if self.events is not None:
            self.events.close()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        totals = scp.stats()
        logger.info(
            "stopped after %.1f s: %s stored, %d failed, %s received",
            time.monotonic() - self._started,
            _count(totals.instances, "instance"),
            totals.failures,
            _size(totals.bytes),
        )
        self._closing = None
        self._stopped.set()

    @property
    def _journal_url(self) -> str | None:
        return self.journal if isinstance(self.journal, str) else None

    def parked(self) -> list[JournalEntry]:
        """Instances whose callbacks kept failing, with the traceback in ``error``."""
        if self.scp is not None:
            self.scp.sync_journal()  # marks are committed ~20 ms after they are made
        return _core.Journal(self.data_dir, self._journal_url).instances(state="failed")

    def parked_events(self) -> list[ParkedEvent]:
        """Study and series completion events whose callbacks kept failing, with the
        traceback in ``error``; not fired again until replayed."""
        return _core.Journal(self.data_dir, self._journal_url).parked_events()

    def replay(
        self,
        ids: Iterable[int] | None = None,
        *,
        study: str | None = None,
        series: str | None = None,
    ) -> int:
        """Deliver parked deliveries again now; how many. With ``ids``, those instances; with
        ``study`` (``series``), its parked instances and completion events (the study's
        series' too); with neither, all. A replayed event fires at once, not after another
        ``study_timeout``.

        Raises:
            RuntimeError: The server is not running (use :func:`dicom_inlet.delivery.replay`).
            ValueError: Both ids and a study or series.
        """
        scp = self.scp
        if scp is None:
            raise RuntimeError("this StoreSCPServer is not running")
        journal = _core.Journal(self.data_dir, self._journal_url)
        chosen = None if ids is None else list(ids)
        return _replay_with(journal, scp.replay, scp.replay_events, chosen, study, series)

    def _association_ended(self, record: _core.AssociationRecord) -> None:
        _log_association(record)
        if self._metrics is not None:
            self._metrics.association_ended(record)

    def _store_failed(self, failed: _core.FailedStore) -> None:
        _log_failure(failed)
        if self._metrics is not None:
            self._metrics.store_failed(failed)

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
            f"StoreSCPServer(aetitle={self.node.ae_title!r}, port={self.port}, "
            f"data_dir={self.data_dir!r}, sort_by={self.sort_by.name}, {state})"
        )


def _events_sink(events: str | AmqpSink | None, journal: bool | str) -> AmqpSink | None:
    if events is None:
        return None
    if not journal:
        raise ValueError("events need the journal (journal=True): rows wait there for the broker")
    try:
        # Here, not at the top: a server without events does not load pika.
        from dicom_inlet.amqp import sink_of
    except ImportError as error:
        raise ImportError(f"events need pika ({error}): pip install 'dicom-inlet[amqp]'") from None
    return sink_of(events)


def _default_node_id() -> str:
    """``<hostname>-<pid>``, cut to a valid node id: unique among running nodes."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).lstrip(".")
    return f"{host[:48] or 'node'}-{os.getpid()}"


def _tls_arguments(tls: ServerTLS | None, port: int | None) -> dict[str, Any]:
    if tls is None:
        return {}
    return {
        "tls_cert": tls.cert,
        "tls_key": tls.key,
        "tls_ca": tls.ca,
        "tls_crl": tls.crl,
        "tls_port": port,
    }


def _identity_check(
    check: IdentityCheck | None,
) -> Callable[[_core.UserIdentityRequest], tuple[bool, bytes | None]] | None:
    """The user's check as the core calls it: (accepted, server response)."""
    if check is None:
        return None

    def call(request: _core.UserIdentityRequest) -> tuple[bool, bytes | None]:
        identity = UserIdentity(
            request.identity_type,
            request.primary,
            request.secondary,
            request.positive_response_requested,
            request.calling_ae,
        )
        try:
            answer = check(identity)
        except Exception:
            logger.exception("user identity check %r failed; association rejected", check)
            return False, None
        if isinstance(answer, (bytes, bytearray)):
            return True, bytes(answer)
        return bool(answer), None

    return call


def _size(count: int) -> str:
    if count < 1000:
        return f"{count} bytes"
    exponent = min(3, (len(str(count)) - 1) // 3)
    return f"{count / 1000**exponent:.1f} {('kB', 'MB', 'GB')[exponent - 1]}"


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


#: A served TLS certificate that expires sooner than this is told at WARNING, at the start and
#: at each reload: time to renew it before clients start refusing it.
CERTIFICATE_WARNING_DAYS = 30


def _utc(timestamp: int) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _log_crl(next_update: int) -> None:
    """When the CRLs are due again; WARNING once they are overdue: they still apply, but a
    certificate revoked since is not in them."""
    if next_update <= time.time():
        logger.warning(
            "TLS CRLs were due for renewal at %s: certificates revoked since are still "
            "accepted; fetch new CRLs, then reload (SIGHUP or reload_tls())",
            _utc(next_update),
        )
    else:
        logger.info(
            "TLS CRLs checked against client certificates, next update %s", _utc(next_update)
        )


def _log_certificate(scp: _core.Server) -> None:
    """Which TLS certificate is served and until when, WARNING when it expires soon, ERROR
    when it has; and when its CRLs are due (:func:`_log_crl`)."""
    served = scp.tls_certificate()
    if served is None:
        return
    subject, not_after, crl_next_update = served
    if crl_next_update is not None:
        _log_crl(crl_next_update)
    when = _utc(not_after)
    left = not_after - time.time()
    if left <= 0:
        logger.error(
            "TLS certificate %s expired at %s: clients refuse it; renew it, then reload "
            "(SIGHUP or reload_tls())",
            subject,
            when,
        )
    elif left < CERTIFICATE_WARNING_DAYS * 86_400:
        logger.warning(
            "TLS certificate %s expires at %s, in %.1f days: renew it, then reload "
            "(SIGHUP or reload_tls())",
            subject,
            when,
            left / 86_400,
        )
    else:
        logger.info("TLS certificate %s, valid until %s", subject, when)


def _log_failure(failed: _core.FailedStore) -> None:
    # A refusal is what the sender was told; the SCP's operator must see it too (--quiet).
    logger.warning(
        "C-STORE from %s %s -> %s refused: %s: %s (SOP Instance UID %s)",
        f"{failed.peer_host}:{failed.peer_port}",
        failed.calling_ae,
        failed.called_ae,
        status_text(failed.status),
        failed.error_comment,
        failed.sop_instance_uid or "none",
    )


def _log_journal(report: _core.JournalReport) -> None:
    # Once per change (a reminder each minute at most), not per retry; seen with --quiet.
    if report.state == "failing":
        logger.error(
            "journal %s cannot commit: %s; %s wait in its row log %s: acknowledged "
            "instances are safe there and will be committed when this clears (retried; "
            "the index lags meanwhile)",
            report.database,
            report.error,
            _count(report.rows, "acknowledged row"),
            report.log,
        )
    elif report.state == "still failing":
        logger.warning(
            "journal %s still cannot commit after %.0f s: %s; %s wait in its row log",
            report.database,
            report.failing_for,
            report.error,
            _count(report.rows, "acknowledged row"),
        )
    else:
        logger.warning(
            "journal %s commits resumed after %.1f s, %s caught up",
            report.database,
            report.failing_for,
            _count(report.rows, "row"),
        )


def _log_association(record: _core.AssociationRecord) -> None:
    peer = f"{record.peer_host}:{record.peer_port}"
    detail = f": {record.detail}" if record.detail else ""
    if not record.calling_ae:
        # It never sent an A-ASSOCIATE-RQ (or not one we could read): no AE titles to show.
        level = logging.WARNING if record.detail else logging.INFO
        logger.log(
            level,
            "connection from %s, an unidentified peer (no A-ASSOCIATE-RQ), after %.2f s (%s%s)",
            peer,
            record.duration,
            record.outcome,
            detail,
        )
        return
    if record.outcome == "rejected":
        logger.warning(
            "association %s %s -> %s rejected: %s",
            peer,
            record.calling_ae,
            record.called_ae,
            record.detail,
        )
        return
    if record.instances or record.failures or not record.echoes:
        work = (
            f"{_count(record.instances, 'instance')}, {record.failures} failed, "
            f"{_size(record.bytes)}"
        )
    else:
        work = f"C-ECHO only ({_count(record.echoes, 'C-ECHO')})"
    troubled = record.failures or record.outcome != "released"
    logger.log(
        logging.WARNING if troubled else logging.INFO,
        "association %s %s -> %s: %s in %.2f s (%s%s)",
        peer,
        record.calling_ae,
        record.called_ae,
        work,
        record.duration,
        record.outcome,
        detail + (f", {record.user_identity}" if record.user_identity else ""),
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
