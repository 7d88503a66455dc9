"""The events of pynetdicom's ``evt`` module that dicom-inlet's SCP raises.

``EVT_C_STORE`` (a handler decides each instance's status) and ``EVT_C_ECHO`` (a handler
decides each C-ECHO's status; unbound, C-ECHO is answered with success) are bound with
``evt_handlers=[(evt.EVT_C_STORE, handler)]``, as with pynetdicom. Binding a handler to any
other pynetdicom event raises ``NotImplementedError``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["EVT_C_ECHO", "EVT_C_STORE", "EventType", "InterventionEvent", "NotificationEvent"]


class EventType(NamedTuple):
    """An event: its name and what it means, as pynetdicom describes its events."""

    name: str
    description: str
    is_intervention: bool

    def __str__(self) -> str:
        return self.name


InterventionEvent = EventType
NotificationEvent = EventType

EVT_C_ECHO = EventType("EVT_C_ECHO", "C-ECHO request received", True)
EVT_C_STORE = EventType("EVT_C_STORE", "C-STORE request received", True)

# pynetdicom events dicom-inlet does not raise: bound, they say so.
_UNSUPPORTED = [
    "EVT_ABORTED",
    "EVT_ACCEPTED",
    "EVT_ACSE_RECV",
    "EVT_ACSE_SENT",
    "EVT_ASYNC_OPS",
    "EVT_CONN_CLOSE",
    "EVT_CONN_OPEN",
    "EVT_DATA_RECV",
    "EVT_DATA_SENT",
    "EVT_DIMSE_RECV",
    "EVT_DIMSE_SENT",
    "EVT_ESTABLISHED",
    "EVT_FSM_TRANSITION",
    "EVT_N_ACTION",
    "EVT_N_CREATE",
    "EVT_N_DELETE",
    "EVT_N_EVENT_REPORT",
    "EVT_N_GET",
    "EVT_N_SET",
    "EVT_C_FIND",
    "EVT_C_GET",
    "EVT_C_MOVE",
    "EVT_PDU_RECV",
    "EVT_PDU_SENT",
    "EVT_REJECTED",
    "EVT_RELEASED",
    "EVT_REQUESTED",
    "EVT_SOP_COMMON",
    "EVT_SOP_EXTENDED",
    "EVT_USER_ID",
]

_NAMED = {
    name: EventType(name, f"pynetdicom's {name} (not raised by dicom-inlet)", False)
    for name in _UNSUPPORTED
}


def __getattr__(name: str) -> EventType:
    try:
        return _NAMED[name]
    except KeyError:
        raise AttributeError(f"pynetdicom has no event {name!r}") from None
