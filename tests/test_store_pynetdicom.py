"""C-STORE / C-ECHO with pynetdicom as the storage SCU."""

from __future__ import annotations

import socket
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from conftest import (
    ALL_TEST_SYNTAXES,
    CT_IMAGE_STORAGE,
    HOST,
    MR_IMAGE_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
    TIMEOUT,
    assert_file_meta,
    associate,
    dataset_bytes,
    echo,
    image_layout,
    incoming_entries,
    make_dataset,
    patient_layout,
    send,
    series_layout,
    statuses,
    stored_files,
    write_file,
)
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

UNKNOWN_SOP_CLASS = "1.2.3.4.5.6"
UNKNOWN_TRANSFER_SYNTAX = "1.2.3.4.5.6.7.99"


@pytest.mark.parametrize("transfer_syntax", ALL_TEST_SYNTAXES, ids=lambda ts: ts.keyword)
def test_store_each_transfer_syntax_bit_preserving(
    server_factory, data_dir, tmp_path, transfer_syntax
):
    ds = make_dataset()
    src = write_file(ds, tmp_path / "src" / "in.dcm", transfer_syntax)
    received: list[pydicom.Dataset] = []
    server = server_factory(callbacks=[received.append])

    result = send(server.port, [src])
    server.shutdown()

    assert statuses(result) == [0x0000]
    assert stored_files(data_dir) == [patient_layout(ds)]
    stored = data_dir / patient_layout(ds)
    assert dataset_bytes(stored) == dataset_bytes(src)
    read = assert_file_meta(
        stored,
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=transfer_syntax,
    )
    assert read.SOPInstanceUID == ds.SOPInstanceUID
    assert read.PatientID == "PAT001"
    assert read.StudyInstanceUID == ds.StudyInstanceUID
    assert read.ProcedureCodeSequence[0].ModifierCodeSequence[0].CodeValue == "MOD"
    assert incoming_entries(data_dir) == []
    # The callback's data set is what pydicom reads from the stored file, encoding included.
    [given] = received
    assert given == read
    assert given.file_meta == read.file_meta
    assert (given.filename, given.preamble) == (read.filename, read.preamble)
    assert given.original_encoding == read.original_encoding
    assert given.original_character_set == read.original_character_set


@pytest.mark.parametrize("transfer_syntax", ALL_TEST_SYNTAXES, ids=lambda ts: ts.keyword)
def test_callback_dataset_read_as_touched_equals_dcmread(
    server_factory, data_dir, tmp_path, transfer_syntax
):
    # 128 KiB of pixel data: over the size whose value is read only when touched.
    ds = make_dataset(rows=256, columns=256)
    src = write_file(ds, tmp_path / "src" / "in.dcm", transfer_syntax)
    seen: list[tuple[tuple[str, ...], list[bool]]] = []

    def compare(given: pydicom.Dataset) -> None:
        # Not kept past the callback: what it reads comes from the file as it is touched.
        scanned = (given.SOPInstanceUID, given.Modality, given.SeriesInstanceUID)
        read = pydicom.dcmread(given.filename)
        same = [
            given.PixelData == read.PixelData,
            given == read,
            given.file_meta == read.file_meta,
            given.original_encoding == read.original_encoding,
            given.original_character_set == read.original_character_set,
        ]
        seen.append((scanned, same))

    server = server_factory(callbacks=[compare])
    assert statuses(send(server.port, [src])) == [0x0000]
    server.shutdown()

    [(scanned, same)] = seen
    assert scanned == (ds.SOPInstanceUID, "CT", ds.SeriesInstanceUID)
    assert same == [True] * 5
    assert not any((data_dir / ".journal" / "held").iterdir())


def test_a_callback_saving_over_its_own_stored_file_keeps_every_value(
    server_factory, data_dir, tmp_path
):
    # The data set reads from that file (through the journal's link to it): written over,
    # what it had not read yet must be read first, not truncated away.
    ds = make_dataset(rows=256, columns=256)
    src = write_file(ds, tmp_path / "src" / "in.dcm")
    saved: list[str] = []

    def resave(given: pydicom.Dataset) -> None:
        given.file_meta.ImplementationVersionName = "RESAVED"
        given.save_as(given.filename, enforce_file_format=True)
        saved.append(str(given.filename))

    server = server_factory(callbacks=[resave])
    assert statuses(send(server.port, [src])) == [0x0000]
    server.shutdown()
    assert saved == [str(data_dir / patient_layout(ds))]
    again = pydicom.dcmread(saved[0])
    assert again == pydicom.dcmread(src)
    assert again.file_meta.ImplementationVersionName == "RESAVED"


