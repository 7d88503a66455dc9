"""DICOM Part 10 files as pydicom Datasets: stored instances read back, Datasets written out.

The only module of the server and SCU paths that imports pydicom (and with it numpy); it is
imported when a callback or a Dataset source needs it, so a server without callbacks and a
sender of files stay light.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterator, MutableMapping, MutableSequence
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, cast

import pydicom
from pydicom import Dataset
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_deferred_data_element
from pydicom.fileutil import PathType
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.values import convert_value

from dicom_inlet import _core

__all__ = ["StoredDataset", "read_part10", "read_stored", "write_dataset"]

# Values larger than this are read from the file only when a callback or handler touches them.
_DEFER_SIZE = 64 * 1024
# A stored file starts with a zero preamble and "DICM" (PS3.10 §7.1), both written by the core.
_PREAMBLE_LEN = 128
_META_START = _PREAMBLE_LEN + 4
# VRs whose values decode the same whatever the Specific Character Set (PS3.5 §6.1.2.3 applies
# to the text VRs only): scanned values of these need nothing else from the file.
_CHARSET_FREE = frozenset({"UI", "CS", "DA"})

Element: TypeAlias = DataElement | RawDataElement
# Scanned attributes by tag: (VR, value) as encoded until touched, then the converted element.
_Scanned: TypeAlias = dict[int, tuple[str | None, bytes] | DataElement]
_D = TypeVar("_D", bound=Dataset)


class _Stored:
    """One stored instance's elements, read from its file once, on the first need.

    Until then the data set holds only what the core's scan captured (``scanned``); the file
    meta and the data set are then read together from ``source`` (the journal's held link to
    the acknowledged version, or the file itself), values over ``_DEFER_SIZE`` left in the file
    until touched and read from ``source`` too.
    """

    __slots__ = ("charset", "data", "implicit", "instance", "little", "meta", "scanned")

    def __init__(
        self, instance: _core.StoredInstance, implicit: bool, little: bool, scanned: _Scanned
    ) -> None:
        self.instance = instance
        self.implicit = implicit
        self.little = little
        self.scanned = scanned
        self.meta: dict[BaseTag, Element] | None = None
        self.data: dict[BaseTag, Element] | None = None
        self.charset: str | MutableSequence[str] = default_encoding

    @property
    def source(self) -> str:
        held = self.instance.held
        return os.fspath(self.instance.path if held is None else held)

    def load(self) -> dict[BaseTag, Element]:
        if self.data is not None:
            return self.data
        meta: Dataset
        data: Dataset
        syntax = self.instance.transfer_syntax_uid
        if syntax == DeflatedExplicitVRLittleEndian:
            # Inflated by pydicom, every value read: offsets into the deflated file mean nothing.
            whole = pydicom.dcmread(self.source)
            meta, data, charset = whole.file_meta, whole, whole.original_character_set
        else:
            meta, data = _read(self.source, syntax, self.instance.bytes, _DEFER_SIZE)
            charset = data._character_set
        loaded = dict(data._dict)
        # Elements already handed out stay the same objects (a change to one is kept).
        loaded.update((e.tag, e) for e in self.scanned.values() if isinstance(e, DataElement))
        self.meta, self.charset, self.data = dict(meta._dict), charset, loaded
        return loaded

    def read_value(self, raw: RawDataElement) -> RawDataElement:
        """A deferred value, from the same version of the file."""
        return read_deferred_data_element(open, self.source, None, raw)


class _Elements(MutableMapping[BaseTag, Element]):
    """A stored instance's data set (or file meta) elements, for a ``Dataset``'s ``_dict``:
    scanned attributes are served as they are, anything else reads the file first."""

    __slots__ = ("_meta", "_stored")

    def __init__(self, stored: _Stored, meta: bool) -> None:
        self._stored = stored
        self._meta = meta

    def _all(self) -> dict[BaseTag, Element]:
        data = self._stored.load()
        return cast("dict[BaseTag, Element]", self._stored.meta) if self._meta else data

    def __getitem__(self, tag: BaseTag) -> Element:
        stored = self._stored
        if stored.data is None and not self._meta:
            scanned = stored.scanned.get(tag)
            if isinstance(scanned, tuple):
                scanned = stored.scanned[tag] = _convert(tag, *scanned, stored)
            if scanned is not None:
                return scanned
        elements = self._all()
        elem = elements[tag]
        if isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0:
            elem = elements[tag] = stored.read_value(elem)
        return elem

    def __contains__(self, tag: object) -> bool:
        stored = self._stored
        if stored.data is None and not self._meta and tag in stored.scanned:
            return True
        return tag in self._all()

    def __setitem__(self, tag: BaseTag, elem: Element) -> None:
        self._all()[tag] = elem

    def __delitem__(self, tag: BaseTag) -> None:
        del self._all()[tag]

    def __iter__(self) -> Iterator[BaseTag]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def read_all(self) -> dict[BaseTag, Element]:
        """Every element with its value in memory: nothing left to read from the file."""
        return {tag: self[tag] for tag in list(self._all())}

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[BaseTag, Element]:
        return copy.deepcopy(self.read_all(), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self.read_all(),))


class StoredDataset(FileDataset):
    """The ``pydicom`` ``FileDataset`` a callback gets: what ``dcmread`` of the stored file gives
    (the version acknowledged, whatever came later under the same UID), read on first need.

    The attributes the core's scan captured whose decoding takes no character set (SOP Class
    and Instance UID, Study and Series Instance UID, Modality, Study Date) come from the scan
    without opening the file; touching anything else reads the file meta and the data set
    once, values over 64 KiB (pixel data) staying in the file until touched themselves.
    """

    _stored: _Stored

    @property
    def _read_charset(self) -> str | MutableSequence[str]:
        charset = self.__dict__.get("_charset")
        if charset is None:
            self._stored.load()
            charset = self.__dict__["_charset"] = self._stored.charset
        return cast("str | MutableSequence[str]", charset)

    @_read_charset.setter
    def _read_charset(self, value: str | MutableSequence[str]) -> None:
        self.__dict__["_charset"] = value

    @property
    def filename(self) -> PathType | None:
        if "_filename" not in self.__dict__:
            self.__dict__["_filename"] = os.fspath(self._stored.instance.path)
        return cast("PathType | None", self.__dict__["_filename"])

    @filename.setter
    def filename(self, value: PathType | None) -> None:
        self.__dict__["_filename"] = value

    @property
    def timestamp(self) -> float | None:
        if "_timestamp" not in self.__dict__:
            name = self.filename
            found = isinstance(name, str) and os.path.exists(name)
            self.__dict__["_timestamp"] = os.stat(name).st_mtime if found and name else None
        return cast("float | None", self.__dict__["_timestamp"])

    @timestamp.setter
    def timestamp(self, value: float | None) -> None:
        self.__dict__["_timestamp"] = value

    def read_all(self) -> None:
        """Read into memory what is still in the file (the held version is about to go)."""
        for ds in (self, self.file_meta):
            elements = ds.__dict__["_dict"]
            if isinstance(elements, _Elements):
                ds.__dict__["_dict"] = elements.read_all()


def _blank(cls: type[_D], state: dict[str, Any], fresh: list[tuple[str, Any]]) -> _D:
    """A ``cls`` with the state pydicom's own ``__init__`` gave a prototype, copied without
    running it again: ``Dataset.__setattr__`` costs more than everything else here."""
    ds = cls.__new__(cls)
    ds.__dict__.update(state)
    for key, container in fresh:
        ds.__dict__[key] = container.copy()
    return ds


def _state(prototype: Dataset) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    state = dict(prototype.__dict__)
    fresh = [(k, v) for k, v in state.items() if isinstance(v, dict | list | set) and k != "_dict"]
    return state, fresh


@functools.cache
def _prototypes(implicit: bool, little: bool) -> tuple[Any, Any]:
    data = FileDataset("", Dataset(), bytes(_PREAMBLE_LEN), FileMetaDataset(), implicit, little)
    for computed in ("_read_charset", "filename", "timestamp"):
        del data.__dict__[computed]
    return _state(data), _state(FileMetaDataset())


@functools.cache
def _dictionary_vr(tag: int) -> str:
    return dictionary_VR(tag)


def _convert(tag: int, vr: str | None, value: bytes, stored: _Stored) -> DataElement:
    """A scanned value as Dataset.__getitem__ would convert the element pydicom's reader makes
    of it (its offset is never needed); its VR takes no character set."""
    raw = RawDataElement(BaseTag(tag), vr, len(value), value, 0, stored.implicit, stored.little)
    if (
        hooks.raw_element_vr is not raw_element_vr
        or hooks.raw_element_value is not raw_element_value
    ):
        return convert_raw_data_element(raw)
    # What the default hooks do for these VRs, without their dispatch: the VR as read (the
    # dictionary's in implicit VR), the value from pydicom's converter for it.
    vr = vr or _dictionary_vr(tag)
    return DataElement(raw.tag, vr, convert_value(vr, raw), 0, False, already_converted=True)


def read_stored(stored: _core.StoredInstance) -> StoredDataset:
    """The data set of a stored instance for its callbacks, read as it is used.

    With the journal on, values come from the journal's hard link to exactly the version
    that was acknowledged (``stored.held``): the file at ``stored.path`` (the data set's
    ``filename``) may have been replaced by a later instance with the same UID meanwhile.
    The link goes once the callbacks returned: the caller reads in whatever is left
    (:meth:`StoredDataset.read_all`) if the data set outlives them.
    """
    syntax = stored.transfer_syntax_uid
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    scanned: _Scanned = {
        tag: (vr, value)
        for tag, vr, value in stored.elements
        if (vr or _dictionary_vr(tag)) in _CHARSET_FREE
    }
    source = _Stored(stored, implicit, little, scanned)
    data_state, meta_state = _prototypes(implicit, little)
    meta = _blank(FileMetaDataset, *meta_state)
    meta.__dict__["_dict"] = _Elements(source, meta=True)
    ds = _blank(StoredDataset, *data_state)
    ds.__dict__.update(_dict=_Elements(source, meta=False), _stored=source, file_meta=meta)
    return ds


def read_part10(path: str | os.PathLike[str], syntax: str, data_set_bytes: int) -> FileDataset:
    """Read a Part 10 file the core wrote (a handler's instance), values over 64 KiB deferred
    until touched.

    The core tells the transfer syntax and where the data set starts (it is the file's last
    ``data_set_bytes`` bytes), so the preamble check and the transfer syntax lookup are
    skipped: pydicom's per-file overhead, not the data set, is what a handler reading every
    instance pays most for. A deflated data set goes through ``dcmread``, which inflates it.
    """
    path = os.fspath(path)
    if syntax == DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    meta, dataset = _read(path, syntax, data_set_bytes, _DEFER_SIZE)
    read = FileDataset(path, dataset, bytes(_PREAMBLE_LEN), FileMetaDataset(meta), implicit, little)
    read.set_original_encoding(implicit, little, dataset._character_set)
    return read


def _read(
    source: str, syntax: str, data_set_bytes: int, defer: int | None
) -> tuple[Dataset, Dataset]:
    """The file meta and the data set of a file the core wrote (not deflated)."""
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    with open(source, "rb") as fp:
        data_start = os.fstat(fp.fileno()).st_size - data_set_bytes
        fp.seek(_META_START)
        # File meta is always explicit VR little endian (PS3.10 §7.1).
        meta = read_dataset(fp, False, True, bytelength=data_start - _META_START)
        dataset = read_dataset(fp, implicit, little, defer_size=defer)
    return meta, dataset


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
