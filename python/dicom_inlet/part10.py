"""DICOM Part 10 files as pydicom Datasets: stored instances read back, Datasets written out.

The only module of the server and SCU paths that imports pydicom (and with it numpy); it is
imported when a callback or a Dataset source needs it, so a server without callbacks and a
sender of files stay light.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicom_inlet import _core

__all__ = ["read_part10", "read_stored", "write_dataset"]

# Values larger than this are read from the stored file only when a callback touches them.
_DEFER_SIZE = 64 * 1024
# A stored file starts with a zero preamble and "DICM" (PS3.10 §7.1), both written by the core.
_PREAMBLE_LEN = 128
_META_START = _PREAMBLE_LEN + 4


def read_stored(stored: _core.StoredInstance) -> FileDataset:
    """Read a stored instance as ``pydicom.dcmread`` would, in about two thirds of its time."""
    return read_part10(stored.path, stored.transfer_syntax_uid, stored.bytes)


def read_part10(path: str | os.PathLike[str], syntax: str, data_set_bytes: int) -> FileDataset:
    """Read a Part 10 file the core wrote, values over 64 KiB deferred until touched.

    The core tells the transfer syntax and where the data set starts (it is the file's last
    ``data_set_bytes`` bytes), so the preamble check and the transfer syntax lookup are
    skipped: on the callback path, pydicom's per-file overhead, not the data set, is what
    limits the rate. A deflated data set goes through ``dcmread``, which inflates it.
    """
    path = os.fspath(path)
    if syntax == DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    with open(path, "rb") as fp:
        data_start = os.fstat(fp.fileno()).st_size - data_set_bytes
        fp.seek(_META_START)
        # File meta is always explicit VR little endian (PS3.10 §7.1).
        meta = read_dataset(fp, False, True, bytelength=data_start - _META_START)
        dataset = read_dataset(fp, implicit, little, defer_size=_DEFER_SIZE)
    read = FileDataset(path, dataset, bytes(_PREAMBLE_LEN), FileMetaDataset(meta), implicit, little)
    read.set_original_encoding(implicit, little, dataset._character_set)
    return read


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write a Dataset as a Part 10 file, in its file meta's transfer syntax if it has one."""
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            raise ValueError(f"a Dataset to send needs a {keyword}")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # Keep the encoding a Dataset read from a file had; new ones go as Explicit VR LE.
        encodings: dict[tuple[bool | None, bool | None], UID] = {
            (True, True): ImplicitVRLittleEndian,
            (False, False): ExplicitVRBigEndian,
        }
        syntax = encodings.get(ds.original_encoding, ExplicitVRLittleEndian)
        ds = copy.copy(ds)
        ds.file_meta = FileMetaDataset(meta or {})
        ds.file_meta.TransferSyntaxUID = syntax
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
