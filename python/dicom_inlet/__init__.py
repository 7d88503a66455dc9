"""dicom-inlet: a fast, safe DICOM Storage SCP for Python with a Rust core.

Typical use, as with pacsanini::

    from dicom_inlet import StoreSCPServer

    with StoreSCPServer({"aetitle": "INLET", "port": 11112}, data_dir="dicom") as server:
        ...
"""

from dicom_inlet._core import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_inlet.models import DicomNode, StorageSortKey
from dicom_inlet.server import StoreSCPServer, run_server

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "DicomNode",
    "StorageSortKey",
    "StoreSCPServer",
    "run_server",
]
