"""Receive-path benchmark: DCMTK storescu sends a directory of CT-sized instances to dicom-inlet.

Run with ``python -m pytest benches`` (pytest-benchmark); not part of the test suite.
The side-by-side comparison with DCMTK's storescp, pynetdicom and pacsanini is benches/peers.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_inlet import StorageSortKey, StoreSCPServer

INSTANCES = 50
SIDE = 512


def _storescu() -> str:
    for directory in [os.environ.get("DCMTK_BIN", ""), "/usr/bin", *os.environ["PATH"].split(":")]:
        candidate = Path(directory, "storescu")
        if candidate.is_file() and candidate.read_bytes()[:4] == b"\x7fELF":
            return str(candidate)
    pytest.skip("DCMTK storescu not found")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    pixels = np.arange(SIDE * SIDE, dtype=np.uint16).tobytes()
    study, series = generate_uid(), generate_uid()
    for i in range(INSTANCES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "BENCH", study, series
        ds.Rows = ds.Columns = SIDE
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = pixels
        ds.save_as(root / f"{i:04}.dcm", enforce_file_format=True)
    return root


def test_storescu_to_dicom_inlet(benchmark, corpus: Path, tmp_path: Path) -> None:
    storescu = _storescu()
    data_dir = tmp_path / "data"
    node = {"aetitle": "BENCH", "port": 0, "ip": "127.0.0.1"}
    with StoreSCPServer(node, data_dir=data_dir, sort_by=StorageSortKey.IMAGE) as server:
        command = [storescu, "-aec", "BENCH", "+sd", "127.0.0.1", str(server.port), str(corpus)]
        # DCMTK waits for a delayed ACK on every response without TCP_NODELAY.
        env = {**os.environ, "TCP_NODELAY": "1"}

        def send() -> None:
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)

        benchmark.pedantic(send, rounds=5, warmup_rounds=1)
    assert len(list(data_dir.glob("*.dcm"))) == INSTANCES
    shutil.rmtree(data_dir)
