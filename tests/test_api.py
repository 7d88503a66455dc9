"""The Python API: StoreSCPServer lifecycle and options, callbacks, dcm2dict, run_server,
and the pacsanini guide snippets with only the import changed."""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import (
    CT_IMAGE_STORAGE,
    HOST,
    SCP_AET,
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
    raw_associate,
    rejection,
    send,
    statuses,
    stored_files,
    wait_until,
    write_file,
)
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

import dicom_inlet
import dicom_inlet.delivery
from dicom_inlet import DicomNode, StorageSortKey, StoreSCPServer, run_server


def local_node(aetitle: str = SCP_AET) -> dict[str, Any]:
    return {"aetitle": aetitle, "port": 0, "ip": HOST}


def node_field(node: Any, name: str) -> Any:
    value = node[name] if isinstance(node, dict) else getattr(node, name)
    return value.decode() if isinstance(value, bytes) else value


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=TIMEOUT):
            return False
    except ConnectionRefusedError:
        return True


def drain(q: queue.Queue, count: int) -> list[Any]:
    items = []
    for _ in range(count):
        try:
            items.append(q.get(timeout=TIMEOUT))
        except queue.Empty:
            pytest.fail(f"only {len(items)} of {count} callback invocations arrived")
    return items


# --------------------------------------------------------------------------------------
# Public names
# --------------------------------------------------------------------------------------


def test_public_names_are_reexported():
    import dicom_inlet
    import dicom_inlet.convert
    import dicom_inlet.models
    import dicom_inlet.net

    assert dicom_inlet.net.StoreSCPServer is StoreSCPServer
    assert dicom_inlet.net.run_server is run_server
    assert dicom_inlet.models.StorageSortKey is StorageSortKey
    assert dicom_inlet.models.DicomNode is DicomNode
    assert callable(dicom_inlet.convert.dcm2dict)


# --------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node",
    [{"aetitle": "NOPORT"}, {"aetitle": "NOPORT", "ip": HOST}, {"aetitle": "NOPORT", "port": None}],
    ids=["aetitle-only", "with-ip", "port-none"],
)
def test_node_without_port_raises_value_error(tmp_path, node):
    with pytest.raises(ValueError):
        StoreSCPServer(node, data_dir=str(tmp_path / "d"))


def test_dicomnode_node(tmp_path):
    node = DicomNode(aetitle="NODE_AE", port=0, ip=HOST)
    server = StoreSCPServer(node, data_dir=str(tmp_path / "d"))
    try:
        assert node_field(server.node, "aetitle") == "NODE_AE"
        server.run()
        assert server.port > 0
        assert echo(server.port) == 0x0000
    finally:
        server.shutdown()


def test_dict_node_attributes(tmp_path):
    data_dir = tmp_path / "d"
    server = StoreSCPServer(local_node("DICT_AE"), data_dir=str(data_dir))
    try:
        assert node_field(server.node, "aetitle") == "DICT_AE"
        assert server.sort_by == StorageSortKey.PATIENT
        assert isinstance(server.data_dir, str)
        assert os.path.isabs(server.data_dir)
        assert os.path.realpath(server.data_dir) == os.path.realpath(data_dir)
        server.run()
        assert data_dir.is_dir()
    finally:
        server.shutdown()


def test_relative_data_dir_is_made_absolute_and_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = StoreSCPServer(local_node(), data_dir="rel/dir")
    try:
        assert os.path.isabs(server.data_dir)
        assert os.path.realpath(server.data_dir) == os.path.realpath(tmp_path / "rel" / "dir")
        server.run()
        assert (tmp_path / "rel" / "dir").is_dir()
        ds = make_dataset()
        assert statuses(send(server.port, [write_file(ds, tmp_path / "s" / "a.dcm")])) == [0]
        assert (tmp_path / "rel" / "dir" / patient_layout(ds)).is_file()
    finally:
        server.shutdown()


def test_empty_data_dir_stores_in_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    server = StoreSCPServer(local_node(), data_dir="")
    try:
        assert os.path.realpath(server.data_dir) == os.path.realpath(cwd)
        server.run()
        ds = make_dataset()
        src = write_file(ds, tmp_path / "src" / "a.dcm")
        assert statuses(send(server.port, [src])) == [0]
        assert stored_files(cwd) == [patient_layout(ds)]
        assert dataset_bytes(cwd / patient_layout(ds)) == dataset_bytes(src)
    finally:
        server.shutdown()


# --------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------


def test_port_zero_binds_ephemeral_port(server):
    assert isinstance(server.port, int)
    assert 0 < server.port < 65536
    assert echo(server.port) == 0x0000


