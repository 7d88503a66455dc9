"""DICOM Part 10 files as pydicom Datasets: stored instances read back, Datasets written out.

The only module of the server and SCU paths that imports pydicom (and with it numpy); it is
imported when a callback or a Dataset source needs it, so a server without callbacks and a
sender of files stay light.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping, MutableSequence
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias, TypeVar, cast

import pydicom
from pydicom import Dataset
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import FileDataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_deferred_data_element
from pydicom.fileutil import PathType
from pydicom.filewriter import write_data_element
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

__all__ = ["StoredDataset", "file_meta", "moved", "read_request", "read_stored", "write_dataset"]

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
    """One received instance's elements, read from its file once, on the first need.

    Until then the data set holds only what the core's scan captured (``scanned``); the file
    meta and the data set are then read together from ``source`` (the journal's held link to
    the acknowledged version, a handler's spool file, or the stored file itself), values over
    ``_DEFER_SIZE`` left in the file until touched and read from ``source`` too. What was read
    is kept as read (``encoded``, ``read``) to tell whether the data set is still what was
    received.
    """

    __slots__ = (
        "bytes",
        "charset",
        "data",
        "encoded",
        "implicit",
        "little",
        "locate",
        "located",
        "meta",
        "read",
        "scanned",
        "syntax",
    )

    def __init__(
        self,
        received: _core.StoredInstance | _core.StoreRequest,
        locate: Callable[[], tuple[str, str]],
    ) -> None:
        # Where the file is (source, filename), asked on first need: the core's paths become
        # pathlib objects in Python, which costs more than a callback reading two UIDs.
        self.locate = locate
        self.located: tuple[str, str] | None = None
        self.syntax = syntax = received.transfer_syntax_uid
        self.bytes = received.bytes
        self.implicit = syntax == ImplicitVRLittleEndian
        self.little = syntax != ExplicitVRBigEndian
        self.encoded = {
            tag: (vr, value)
            for tag, vr, value in received.elements
            if (vr or _dictionary_vr(tag)) in _CHARSET_FREE
        }
        self.scanned: _Scanned = dict(self.encoded)
        self.meta: dict[BaseTag, Element] | None = None
        self.data: dict[BaseTag, Element] | None = None
        self.read: dict[BaseTag, RawDataElement] = {}
        self.charset: str | MutableSequence[str] = default_encoding

    @property
    def source(self) -> str:
        """The file the values are read from."""
        if self.located is None:
            self.located = self.locate()
        return self.located[0]

    @property
    def filename(self) -> str:
        """The file the data set's ``filename`` names."""
        if self.located is None:
            self.located = self.locate()
        return self.located[1]

    def load(self) -> dict[BaseTag, Element]:
        if self.data is not None:
            return self.data
        meta: Dataset
        data: Dataset
        if self.syntax == DeflatedExplicitVRLittleEndian:
            # Inflated by pydicom, every value read: offsets into the deflated file mean nothing.
            whole = pydicom.dcmread(self.source)
            meta, data, charset = whole.file_meta, whole, whole.original_character_set
        else:
            meta, data = _read(self.source, self.syntax, self.bytes, _DEFER_SIZE)
            charset = data._character_set
        # As read, nothing touched yet: every element is still raw.
        self.read = cast("dict[BaseTag, RawDataElement]", dict(data._dict))
        loaded = dict(data._dict)
        # Elements already handed out stay the same objects (a change to one is kept).
        loaded.update((e.tag, e) for e in self.scanned.values() if isinstance(e, DataElement))
        self.meta, self.charset, self.data = dict(meta._dict), charset, loaded
        return loaded

    def read_value(self, raw: RawDataElement) -> RawDataElement:
        """A deferred value, from the same version of the file."""
        return read_deferred_data_element(open, self.source, None, raw)

    def unchanged(self, ds: Dataset) -> bool:
        """Whether ``ds`` still encodes to exactly the data set received, its file still
        where it reads from: no element added or removed, each as read, its deferred value
        read since, or converted to an equal value."""
        if not isinstance(ds.__dict__["_dict"], _Elements):
            # Read in (kept past its callbacks or handler): its file may be gone or replaced.
            return False
        if self.data is None:
            # Only scanned attributes were handed out.
            return all(
                isinstance(elem, tuple) or elem == _convert(tag, *self.encoded[tag], self)
                for tag, elem in self.scanned.items()
            )
        read = self.read
        if self.data.keys() != read.keys():
            return False
        for tag, elem in self.data.items():
            first = read[tag]
            if elem is first:
                continue
            if isinstance(elem, RawDataElement):
                # A deferred value read since (read_deferred_data_element keeps the offset).
                if first.value is not None or elem.value_tell != first.value_tell:
                    return False
            elif first.value is None or elem != convert_raw_data_element(
                first, encoding=self.charset, ds=ds
            ):
                # Touched values over 64 KiB are not compared: writing them out is cheaper.
                return False
        return True


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

    def _element(self, tag: BaseTag) -> Element:
        stored = self._stored
        if stored.data is None and not self._meta:
            scanned = stored.scanned.get(tag)
            if isinstance(scanned, tuple):
                scanned = stored.scanned[tag] = _convert(tag, *scanned, stored)
            if scanned is not None:
                return scanned
        return self._all()[tag]

    def __getitem__(self, tag: BaseTag) -> Element:
        elem = self._element(tag)
        if isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0:
            elem = self._all()[tag] = self._stored.read_value(elem)
        return elem

    def get(self, tag: BaseTag, default: Any = None) -> Any:
        """The element, a deferred value left in the file: ``Dataset.get_item`` reads it
        through ``__getitem__`` unless told ``keep_deferred``."""
        try:
            return self._element(tag)
        except KeyError:
            return default

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
    """The ``pydicom`` ``FileDataset`` a callback or handler gets: what ``dcmread`` of the
    received file gives (for a callback, the version acknowledged, whatever came later under
    the same UID), read on first need.

    The attributes the core's scan captured whose decoding takes no character set (SOP Class
    and Instance UID, Study and Series Instance UID, Modality, Study Date) come from the scan
    without opening the file; touching anything else reads the file meta and the data set
    once, values over 64 KiB (pixel data) staying in the file until touched themselves.
    :meth:`save_as` copies the data set as it was received while nothing in it has changed.
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
            self.__dict__["_filename"] = self._stored.filename
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

    def save_as(  # type: ignore[override]
        self,
        filename: str | os.PathLike[str] | Any,
        /,
        __write_like_original: bool | None = None,
        *,
        implicit_vr: bool | None = None,
        little_endian: bool | None = None,
        enforce_file_format: bool = False,
        overwrite: bool = True,
        **kwargs: Any,
    ) -> None:
        """Write the data set as pydicom's ``Dataset.save_as`` does (same arguments, same
        file meta handling). Unchanged, in the transfer syntax it was received in and
        written to a path, its data set bytes are copied from the received file: that is
        what pynetdicom's storage examples do with every instance (``ds.file_meta =
        event.file_meta``, ``ds.save_as(...)``), and encoding each element again in Python
        is most of what such a handler costs."""
        stored = self._stored
        if _same_file(filename, stored.source):
            # Written over the file it reads from (its own stored file, say): opening it for
            # writing truncates what is still to be read, so everything is read in first.
            self.read_all()
        meta = getattr(self, "file_meta", None)
        preamble = self.preamble or bytes(_PREAMBLE_LEN)
        as_received = (
            isinstance(meta, FileMetaDataset)
            and __write_like_original is None
            and implicit_vr is None
            and little_endian is None
            and not kwargs
            and isinstance(filename, str | os.PathLike)
            and meta.get("TransferSyntaxUID") == stored.syntax
            and (enforce_file_format or self.preamble)
            and len(preamble) == _PREAMBLE_LEN
            and stored.unchanged(self)
        )
        if not as_received:
            super().save_as(
                filename,
                __write_like_original,
                implicit_vr=implicit_vr,
                little_endian=little_endian,
                enforce_file_format=enforce_file_format,
                overwrite=overwrite,
                **kwargs,
            )
            return
        # A new mapping of the same elements: the changes below replace elements, never change
        # them, so the caller's file meta stays as it was (dcmwrite deep-copies, at ten times
        # the cost).
        meta = file_meta(cast("FileMetaDataset", meta)._dict)
        if enforce_file_format:
            # As dcmwrite: the media storage UIDs follow the data set's; writing then requires
            # a complete and valid file meta.
            for element, keyword in (
                ("MediaStorageSOPClassUID", "SOPClassUID"),
                ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
            ):
                value = self.get(keyword)
                if meta.get(element) is None or (value and value != meta.get(element)):
                    setattr(meta, element, value)
        encoded = _encode_meta(meta, enforce_file_format)
        with (
            open(stored.source, "rb") as source,
            open(filename, "wb" if overwrite else "xb") as out,
        ):
            out.write(preamble + b"DICM" + encoded)
            out.flush()
            start = os.fstat(source.fileno()).st_size - stored.bytes
            _copy(source, out, start, stored.bytes)


def _same_file(target: Any, source: str) -> bool:
    """Whether ``target`` (a path, or something else pydicom writes to) is ``source``'s file,
    under any of its names."""
    if not isinstance(target, str | os.PathLike):
        return False
    try:
        return os.path.samefile(target, source)
    except OSError:  # either is missing: not the same file
        return False


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

    def locate() -> tuple[str, str]:
        path, held = os.fspath(stored.path), stored.held
        return (path if held is None else os.fspath(held)), path

    return _lazy(_Stored(stored, locate))


def read_request(request: _core.StoreRequest) -> StoredDataset:
    """The data set of an instance awaiting its handler's verdict, read as it is used, from
    the file the core wrote (``request.file``: the spool file before publishing). The
    caller points it at the stored file once published (:func:`moved`), or reads in
    whatever is left (:meth:`StoredDataset.read_all`) before the spool file goes."""

    def locate() -> tuple[str, str]:
        file = os.fspath(request.file)
        return file, file

    return _lazy(_Stored(request, locate))


def moved(ds: StoredDataset, path: str) -> None:
    """The file ``ds`` reads from is now at ``path`` (a handler's instance, published)."""
    ds._stored.located = (path, path)
    ds.filename = path


def _lazy(source: _Stored) -> StoredDataset:
    data_state, meta_state = _prototypes(source.implicit, source.little)
    meta = _blank(FileMetaDataset, *meta_state)
    meta.__dict__["_dict"] = _Elements(source, meta=True)
    ds = _blank(StoredDataset, *data_state)
    ds.__dict__.update(_dict=_Elements(source, meta=False), _stored=source, file_meta=meta)
    return ds


def file_meta(elements: Mapping[BaseTag, Element]) -> FileMetaDataset:
    """A ``FileMetaDataset`` of these group 0002 elements (not checked: the caller's are),
    made without running pydicom's constructors."""
    meta = _blank(FileMetaDataset, *_prototypes(False, True)[1])
    meta.__dict__["_dict"] = dict(elements)
    return meta


# Encoded file meta elements by (tag, VR, value): most repeat from one file to the next.
_ENCODED: dict[tuple[int, str, Any], bytes] = {}
_ENCODED_MAX = 256
_GROUP_LENGTH = 0x00020000


def _encode_meta(meta: FileMetaDataset, enforce_standard: bool) -> bytes:
    """What pydicom's ``write_file_meta_info`` writes for ``meta`` (PS3.10 §7.1: Explicit VR
    Little Endian, the group length first), each distinct element encoded by pydicom once."""
    validate_file_meta(meta, enforce_standard)
    body = b"".join(
        _encode_element(meta[tag]) for tag in sorted(meta.keys()) if tag != _GROUP_LENGTH
    )
    if not enforce_standard and _GROUP_LENGTH not in meta:
        return body
    meta.FileMetaInformationGroupLength = len(body)
    return _encode_element(meta[_GROUP_LENGTH]) + body


def _encode_element(elem: DataElement) -> bytes:
    try:
        key = (elem.tag, elem.VR, elem.value)
        encoded = _ENCODED.get(key)
    except TypeError:  # a multi-valued element: not hashable, encoded each time
        key, encoded = None, None
    if encoded is None:
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_data_element(buffer, elem)
        encoded = buffer.getvalue()
        if key is not None:
            if len(_ENCODED) >= _ENCODED_MAX:
                _ENCODED.clear()
            _ENCODED[key] = encoded
    return encoded


def _copy(source: BinaryIO, out: BinaryIO, offset: int, count: int) -> None:
    """Copy ``count`` bytes of ``source`` from ``offset`` to the end of ``out`` in the kernel
    (Linux's sendfile takes any file since 2.6.33)."""
    while count:
        sent = os.sendfile(out.fileno(), source.fileno(), offset, count)
        if not sent:
            raise EOFError(f"{source.name!r} ended {count} bytes early")
        offset, count = offset + sent, count - sent


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
