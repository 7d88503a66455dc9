"""Shared helpers and fixtures for the dicom-inlet test suite.

Everything here talks to real peers over real sockets on 127.0.0.1 and writes real
files below pytest's ``tmp_path``: pynetdicom as the storage SCU, DCMTK binaries
located with :func:`dcmtk_tool`.
"""

from __future__ import annotations

import array
import contextlib
import copy
import logging
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from pynetdicom import AE, _config

HOST = "127.0.0.1"
SCU_AET = "INLET_TEST_SCU"
SCP_AET = "INLET_TEST_SCP"

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
SECONDARY_CAPTURE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")
VERIFICATION = UID("1.2.840.10008.1.1")

ALL_TEST_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
]

# Generous timeout for every wait on another thread or process.
TIMEOUT = 30.0

ELF_MAGIC = b"\x7fELF"


# --------------------------------------------------------------------------------------
# DCMTK
# --------------------------------------------------------------------------------------


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == ELF_MAGIC
    except OSError:
        return False


def dcmtk_tool(name: str) -> str:
    """Return the path of the DCMTK binary ``name``.

    ``$DCMTK_BIN/<name>`` if ``DCMTK_BIN`` is set; otherwise the first ``<name>`` on
    ``PATH`` (then ``/usr/bin``) that is an ELF executable. pynetdicom installs Python
    console scripts with the same names (``storescu``, ``echoscu``...), which are skipped
    by the ELF check. Fails under ``CI=true``, skips otherwise, when nothing is found.
    """
    candidates: list[Path] = []
    dcmtk_bin = os.environ.get("DCMTK_BIN")
    if dcmtk_bin:
        candidate = Path(dcmtk_bin) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        where = f"$DCMTK_BIN={dcmtk_bin}"
    else:
        dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
        dirs.append("/usr/bin")
        for directory in dirs:
            candidates.append(Path(directory) / name)
        for candidate in candidates:
            if candidate.is_file() and os.access(candidate, os.X_OK) and _is_elf(candidate):
                return str(candidate)
        where = "PATH and /usr/bin"
    message = f"DCMTK tool {name!r} not found in {where} (install the dcmtk package)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# --------------------------------------------------------------------------------------
# Data sets and files
# --------------------------------------------------------------------------------------