def test_scp_none_truthy_none(tmp_path):
    server = StoreSCPServer(local_node(), data_dir=str(tmp_path / "d"))
    assert server.scp is None
    server.run(block=False)
    try:
        assert server.scp
        assert echo(server.port) == 0x0000
    finally:
        server.shutdown()
    assert server.scp is None
    assert port_refuses(server.port)


def test_second_run_raises_runtime_error(server):
    with pytest.raises(RuntimeError):
        server.run()
    with pytest.raises(RuntimeError):
        server.run(block=False)
    # The first server is unaffected.
    assert echo(server.port) == 0x0000


def test_shutdown_is_idempotent(tmp_path):
    server = StoreSCPServer(local_node(), data_dir=str(tmp_path / "d"))
    server.shutdown()  # never started: nothing to do
    server.run()
    port = server.port
    server.shutdown()
    server.shutdown()
    assert server.scp is None
    assert port_refuses(port)


def test_context_manager(tmp_path):
    data_dir = tmp_path / "d"
    server = StoreSCPServer(local_node(), data_dir=str(data_dir))
    with server as entered:
        assert entered is server
        assert server.scp
        ds = make_dataset()
        src = write_file(ds, tmp_path / "src" / "a.dcm")
        assert statuses(send(server.port, [src])) == [0]
    assert server.scp is None
    assert port_refuses(server.port)
    assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(src)


def test_context_manager_shuts_down_on_exception(tmp_path):
    server = StoreSCPServer(local_node(), data_dir=str(tmp_path / "d"))
    with pytest.raises(KeyError), server:
        port = server.port
        assert echo(port) == 0x0000
        raise KeyError("boom")
    assert server.scp is None
    assert port_refuses(port)


def _run_blocking_in_thread(server) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target():
        try:
            server.run(block=True)
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="blocking-run", daemon=True)
    thread.start()
    # run(block=True) offers no readiness event: wait until it answers a C-ECHO.
    assert wait_until(lambda: bool(server.port) and echo(server.port) == 0x0000), errors
    return thread, errors


def test_run_blocking_in_thread_and_shutdown(tmp_path):
    data_dir = tmp_path / "d"
    server = StoreSCPServer(local_node(), data_dir=str(data_dir))
    thread, errors = _run_blocking_in_thread(server)
    try:
        ds = make_dataset()
        src = write_file(ds, tmp_path / "src" / "a.dcm")
        assert statuses(send(server.port, [src])) == [0]
        assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(src)
    finally:
        server.shutdown()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert errors == []
    assert server.scp is None


def test_run_server_returns_started_server(tmp_path):
    data_dir = tmp_path / "d"
    received: queue.Queue = queue.Queue()
    server = run_server(
        local_node(),
        data_dir=str(data_dir),
        sort_by=StorageSortKey.IMAGE,
        callbacks=[received.put],
        block=False,
    )
    try:
        assert isinstance(server, StoreSCPServer)
        assert server.scp
        assert server.port > 0
        ds = make_dataset()
        src = write_file(ds, tmp_path / "src" / "a.dcm")
        assert statuses(send(server.port, [src])) == [0]
        [got] = drain(received, 1)
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        assert dataset_bytes(data_dir / image_layout(ds)) == dataset_bytes(src)
    finally:
        server.shutdown()
    assert server.scp is None


# --------------------------------------------------------------------------------------
# Association options
# --------------------------------------------------------------------------------------


def test_require_called_aet(server_factory):
    server = server_factory(aetitle="STRICT_SCP", require_called_aet=True)
    assert rejection(server.port, called_aet="SOMEONE_ELSE") == (1, 1, 7)
    assert raw_associate(server.port, called_aet="STRICT_SCP")[0] == 0x02
    assert echo(server.port, called_aet="STRICT_SCP") == 0x0000


def test_called_aet_not_checked_by_default(server):
    assert echo(server.port, called_aet="WHATEVER") == 0x0000


def test_require_calling_aet(server_factory):
    server = server_factory(require_calling_aet=("ALLOWED_A", "ALLOWED_B"))
    assert rejection(server.port, called_aet="ANY", calling_aet="INTRUDER") == (1, 1, 3)
    assert raw_associate(server.port, called_aet="ANY", calling_aet="ALLOWED_A")[0] == 0x02
    assert echo(server.port, ae_title="ALLOWED_B") == 0x0000
    assert echo(server.port, ae_title="ALLOWED_A") == 0x0000


