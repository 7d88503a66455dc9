"""Store handlers: the handler's verdict is the status the sender sees and decides the file;
handlers of concurrent associations run in parallel; pacsanini's callback order."""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import (
    ALL_TEST_SYNTAXES,
    CT_IMAGE_STORAGE,
    HOST,
    SCP_AET,
    SCU_AET,
    TIMEOUT,
    dataset_bytes,
    dcmtk_tool,
    echo,
    incoming_entries,
    make_dataset,
    patient_layout,
    run_tool,
    send,
    statuses,
    stored_files,
    write_file,
)
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from dicom_inlet.handlers import HANDLER_FAILED, IncomingEcho, IncomingInstance, Verdict

# Each instance carries the status its handler is to answer, in InstanceNumber.
FAILURE, WARNING = 0xA701, 0xB000


def instances(tmp_path: Path, answers: list[int]) -> list[Path]:
    paths = []
    for i, answer in enumerate(answers):
        ds = make_dataset(instance_number=answer, undefined_length_sequences=False)
        paths.append(write_file(ds, tmp_path / "send" / f"{i}.dcm"))
    return paths


def answer_from_instance_number(instance: IncomingInstance) -> Any:
    number = int(instance.dataset.InstanceNumber)
    if number == HANDLER_FAILED:
        raise RuntimeError("handler refuses")
    if number == FAILURE:
        status = Dataset()
        status.Status = FAILURE
        status.ErrorComment = "refused by the handler"
        return status
    return number


def test_handler_status_is_what_pynetdicom_sees_and_a_refusal_leaves_no_file(
    server_factory, data_dir, tmp_path, caplog
):
    server = server_factory(handler=answer_from_instance_number)
    answers = [0x0000, WARNING, FAILURE, HANDLER_FAILED]
    paths = instances(tmp_path, answers)
    with caplog.at_level(logging.ERROR, logger="dicom_inlet"):
        results = send(server.port, paths)
    assert statuses(results) == answers
    assert results[2].ErrorComment == "refused by the handler"
    assert "handler refuses" in caplog.text  # the traceback is logged
    stored = {p.name for p in stored_files(data_dir)}
    assert stored == {f"{sop_instance_uid(p)}.dcm" for p in paths[:2]}
    for path in paths[:2]:
        stored_path = next(p for p in stored_files(data_dir) if p.stem == sop_instance_uid(path))
        assert dataset_bytes(data_dir / stored_path) == dataset_bytes(path)
    assert incoming_entries(data_dir) == []


def sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_handler_status_is_what_dcmtk_storescu_sees(server_factory, data_dir, tmp_path):
    server = server_factory(handler=answer_from_instance_number)
    answers = [FAILURE, 0x0000, HANDLER_FAILED, WARNING]
    paths = instances(tmp_path, answers)
    result = subprocess.run(
        [dcmtk_tool("storescu"), "-d", "--no-halt", "-aec", SCP_AET, HOST, str(server.port)]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    output = result.stdout + result.stderr
    seen = [int(s, 16) for s in re.findall(r"DIMSE Status\s*: 0x([0-9a-f]{4})", output)]
    assert seen == answers, output[-2000:]
    assert len(stored_files(data_dir)) == 2
    assert incoming_entries(data_dir) == []


def test_handler_sees_the_instance_lazily_and_where_it_will_be_stored(
    server_factory, data_dir, tmp_path
):
    seen: dict[str, Any] = {}

    def handler(instance: IncomingInstance) -> Verdict:
        ds = instance.dataset
        pixels = ds.get_item("PixelData", keep_deferred=True)
        seen.update(
            pixels_deferred=pixels.value is None,  # not read: only its position is known
            patient=ds.PatientID,
            meta_ts=instance.file_meta.TransferSyntaxUID,
            meta_uid=instance.file_meta.MediaStorageSOPInstanceUID,
            file_complete=instance.file.stat().st_size >= instance.bytes,
            file_in_spool=instance.file.parent.parent.name == ".incoming",
            attrs=(
                instance.sop_class_uid,
                instance.sop_instance_uid,
                instance.transfer_syntax_uid,
                instance.calling_ae,
                instance.called_ae,
                instance.peer_host,
            ),
            path=instance.path,
            ds=ds,
        )
        return Verdict(0x0000)

    server = server_factory(handler=handler)
    ds = make_dataset(rows=256, columns=256)  # 128 KiB of pixel data: deferred
    path = write_file(ds, tmp_path / "x.dcm")
    assert statuses(send(server.port, [path], called_aet=SCP_AET)) == [0]
    assert seen["pixels_deferred"]
    assert seen["patient"] == "PAT001"
    assert (seen["meta_ts"], seen["meta_uid"]) == (ExplicitVRLittleEndian, ds.SOPInstanceUID)
    assert seen["file_complete"] and seen["file_in_spool"]
    assert seen["attrs"] == (
        CT_IMAGE_STORAGE,
        ds.SOPInstanceUID,
        ExplicitVRLittleEndian,
        SCU_AET,
        SCP_AET,
        HOST,
    )
    assert seen["path"] == Path(server.data_dir) / patient_layout(ds)
    assert seen["path"].is_file()
    # Published: the deferred pixel data now comes from the stored file.
    assert seen["ds"].PixelData == ds.PixelData


def test_a_data_set_kept_past_a_refusal_is_read_in_before_its_file_goes(
    server_factory, data_dir, tmp_path
):
    kept: list[IncomingInstance] = []

    def handler(instance: IncomingInstance) -> Verdict:
        assert instance.dataset.SOPInstanceUID  # scanned: nothing read from the file yet
        kept.append(instance)  # the instance, and with it its data set, outlives the handler
        return Verdict(0xC000, "refused")

    server = server_factory(handler=handler)
    ds = make_dataset(rows=256, columns=256)
    path = write_file(ds, tmp_path / "x.dcm")
    assert statuses(send(server.port, [path], called_aet=SCP_AET)) == [0xC000]
    assert stored_files(data_dir) == [] and incoming_entries(data_dir) == []
    [instance] = kept
    assert not instance.file.exists()
    assert instance.dataset.PatientID == ds.PatientID
    assert instance.dataset.PixelData == ds.PixelData
    # Its file gone, save_as writes what was read in.
    instance.dataset.save_as(tmp_path / "kept.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "kept.dcm") == pydicom.dcmread(path)


@pytest.mark.parametrize("transfer_syntax", ALL_TEST_SYNTAXES, ids=lambda ts: ts.keyword)
def test_handler_save_as_copies_an_unchanged_data_set_and_writes_every_change(
    server_factory, tmp_path, transfer_syntax
):
    # pynetdicom's storage example: the file meta it is given, then save_as. Unchanged, the
    # data set is written as received; changed in any way, the change is what is written.
    out = tmp_path / "out"
    out.mkdir()
    metas: list[tuple[Any, Any]] = []

    def handler(instance: IncomingInstance) -> Verdict:
        ds = instance.dataset
        ds.file_meta = meta = instance.file_meta
        before = copy.deepcopy(meta)
        ds.save_as(out / "as-received.dcm", enforce_file_format=True)
        ds["Modality"].value = "MR"  # a scanned attribute, changed in place
        ds.save_as(out / "modality.dcm", enforce_file_format=True)
        ds.PatientName = "CHANGED^NAME"
        ds.save_as(out / "name.dcm", enforce_file_format=True)
        metas.append((before, meta))
        return Verdict(0x0000)

    server = server_factory(handler=handler)
    ds = make_dataset(rows=256, columns=256)  # 128 KiB of pixel data: deferred
    src = write_file(ds, tmp_path / "src" / "in.dcm", transfer_syntax)
    assert statuses(send(server.port, [src])) == [0]

    sent = pydicom.dcmread(src)
    assert dataset_bytes(out / "as-received.dcm") == dataset_bytes(src)
    written = pydicom.dcmread(out / "as-received.dcm")
    assert written == sent
    assert written.file_meta.TransferSyntaxUID == transfer_syntax
    assert written.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    [(before, meta)] = metas
    assert meta == before  # the caller's file meta is left as it was
    # The file meta written is what pydicom writes for it, byte for byte.
    expected = DicomBytesIO()
    expected.is_little_endian, expected.is_implicit_VR = True, False
    write_file_meta_info(expected, before, enforce_standard=True)
    header = (out / "as-received.dcm").read_bytes()[: 132 + expected.tell()]
    assert header == bytes(128) + b"DICM" + expected.getvalue()
    sent.Modality = "MR"
    assert pydicom.dcmread(out / "modality.dcm") == sent
    sent.PatientName = "CHANGED^NAME"
    assert pydicom.dcmread(out / "name.dcm") == sent


def test_handler_that_stores_itself_keeps_no_file(server_factory, data_dir, tmp_path):
    taken: list[bytes] = []

    def handler(instance: IncomingInstance) -> Verdict:
        taken.append(instance.file.read_bytes())
        return Verdict(0x0000, keep=False)

    server = server_factory(handler=handler)
    (path,) = instances(tmp_path, [0])
    assert statuses(send(server.port, [path])) == [0]
    assert stored_files(data_dir) == []
    assert taken[0].endswith(dataset_bytes(path))


class _Seen(logging.Handler):
    """Sets an event when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text, self.event, self.messages = text, threading.Event(), []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.text in record.getMessage():
            self.event.set()


@contextlib.contextmanager
def _watching(text: str, release: threading.Event) -> Iterator[_Seen]:
    """Watch the dicom_inlet logger for ``text``; on the way out set ``release`` (what a
    blocked handler waits for) before the watch ends."""
    seen = _Seen(text)
    logger = logging.getLogger("dicom_inlet")
    logger.addHandler(seen)
    try:
        yield seen
    finally:
        release.set()
        logger.removeHandler(seen)


def test_a_late_handler_fails_the_store_with_a7xx_and_the_association_goes_on(
    server_factory, data_dir, tmp_path
):
    release = threading.Event()
    paths = instances(tmp_path, [0, 0])
    late = sop_instance_uid(paths[0])

    def handler(instance: IncomingInstance) -> int:
        if instance.sop_instance_uid == late:
            release.wait(TIMEOUT)
        return 0

    warning = "refused: out of resources: the handler gave no verdict within 0.2 s"
    with _watching(warning, release) as warned:
        server = server_factory(handler=handler, handler_timeout=0.2)
        results = send(server.port, paths)
        # Logged at WARNING once the timeout expired, while the handler still runs.
        assert warned.event.wait(TIMEOUT), warned.messages
        release.set()
        server.shutdown()
    assert statuses(results) == [0xA700, 0x0000]
    assert "no verdict within 0.2 s" in results[0].ErrorComment
    assert len(stored_files(data_dir)) == 1
    assert incoming_entries(data_dir) == []


def test_handlers_of_16_associations_run_in_parallel(server_factory, data_dir, tmp_path):
    # Every handler waits at the barrier: the stores complete only if all 16 run at once.
    barrier = threading.Barrier(16, timeout=TIMEOUT * 2)

    def handler(instance: IncomingInstance) -> int:
        barrier.wait()
        return 0

    server = server_factory(handler=handler, handler_timeout=None)
    paths = instances(tmp_path, [0] * 16)
    results: dict[int, list[int | None]] = {}

    def sender(i: int) -> None:
        results[i] = statuses(send(server.port, [paths[i]]))

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert results == {i: [0] for i in range(16)}
    assert not barrier.broken
    assert len(stored_files(data_dir)) == 16


def test_a_slow_handler_holds_back_only_its_own_association(server_factory, data_dir, tmp_path):
    slow_started, release = threading.Event(), threading.Event()
    slow_uid = "1.2.826.0.1.3680043.10.999.1"

    def handler(instance: IncomingInstance) -> int:
        if instance.sop_instance_uid == slow_uid:
            slow_started.set()
            release.wait(TIMEOUT * 2)
        return 0

    server = server_factory(handler=handler, handler_timeout=None)
    slow_path = write_file(make_dataset(sop_instance_uid=slow_uid), tmp_path / "slow.dcm")
    slow_result: list[int | None] = []
    slow_sender = threading.Thread(
        target=lambda: slow_result.extend(statuses(send(server.port, [slow_path])))
    )
    slow_sender.start()
    assert slow_started.wait(TIMEOUT)
    # While that handler blocks, 15 other associations are served to the end.
    others = instances(tmp_path, [0] * 15)
    for path in others:
        assert statuses(send(server.port, [path])) == [0]
    assert slow_result == []
    release.set()
    slow_sender.join(TIMEOUT)
    assert slow_result == [0]
    assert len(stored_files(data_dir)) == 16


def test_pacsanini_order_callbacks_done_when_the_sender_hears_back(
    server_factory, data_dir, tmp_path
):
    seen: list[str] = []

    def callback(ds: Dataset) -> None:
        seen.append(ds.SOPInstanceUID)
        if int(ds.InstanceNumber) == HANDLER_FAILED:
            raise ValueError("callback refuses")

    server = server_factory(callbacks=[callback], callbacks_before_response=True)
    paths = instances(tmp_path, [0, HANDLER_FAILED, 0])
    for path in paths:
        (result,) = send(server.port, [path])
        # pacsanini's guarantee: the file is stored and the callback has run by now.
        uid = sop_instance_uid(path)
        assert seen[-1] == uid
        assert any(p.stem == uid for p in stored_files(data_dir))
        assert int(result.Status) == (HANDLER_FAILED if path == paths[1] else 0)
    assert len(seen) == 3


def test_handler_options_are_checked(tmp_path):
    from dicom_inlet import StoreSCPServer

    node = {"aetitle": "X", "port": 0}
    with pytest.raises(TypeError, match="handler must be callable"):
        StoreSCPServer(node, tmp_path, handler=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="give one"):
        StoreSCPServer(node, tmp_path, handler=lambda i: 0, callbacks_before_response=True)
    with pytest.raises(ValueError, match="handler_threads"):
        StoreSCPServer(node, tmp_path, handler=lambda i: 0, handler_threads=0)
    with pytest.raises(ValueError, match="handler_timeout"):
        StoreSCPServer(node, tmp_path, handler=lambda i: 0, handler_timeout=0)


def test_a_handler_returning_statuses_only_never_imports_pydicom(tmp_path):
    # The instance is never read unless the handler touches it.
    script = textwrap.dedent(
        f"""
        import sys
        from dicom_inlet import StoreSCPServer, send
        with StoreSCPServer({{"aetitle": "X", "port": 0, "ip": "{HOST}"}}, data_dir=sys.argv[1],
                            handler=lambda instance: 0xB000) as s:
            result = send("{HOST}", s.port, [sys.argv[2]])
        print(result.results[0].status, "pydicom" in sys.modules)
        """
    )
    (path,) = instances(tmp_path, [0])
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "d"), str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=True,
    ).stdout.split()
    assert out == [str(WARNING), "False"]


def test_cli_serve_handler_module_function(tmp_path):
    from test_cli import LISTENING, ServeProcess

    (tmp_path / "inlet_rules.py").write_text(
        "def only_ct(instance):\n"
        "    return 0 if instance.sop_class_uid == '1.2.840.10008.5.1.4.1.1.2' else 0xA702\n"
    )
    data_dir = tmp_path / "cli-data"
    process = ServeProcess(
        [str(data_dir), "--port", "0", "--host", HOST, "--handler", "inlet_rules:only_ct"],
        cwd=tmp_path,
    )
    try:
        port = int(process.wait_for(LISTENING).group(2))
        ct = write_file(make_dataset(), tmp_path / "src" / "ct.dcm")
        other = make_dataset(sop_class_uid="1.2.840.10008.5.1.4.1.1.7")
        sc = write_file(other, tmp_path / "src" / "sc.dcm")
        assert statuses(send(port, [ct, sc])) == [0x0000, 0xA702]
        assert process.interrupt() == 0, process.text()
    finally:
        process.kill()
    assert stored_files(data_dir) == [patient_layout(pydicom.dcmread(ct))]


def test_cli_serve_echo_handler_module_function(tmp_path):
    from test_cli import LISTENING, ServeProcess

    (tmp_path / "inlet_echo.py").write_text(
        "def busy(echo):\n    return 0x0122 if echo.calling_ae == 'MONITOR' else 0\n"
    )
    process = ServeProcess(
        [str(tmp_path / "d"), "--port", "0", "--host", HOST, "--echo-handler", "inlet_echo:busy"],
        cwd=tmp_path,
    )
    try:
        port = int(process.wait_for(LISTENING).group(2))
        assert [echo(port, ae_title=t) for t in ("MONITOR", "OTHER")] == [0x0122, 0x0000]
        assert process.interrupt() == 0, process.text()
    finally:
        process.kill()


def test_cli_serve_handler_errors_in_one_line(tmp_path):
    result = subprocess.run(
        [
            *[sys.executable, "-m", "dicom_inlet", "serve", str(tmp_path / "d")],
            *["--port", "0", "--handler", "no_such_module_here:f"],
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "cannot import 'no_such_module_here'" in result.stderr


def test_shutdown_from_a_handler_lets_its_instance_finish(server_factory, data_dir, tmp_path):
    def handler(instance: IncomingInstance) -> int:
        server.shutdown()  # returns at once: it cannot wait for its own handler thread
        return 0

    server = server_factory(handler=handler)
    (path,) = instances(tmp_path, [0])
    assert statuses(send(server.port, [path])) == [0]
    server.shutdown()  # waits for the shutdown the handler started
    assert server.scp is None
    assert len(stored_files(data_dir)) == 1


def test_callbacks_see_only_what_the_handler_kept(server_factory, tmp_path):
    import queue

    called: queue.Queue = queue.Queue()
    server = server_factory(handler=answer_from_instance_number, callbacks=[called.put])
    paths = instances(tmp_path, [FAILURE, WARNING, 0x0000])
    assert statuses(send(server.port, paths)) == [FAILURE, WARNING, 0x0000]
    server.shutdown()  # returns once every callback has run
    seen = [called.get_nowait().SOPInstanceUID for _ in range(called.qsize())]
    assert seen == [sop_instance_uid(p) for p in paths[1:]]


def test_echo_handler_status_is_what_dcmtk_echoscu_and_pynetdicom_see(server_factory):
    seen: list[IncomingEcho] = []

    def echo_handler(request: IncomingEcho) -> Any:
        seen.append(request)
        if request.calling_ae == "REFUSE":
            status = Dataset()
            status.Status = 0x0122
            status.ErrorComment = "no echo for you"
            return status
        if request.calling_ae == "RAISE":
            raise RuntimeError("echo handler bug")
        return 0x0000

    server = server_factory(echo_handler=echo_handler)
    assert [echo(server.port, ae_title=t) for t in ("OK", "REFUSE", "RAISE")] == [0, 0x0122, 0]
    done = run_tool(dcmtk_tool("echoscu"), "-v", "-aet", "REFUSE", HOST, server.port)
    assert "Received Echo Response (Unknown Status: 0x122)" in done.stdout + done.stderr
    assert [r.calling_ae for r in seen] == ["OK", "REFUSE", "RAISE", "REFUSE"]
    first = seen[0]
    assert (first.called_ae, first.peer_host, first.message_id) == ("ANY-SCP", HOST, 1)
    assert first.sop_class_uid == "1.2.840.10008.1.1"
    assert first.peer_port > 0 and first.context_id % 2 == 1


def test_a_late_echo_handler_answers_success_and_is_logged_when_it_returns(server_factory):
    release = threading.Event()

    def echo_handler(request: IncomingEcho) -> int:
        release.wait(TIMEOUT)
        return 0x0122

    with _watching("after handler_timeout: the peer was answered 0x0000", release) as warned:
        server = server_factory(echo_handler=echo_handler, handler_timeout=0.2)
        assert echo(server.port) == 0
        release.set()
        assert warned.event.wait(TIMEOUT), warned.messages


def test_echo_handler_must_be_callable(tmp_path):
    from dicom_inlet import StoreSCPServer

    with pytest.raises(TypeError, match="echo_handler must be callable"):
        StoreSCPServer({"aetitle": "X", "port": 0}, tmp_path, echo_handler=1)  # type: ignore[arg-type]
