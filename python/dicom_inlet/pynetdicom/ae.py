"""pynetdicom's ``AE`` on dicom-inlet's core: the storage SCU (``associate``) and the
storage SCP (``start_server`` with an ``EVT_C_STORE`` handler)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from pydicom.uid import UID

from dicom_inlet import _core
from dicom_inlet.handlers import (
    HANDLER_FAILED,
    EchoHandler,
    IncomingEcho,
    IncomingInstance,
    Verdict,
    verdict_of,
)
from dicom_inlet.models import DEFAULT_AE_TITLE, DicomNode
from dicom_inlet.pynetdicom import evt
from dicom_inlet.pynetdicom.association import Association, ServiceUser
from dicom_inlet.pynetdicom.events import Event
from dicom_inlet.pynetdicom.presentation import (
    DEFAULT_TRANSFER_SYNTAXES,
    MAX_CONTEXTS,
    PresentationContext,
    build_context,
)
from dicom_inlet.server import StoreSCPServer

__all__ = ["AE", "AssociationServer"]

logger = logging.getLogger("dicom_inlet")

# pynetdicom's AE features dicom-inlet does not offer.
_UNSUPPORTED = {
    "make_server": "AE.make_server (socketserver subclassing)",
    "active_associations": "AE.active_associations",
    "remove_requested_context": "AE.remove_requested_context",
    "remove_supported_context": "AE.remove_supported_context",
    "add_negotiator": "extended negotiation (AE.add_negotiator)",
    "unrestricted_storage_service": "an unrestricted Storage Service (any SOP class)",
}

_Handler = Callable[..., Any]


def _contexts_to_propose(contexts: Sequence[PresentationContext]) -> list[tuple[str, str]]:
    """Each (abstract syntax, transfer syntax) pair as its own context, which the core
    proposes; past the 128 an association can carry, each context's first syntax only."""
    pairs = [(c.abstract_syntax, s) for c in contexts for s in c.transfer_syntax]
    if len(pairs) > MAX_CONTEXTS:
        pairs = [(c.abstract_syntax, c.transfer_syntax[0]) for c in contexts if c.transfer_syntax]
    return [(str(a), str(s)) for a, s in pairs]


class AssociationServer:
    """A running non-blocking SCP (``start_server(..., block=False)``)."""

    def __init__(self, ae: AE, scp: StoreSCPServer, spool: str) -> None:
        self.ae = ae
        self._scp = scp
        self._spool = spool

    @property
    def server_address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return (self._scp.node.ip or "0.0.0.0", self._scp.port)

    def shutdown(self) -> None:
        """Stop serving; returns once open associations are done."""
        self._scp.shutdown()
        shutil.rmtree(self._spool, ignore_errors=True)
        if self in self.ae._servers:
            self.ae._servers.remove(self)


def _bound_handlers(
    evt_handlers: Sequence[tuple[Any, ...]],
) -> dict[evt.EventType, tuple[_Handler, list[Any]]]:
    """The handler bound to each event (with its extra arguments), the last binding winning."""
    bound: dict[evt.EventType, tuple[_Handler, list[Any]]] = {}
    for entry in evt_handlers:
        event, function, *args = entry
        if event not in (evt.EVT_C_STORE, evt.EVT_C_ECHO):
            raise NotImplementedError(
                f"dicom_inlet.pynetdicom does not support handlers bound to {event.name} "
                "(it raises only EVT_C_STORE and EVT_C_ECHO)"
            )
        bound[event] = (function, list(args[0]) if args else [])
    return bound


