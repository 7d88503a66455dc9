"""pacsanini-compatible import path: ``from dicom_inlet.net import StoreSCPServer``."""

from dicom_inlet.server import StoreSCPServer, run_server

__all__ = ["StoreSCPServer", "run_server"]
