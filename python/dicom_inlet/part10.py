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
    """Read a stored instance as ``pydicom.dcmread`` would, in about two thirds of its time.

    With the journal on, it reads the journal's hard link to exactly the version that was
    acknowledged (``stored.held``), all values at once: the file at ``stored.path`` (the
    Dataset's ``filename``) may have been replaced by a later instance with the same UID
    meanwhile, and a lazily read value would come from that one.
    """
    if stored.held is None:
        return read_part10(stored.path, stored.transfer_syntax_uid, stored.bytes)
    return read_part10(
        stored.path, stored.transfer_syntax_uid, stored.bytes, source=stored.held, defer=None
    )


def read_part10(
    path: str | os.PathLike[str],
    syntax: str,
    data_set_bytes: int,
    *,
    source: str | os.PathLike[str] | None = None,
    defer: int | None = _DEFER_SIZE,
) -> FileDataset:
    """Read a Part 10 file the core wrote, values over ``defer`` bytes deferred until touched.

    The core tells the transfer syntax and where the data set starts (it is the file's last
    ``data_set_bytes`` bytes), so the preamble check and the transfer syntax lookup are
    skipped: on the callback path, pydicom's per-file overhead, not the data set, is what
    limits the rate. A deflated data set goes through ``dcmread``, which inflates it. The
    bytes come from ``source`` when given (another name of the same file), the Dataset's
    ``filename`` is ``path``.
    """
    path = os.fspath(path)
    source = path if source is None else os.fspath(source)
    if syntax == DeflatedExplicitVRLittleEndian:
        inflated = pydicom.dcmread(source, defer_size=defer)
        inflated.filename = path
        return inflated
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    with open(source, "rb") as fp:
        data_start = os.fstat(fp.fileno()).st_size - data_set_bytes
        fp.seek(_META_START)
        # File meta is always explicit VR little endian (PS3.10 §7.1).
        meta = read_dataset(fp, False, True, bytelength=data_start - _META_START)
        dataset = read_dataset(fp, implicit, little, defer_size=defer)
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
