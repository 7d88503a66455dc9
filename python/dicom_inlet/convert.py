"""Conversions for callbacks that ship metadata elsewhere (pacsanini's ``dcm2dict``)."""

from __future__ import annotations

from typing import Any

from pydicom import Dataset
from pydicom.tag import Tag

__all__ = ["dcm2dict"]

# Pixel Data and its float/double variants.
_PIXEL_TAGS = frozenset({Tag(0x7FE0, 0x0010), Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009)})


def dcm2dict(dcm: Dataset, include_pixels: bool = False) -> dict[str, Any]:
    """Convert a data set to a DICOM JSON model dict (PS3.18 §F.2), ready for a database.

    Keys are tags as 8 hex digits (``"00100020"``), values ``{"vr": ..., "Value": [...]}``.
    The input is never modified.

    Args:
        dcm: The data set, e.g. the one a ``StoreSCPServer`` callback receives.
        include_pixels: Keep Pixel Data (base64 encoded, can be large); dropped by default.
    """
    if include_pixels:
        return dcm.to_json_dict()
    # A shallow copy without the pixel elements: the caller's data set is left as it was.
    view = Dataset()
    for element in dcm:
        if element.tag not in _PIXEL_TAGS:
            view.add(element)
    return view.to_json_dict()
