"""pacsanini-compatible import path: ``from dicom_inlet.net import StoreSCPServer``."""

from dicom_inlet.net.storescp import StoreSCPServer, run_server

__all__ = ["StoreSCPServer", "run_server"]
