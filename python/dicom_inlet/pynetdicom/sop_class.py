"""SOP Class UIDs by pynetdicom's names (``CTImageStorage``...), as ``pynetdicom.sop_class``.

The names are the keywords of the standard's UID registry (PS3.6 Annex A) as pydicom holds
it; each value is a pydicom ``UID``.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID

from dicom_inlet.sop_classes import STORAGE_SOP_CLASSES

__all__ = ["STORAGE_CLASSES", "uid_name"]

_BY_NAME: dict[str, UID] = {
    keyword: UID(uid)
    for uid, (_, kind, _, _, keyword) in UID_dictionary.items()
    if kind == "SOP Class" and keyword
}

#: The storage SOP classes dicom-inlet accepts, by name.
STORAGE_CLASSES: dict[str, UID] = {
    name: uid for name, uid in _BY_NAME.items() if uid in STORAGE_SOP_CLASSES
}


def uid_name(uid: str) -> str:
    """The registry's name of a UID (``"CT Image Storage"``), or the UID itself."""
    return UID(uid).name


def __getattr__(name: str) -> UID:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise AttributeError(f"no SOP class named {name!r} in the DICOM UID registry") from None


def __dir__() -> list[str]:
    return sorted([*globals(), *_BY_NAME])
