"""Micro benchmarks of the receive path's core steps, through ``dicom_inlet._core._bench_*``.

Run with ``python -m pytest benches`` (pytest-benchmark). Each entry point is a thin wrapper
over the Rust function the receive path runs: P-DATA-TF parsing, the attribute scan of a data
set, and spool + publish of one instance.
"""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_inlet import _core

MAX_PDU = 262_144  # what dicom-inlet advertises, so what storescu sends
SIDE = 512
STORES_PER_CALL = 20


def pdata_pdu(fragments: list[bytes]) -> bytes:
    """A P-DATA-TF PDU (PS3.8 §9.3.5) with one data set PDV per fragment, none the last."""
    body = b"".join(struct.pack(">IBB", len(f) + 2, 1, 0) + f for f in fragments)
    return struct.pack(">BBI", 4, 0, len(body)) + body


@pytest.fixture(scope="module")
def ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.PatientName, ds.PatientID = "BENCH^CT", "BENCH-01"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.Modality, ds.Rows, ds.Columns = "CT", SIDE, SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.arange(SIDE * SIDE, dtype=np.uint16).tobytes()
    return ds


def encoded(ds: Dataset, transfer_syntax: str) -> bytes:
    """The data set alone, as a C-STORE carries it (little endian syntaxes only)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(buffer, ds)
    return buffer.getvalue()


@pytest.mark.parametrize("fragments", [1, 16], ids=["1 PDV", "16 PDVs"])
def test_parse_pdata(benchmark, fragments: int) -> None:
    size = (MAX_PDU - 6 * fragments) // fragments
    pdu = pdata_pdu([bytes([i]) * size for i in range(fragments)])
    assert len(pdu) <= MAX_PDU + 6
    assert benchmark(_core._bench_parse_pdata, pdu) == size * fragments


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_scan(benchmark, ct: Dataset, syntax: str) -> None:
    data_set = encoded(ct, syntax)
    found = benchmark(_core._bench_scan, data_set, syntax)
    assert found == (
        CTImageStorage,
        ct.SOPInstanceUID,
        ct.PatientID,
        ct.StudyInstanceUID,
        ct.SeriesInstanceUID,
    )


@pytest.mark.parametrize("size", ["ct", "small"], ids=lambda s: f"{STORES_PER_CALL} x {s}")
def test_spool_and_publish(benchmark, ct: Dataset, tmp_path: Path, size: str) -> None:
    ds = ct.copy()
    if size == "small":
        ds.Rows = ds.Columns = 40
        ds.PixelData = ds.PixelData[: 40 * 40 * 2]
    data_set = encoded(ds, ExplicitVRLittleEndian)
    # Several instances per call so opening the storage (once per call) weighs little.
    path = benchmark(_core._bench_store, tmp_path, data_set, STORES_PER_CALL)
    assert path == tmp_path.resolve() / ds.PatientID / ds.StudyInstanceUID / (
        f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    )
    assert path.read_bytes().endswith(data_set)


@pytest.fixture(scope="module")
def stored_ct(ct: Dataset, tmp_path_factory: pytest.TempPathFactory) -> _core.StoredInstance:
    """One CT instance received by a real server, and the event its callbacks would get."""
    from dicom_inlet import send
    from dicom_inlet.part10 import write_dataset as write_part10

    root = tmp_path_factory.mktemp("read-back")
    source = root / "ct.dcm"
    instance = copy.copy(ct)  # the module's data set stays without file meta
    instance.file_meta = FileMetaDataset()
    instance.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    write_part10(instance, source)
    server = _core.Server(
        host="127.0.0.1",
        port=0,
        ae_title="BENCH",
        data_dir=root / "data",
        sort_by="image",
        sop_classes=[CTImageStorage],
        emit_stored=True,
    )
    try:
        assert send("127.0.0.1", server.port, [source]).failed == 0
        event = server.next_event()
    finally:
        server.shutdown(0)
    assert isinstance(event, _core.StoredInstance)
    return event


@pytest.mark.parametrize("reader", ["read_stored", "dcmread"])
def test_callback_read_back(benchmark, stored_ct: _core.StoredInstance, reader: str) -> None:
    """What the callback thread does per instance before the callbacks run: dicom-inlet's
    read-back (the core says where the data set starts) against plain ``pydicom.dcmread``."""
    import pydicom

    from dicom_inlet.part10 import read_stored

    if reader == "read_stored":
        ds = benchmark(read_stored, stored_ct)
    else:
        ds = benchmark(pydicom.dcmread, stored_ct.path, defer_size=64 * 1024)
    assert ds.SOPInstanceUID == "1.2.826.0.1.3680043.8.498.1"