class AE:
    """An Application Entity: requests associations and serves the Storage Service.

    Args:
        ae_title: Our AE title (default ``DICOM_INLET``; pynetdicom's is ``PYNETDICOM``).
    """

    def __init__(self, ae_title: str = DEFAULT_AE_TITLE) -> None:
        self.ae_title = ae_title
        self.acse_timeout: float | None = 30
        self.dimse_timeout: float | None = 30
        self.network_timeout: float | None = 60
        self.connection_timeout: float | None = None
        self.maximum_associations = 10
        self.maximum_pdu_size = 16382
        self.require_called_aet = False
        self.require_calling_aet: list[str] = []
        self._requested: list[PresentationContext] = []
        self._supported: list[PresentationContext] = []
        self._servers: list[AssociationServer] = []

    @property
    def implementation_class_uid(self) -> UID:
        """dicom-inlet's Implementation Class UID, sent in every association request."""
        return UID(_core.IMPLEMENTATION_CLASS_UID)

    @property
    def implementation_version_name(self) -> str:
        """dicom-inlet's Implementation Version Name."""
        return _core.IMPLEMENTATION_VERSION_NAME

    # -- presentation contexts --------------------------------------------------------------

    @property
    def requested_contexts(self) -> list[PresentationContext]:
        """The contexts :meth:`associate` proposes by default (at most 128)."""
        return list(self._requested)

    @requested_contexts.setter
    def requested_contexts(self, contexts: Sequence[PresentationContext]) -> None:
        if len(contexts) > MAX_CONTEXTS:
            raise ValueError(f"at most {MAX_CONTEXTS} requested presentation contexts")
        self._requested = [build_context(c.abstract_syntax, c.transfer_syntax) for c in contexts]

    @property
    def supported_contexts(self) -> list[PresentationContext]:
        """The contexts the SCP accepts."""
        return list(self._supported)

    @supported_contexts.setter
    def supported_contexts(self, contexts: Sequence[PresentationContext]) -> None:
        self._supported = []
        for context in contexts:
            self.add_supported_context(context.abstract_syntax, context.transfer_syntax)

    def add_requested_context(
        self, abstract_syntax: str, transfer_syntax: str | Sequence[str] = DEFAULT_TRANSFER_SYNTAXES
    ) -> None:
        """Propose ``abstract_syntax`` in ``transfer_syntax`` on later associations."""
        if len(self._requested) >= MAX_CONTEXTS:
            raise ValueError(f"at most {MAX_CONTEXTS} requested presentation contexts")
        self._requested.append(build_context(abstract_syntax, transfer_syntax))

    def add_supported_context(
        self,
        abstract_syntax: str,
        transfer_syntax: str | Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
        scu_role: bool | None = None,
        scp_role: bool | None = None,
    ) -> None:
        """Accept ``abstract_syntax`` in ``transfer_syntax`` as an SCP."""
        if scu_role is not None or scp_role is not None:
            raise NotImplementedError(
                "dicom_inlet.pynetdicom does not support SCP/SCU role selection"
            )
        new = build_context(abstract_syntax, transfer_syntax)
        for context in self._supported:
            if context.abstract_syntax == new.abstract_syntax:
                for syntax in new.transfer_syntax:
                    context.add_transfer_syntax(syntax)
                return
        self._supported.append(new)

    # -- SCU --------------------------------------------------------------------------------

    def associate(
        self,
        addr: str,
        port: int,
        contexts: Sequence[PresentationContext] | None = None,
        ae_title: str = "ANY-SCP",
        max_pdu: int = 16382,
        ext_neg: Any = None,
        bind_address: tuple[str, int] = ("", 0),
        tls_args: Any = None,
        evt_handlers: Any = None,
    ) -> Association:
        """Request an association with the peer at ``addr``:``port`` (Called AE Title
        ``ae_title``); check ``is_established`` on the result, as with pynetdicom."""
        for name, value, default in [
            ("ext_neg (extended negotiation)", ext_neg, None),
            ("bind_address", bind_address, ("", 0)),
            ("tls_args (TLS)", tls_args, None),
            ("evt_handlers on an SCU association", evt_handlers, None),
        ]:
            if value != default:
                raise NotImplementedError(f"dicom_inlet.pynetdicom does not support {name}")
        contexts = self._requested if contexts is None else list(contexts)
        if not contexts:
            raise RuntimeError("At least one requested presentation context is required")
        requestor = ServiceUser(self.ae_title, "", 0, max_pdu)
        acceptor = ServiceUser(ae_title, addr, port)
        try:
            core = _core.associate(
                addr,
                port,
                _contexts_to_propose(contexts),
                called_ae=ae_title,
                calling_ae=self.ae_title,
                max_pdu=max_pdu,
                timeout=self.acse_timeout if self.dimse_timeout is None else self.dimse_timeout,
            )
        except _core.AssociationRejected:
            logger.error("Association rejected by %s:%d", addr, port)
            return Association(self, None, requestor, acceptor, rejected=True)
        except _core.AssociationAborted:
            logger.error("Association aborted by %s:%d", addr, port)
            return Association(self, None, requestor, acceptor, aborted=True)
        except (OSError, _core.AssociationError) as error:
            # Unreachable, or no context accepted: not established, as pynetdicom reports it.
            logger.error("Association request failed: %s", error)
            return Association(self, None, requestor, acceptor)
        return Association(self, core, requestor, acceptor)

    # -- SCP --------------------------------------------------------------------------------

    def start_server(
        self,
        address: tuple[str, int],
        block: bool = True,
        ssl_context: Any = None,
        evt_handlers: Sequence[tuple[Any, ...]] | None = None,
        ae_title: str | None = None,
        contexts: Sequence[PresentationContext] | None = None,
    ) -> AssociationServer | None:
        """Serve the Storage Service on ``address`` (host, port), each C-STORE's status
        coming from the ``evt.EVT_C_STORE`` handler (and each C-ECHO's from the
        ``evt.EVT_C_ECHO`` one, if bound; without it C-ECHO is answered 0x0000).
        ``block=True`` serves until Ctrl-C or SIGTERM and returns None; otherwise a server
        with ``shutdown()`` is returned."""
        if ssl_context is not None:
            raise NotImplementedError("dicom_inlet.pynetdicom does not support ssl_context (TLS)")
        supported = self._supported if contexts is None else list(contexts)
        if not supported:
            raise ValueError("No supported Presentation Contexts have been defined")
        bound = _bound_handlers(evt_handlers or [])
        handler = self._store_handler(bound.get(evt.EVT_C_STORE))
        echo = bound.get(evt.EVT_C_ECHO)
        # pynetdicom's acceptor takes the first of its own syntaxes the requestor proposes.
        syntaxes: list[str] = []
        for context in supported:
            for syntax in context.transfer_syntax:
                if syntax in _core.TRANSFER_SYNTAXES and syntax not in syntaxes:
                    syntaxes.append(str(syntax))
        host, port = address
        spool = tempfile.mkdtemp(prefix="dicom-inlet-pynetdicom-")
        scp = StoreSCPServer(
            DicomNode(ae_title or self.ae_title, port, host or None),
            spool,
            handler=handler,
            echo_handler=None if echo is None else self._echo_handler(*echo),
            handler_timeout=self.dimse_timeout,
            require_called_aet=self.require_called_aet,
            require_calling_aet=self.require_calling_aet,
            maximum_associations=self.maximum_associations,
            maximum_pdu_size=self.maximum_pdu_size,
            acse_timeout=self.acse_timeout,
            network_timeout=self.network_timeout,
            dimse_timeout=self.dimse_timeout,
            sop_classes=[str(c.abstract_syntax) for c in supported],
            transfer_syntaxes=syntaxes,
        )
        server = AssociationServer(self, scp, spool)
        self._servers.append(server)
        try:
            # Blocking: until Ctrl-C, SIGTERM or AE.shutdown() from another thread.
            scp.run(block=block)
        except BaseException:
            server.shutdown()
            raise
        if block:
            server.shutdown()
            return None
        return server

    def _store_handler(
        self, bound: tuple[_Handler, list[Any]] | None
    ) -> Callable[[IncomingInstance], Verdict]:
        function, extra = bound or (None, [])

        def decide(instance: IncomingInstance) -> Verdict:
            if function is None:
                # pynetdicom answers 0xC211 when no handler is bound to EVT_C_STORE.
                return Verdict(HANDLER_FAILED, "no handler bound to evt.EVT_C_STORE", keep=False)
            verdict = verdict_of(function(Event(self, instance), *extra))
            # The handler stores what it wants; dicom-inlet keeps no file of its own.
            return Verdict(verdict.status, verdict.error_comment, keep=False)

        decide.__name__ = "handler bound to evt.EVT_C_STORE"
        return decide

    def _echo_handler(self, function: _Handler, extra: list[Any]) -> EchoHandler:
        def answer(echo: IncomingEcho) -> Any:
            return function(Event(self, echo), *extra)

        answer.__name__ = "handler bound to evt.EVT_C_ECHO"
        return answer

    def shutdown(self) -> None:
        """Stop every server this AE started."""
        for server in list(self._servers):
            server.shutdown()

    def __getattr__(self, name: str) -> Any:
        feature = _UNSUPPORTED.get(name)
        if feature is None:
            raise AttributeError(f"'AE' object has no attribute {name!r}")
        raise NotImplementedError(f"dicom_inlet.pynetdicom does not support {feature}")
