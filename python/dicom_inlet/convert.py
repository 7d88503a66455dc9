"""Conversions for callbacks that ship metadata elsewhere: pacsanini's ``dcm2dict`` and
``dict2dcm``, with the same output shape but never modifying their input."""

from __future__ import annotations

import os
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_description
from pydicom.tag import BaseTag, Tag

__all__ = ["dcm2dict", "dict2dcm"]

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
# Pixel Data and its float/double variants: bulk data, left out unless asked for.
_PIXEL_TAGS = frozenset({_PIXEL_DATA, Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009)})


def _name(tag: BaseTag, dataset: Dataset) -> str:
    """pacsanini's element name: the dictionary name without brackets, each word capitalised
    and joined ("Patient ID" -> "PatientId")."""
    # Pixel elements by the dictionary: their values may be left out, or deferred.
    name = dictionary_description(tag) if tag in _PIXEL_TAGS else dataset[tag].name
    name = name.replace("[", "").replace("]", "")
    return "".join(word.capitalize() for word in name.split(" "))


def _add_names(json_dict: dict[str, Any], dataset: Dataset) -> None:
    # pacsanini names the elements of the top level and of each sequence's first item.
    for key, value in json_dict.items():
        tag = Tag(key)
        value["Name"] = _name(tag, dataset)
        if value.get("vr") == "SQ" and value.get("Value"):
            _add_names(value["Value"][0], dataset[tag].value[0])


def _read(dcm: Dataset | bytes | str | os.PathLike[str], include_pixels: bool) -> Dataset:
    if isinstance(dcm, Dataset):
        return dcm
    if isinstance(dcm, bytes) and (b"\0" in dcm or not os.path.exists(dcm)):
        # The bytes of a file (or of a bare data set, hence force).
        return dcmread(BytesIO(dcm), stop_before_pixels=not include_pixels, force=True)
    return dcmread(dcm, stop_before_pixels=not include_pixels)


def dcm2dict(
    dcm: Dataset | bytes | str | os.PathLike[str], include_pixels: bool = False
) -> dict[str, Any]:
    """Convert a data set to pacsanini's dict: the DICOM JSON model (PS3.18 §F.2) with names.

    Keys are tags as 8 hex digits (``"00100020"``), values ``{"vr": ..., "Value": [...],
    "Name": "PatientId"}``; ``Name`` is also set in the first item of each sequence, as
    pacsanini does. The input is never modified (pacsanini sets its PixelData to None).

    Args:
        dcm: A pydicom Dataset (e.g. the one a callback receives), the bytes of a DICOM
            file, or a file path.
        include_pixels: Keep Pixel Data (base64 encoded, can be large). By default it is
            present without a value (``{"vr": "OW", "Name": "PixelData"}``), as pacsanini
            gives it, and its float variants are left out.
    """
    dataset = _read(dcm, include_pixels)
    if include_pixels:
        view = dataset
    else:
        # A shallow copy without pixel values: the caller's data set is left as it was,
        # and deferred pixel data is never read.
        view = Dataset()
        for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset reads deferred values
            if tag not in _PIXEL_TAGS:
                view.add(dataset[tag])
    json_dict = view.to_json_dict()
    if not include_pixels:
        element = dataset.get_item(_PIXEL_DATA, keep_deferred=True)
        vr = "OW" if element is None or element.VR in (None, "OB or OW") else element.VR
        json_dict[f"{_PIXEL_DATA:08X}"] = {"vr": vr}
    _add_names(json_dict, view)
    return json_dict


def _without_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_names(v) for k, v in value.items() if k != "Name"}
    if isinstance(value, list):
        return [_without_names(v) for v in value]
    return value


def dict2dcm(dcm_dict: dict[str, Any]) -> Dataset:
    """Build a Dataset from a :func:`dcm2dict` dict (the ``Name`` keys are ignored).

    Unlike pacsanini's, the dict is not modified, and names inside sequence items are
    ignored too.
    """
    return Dataset.from_json(_without_names(dcm_dict))