_opened: list[str] = []
_watching = threading.Event()


# Audit hooks stay for the process: this one records only while a test watches.
def _record_opens(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _watching.is_set():
        _opened.append(str(args[0]))


sys.addaudithook(_record_opens)


@pytest.mark.parametrize(
    "transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian], ids=lambda ts: ts.keyword
)
def test_scanned_attributes_are_served_without_reading_the_file(
    server_factory, data_dir, tmp_path, transfer_syntax
):
    ds = make_dataset()
    src = write_file(ds, tmp_path / "src" / "in.dcm", transfer_syntax)
    seen: list[tuple[list[object], list[str], list[str]]] = []

    def callback(given: pydicom.Dataset) -> None:
        _opened.clear()
        _watching.set()
        try:
            scanned = [
                given.SOPClassUID,
                given.SOPInstanceUID,
                given.StudyDate,
                given.Modality,
                given.StudyInstanceUID,
                given.SeriesInstanceUID,
                "Modality" in given,
            ]
            before = list(_opened)
            # Not scanned: the file is read once, from the version acknowledged.
            scanned.append(str(given.PatientName))
            scanned.append(given.Manufacturer)
        finally:
            _watching.clear()
        seen.append((scanned, before, list(_opened)))

    server = server_factory(callbacks=[callback])
    assert statuses(send(server.port, [src])) == [0x0000]
    server.shutdown()

    [(scanned, before, after)] = seen
    assert scanned == [
        CT_IMAGE_STORAGE,
        ds.SOPInstanceUID,
        "20240101",
        "CT",
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        True,
        "Test^Patient",
        "dicom-inlet tests",
    ]
    assert before == []
    [held] = after
    assert Path(held).parent == (data_dir / ".journal" / "held").resolve()


@pytest.mark.parametrize(
    "server_max_pdu", [4096, None], ids=["scp-max-pdu-4096", "scp-default-max-pdu"]
)
def test_large_instance_multi_pdu(server_factory, data_dir, tmp_path, server_max_pdu):
    kwargs = {} if server_max_pdu is None else {"maximum_pdu_size": server_max_pdu}
    server = server_factory(**kwargs)
    ds = make_dataset(rows=1024, columns=1536)  # 3 MiB of pixel data
    src = write_file(ds, tmp_path / "src" / "big.dcm", ExplicitVRLittleEndian)
    assert src.stat().st_size > 3 * 1024 * 1024

    result = send(server.port, [src])

    assert statuses(result) == [0x0000]
    stored = data_dir / patient_layout(ds)
    assert dataset_bytes(stored) == dataset_bytes(src)
    assert_file_meta(
        stored,
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=ExplicitVRLittleEndian,
    )
    assert incoming_entries(data_dir) == []


def test_many_instances_one_association(server, data_dir, tmp_path):
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    datasets = [
        make_dataset(study_uid=study, series_uid=series[i % 2], instance_number=i + 1)
        for i in range(25)
    ]
    paths = [
        write_file(ds, tmp_path / "src" / f"{i:02d}.dcm", ImplicitVRLittleEndian)
        for i, ds in enumerate(datasets)
    ]

    result = send(server.port, paths)

    assert statuses(result) == [0x0000] * 25
    assert stored_files(data_dir) == sorted(patient_layout(ds) for ds in datasets)
    for ds, path in zip(datasets, paths, strict=True):
        assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(path)
    assert incoming_entries(data_dir) == []


def test_mixed_sop_classes_and_syntaxes_one_association(server, data_dir, tmp_path):
    cases = [
        (CT_IMAGE_STORAGE, ExplicitVRLittleEndian),
        (MR_IMAGE_STORAGE, ExplicitVRBigEndian),
        (SECONDARY_CAPTURE_STORAGE, ImplicitVRLittleEndian),
        (CT_IMAGE_STORAGE, ExplicitVRLittleEndian),
    ]
    datasets = [make_dataset(sop_class_uid=sop) for sop, _ in cases]
    paths = [
        write_file(ds, tmp_path / "src" / f"{i}.dcm", ts)
        for i, (ds, (_, ts)) in enumerate(zip(datasets, cases, strict=True))
    ]

    result = send(server.port, paths)

    assert statuses(result) == [0x0000] * len(cases)
    for ds, path, (sop, ts) in zip(datasets, paths, cases, strict=True):
        stored = data_dir / patient_layout(ds)
        assert dataset_bytes(stored) == dataset_bytes(path)
        assert_file_meta(
            stored, sop_class_uid=sop, sop_instance_uid=ds.SOPInstanceUID, transfer_syntax=ts
        )


def test_concurrent_associations(server, data_dir, tmp_path):
    def one_sender(index: int):
        datasets = [make_dataset(patient_id=f"P{index}") for _ in range(5)]
        paths = [
            write_file(ds, tmp_path / "src" / f"{index}-{i}.dcm") for i, ds in enumerate(datasets)
        ]
        return datasets, paths, statuses(send(server.port, paths))

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(one_sender, range(4)))

    expected = []
    for datasets, paths, codes in outcomes:
        assert codes == [0x0000] * 5
        for ds, path in zip(datasets, paths, strict=True):
            expected.append(patient_layout(ds))
            assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(path)
    assert stored_files(data_dir) == sorted(expected)
    assert incoming_entries(data_dir) == []


