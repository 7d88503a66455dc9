"""The event an ``EVT_C_STORE`` or ``EVT_C_ECHO`` handler receives, as pynetdicom's ``Event``
offers it: ``request``, ``assoc``, ``context``, and for C-STORE ``dataset`` and ``file_meta``."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicom_inlet import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_inlet.handlers import IncomingEcho, IncomingInstance
from dicom_inlet.part10 import file_meta
from dicom_inlet.pynetdicom import evt
from dicom_inlet.pynetdicom.association import ServiceUser
from dicom_inlet.pynetdicom.presentation import PresentationContextTuple

if TYPE_CHECKING:
    from dicom_inlet.pynetdicom.ae import AE

__all__ = ["C_ECHO", "C_STORE", "Event", "create_file_meta"]

# Priority MEDIUM (PS3.7 §9.1.1.1); dicom-inlet does not keep the request's own.
_MEDIUM = 0x0000


def create_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
) -> FileMetaDataset:
    """File meta information for a received data set, as pynetdicom builds it, naming
    dicom-inlet's implementation (PS3.10 §7.1)."""
    values = (
        (0x00020000, "UL", 0),  # set when written
        (0x00020001, "OB", b"\x00\x01"),
        (0x00020002, "UI", UID(sop_class_uid)),
        (0x00020003, "UI", UID(sop_instance_uid)),
        (0x00020010, "UI", UID(transfer_syntax)),
        (0x00020012, "UI", _IMPLEMENTATION_CLASS_UID),
        (0x00020013, "SH", IMPLEMENTATION_VERSION_NAME),
    )
    # The UIDs were checked by the core: built as pydicom's reader builds elements, unchecked
    # (a handler gets one per instance; pydicom's checks cost more than the rest of it).
    meta = file_meta(
        {
            BaseTag(tag): DataElement(tag, vr, value, validation_mode=IGNORE)
            for tag, vr, value in values
        }
    )
    meta.set_original_encoding(False, True)
    return meta


_IMPLEMENTATION_CLASS_UID = UID(IMPLEMENTATION_CLASS_UID)


class C_STORE:
    """The C-STORE request primitive (``event.request``)."""

    def __init__(self, instance: IncomingInstance) -> None:
        self._instance = instance
        self.MessageID = instance.message_id
        self.AffectedSOPClassUID = UID(instance.sop_class_uid)
        self.AffectedSOPInstanceUID = UID(instance.sop_instance_uid)
        self.Priority = _MEDIUM
        self.MoveOriginatorApplicationEntityTitle: str | None = None
        self.MoveOriginatorMessageID: int | None = None

    @property
    def DataSet(self) -> BytesIO:
        """The encoded data set as received."""
        size = self._instance.bytes
        with open(self._instance.file, "rb") as file:
            # The data set is the file's last `size` bytes, after the file meta.
            file.seek(file.seek(0, 2) - size)
            return BytesIO(file.read(size))


class C_ECHO:
    """The C-ECHO request primitive (``event.request``)."""

    def __init__(self, echo: IncomingEcho) -> None:
        self.MessageID = echo.message_id
        self.AffectedSOPClassUID = UID(echo.sop_class_uid)


@dataclass
class _AssociationView:
    """What a handler sees of the association (``event.assoc``)."""

    ae: AE
    requestor: ServiceUser
    acceptor: ServiceUser
    is_established: bool = True


class Event:
    """An ``EVT_C_STORE`` event (one received instance awaiting its status) or an
    ``EVT_C_ECHO`` one (a C-ECHO awaiting its status)."""

    def __init__(self, ae: AE, received: IncomingInstance | IncomingEcho) -> None:
        self.timestamp = datetime.datetime.now()
        self.request: C_STORE | C_ECHO
        if isinstance(received, IncomingInstance):
            self.event = evt.EVT_C_STORE
            self._instance: IncomingInstance | None = received
            self.request = C_STORE(received)
        else:
            self.event = evt.EVT_C_ECHO
            self._instance = None
            self.request = C_ECHO(received)
        self.assoc = _AssociationView(
            ae,
            ServiceUser(received.calling_ae, received.peer_host, received.peer_port),
            ServiceUser(received.called_ae, "", 0),
        )
        self.context = PresentationContextTuple(
            received.context_id, UID(received.sop_class_uid), UID(received.transfer_syntax_uid)
        )

    @property
    def _stored(self) -> IncomingInstance:
        if self._instance is None:
            raise AttributeError(f"{self.event.name} events have no data set")
        return self._instance

    @property
    def dataset(self) -> Dataset:
        """The received data set, decoded (lazily: large values when touched)."""
        return self._stored.dataset

    @property
    def file_meta(self) -> FileMetaDataset:
        """File meta information for saving :attr:`dataset` (a new one each time)."""
        instance = self._stored
        return create_file_meta(
            instance.sop_class_uid, instance.sop_instance_uid, instance.transfer_syntax_uid
        )

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        """The data set as received; with ``include_meta`` a whole Part 10 file."""
        instance = self._stored
        if include_meta:
            return instance.file.read_bytes()
        return C_STORE(instance).DataSet.getvalue()

    def __getattr__(self, name: str) -> Any:
        if name in ("identifier", "attribute_list", "action_information", "event_information"):
            raise NotImplementedError(
                f"event.{name}: dicom_inlet.pynetdicom raises only C-STORE and C-ECHO events"
            )
        raise AttributeError(f"'Event' object has no attribute {name!r}")
