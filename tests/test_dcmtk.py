"""Interoperability with DCMTK's echoscu / storescu (real binaries, not pynetdicom's)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from conftest import (
    CT_IMAGE_STORAGE,
    HOST,
    SCP_AET,
    TIMEOUT,
    assert_file_meta,
    assert_same_content,
    dataset_bytes,
    dcmtk_tool,
    incoming_entries,
    make_dataset,
    patient_layout,
    stored_files,
    write_file,
)
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

DCMTK_AET = "DCMTK_SCU"


def run_tool(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT * 2, check=False)


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, list[pydicom.Dataset], list[Path]]:
    """A study of 10 instances across 2 series, explicit VR LE, in its own directory.

    Sequences use explicit lengths: storescu re-encodes undefined-length sequences with
    explicit lengths, which would defeat the byte comparison.
    """
    directory = tmp_path / "study"
    study_uid = generate_uid()
    series = [generate_uid(), generate_uid()]
    datasets = [
        make_dataset(
            patient_id="DCMTK01",
            study_uid=study_uid,
            series_uid=series[i // 5],
            instance_number=i + 1,
            undefined_length_sequences=False,
        )
        for i in range(10)
    ]
    paths = [
        write_file(ds, directory / f"img{i:02d}.dcm", ExplicitVRLittleEndian)
        for i, ds in enumerate(datasets)
    ]
    return directory, datasets, paths


def storescu(port: int, directory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    args = [
        dcmtk_tool("storescu"),
        "-ll",
        "warn",
        "-aet",
        DCMTK_AET,
        "-aec",
        "X",
        *options,
        "+sd",
        HOST,
        str(port),
        str(directory),
    ]
    return run_tool(args)


def test_echoscu(server):
    result = run_tool([dcmtk_tool("echoscu"), "-ll", "warn", "-aec", "ANY", HOST, str(server.port)])
    assert result.returncode == 0, result.stderr


def test_echoscu_called_ae_enforced(server_factory):
    server = server_factory(require_called_aet=True)
    echoscu = dcmtk_tool("echoscu")

    wrong = run_tool([echoscu, "-ll", "warn", "-aec", "WRONG", HOST, str(server.port)])
    right = run_tool([echoscu, "-ll", "warn", "-aec", SCP_AET, HOST, str(server.port)])

    assert wrong.returncode != 0
    assert right.returncode == 0, right.stderr


def test_storescu_study_patient_layout_bit_preserving(server, data_dir, study):
    directory, datasets, paths = study

    result = storescu(server.port, directory)

    assert result.returncode == 0, result.stderr
    assert stored_files(data_dir) == sorted(patient_layout(ds) for ds in datasets)
    for ds, path in zip(datasets, paths, strict=True):
        stored = data_dir / patient_layout(ds)
        assert dataset_bytes(stored) == dataset_bytes(path)
        assert_file_meta(
            stored,
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=ExplicitVRLittleEndian,
            calling_aet=DCMTK_AET,
        )
    assert incoming_entries(data_dir) == []


def test_storescu_small_send_pdu_bit_preserving(server, data_dir, study):
    directory, datasets, paths = study

    result = storescu(server.port, directory, "--max-send-pdu", "4096")

    assert result.returncode == 0, result.stderr
    assert stored_files(data_dir) == sorted(patient_layout(ds) for ds in datasets)
    for ds, path in zip(datasets, paths, strict=True):
        assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(path)


@pytest.mark.parametrize(
    ("options", "expected_ts"),
    [
        # storescu picks an accepted context whose syntax matches the file's (explicit
        # LE) when one exists; +C proposes all syntaxes in one context so the big
        # endian one (proposed first) is accepted and storescu must convert.
        (("-xb", "+C"), ExplicitVRBigEndian),
        (("-xd",), DeflatedExplicitVRLittleEndian),
    ],
    ids=["big-endian", "deflated"],
)
def test_storescu_converted_syntaxes(server, data_dir, study, options, expected_ts):
    directory, datasets, paths = study

    result = storescu(server.port, directory, *options)

    assert result.returncode == 0, result.stderr
    assert stored_files(data_dir) == sorted(patient_layout(ds) for ds in datasets)
    for ds, path in zip(datasets, paths, strict=True):
        stored = assert_file_meta(
            data_dir / patient_layout(ds),
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=expected_ts,
            calling_aet=DCMTK_AET,
        )
        assert_same_content(stored, pydicom.dcmread(path))
    assert incoming_entries(data_dir) == []