def make_dataset(
    *,
    sop_class_uid: str = CT_IMAGE_STORAGE,
    sop_instance_uid: str | None = None,
    patient_id: str | None = "PAT001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    rows: int = 64,
    columns: int = 64,
    pixel_bytes: bytes | None = None,
    instance_number: int = 1,
    undefined_length_sequences: bool = True,
    remove: Iterable[str] = (),
    **overrides: Any,
) -> Dataset:
    """Build a small valid CT (or other) image instance without file meta.

    - UIDs default to fresh ``generate_uid()`` values.
    - ``patient_id=None`` removes PatientID; ``""`` keeps an empty PatientID.
    - ``remove``: keywords to delete after building.
    - ``overrides``: keyword=value set on the data set (value ``None`` sets an empty value).
    - Pixel data: ``rows`` x ``columns`` 16-bit random bytes unless ``pixel_bytes`` is given.
    - ``undefined_length_sequences``: encode the outer sequence and its item with undefined
      length (DCMTK's storescu re-encodes those with explicit lengths when sending, so
      byte comparisons of DCMTK transfers need ``False``).
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "CT" if sop_class_uid == CT_IMAGE_STORAGE else "OT"
    ds.Manufacturer = "dicom-inlet tests"
    # A nested sequence before the UIDs a streaming scanner needs: it must be skipped
    # correctly in every transfer syntax.
    code = Dataset()
    code.CodeValue = "CTHEAD"
    code.CodingSchemeDesignator = "99TEST"
    code.CodeMeaning = "CT head"
    modifier = Dataset()
    modifier.CodeValue = "MOD"
    modifier.CodingSchemeDesignator = "99TEST"
    modifier.CodeMeaning = "modifier"
    code.ModifierCodeSequence = DicomSequence([modifier])
    ds.ProcedureCodeSequence = DicomSequence([code])
    if undefined_length_sequences:
        # Outer sequence and item with undefined length, nested one with explicit length.
        ds["ProcedureCodeSequence"].is_undefined_length = True
        code.is_undefined_length_sequence_item = True
    ds.PatientName = "Test^Patient"
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if pixel_bytes is None:
        pixel_bytes = os.urandom(rows * columns * 2)
    ds.PixelData = pixel_bytes
    ds["PixelData"].VR = "OW"
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    for keyword in remove:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def write_file(
    ds: Dataset,
    path: str | os.PathLike[str],
    transfer_syntax: str = ExplicitVRLittleEndian,
    *,
    media_sop_class_uid: str | None = None,
    media_sop_instance_uid: str | None = None,
) -> Path:
    """Write ``ds`` (not modified) as a DICOM Part 10 file in ``transfer_syntax``.

    Encapsulated syntaxes (e.g. JPEG Baseline) get encapsulated pixel data made of
    arbitrary bytes: nobody decodes them. ``media_sop_*`` override the file meta
    values (pynetdicom uses those for the C-STORE command when sending a path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = copy.deepcopy(ds)
    ts = UID(transfer_syntax)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "INLET_TESTS"
    ds.file_meta = meta
    if ts.is_encapsulated:
        # 8-bit single-frame "JPEG": a fake frame, odd length to exercise padding.
        frame = b"\xff\xd8\xff\xe0" + os.urandom(997) + b"\xff\xd9"
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    pydicom.dcmwrite(
        path,
        ds,
        implicit_vr=ts.is_implicit_VR,
        little_endian=ts.is_little_endian,
        enforce_file_format=True,
    )
    if media_sop_class_uid or media_sop_instance_uid:
        # dcmwrite syncs the file meta UIDs with the data set: rewrite the meta group.
        body = dataset_bytes(path)
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        if media_sop_class_uid:
            meta.MediaStorageSOPClassUID = media_sop_class_uid
        if media_sop_instance_uid:
            meta.MediaStorageSOPInstanceUID = media_sop_instance_uid
        buffer = DicomBytesIO()
        write_file_meta_info(buffer, meta, enforce_standard=True)
        path.write_bytes(b"\x00" * 128 + b"DICM" + buffer.getvalue() + body)
    return path


def dataset_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the bytes of a Part 10 file after its file meta group."""
    data = Path(path).read_bytes()
    assert len(data) >= 144, f"{path}: too short for a Part 10 file"
    assert data[128:132] == b"DICM", f"{path}: no DICM magic at offset 128"
    assert data[132:138] == b"\x02\x00\x00\x00UL", f"{path}: no (0002,0000) UL at offset 132"
    assert data[138:140] == b"\x04\x00", f"{path}: (0002,0000) length is not 4"
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def stored_files(data_dir: str | os.PathLike[str]) -> list[Path]:
    """Regular files under ``data_dir`` (relative paths, sorted), ignoring hidden entries."""
    root = Path(data_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                found.append((Path(dirpath) / name).relative_to(root))
    return sorted(found)


def incoming_entries(data_dir: str | os.PathLike[str]) -> list[str]:
    """Spool files left under ``data_dir/.incoming``, in any node's area (missing dir: [])."""
    spool = Path(data_dir) / ".incoming"
    if not spool.exists():
        return []
    return sorted(p.name for p in spool.rglob("*") if p.is_file() and p.suffix != ".lock")


def patient_layout(ds: Dataset) -> Path:
    return Path(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")


def study_layout(ds: Dataset) -> Path:
    return Path(ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")


def series_layout(ds: Dataset) -> Path:
    return Path(ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")


def image_layout(ds: Dataset) -> Path:
    return Path(f"{ds.SOPInstanceUID}.dcm")


def assert_file_meta(
    path: str | os.PathLike[str],
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    calling_aet: str = SCU_AET,
) -> Dataset:
    """Check preamble, magic and the file meta of a stored file; return the read data set."""
    raw = Path(path).read_bytes()
    assert raw[:128] == b"\x00" * 128, "preamble is not 128 zero bytes"
    assert raw[128:132] == b"DICM"
    ds = pydicom.dcmread(os.fspath(path))
    meta = ds.file_meta
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.MediaStorageSOPClassUID == sop_class_uid
    assert meta.MediaStorageSOPInstanceUID == sop_instance_uid
    assert meta.TransferSyntaxUID == transfer_syntax
    assert str(meta.get("ImplementationClassUID", "")).strip("\x00 ")
    assert str(meta.get("ImplementationVersionName", "")).strip()
    assert str(meta.get("SourceApplicationEntityTitle", "")).strip() == calling_aet
    return ds


def swap16(data: bytes) -> bytes:
    """Byte-swap 16-bit words (big endian <-> little endian OW pixel data)."""
    words = array.array("H")
    words.frombytes(data)
    words.byteswap()
    return words.tobytes()


def assert_same_content(stored: Dataset, sent: Dataset) -> None:
    """Decoded data sets are equal (PixelData compared as 16-bit values)."""
    stored_tags = [e.tag for e in stored if e.tag.group != 0x0002]
    sent_tags = [e.tag for e in sent if e.tag.group != 0x0002]
    assert stored_tags == sent_tags
    for tag in sent_tags:
        if tag == 0x7FE00010:
            continue
        assert stored[tag].value == sent[tag].value, f"{tag} differs"
    stored_px = stored.PixelData
    sent_px = sent.PixelData
    if not stored.file_meta.TransferSyntaxUID.is_little_endian:
        stored_px = swap16(stored_px)
    if not sent.file_meta.TransferSyntaxUID.is_little_endian:
        sent_px = swap16(sent_px)
    assert stored_px == sent_px


# --------------------------------------------------------------------------------------
# pynetdicom SCU
# --------------------------------------------------------------------------------------


def _sop_and_ts(item: str | os.PathLike[str] | Dataset) -> tuple[UID, UID]:
    if isinstance(item, Dataset):
        return UID(item.SOPClassUID), UID(item.file_meta.TransferSyntaxUID)
    meta = pydicom.dcmread(os.fspath(item), stop_before_pixels=True).file_meta
    return UID(meta.MediaStorageSOPClassUID), UID(meta.TransferSyntaxUID)


@contextlib.contextmanager
def associate(
    port: int,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    ae_title: str = SCU_AET,
    called_aet: str = "ANY-SCP",
    max_pdu: int = 16384,
    require_established: bool = True,
) -> Iterator[Any]:
    """Associate with the SCP on 127.0.0.1:``port`` proposing ``contexts``.

    ``contexts``: (abstract syntax, [transfer syntaxes]) pairs, one presentation context
    each. Yields the pynetdicom Association; releases (or aborts) on exit.
    """
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = TIMEOUT
    ae.dimse_timeout = TIMEOUT
    ae.network_timeout = TIMEOUT
    ae.maximum_pdu_size = max_pdu
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    assoc = ae.associate(HOST, port, ae_title=called_aet, max_pdu=max_pdu)
    try:
        if require_established:
            assert assoc.is_established, f"association with port {port} not established"
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        elif not (assoc.is_rejected or assoc.is_aborted):
            assoc.abort()
        ae.shutdown()


def send(
    port: int,
    items: Sequence[str | os.PathLike[str] | Dataset],
    transfer_syntaxes: Sequence[str] | None = None,
    *,
    ae_title: str = SCU_AET,
    called_aet: str = "ANY-SCP",
    max_pdu: int = 16384,
) -> list[Dataset]:
    """C-STORE ``items`` (file paths or Datasets with file_meta) on one association.

    One presentation context per SOP class, proposing ``transfer_syntaxes`` or, by
    default, the transfer syntaxes of the items. File paths are sent in pynetdicom's
    chunked mode (switched on for the session by ``_pynetdicom_chunked_send``): the data
    set bytes after the file meta go on the wire unchanged and the command's SOP
    Class/Instance UIDs come from the file meta. Returns the status Datasets (an empty
    Dataset when no valid response came back).
    """
    assert _config.STORE_SEND_CHUNKED_DATASET, "chunked sending must be enabled"
    by_class: dict[UID, list[UID]] = {}
    for item in items:
        sop_class, ts = _sop_and_ts(item)
        syntaxes = by_class.setdefault(sop_class, [])
        for syntax in transfer_syntaxes or [ts]:
            if UID(syntax) not in syntaxes:
                syntaxes.append(UID(syntax))
    with associate(
        port, list(by_class.items()), ae_title=ae_title, called_aet=called_aet, max_pdu=max_pdu
    ) as assoc:
        return [
            assoc.send_c_store(item if isinstance(item, Dataset) else Path(item)) for item in items
        ]


def echo(port: int, *, called_aet: str = "ANY-SCP", ae_title: str = SCU_AET) -> int | None:
    """C-ECHO; return the status value or None if no association/response."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = TIMEOUT
    ae.dimse_timeout = TIMEOUT
    ae.network_timeout = TIMEOUT
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, port, ae_title=called_aet)
    try:
        if not assoc.is_established:
            return None
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _ae_field(title: str) -> bytes:
    return title.encode("ascii").ljust(16, b" ")


def _item(item_type: int, value: bytes) -> bytes:
    return bytes([item_type, 0]) + struct.pack(">H", len(value)) + value


def raw_associate(
    port: int,
    *,
    called_aet: str,
    calling_aet: str = SCU_AET,
    abstract_syntax: str = VERIFICATION,
    transfer_syntaxes: Sequence[str] = (ImplicitVRLittleEndian,),
) -> bytes:
    """Send a hand-built A-ASSOCIATE-RQ (PS3.8 9.3.2) and return the first response PDU.

    Used to check A-ASSOCIATE-RJ result/source/reason exactly: pynetdicom's requestor
    can miss an RJ that arrives and is followed by a close very quickly (it then reports
    an abort). An accepted association is aborted again with an A-ABORT.
    """
    context = bytes([1, 0, 0, 0]) + _item(0x30, abstract_syntax.encode())
    for syntax in transfer_syntaxes:
        context += _item(0x40, syntax.encode())
    user_info = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.10.1")
    body = (
        struct.pack(">HH", 1, 0)
        + _ae_field(called_aet)
        + _ae_field(calling_aet)
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(0x20, context)
        + _item(0x50, user_info)
    )
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(bytes([0x01, 0]) + struct.pack(">I", len(body)) + body)
        header = _recv_exactly(sock, 6)
        pdu = header + _recv_exactly(sock, struct.unpack(">I", header[2:])[0])
        if pdu[0] == 0x02:
            sock.sendall(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    return pdu


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"connection closed after {len(data)} of {count} bytes"
        data += chunk
    return data


def rejection(port: int, *, called_aet: str, calling_aet: str = SCU_AET) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the SCP answers with."""
    pdu = raw_associate(port, called_aet=called_aet, calling_aet=calling_aet)
    assert pdu[0] == 0x03, f"expected A-ASSOCIATE-RJ, got PDU type {pdu[0]:#04x}"
    assert len(pdu) == 10
    return pdu[7], pdu[8], pdu[9]


def statuses(results: Iterable[Dataset]) -> list[int | None]:
    return [int(r.Status) if "Status" in r else None for r in results]


def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT) -> bool:
    """Re-evaluate ``predicate`` until it is truthy or ``timeout`` expires.

    Only for states the API offers no event for (a server started with
    ``run(block=True)`` in another thread).
    """
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.daemon = True
    timer.start()
    try:
        while not deadline.is_set():
            if predicate():
                return True
            deadline.wait(0.02)
        return bool(predicate())
    finally:
        timer.cancel()


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _pynetdicom_chunked_send() -> Iterator[None]:
    """Make pynetdicom send a file path's data set bytes unchanged (not re-encoded).

    Session-wide rather than per call: the flag is global and some tests send from
    several threads at once.
    """
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = previous


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server_factory(data_dir: Path) -> Iterator[Callable[..., Any]]:
    """Start StoreSCPServers on 127.0.0.1, port 0; shut them all down afterwards.

    ``server_factory(data_dir=None, aetitle=SCP_AET, **kwargs)`` returns a running server.
    """
    from dicom_inlet import StoreSCPServer

    servers: list[Any] = []

    def start(data_dir_: str | os.PathLike[str] | None = None, *, aetitle: str = SCP_AET, **kw):
        directory = data_dir if data_dir_ is None else data_dir_
        node = {"aetitle": aetitle, "port": 0, "ip": HOST}
        server = StoreSCPServer(node, data_dir=os.fspath(directory), **kw)
        servers.append(server)
        server.run(block=False)
        assert server.port > 0
        return server

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def server(server_factory: Callable[..., Any]) -> Any:
    """A running StoreSCPServer with default options storing into ``data_dir``."""
    return server_factory()


@pytest.fixture
def lenient_pydicom() -> Iterator[None]:
    """Let pydicom write invalid values (hostile UIDs, NULs, oversized LO)."""
    settings = pydicom.config.settings
    saved = (settings.writing_validation_mode, settings.reading_validation_mode)
    settings.writing_validation_mode = pydicom.config.IGNORE
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.writing_validation_mode, settings.reading_validation_mode = saved


@pytest.fixture
def association_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captured ``dicom_inlet`` log records from INFO up (association lines included)."""
    caplog.set_level(logging.INFO, logger="dicom_inlet")
    return caplog


def logged(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.INFO) -> bool:
    """Whether a captured record at ``level`` or above contains ``text``."""
    return any(text in r.getMessage() and r.levelno >= level for r in caplog.records)


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a peer's command line tool (DCMTK, openssl) to its end, its output captured."""
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT * 2, check=False
    )