def test_transfer_syntaxes_option_sets_preference(server_factory, data_dir, tmp_path):
    server = server_factory(transfer_syntaxes=[ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ds = make_dataset()
    src = write_file(ds, tmp_path / "src" / "a.dcm", ExplicitVRLittleEndian)
    contexts = [
        (CT_IMAGE_STORAGE, [ExplicitVRBigEndian, ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
        (SECONDARY_CAPTURE_STORAGE, [JPEGBaseline8Bit]),
    ]
    with associate(server.port, contexts) as assoc:
        accepted = {cx.abstract_syntax: cx for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax: cx for cx in assoc.rejected_contexts}
        assert accepted[CT_IMAGE_STORAGE].transfer_syntax[0] == ExplicitVRLittleEndian
        assert rejected[SECONDARY_CAPTURE_STORAGE].result == 0x04
        status = assoc.send_c_store(src)
    assert status.Status == 0x0000
    assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(src)


def test_sop_classes_option_limits_accepted_classes(server_factory):
    server = server_factory(sop_classes=[CT_IMAGE_STORAGE])
    contexts = [
        (CT_IMAGE_STORAGE, [ExplicitVRLittleEndian]),
        (SECONDARY_CAPTURE_STORAGE, [ExplicitVRLittleEndian]),
    ]
    with associate(server.port, contexts) as assoc:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CT_IMAGE_STORAGE]
        assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [SECONDARY_CAPTURE_STORAGE]


def test_default_sop_classes_are_every_storage_class_pydicom_knows():
    from pydicom._uid_dict import UID_dictionary

    from dicom_inlet.sop_classes import STORAGE_SOP_CLASSES

    storage = {
        uid
        for uid, (name, kind, *_rest) in UID_dictionary.items()
        if kind == "SOP Class"
        and (name.endswith("Storage") or "Storage - " in name)
        and name != "Media Storage Directory Storage"
    }
    assert storage - STORAGE_SOP_CLASSES == set(), "add these to dicom_inlet/sop_classes.py"
    assert STORAGE_SOP_CLASSES - storage == set()


def test_server_without_callbacks_never_imports_pydicom(tmp_path):
    # pydicom and numpy are two thirds of an idle server's memory; only callbacks need them.
    script = f"""
import sys
from dicom_inlet import StoreSCPServer, echo
with StoreSCPServer({{"aetitle": "X", "port": 0, "ip": "{HOST}"}}, data_dir=sys.argv[1]) as s:
    assert echo("{HOST}", s.port) == 0
print(sorted(m for m in ("pydicom", "numpy") if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_durable_mode_stores(server_factory, data_dir, tmp_path):
    server = server_factory(durable=True)
    ds = make_dataset()
    src = write_file(ds, tmp_path / "src" / "a.dcm")
    assert statuses(send(server.port, [src])) == [0]
    assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(src)
    assert incoming_entries(data_dir) == []


def test_durable_window_and_associations_share_flushes_in_order(server_factory, data_dir, tmp_path):
    # Our SCU's window of 8 on 3 associations: instances wait for flushes in groups, and each
    # is still answered (in order, for its own request) and stored whole.
    server = server_factory(durable=True)
    datasets = [make_dataset(instance_number=i) for i in range(40)]
    paths = [write_file(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(datasets)]
    result = dicom_inlet.send(
        HOST, server.port, paths, called_aet=SCP_AET, associations=3, async_window=8
    )
    assert [r.status for r in result.results] == [0x0000] * len(paths)
    assert [r.path for r in result.results] == paths
    for ds, src in zip(datasets, paths, strict=True):
        assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(src)
    # Each instance is journaled, visible in the index once its association is released.
    rows = dicom_inlet.delivery.instances(data_dir)
    assert sorted(r.sop_instance_uid for r in rows) == sorted(ds.SOPInstanceUID for ds in datasets)
    assert incoming_entries(data_dir) == []


# --------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------


def test_callbacks_receive_datasets_in_arrival_order(server_factory, data_dir, tmp_path):
    received: queue.Queue = queue.Queue()
    main_thread = threading.main_thread()

    def record(ds):
        received.put((ds, threading.current_thread() is main_thread, os.path.exists(ds.filename)))

    server = server_factory(callbacks=[record])
    datasets = [make_dataset(instance_number=i) for i in range(6)]
    paths = [
        write_file(ds, tmp_path / "src" / f"{i}.dcm", ImplicitVRLittleEndian)
        for i, ds in enumerate(datasets)
    ]

    # Two associations one after the other: order is kept across them too.
    assert statuses(send(server.port, paths[:3])) == [0] * 3
    assert statuses(send(server.port, paths[3:], ae_title="SECOND_SCU")) == [0] * 3
    got = drain(received, 6)

    assert [item[0].SOPInstanceUID for item in got] == [ds.SOPInstanceUID for ds in datasets]
    for (cb_ds, on_main, existed), ds in zip(got, datasets, strict=True):
        assert isinstance(cb_ds, Dataset)
        assert not on_main
        assert existed, "callback ran before the file was persisted"
        assert isinstance(cb_ds.filename, str)
        assert Path(cb_ds.filename).resolve() == (data_dir / patient_layout(ds)).resolve()
        assert cb_ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert cb_ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert cb_ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
        assert cb_ds.PatientID == ds.PatientID
        assert cb_ds.StudyInstanceUID == ds.StudyInstanceUID
    assert received.empty()


def test_raising_callback_is_logged_and_others_still_run(
    server_factory, data_dir, tmp_path, caplog
):
    caplog.set_level(logging.ERROR, logger="dicom_inlet")
    seen: queue.Queue = queue.Queue()

    def exploding_callback(ds):
        raise RuntimeError(f"boom {ds.SOPInstanceUID}")

    def collecting_callback(ds):
        seen.put(ds.SOPInstanceUID)

    # No retries: each failure is logged once, then the instance is parked.
    server = server_factory(callbacks=[exploding_callback, collecting_callback], callback_retries=0)
    datasets = [make_dataset() for _ in range(3)]
    paths = [write_file(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(datasets)]

    assert statuses(send(server.port, paths)) == [0] * 3
    assert drain(seen, 3) == [ds.SOPInstanceUID for ds in datasets]
    # The server goes on storing after the failures.
    later = make_dataset()
    assert statuses(send(server.port, [write_file(later, tmp_path / "src" / "z.dcm")])) == [0]
    assert drain(seen, 1) == [later.SOPInstanceUID]
    server.shutdown()

    assert stored_files(data_dir) == sorted(patient_layout(ds) for ds in [*datasets, later])

    def is_failure_record(record: logging.LogRecord) -> bool:
        if not (record.name == "dicom_inlet" or record.name.startswith("dicom_inlet.")):
            return False
        if record.levelno < logging.ERROR:
            return False
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            has_traceback = isinstance(record.exc_info[1], RuntimeError)
            text += str(record.exc_info[1])
        else:
            has_traceback = "Traceback" in text
        return has_traceback and "boom" in text

    failures = [r for r in caplog.records if is_failure_record(r)]
    assert len(failures) == 4, [r.getMessage() for r in caplog.records]
    for record in failures:
        message = record.getMessage()
        assert "exploding_callback" in message or "callback" in message.lower()


def test_shutdown_waits_for_pending_callbacks(server_factory, tmp_path):
    gate = threading.Event()
    entered = threading.Event()
    done: list[str] = []
    gate_results: list[bool] = []
    lock = threading.Lock()

    def slow_callback(ds):
        entered.set()
        opened = gate.wait(TIMEOUT)
        with lock:
            gate_results.append(opened)
            done.append(ds.SOPInstanceUID)

    server = server_factory(callbacks=[slow_callback])
    datasets = [make_dataset() for _ in range(4)]
    paths = [write_file(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(datasets)]

    # Stores complete while the dispatcher is stuck in the first callback.
    assert statuses(send(server.port, paths)) == [0] * 4
    assert entered.wait(TIMEOUT)
    assert done == []

    # Open the gate from another thread shortly after shutdown() has begun; shutdown()
    # must not return before every stored instance went through the callback.
    releaser = threading.Timer(0.5, gate.set)
    releaser.start()
    try:
        server.shutdown()
        with lock:
            finished = list(done)
    finally:
        gate.set()
        releaser.cancel()

    assert finished == [ds.SOPInstanceUID for ds in datasets]
    assert all(gate_results)


# --------------------------------------------------------------------------------------
# dcm2dict
# --------------------------------------------------------------------------------------


def _has_key(d: dict, keyword: str) -> bool:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    return keyword in d or f"{tag:08X}" in d


def _pixel_content_present(d: dict) -> bool:
    for key in ("7FE00010", "PixelData"):
        entry = d.get(key)
        if entry is None:
            continue
        if isinstance(entry, dict):
            if any(entry.get(k) for k in ("InlineBinary", "Value", "BulkDataURI")):
                return True
        elif entry:
            return True
    return False


def test_dcm2dict_excludes_pixels_and_does_not_mutate(tmp_path):
    from dicom_inlet.convert import dcm2dict

    path = write_file(make_dataset(), tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    before = copy.deepcopy(ds)

    result = dcm2dict(ds)

    assert isinstance(result, dict)
    for element in before:
        if element.keyword != "PixelData":
            assert _has_key(result, element.keyword), element.keyword
    assert not _pixel_content_present(result)
    json.dumps(result)  # JSON-compatible, like pacsanini's
    assert ds == before
    assert ds.PixelData == before.PixelData
    assert ds.file_meta == before.file_meta
    assert list(ds.keys()) == list(before.keys())


def test_dcm2dict_include_pixels(tmp_path):
    from dicom_inlet.convert import dcm2dict

    ds = pydicom.dcmread(write_file(make_dataset(), tmp_path / "a.dcm"))
    before = copy.deepcopy(ds)

    result = dcm2dict(ds, include_pixels=True)

    assert _pixel_content_present(result)
    assert _has_key(result, "PatientID")
    assert ds == before


# --------------------------------------------------------------------------------------
# pacsanini guide snippets, only the import changed (and port 0 for parallel runs)
# --------------------------------------------------------------------------------------


def _send_one(port: int, tmp_path: Path, name: str) -> Dataset:
    ds = make_dataset()
    assert statuses(send(port, [write_file(ds, tmp_path / "src" / f"{name}.dcm")])) == [0]
    return ds


def test_guide_context_manager(tmp_path):
    from dicom_inlet.net import StoreSCPServer

    my_node_info = {"aetitle": "my_aetitle", "port": 0, "ip": "127.0.0.1"}
    dicom_dir = str(tmp_path / "dicom")

    with StoreSCPServer(my_node_info, data_dir=dicom_dir) as server:
        ds = _send_one(server.port, tmp_path, "cm")
        assert (Path(dicom_dir) / patient_layout(ds)).is_file()
    assert server.scp is None


def test_guide_print_callback(tmp_path, capsys):
    from dicom_inlet.net import StoreSCPServer

    my_node_info = {"aetitle": "my_aetitle", "port": 0, "ip": "127.0.0.1"}
    dicom_dir = str(tmp_path / "dicom")
    printed = threading.Event()

    def handle_dcm(dcm):
        print(dcm)
        printed.set()

    with StoreSCPServer(my_node_info, data_dir=dicom_dir, callbacks=[handle_dcm]) as server:
        ds = _send_one(server.port, tmp_path, "print")
        assert printed.wait(TIMEOUT)
    assert ds.SOPInstanceUID in capsys.readouterr().out


def test_guide_partial_callback_with_dcm2dict(tmp_path):
    from dicom_inlet.convert import dcm2dict
    from dicom_inlet.net import StoreSCPServer

    my_node_info = {"aetitle": "my_aetitle", "port": 0, "ip": "127.0.0.1"}
    dicom_dir = str(tmp_path / "dicom")
    uploads: queue.Queue = queue.Queue()

    class connection:  # stands in for the guide's `from foobar import connection`
        def __init__(self, conn_str):
            self.conn_str = conn_str

        def upload(self, dcm_dict):
            uploads.put((self.conn_str, dcm_dict))

    def handle_dcm(dcm, db_conn_str=""):
        dcm_dict = dcm2dict(dcm)
        conn = connection(db_conn_str)
        conn.upload(dcm_dict)

    handle_dcm_partial = functools.partial(
        handle_dcm, db_conn_str="db://jdoe:password@db.example.com"
    )

    with StoreSCPServer(my_node_info, data_dir=dicom_dir, callbacks=[handle_dcm_partial]) as server:
        ds = _send_one(server.port, tmp_path, "partial")
        [(conn_str, dcm_dict)] = drain(uploads, 1)

    assert conn_str == "db://jdoe:password@db.example.com"
    assert isinstance(dcm_dict, dict)
    assert _has_key(dcm_dict, "SOPInstanceUID")
    assert ds.SOPInstanceUID in json.dumps(dcm_dict)
    assert not _pixel_content_present(dcm_dict)


def test_guide_blocking_server_stopped_by_shutdown(tmp_path):
    from dicom_inlet.net import StoreSCPServer

    my_node_info = {"aetitle": "my_aetitle", "port": 0, "ip": "127.0.0.1"}
    dicom_dir = str(tmp_path / "dicom")

    server = StoreSCPServer(my_node_info, data_dir=dicom_dir)
    thread, errors = _run_blocking_in_thread(server)  # server.run(block=True)
    try:
        ds = _send_one(server.port, tmp_path, "blocking")
        stored = Path(dicom_dir) / patient_layout(ds)
        assert_file_meta(
            stored,
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=ExplicitVRLittleEndian,
        )
    finally:
        server.shutdown()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert errors == []
