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


@dataclass(frozen=True, init=False)
class DicomNode:
    """A DICOM application entity on the network, with pacsanini's coercions.

    Args:
        aetitle: The Application Entity title (1 to 16 ASCII characters, no backslash), as
            ``str`` or ``bytes``; held as ``bytes`` like pacsanini's (``ae_title`` gives the
            ``str``). Another type raises ``ValueError``.
        port: The TCP port; a string is converted to an int, ``None`` or ``""`` mean none.
            0 picks a free port when listening (pacsanini would treat it as no port).
        ip: The host or address; for a server, the address to bind; falsy means none (all
            interfaces).

    Attributes:
        has_net_info: True when both ``ip`` and ``port`` are set.
    """

    aetitle: bytes
    port: int | None
    ip: str | None
    has_net_info: bool

    def __init__(
        self,
        aetitle: str | bytes,
        port: int | str | None = None,
        ip: str | None = None,
    ) -> None:
        if isinstance(aetitle, str):
            aetitle = aetitle.encode("ascii", "backslashreplace")
        if not isinstance(aetitle, bytes):
            raise ValueError(
                f"aetitle must be a str or bytes, not {type(aetitle).__name__}: {aetitle!r}"
            )
        title = aetitle.strip(b" ")
        if not title or len(title) > 16 or b"\\" in title or not title.isascii():
            raise ValueError(
                f"aetitle must be 1 to 16 ASCII characters without backslash, got {aetitle!r}"
            )
        if isinstance(port, str):
            try:
                port = int(port) if port.strip() else None
            except ValueError:
                raise ValueError(f"port must be a whole number, got {port!r}") from None
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
        ):
            raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
        object.__setattr__(self, "aetitle", title)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "ip", ip or None)
        object.__setattr__(self, "has_net_info", self.ip is not None and port is not None)

    @property
    def ae_title(self) -> str:
        """The AE title as text."""
        return self.aetitle.decode("ascii")

    def has_port(self) -> bool:
        """Whether a port is set (a server needs one)."""
        return self.port is not None

    @classmethod
    def coerce(cls, node: DicomNode | Mapping[str, Any]) -> DicomNode:
        """Accept a DicomNode or a pacsanini-style dict with ``aetitle``, ``port`` and ``ip``."""
        if isinstance(node, DicomNode):
            return node
        if not isinstance(node, Mapping):
            raise TypeError(f"node must be a DicomNode or a dict, not {type(node).__name__}")
        return cls(
            aetitle=node.get("aetitle") or DEFAULT_AE_TITLE,
            port=node.get("port"),
            ip=node.get("ip"),
        )
