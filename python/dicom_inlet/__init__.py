"""dicom-inlet: a fast, safe DICOM Storage SCP for Python with a Rust core.

Typical use, as with pacsanini::

    from dicom_inlet import StoreSCPServer

    with StoreSCPServer({"aetitle": "INLET", "port": 11112}, data_dir="dicom") as server:
        ...

and the sending side, a storage SCU::

    from dicom_inlet import echo, send

    echo("pacs.example", 104, called_aet="PACS")
    result = send("pacs.example", 104, ["study/"], called_aet="PACS")
"""

from importlib.metadata import version as _version

from dicom_inlet._core import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_inlet.handlers import IncomingEcho, IncomingInstance, Verdict
from dicom_inlet.identity import UserIdentity, UsersFile
from dicom_inlet.models import DicomNode, StorageSortKey
from dicom_inlet.scu import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    InstanceResult,
    SendResult,
    echo,
    send,
)
from dicom_inlet.server import StoreSCPServer, run_server
from dicom_inlet.tls import ClientTLS, ServerTLS

#: The installed distribution's version, which maturin takes from Cargo.toml.
__version__ = _version("dicom-inlet")

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "ClientTLS",
    "DicomNode",
    "IncomingEcho",
    "IncomingInstance",
    "InstanceResult",
    "SendResult",
    "ServerTLS",
    "StorageSortKey",
    "StoreSCPServer",
    "UserIdentity",
    "UsersFile",
    "Verdict",
    "echo",
    "run_server",
    "send",
]
