"""The SCU side of pynetdicom's ``Association``: C-STORE, C-ECHO, release and abort on the
Rust core's requestor."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from dicom_inlet import _core
from dicom_inlet.pynetdicom.presentation import PresentationContext
from dicom_inlet.sop_classes import VERIFICATION_SOP_CLASS

if TYPE_CHECKING:
    from dicom_inlet.pynetdicom.ae import AE

__all__ = ["Association", "ServiceUser"]

# pynetdicom's Association methods dicom-inlet does not offer.
_UNSUPPORTED = {
    "send_c_find": "C-FIND (Query/Retrieve SCU)",
    "send_c_get": "C-GET (Query/Retrieve SCU)",
    "send_c_move": "C-MOVE (Query/Retrieve SCU)",
    "send_c_cancel": "C-CANCEL",
    "send_n_action": "N-ACTION",
    "send_n_create": "N-CREATE",
    "send_n_delete": "N-DELETE",
    "send_n_event_report": "N-EVENT-REPORT",
    "send_n_get": "N-GET",
    "send_n_set": "N-SET",
    "bind": "event handlers bound to an association",
    "unbind": "event handlers bound to an association",
}


@dataclass
class ServiceUser:
    """One end of an association: its AE title and address (``assoc.requestor``...)."""

    ae_title: str
    address: str
    port: int
    maximum_length: int = 16382


def _encode(ds: Dataset, syntax: UID) -> bytes:
    """The data set encoded in ``syntax`` for the wire (PS3.5 §A.1-A.5)."""
    fp = DicomBytesIO()
    fp.is_little_endian = syntax.is_little_endian
    fp.is_implicit_VR = syntax.is_implicit_VR
    write_dataset(fp, ds)
    data = fp.getvalue()
    if syntax.is_deflated:
        # Deflated Explicit VR LE: raw deflate, no zlib header (PS3.5 §A.5).
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


def _status(status: int, comment: str | None) -> Dataset:
    result = Dataset()
    result.Status = status
    if comment:
        result.ErrorComment = comment
    return result


class Association:
    """An association with a peer, requested by :meth:`AE.associate`."""

    def __init__(
        self,
        ae: AE,
        core: _core.ScuAssociation | None,
        requestor: ServiceUser,
        acceptor: ServiceUser,
        *,
        rejected: bool = False,
        aborted: bool = False,
    ) -> None:
        self.ae = ae
        self.requestor = requestor
        self.acceptor = acceptor
        self._core = core
        self.is_rejected = rejected
        self.is_aborted = aborted
        self.is_released = False

    @property
    def is_established(self) -> bool:
        """True while the association can be used."""
        return self._core is not None and self._core.is_open

    @property
    def accepted_contexts(self) -> list[PresentationContext]:
        """The presentation contexts the peer accepted, one transfer syntax each."""
        if self._core is None:
            return []
        return [
            PresentationContext(UID(abstract), [UID(syntax)], context_id)
            for context_id, abstract, syntax in self._core.accepted
        ]

    def _open(self, what: str) -> _core.ScuAssociation:
        if self._core is None or not self._core.is_open:
            raise RuntimeError(
                f"The association with a peer SCP must be established before sending a {what}"
            )
        return self._core

    def _request(self, send: Any) -> Dataset:
        try:
            status, comment = send()
        except _core.AssociationError:
            # As pynetdicom: an empty Dataset when no valid response came.
            self.is_aborted = True
            return Dataset()
        return _status(status, comment)

    def send_c_store(
        self,
        dataset: Dataset | str | os.PathLike[str],
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        """C-STORE a Dataset (or a file, read first); returns the response status Dataset.

        The data set goes in an accepted context of its SOP class and its file meta's
        Transfer Syntax UID, or, for an uncompressed one, converted to another accepted
        uncompressed syntax, as pynetdicom does. An empty Dataset means the association
        failed before an answer came.
        """
        core = self._open("C-STORE request")
        if originator_aet is not None or originator_id is not None:
            raise NotImplementedError("pynetdicom's C-STORE as part of a C-MOVE (originator_*)")
        if isinstance(dataset, (str, os.PathLike)):
            dataset = dcmread(dataset)
        try:
            syntax = UID(dataset.file_meta.TransferSyntaxUID)
        except AttributeError:
            raise AttributeError(
                "Unable to determine the presentation context to use with `dataset` as it "
                "contains no '(0002,0010) Transfer Syntax UID' file meta information element"
            ) from None
        sop_class = UID(dataset.SOPClassUID)
        candidates = [
            (context_id, UID(accepted))
            for context_id, abstract, accepted in core.accepted
            if abstract == sop_class
        ]
        chosen = next(((i, s) for i, s in candidates if s == syntax), None)
        if chosen is None and not syntax.is_compressed:
            chosen = next(((i, s) for i, s in candidates if not s.is_compressed), None)
        if chosen is None:
            raise ValueError(
                f"No presentation context for '{sop_class.name}' has been accepted by the peer "
                f"with '{syntax.name}' transfer syntax for the SCU role"
            )
        context_id, wire_syntax = chosen
        data = _encode(dataset, wire_syntax)
        instance = str(dataset.SOPInstanceUID)
        return self._request(lambda: core.send_c_store(context_id, sop_class, instance, data))

    def send_c_echo(self, msg_id: int = 1) -> Dataset:
        """C-ECHO (Verification); returns the response status Dataset."""
        core = self._open("C-ECHO request")
        context_id = next(
            (i for i, abstract, _ in core.accepted if abstract == VERIFICATION_SOP_CLASS), None
        )
        if context_id is None:
            raise ValueError(
                "No presentation context for 'Verification SOP Class' has been accepted by the "
                "peer for the SCU role"
            )
        return self._request(lambda: core.send_c_echo(context_id))

    def release(self) -> None:
        """Release the association (A-RELEASE)."""
        if self._core is not None and self._core.is_open:
            try:
                self._core.release()
                self.is_released = True
            except _core.AssociationError:
                self.is_aborted = True

    def abort(self) -> None:
        """Abort the association (A-ABORT)."""
        if self._core is not None and self._core.is_open:
            self._core.abort()
            self.is_aborted = True

    def __getattr__(self, name: str) -> Any:
        feature = _UNSUPPORTED.get(name)
        if feature is None:
            raise AttributeError(f"'Association' object has no attribute {name!r}")
        raise NotImplementedError(f"dicom_inlet.pynetdicom does not support {feature}")
