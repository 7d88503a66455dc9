"""The event an ``EVT_C_STORE`` handler receives, as pynetdicom's ``Event`` offers it:
``dataset``, ``file_meta``, ``request``, ``assoc``, ``context``."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from dicom_inlet import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_inlet.handlers import IncomingInstance
from dicom_inlet.pynetdicom import evt
from dicom_inlet.pynetdicom.association import ServiceUser
from dicom_inlet.pynetdicom.presentation import PresentationContextTuple

if TYPE_CHECKING:
    from dicom_inlet.pynetdicom.ae import AE

__all__ = ["C_STORE", "Event", "create_file_meta"]

# Priority MEDIUM (PS3.7 §9.1.1.1); dicom-inlet does not keep the request's own.
_MEDIUM = 0x0000


def create_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
) -> FileMetaDataset:
    """File meta information for a received data set, as pynetdicom builds it, naming
    dicom-inlet's implementation (PS3.10 §7.1)."""
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0  # set when written
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.set_original_encoding(False, True)
    return meta


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


@dataclass
class _AssociationView:
    """What a handler sees of the association (``event.assoc``)."""

    ae: AE
    requestor: ServiceUser
    acceptor: ServiceUser
    is_established: bool = True


class Event:
    """An ``EVT_C_STORE`` event: one received instance awaiting its status."""

    def __init__(self, ae: AE, instance: IncomingInstance) -> None:
        self.event = evt.EVT_C_STORE
        self.timestamp = datetime.datetime.now()
        self._instance = instance
        self.request = C_STORE(instance)
        self.assoc = _AssociationView(
            ae,
            ServiceUser(instance.calling_ae, instance.peer_host, instance.peer_port),
            ServiceUser(instance.called_ae, "", 0),
        )
        self.context = PresentationContextTuple(
            instance.context_id, UID(instance.sop_class_uid), UID(instance.transfer_syntax_uid)
        )

    @property
    def dataset(self) -> Dataset:
        """The received data set, decoded (lazily: large values when touched)."""
        return self._instance.dataset

    @property
    def file_meta(self) -> FileMetaDataset:
        """File meta information for saving :attr:`dataset` (a new one each time)."""
        return create_file_meta(
            self._instance.sop_class_uid,
            self._instance.sop_instance_uid,
            self._instance.transfer_syntax_uid,
        )

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        """The data set as received; with ``include_meta`` a whole Part 10 file."""
        if include_meta:
            return self._instance.file.read_bytes()
        return self.request.DataSet.getvalue()

    def __getattr__(self, name: str) -> Any:
        if name in ("identifier", "attribute_list", "action_information", "event_information"):
            raise NotImplementedError(
                f"event.{name}: dicom_inlet.pynetdicom raises only C-STORE events"
            )
        raise AttributeError(f"'Event' object has no attribute {name!r}")