def test_stalled_peers_block_nobody_and_are_aborted_at_shutdown(server_factory, data_dir, tmp_path):
    server = server_factory(shutdown_timeout=0.5)
    # One peer connects and says nothing; another stops half-way through its A-ASSOCIATE-RQ.
    silent = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
    halfway = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
    halfway.sendall(bytes([0x01, 0]) + struct.pack(">I", 200) + bytes(50))
    try:
        ds = make_dataset()
        src = write_file(ds, tmp_path / "src" / "a.dcm")
        assert statuses(send(server.port, [src])) == [0x0000]
        assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(src)

        server.shutdown()
        # Past the shutdown timeout, open connections get an A-ABORT (PS3.8 9.3.8) and a close.
        for sock in (silent, halfway):
            received = sock.recv(64)
            assert received[:1] == b"\x07", received
    finally:
        silent.close()
        halfway.close()
    assert incoming_entries(data_dir) == []


def test_c_echo(server):
    assert echo(server.port) == 0x0000


def test_unsupported_abstract_and_transfer_syntax_rejected_per_context(server, data_dir):
    contexts = [
        (UNKNOWN_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (MR_IMAGE_STORAGE, [UNKNOWN_TRANSFER_SYNTAX]),
        (CT_IMAGE_STORAGE, [ExplicitVRLittleEndian]),
    ]
    ds = make_dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    with associate(server.port, contexts) as assoc:
        accepted = {cx.abstract_syntax: cx for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax: cx for cx in assoc.rejected_contexts}
        status = assoc.send_c_store(ds)

    assert set(accepted) == {CT_IMAGE_STORAGE}
    assert accepted[CT_IMAGE_STORAGE].transfer_syntax[0] == ExplicitVRLittleEndian
    assert set(rejected) == {UNKNOWN_SOP_CLASS, MR_IMAGE_STORAGE}
    assert rejected[UNKNOWN_SOP_CLASS].result == 0x03  # abstract syntax not supported
    assert rejected[MR_IMAGE_STORAGE].result == 0x04  # transfer syntaxes not supported
    assert status.Status == 0x0000
    stored = pydicom.dcmread(data_dir / patient_layout(ds))
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData


def test_default_accepts_first_proposed_transfer_syntax(server, data_dir, tmp_path):
    ds = make_dataset()
    src = write_file(ds, tmp_path / "src" / "be.dcm", ExplicitVRBigEndian)
    proposed = [ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian]

    with associate(server.port, [(CT_IMAGE_STORAGE, proposed)]) as assoc:
        [context] = assoc.accepted_contexts
        assert context.transfer_syntax[0] == ExplicitVRBigEndian
        status = assoc.send_c_store(src)

    assert status.Status == 0x0000
    stored = data_dir / patient_layout(ds)
    assert dataset_bytes(stored) == dataset_bytes(src)
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == ExplicitVRBigEndian


def test_duplicate_sop_instance_keeps_second_version(server, data_dir, tmp_path):
    first = make_dataset()
    second = make_dataset(
        sop_instance_uid=first.SOPInstanceUID,
        study_uid=first.StudyInstanceUID,
        series_uid=first.SeriesInstanceUID,
        InstanceNumber=2,
    )
    assert first.PixelData != second.PixelData
    path1 = write_file(first, tmp_path / "src" / "v1.dcm")
    path2 = write_file(second, tmp_path / "src" / "v2.dcm")

    assert statuses(send(server.port, [path1, path2])) == [0x0000, 0x0000]

    assert stored_files(data_dir) == [patient_layout(first)]
    assert dataset_bytes(data_dir / patient_layout(first)) == dataset_bytes(path2)

    # Again on a separate association: still one file, latest bytes win.
    assert statuses(send(server.port, [path1])) == [0x0000]
    assert stored_files(data_dir) == [patient_layout(first)]
    assert dataset_bytes(data_dir / patient_layout(first)) == dataset_bytes(path1)
    assert incoming_entries(data_dir) == []


@pytest.mark.parametrize(
    ("sort_by", "missing", "layout"),
    [
        ("STUDY", "StudyInstanceUID", series_layout),
        ("SERIES", "SeriesInstanceUID", image_layout),
        ("PATIENT", "StudyInstanceUID", series_layout),
        ("PATIENT", "SeriesInstanceUID", image_layout),
    ],
)
def test_missing_layout_uid_falls_back_to_the_next_layout(
    server_factory, data_dir, tmp_path, sort_by, missing, layout
):
    from dicom_inlet import StorageSortKey

    server = server_factory(sort_by=StorageSortKey[sort_by])
    odd = make_dataset(remove=[missing])
    odd_path = write_file(odd, tmp_path / "src" / "odd.dcm")

    # Stored, not refused: the next layout that has what it needs, ending at IMAGE.
    assert statuses(send(server.port, [odd_path])) == [0x0000]
    assert stored_files(data_dir) == [layout(odd)]
    assert dataset_bytes(data_dir / layout(odd)) == dataset_bytes(odd_path)
    assert incoming_entries(data_dir) == []


@pytest.mark.parametrize("mismatch", ["sop_instance", "sop_class"])
def test_dataset_uid_differs_from_command(server, data_dir, tmp_path, mismatch):
    ds = make_dataset()
    if mismatch == "sop_instance":
        other = generate_uid()
        bad_path = write_file(ds, tmp_path / "src" / "bad.dcm", media_sop_instance_uid=other)
    else:
        other = ds.SOPInstanceUID
        bad_path = write_file(
            ds, tmp_path / "src" / "bad.dcm", media_sop_class_uid=SECONDARY_CAPTURE_STORAGE
        )
    good = make_dataset()
    good_path = write_file(good, tmp_path / "src" / "good.dcm")

    bad_status, good_status = send(server.port, [bad_path, good_path])

    assert bad_status.Status == 0xA900, hex(bad_status.Status)
    assert good_status.Status == 0x0000
    names = [p.name for p in stored_files(data_dir)]
    assert names == [f"{good.SOPInstanceUID}.dcm"]
    assert f"{other}.dcm" not in names
    assert incoming_entries(data_dir) == []


def test_store_via_dataset_encoded_by_pynetdicom(server, data_dir):
    ds = make_dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian

    assert statuses(send(server.port, [ds])) == [0x0000]

    stored = data_dir / patient_layout(ds)
    read = assert_file_meta(
        stored,
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=DeflatedExplicitVRLittleEndian,
    )
    assert read.PixelData == ds.PixelData
    assert read.PatientName == ds.PatientName


def test_calling_ae_recorded_per_association(server, data_dir, tmp_path):
    ds_a = make_dataset()
    ds_b = make_dataset()
    path_a = write_file(ds_a, tmp_path / "src" / "a.dcm")
    path_b = write_file(ds_b, tmp_path / "src" / "b.dcm")

    assert statuses(send(server.port, [path_a], ae_title="SENDER_A")) == [0]
    assert statuses(send(server.port, [path_b], ae_title="SENDER_B")) == [0]

    for ds, aet in ((ds_a, "SENDER_A"), (ds_b, "SENDER_B")):
        assert_file_meta(
            data_dir / patient_layout(ds),
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=ExplicitVRLittleEndian,
            calling_aet=aet,
        )
