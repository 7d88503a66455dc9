"""Configuration models shared with pacsanini's API: sort keys and DICOM node information."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_AE_TITLE", "DicomNode", "StorageSortKey"]

#: The AE title used when a node does not name one.
DEFAULT_AE_TITLE = "DICOM_INLET"


class StorageSortKey(str, enum.Enum):
    """How received instances are laid out under ``data_dir``.

    Each level is a directory named after the attribute's value; the file is
    ``<SOPInstanceUID>.dcm``.
    """

    #: ``PatientID/StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID.dcm``; an instance without
    #: PatientID is filed with the STUDY layout.
    PATIENT = "PATIENT"
    #: ``StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID.dcm``
    STUDY = "STUDY"
    #: ``SeriesInstanceUID/SOPInstanceUID.dcm``
    SERIES = "SERIES"
    #: ``SOPInstanceUID.dcm``
    IMAGE = "IMAGE"


@dataclass(frozen=True)
class DicomNode:
    """A DICOM application entity on the network.

    Args:
        aetitle: The Application Entity title (1 to 16 characters, no backslash).
        port: The TCP port; 0 picks a free port when listening.
        ip: The host or address; for a server, the address to bind (None: all interfaces).
    """

    aetitle: str
    port: int
    ip: str | None = None

    @classmethod
    def coerce(cls, node: DicomNode | Mapping[str, Any]) -> DicomNode:
        """Accept a DicomNode or a pacsanini-style dict with ``aetitle``, ``port`` and ``ip``."""
        if isinstance(node, DicomNode):
            return node
        if not isinstance(node, Mapping):
            raise TypeError(f"node must be a DicomNode or a dict, not {type(node).__name__}")
        if node.get("port") is None:
            raise ValueError("node needs a 'port' to listen on")
        return cls(
            aetitle=node.get("aetitle") or DEFAULT_AE_TITLE, port=node["port"], ip=node.get("ip")
        )

    def __post_init__(self) -> None:
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
        title = self.aetitle.strip(" ")
        if not title or len(title) > 16 or "\\" in title or not title.isascii():
            raise ValueError(
                f"aetitle must be 1 to 16 ASCII characters without backslash, got {self.aetitle!r}"
            )
        object.__setattr__(self, "aetitle", title)
