"""The SOP classes a Storage SCP accepts by default."""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary

__all__ = ["STORAGE_SOP_CLASSES", "VERIFICATION_SOP_CLASS"]

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def _storage_sop_classes() -> frozenset[str]:
    # pydicom's dictionary follows the current standard; storage SOP classes are the ones named
    # "... Storage" (or "... Storage - For Presentation" and the like). The DICOMDIR class
    # is a media-only one and never travels over C-STORE. Retired classes stay: old modalities
    # still send them.
    return frozenset(
        uid
        for uid, (name, kind, *_rest) in UID_dictionary.items()
        if kind == "SOP Class"
        and (name.endswith("Storage") or "Storage - " in name)
        and name != "Media Storage Directory Storage"
    )


#: Every storage SOP class in pydicom's UID dictionary.
STORAGE_SOP_CLASSES: frozenset[str] = _storage_sop_classes()
