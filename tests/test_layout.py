"""Storage layout under data_dir: sort keys, fallbacks and hostile values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import (
    dataset_bytes,
    image_layout,
    incoming_entries,
    make_dataset,
    patient_layout,
    send,
    series_layout,
    statuses,
    stored_files,
    study_layout,
    write_file,
)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

LAYOUTS = {
    "PATIENT": patient_layout,
    "STUDY": study_layout,
    "SERIES": series_layout,
    "IMAGE": image_layout,
}


def snapshot(root: Path, exclude: Path) -> set[Path]:
    """Every path below ``root`` except ``exclude`` and what lies under it."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        if current == exclude:
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if current / d != exclude]
        found.update(current / d for d in dirnames)
        found.update(current / f for f in filenames)
    return found


def test_sort_key_enum():
    from dicom_inlet import StorageSortKey

    assert [key.name for key in StorageSortKey] == ["PATIENT", "STUDY", "SERIES", "IMAGE"]
    for key in StorageSortKey:
        assert key.value == key.name
        assert StorageSortKey(key.name) is key


@pytest.mark.parametrize("sort_key", list(LAYOUTS))
def test_sort_keys_exact_paths(server_factory, data_dir, tmp_path, sort_key):
    from dicom_inlet import StorageSortKey

    server = server_factory(sort_by=StorageSortKey[sort_key])
    assert server.sort_by == StorageSortKey[sort_key]
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    datasets = [
        make_dataset(patient_id="PAT-42", study_uid=study, series_uid=series[i % 2])
        for i in range(4)
    ]
    # A second patient and study, so that the levels really separate.
    datasets.append(make_dataset(patient_id="OTHER"))
    paths = [write_file(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(datasets)]

    assert statuses(send(server.port, paths)) == [0x0000] * len(paths)

    layout = LAYOUTS[sort_key]
    assert stored_files(data_dir) == sorted(layout(ds) for ds in datasets)
    for ds, path in zip(datasets, paths, strict=True):
        assert dataset_bytes(data_dir / layout(ds)) == dataset_bytes(path)
    assert incoming_entries(data_dir) == []


def test_default_sort_key_is_patient(server, data_dir, tmp_path):
    from dicom_inlet import StorageSortKey

    assert server.sort_by == StorageSortKey.PATIENT
    ds = make_dataset()
    assert statuses(send(server.port, [write_file(ds, tmp_path / "src" / "a.dcm")])) == [0]
    assert stored_files(data_dir) == [patient_layout(ds)]


def test_padding_is_not_part_of_path(server, data_dir, tmp_path):
    # Odd-length values are padded on the wire (LO with a space, UI with a NUL).
    ds = make_dataset(
        patient_id="ODD",
        study_uid="1.2.3.4.5",
        series_uid="1.2.3.4.5.6.7",
        sop_instance_uid="1.2.3.4.5.6.7.8.9",
    )
    path = write_file(ds, tmp_path / "src" / "odd.dcm", ImplicitVRLittleEndian)

    assert statuses(send(server.port, [path])) == [0]

    assert stored_files(data_dir) == [
        Path("ODD", "1.2.3.4.5", "1.2.3.4.5.6.7", "1.2.3.4.5.6.7.8.9.dcm")
    ]


@pytest.mark.parametrize("patient_id", ["", None], ids=["empty", "missing"])
def test_patient_layout_falls_back_to_study(server, data_dir, tmp_path, patient_id):
    ds = make_dataset(patient_id=patient_id)
    path = write_file(ds, tmp_path / "src" / "nopid.dcm")

    assert statuses(send(server.port, [path])) == [0]

    assert stored_files(data_dir) == [study_layout(ds)]
    assert dataset_bytes(data_dir / study_layout(ds)) == dataset_bytes(path)


def test_image_layout_needs_no_study_or_series(server_factory, data_dir, tmp_path):
    from dicom_inlet import StorageSortKey

    server = server_factory(sort_by=StorageSortKey.IMAGE)
    ds = make_dataset(patient_id=None, remove=["StudyInstanceUID", "SeriesInstanceUID"])
    path = write_file(ds, tmp_path / "src" / "bare.dcm")

    assert statuses(send(server.port, [path])) == [0]

    assert stored_files(data_dir) == [image_layout(ds)]
    assert dataset_bytes(data_dir / image_layout(ds)) == dataset_bytes(path)


HOSTILE_PATIENT_IDS = {
    "dotdot-slash-x": "../../x",
    "absolute": "/abs",
    "dotdot": "..",
    "dot": ".",
    "nul": "a\x00b",
    "mixed-traversal": "a/b/../../c",
    "backslash-traversal": "..\\..\\x",
    "control-chars": "\x01\x02\x1b[31m\t\r\nX\x7f",
    "ten-kb": "A" * 10240,
    "long-traversal": "../" * 3000 + "x",
}

HOSTILE_UIDS = {
    "study-dotdot": ("StudyInstanceUID", "../../evil"),
    "study-absolute": ("StudyInstanceUID", "/tmp/evil"),
    "series-dotdot": ("SeriesInstanceUID", "../../evil"),
    "series-absolute": ("SeriesInstanceUID", "/tmp/evil"),
    "sop-dotdot": ("SOPInstanceUID", "../../evil"),
    "sop-absolute": ("SOPInstanceUID", "/tmp/evil"),
}


def _absolute_targets(value: str) -> list[Path]:
    """Absolute paths a naive join of ``value`` would create."""
    if "\x00" in value or not value.startswith("/"):
        return []
    return [Path(value), Path(value + ".dcm")]


def _check_hostile_store(server, data_dir: Path, tmp_path: Path, ds, value: str) -> None:
    src = write_file(ds, tmp_path / "src" / "hostile.dcm")
    before = snapshot(tmp_path, data_dir)
    absolute = [p for p in _absolute_targets(value) if not p.exists()]

    result = send(server.port, [src])

    assert statuses(result) == [0x0000]
    files = stored_files(data_dir)
    assert len(files) == 1, files
    stored = (data_dir / files[0]).resolve()
    assert stored.is_relative_to(data_dir.resolve())
    assert dataset_bytes(stored) == dataset_bytes(src)
    # Nothing created outside data_dir: not next to it, not at a traversal target.
    assert snapshot(tmp_path, data_dir) == before
    assert not (tmp_path / "x").exists()
    assert not (data_dir.parent / "x").exists()
    for target in absolute:
        assert not target.exists(), f"{target} was created"
    assert incoming_entries(data_dir) == []


@pytest.fixture
def deep_data_dir(tmp_path: Path) -> Path:
    # Deep enough that "../../x" from data_dir or one level below stays in tmp_path.
    return tmp_path / "outer" / "inner" / "data"


@pytest.mark.usefixtures("lenient_pydicom")
@pytest.mark.parametrize("patient_id", HOSTILE_PATIENT_IDS.values(), ids=HOSTILE_PATIENT_IDS)
def test_hostile_patient_id_stays_inside(server_factory, deep_data_dir, tmp_path, patient_id):
    server = server_factory(deep_data_dir)
    ds = make_dataset(patient_id=patient_id)
    _check_hostile_store(server, deep_data_dir, tmp_path, ds, patient_id)


@pytest.mark.usefixtures("lenient_pydicom")
@pytest.mark.parametrize(("keyword", "value"), HOSTILE_UIDS.values(), ids=HOSTILE_UIDS)
def test_hostile_uids_stay_inside(server_factory, deep_data_dir, tmp_path, keyword, value):
    server = server_factory(deep_data_dir)
    ds = make_dataset(**{keyword: value})
    _check_hostile_store(server, deep_data_dir, tmp_path, ds, value)


@pytest.mark.usefixtures("lenient_pydicom")
@pytest.mark.parametrize("sort_key", ["STUDY", "SERIES", "IMAGE"])
def test_hostile_uids_other_layouts(server_factory, deep_data_dir, tmp_path, sort_key):
    from dicom_inlet import StorageSortKey

    server = server_factory(deep_data_dir, sort_by=StorageSortKey[sort_key])
    ds = make_dataset(
        StudyInstanceUID="../../evil",
        SeriesInstanceUID="..",
        SOPInstanceUID="../../../evil",
    )
    _check_hostile_store(server, deep_data_dir, tmp_path, ds, "../../evil")


def test_distinct_hostile_values_do_not_collide(server, data_dir, tmp_path, lenient_pydicom):
    # Two different hostile PatientIDs for different studies: both files kept.
    first = make_dataset(patient_id="../a")
    second = make_dataset(patient_id="..\x00a")
    paths = [
        write_file(first, tmp_path / "src" / "1.dcm"),
        write_file(second, tmp_path / "src" / "2.dcm", ExplicitVRLittleEndian),
    ]
    assert statuses(send(server.port, paths)) == [0, 0]
    files = stored_files(data_dir)
    assert len(files) == 2
    names = sorted(f.name for f in files)
    assert names == sorted([f"{first.SOPInstanceUID}.dcm", f"{second.SOPInstanceUID}.dcm"])
    for f in files:
        assert (data_dir / f).resolve().is_relative_to(data_dir.resolve())
