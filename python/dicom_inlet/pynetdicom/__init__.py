"""pynetdicom's API for the Storage Service, on dicom-inlet's Rust core.

Code written for pynetdicom's storage examples runs with ``pynetdicom`` replaced by
``dicom_inlet.pynetdicom`` in its imports::

    from dicom_inlet.pynetdicom import AE, evt, StoragePresentationContexts

    def handle_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(ds.SOPInstanceUID, write_like_original=False)
        return 0x0000

    ae = AE()
    ae.supported_contexts = StoragePresentationContexts
    ae.start_server(("", 11112), evt_handlers=[(evt.EVT_C_STORE, handle_store)])

The network work runs in Rust with the GIL released; Python runs only the handlers (on a
pool of threads, one association's handler never holding back another's). pynetdicom names
outside the Storage Service raise ``NotImplementedError`` saying so.
"""

from __future__ import annotations

from typing import Any

from dicom_inlet import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_inlet.pynetdicom import evt, sop_class
from dicom_inlet.pynetdicom.ae import AE, AssociationServer
from dicom_inlet.pynetdicom.association import Association
from dicom_inlet.pynetdicom.events import Event
from dicom_inlet.pynetdicom.presentation import (
    DEFAULT_TRANSFER_SYNTAXES,
    PresentationContext,
    StoragePresentationContexts,
    VerificationPresentationContexts,
    build_context,
)

__all__ = [
    "AE",
    "DEFAULT_TRANSFER_SYNTAXES",
    "PYNETDICOM_IMPLEMENTATION_UID",
    "PYNETDICOM_IMPLEMENTATION_VERSION",
    "Association",
    "AssociationServer",
    "Event",
    "PresentationContext",
    "StoragePresentationContexts",
    "VerificationPresentationContexts",
    "build_context",
    "evt",
    "sop_class",
]

#: The Implementation Class UID this implementation sends: dicom-inlet's own.
PYNETDICOM_IMPLEMENTATION_UID = IMPLEMENTATION_CLASS_UID
#: The Implementation Version Name this implementation sends: dicom-inlet's own.
PYNETDICOM_IMPLEMENTATION_VERSION = IMPLEMENTATION_VERSION_NAME

# pynetdicom's public names outside the Storage Service.
_UNSUPPORTED = {
    "AllStoragePresentationContexts": "more storage contexts than one association carries",
    "QueryRetrievePresentationContexts": "Query/Retrieve",
    "BasicWorklistManagementPresentationContexts": "Basic Worklist Management",
    "ApplicationEventLoggingPresentationContexts": "Application Event Logging",
    "DisplaySystemPresentationContexts": "Display System Management",
    "HangingProtocolPresentationContexts": "Hanging Protocol Query/Retrieve",
    "ImplantTemplatePresentationContexts": "Implant Template Query/Retrieve",
    "InstanceAvailabilityPresentationContexts": "Instance Availability Notification",
    "ColorPalettePresentationContexts": "Color Palette Query/Retrieve",
    "DefinedProcedurePresentationContexts": "Defined Procedure Protocol Query/Retrieve",
    "MediaCreationManagementPresentationContexts": "Media Creation Management",
    "MediaStoragePresentationContexts": "Media Storage",
    "NonPatientObjectPresentationContexts": "Non-Patient Object Storage",
    "PrintManagementPresentationContexts": "Print Management",
    "ProcedureStepPresentationContexts": "Procedure Step",
    "ProtocolApprovalPresentationContexts": "Protocol Approval Query/Retrieve",
    "RelevantPatientInformationPresentationContexts": "Relevant Patient Information Query",
    "RTMachineVerificationPresentationContexts": "RT Machine Verification",
    "StorageCommitmentPresentationContexts": "Storage Commitment",
    "SubstanceAdministrationPresentationContexts": "Substance Administration Query",
    "UnifiedProcedurePresentationContexts": "Unified Procedure Step",
    "ALL_TRANSFER_SYNTAXES": "compressed transfer syntax lists",
    "debug_logger": "pynetdicom's debug logger (use logging on 'dicom_inlet')",
    "register_uid": "registering private SOP classes",
    "build_role": "SCP/SCU role selection",
}


def __getattr__(name: str) -> Any:
    feature = _UNSUPPORTED.get(name)
    if feature is None:
        raise AttributeError(f"module 'dicom_inlet.pynetdicom' has no attribute {name!r}")
    raise NotImplementedError(f"dicom_inlet.pynetdicom does not support {feature} ({name})")
