"""pacsanini's module path ``pacsanini.net.storescp``: the Storage SCP and its helper."""

from dicom_inlet.server import StoreSCPServer, run_server

__all__ = ["StoreSCPServer", "run_server"]
