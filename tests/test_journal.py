"""The journal with real peers: at-least-once callbacks across kill -9, the acknowledged
version of a duplicate, duplicate policies, parked deliveries and replays, study events and
their revisions and restarts, association records under a full queue, the status command."""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import (
    HOST,
    SCP_AET,
    SCU_AET,
    TIMEOUT,
    dcmtk_tool,
    make_dataset,
    patient_layout,
    run_tool,
    send,
    statuses,
    stored_files,
    wait_until,
    write_file,
)
from pydicom.data import get_testdata_file
from pynetdicom import AE
from server_process import ServerProcess

from dicom_inlet import StoreSCPServer, _core, delivery
from dicom_inlet.cli import main

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
NODE = {"aetitle": "INLET", "port": 0, "ip": HOST}


def log_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def send_until_lost(port: int, paths: list[Path], acknowledged: list[str]) -> None:
    """C-STORE ``paths`` on one association until it breaks; note each success's UID."""
    ae = AE(ae_title=SCU_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(CT_IMAGE_STORAGE, [EXPLICIT_LE])
    assoc = ae.associate(HOST, port, ae_title="ANY-SCP")
    try:
        for path in paths:
            if not assoc.is_established:
                return
            status = assoc.send_c_store(path)
            if "Status" in status and status.Status == 0x0000:
                acknowledged.append(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assoc.release()
    except Exception:  # the server was killed under us: what was acknowledged counts
        assoc.abort()
    finally:
        ae.shutdown()


def test_kill_9_during_1000_instances_then_restart_runs_every_acknowledged_callback(tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "callbacks.log"
    study = pydicom.uid.generate_uid()
    paths = [
        write_file(make_dataset(study_uid=study, rows=8, columns=8), tmp_path / "src" / f"{i}.dcm")
        for i in range(1000)
    ]
    acknowledged: list[list[str]] = [[] for _ in range(4)]
    server = ServerProcess(data_dir, callback_log=log, callback_delay=0.01)
    senders = [
        threading.Thread(
            target=send_until_lost, args=(server.port, paths[i::4], acknowledged[i]), daemon=True
        )
        for i in range(4)
    ]
    for sender in senders:
        sender.start()
    # The slow callback is behind the senders when the process dies.
    assert wait_until(lambda: len(log_lines(log)) >= 50)
    server.kill()
    for sender in senders:
        sender.join(TIMEOUT)
    told_stored = {uid for uids in acknowledged for uid in uids}
    delivered_before = set(log_lines(log))
    assert len(told_stored) > len(delivered_before), "the kill came after every callback"

    with ServerProcess(data_dir, callback_log=log):
        assert wait_until(lambda: told_stored <= set(log_lines(log)), timeout=120)
    # Every acknowledged instance is on disk and reached its callback; the journal agrees.
    entries = delivery.instances(data_dir)
    assert told_stored <= {e.sop_instance_uid for e in entries}
    assert {e.state for e in entries if e.sop_instance_uid in told_stored} == {"delivered"}
    assert not any((data_dir / ".journal" / "held").iterdir())


def test_kill_9_while_rows_are_only_in_the_log_then_restart_runs_every_callback(tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "callbacks.log"
    study = pydicom.uid.generate_uid()
    paths = [
        write_file(make_dataset(study_uid=study, rows=8, columns=8), tmp_path / "src" / f"{i}.dcm")
        for i in range(41)
    ]
    # Callbacks slower than the test: none returns before the kill.
    server = ServerProcess(data_dir, callback_log=log, callback_delay=TIMEOUT * 100)
    # The first instance reserves the node's block of row ids, and is committed at release.
    assert statuses(send(server.port, paths[:1])) == [0]
    database = sqlite3.connect(
        data_dir / ".journal" / "journal.sqlite", isolation_level=None, timeout=TIMEOUT
    )
    # Another writer holds the database: the server's ingest cannot commit, so the rows
    # acknowledged now are only in its log when it dies.
    database.execute("BEGIN EXCLUSIVE")
    ae = AE(ae_title=SCU_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(CT_IMAGE_STORAGE, [EXPLICIT_LE])
    assoc = ae.associate(HOST, server.port, ae_title="ANY-SCP")
    assert assoc.is_established
    told = [assoc.send_c_store(path) for path in paths[1:]]
    assert statuses(told) == [0] * 40
    server.kill()
    assoc.abort()
    ae.shutdown()
    assert database.execute("SELECT count(*) FROM instances").fetchone() == (1,)
    database.execute("ROLLBACK")
    database.close()
    acknowledged = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}

    with ServerProcess(data_dir, callback_log=log):
        assert wait_until(lambda: acknowledged <= set(log_lines(log)), timeout=120)
    entries = delivery.instances(data_dir)
    assert {e.sop_instance_uid for e in entries} == acknowledged
    assert {e.state for e in entries} == {"delivered"}
    assert len({e.id for e in entries}) == len(entries) == 41
    # The dead run's log was committed and removed; the second run removed its own.
    assert not any((data_dir / ".journal" / "log").iterdir())
    assert not any((data_dir / ".journal" / "held").iterdir())


def test_duplicate_uid_callbacks_read_the_version_each_acknowledged(server_factory, data_dir):
    first_path, second_path = (
        get_testdata_file("MR_small.dcm"),
        get_testdata_file("MR_small_RLE.dcm"),
    )
    first, second = pydicom.dcmread(first_path), pydicom.dcmread(second_path)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    both_sent = threading.Event()
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def slow(ds: Any) -> None:
        # The first callback runs only once the duplicate has replaced its file.
        assert both_sent.wait(TIMEOUT)
        received.put((ds.file_meta.TransferSyntaxUID, ds.PixelData))

    server = server_factory(callbacks=[slow])
    assert statuses(send(server.port, [first_path])) == [0]
    assert statuses(send(server.port, [second_path])) == [0]
    both_sent.set()
    got = [received.get(timeout=TIMEOUT) for _ in range(2)]
    assert got == [
        (first.file_meta.TransferSyntaxUID, first.PixelData),
        (second.file_meta.TransferSyntaxUID, second.PixelData),
    ]
    server.shutdown()
    # The file holds the second; the held first version is gone once delivered.
    assert pydicom.dcmread(data_dir / patient_layout(second)).PixelData == second.PixelData
    assert not any((data_dir / ".journal" / "held").iterdir())


def test_duplicate_policies(server_factory, tmp_path):
    ds = make_dataset()
    one = write_file(ds, tmp_path / "one.dcm")
    for policy, status, files in [
        ("keep-first", 0x0000, 1),
        ("reject", 0x0111, 1),
        ("keep-both", 0x0000, 2),
        ("replace", 0x0000, 1),
    ]:
        root = tmp_path / policy
        server = server_factory(root, duplicates=policy)
        results = send(server.port, [one, one])
        assert statuses(results) == [0x0000, status], policy
        if status:
            assert "stored already" in results[1].ErrorComment
        assert len(stored_files(root)) == files, policy
        if policy == "keep-both":
            assert (root / patient_layout(ds)).with_name(f"{ds.SOPInstanceUID}~2.dcm").is_file()
    bad = StoreSCPServer(NODE, tmp_path / "bad", duplicates="newest")
    with pytest.raises(ValueError, match="unknown duplicates policy"):
        bad.run()


def test_failing_callbacks_are_retried_parked_and_replayed(server_factory, data_dir, tmp_path):
    calls: queue.Queue[str] = queue.Queue()
    healthy = threading.Event()

    def flaky(ds: Any) -> None:
        calls.put(ds.SOPInstanceUID)
        if not healthy.is_set():
            raise RuntimeError("downstream is down")

    server = server_factory(callbacks=[flaky], callback_retries=2, retry_backoff=0.01)
    ds = make_dataset()
    assert statuses(send(server.port, [write_file(ds, tmp_path / "a.dcm")])) == [0]
    assert [calls.get(timeout=TIMEOUT) for _ in range(3)] == [ds.SOPInstanceUID] * 3
    assert wait_until(lambda: server.parked())
    [parked] = server.parked()
    assert (parked.sop_instance_uid, parked.attempts) == (ds.SOPInstanceUID, 3)
    assert "RuntimeError: downstream is down" in (parked.error or "")
    table = delivery.status_table(data_dir, failed=True)
    assert str(parked.id) in table and "downstream is down" in table
    healthy.set()
    assert server.replay() == 1
    assert calls.get(timeout=TIMEOUT) == ds.SOPInstanceUID
    assert wait_until(lambda: delivery.instances(data_dir)[0].state == "delivered")
    assert server.parked() == []


class StudyEvents:
    """Study callback collecting the events."""

    def __init__(self) -> None:
        self.events: queue.Queue[delivery.Completion] = queue.Queue()

    def __call__(self, event: delivery.Completion) -> None:
        self.events.put(event)

    def next(self) -> delivery.Completion:
        return self.events.get(timeout=TIMEOUT)


def test_a_study_in_3_associations_gets_one_event_and_a_late_instance_a_revision(
    server_factory, data_dir, tmp_path
):
    study, series = StudyEvents(), StudyEvents()
    server = server_factory(study_callbacks=[study], series_callbacks=[series], study_timeout=2.0)
    study_uid, series_uids = pydicom.uid.generate_uid(), [pydicom.uid.generate_uid() for _ in "ab"]
    datasets = [
        make_dataset(study_uid=study_uid, series_uid=series_uids[i % 2], instance_number=i)
        for i in range(9)
    ]
    paths = [write_file(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(datasets)]
    for part in (paths[:3], paths[3:6], paths[6:]):
        assert statuses(send(server.port, part)) == [0] * 3
    event = study.next()
    assert (event.level, event.uid, event.revision) == ("study", study_uid, 0)
    assert {i.sop_instance_uid for i in event.instances} == {ds.SOPInstanceUID for ds in datasets}
    assert [s.series_instance_uid for s in event.series] == series_uids
    assert {i.path for i in event.instances} == {data_dir / patient_layout(ds) for ds in datasets}
    assert event.folder == data_dir / "PAT001" / study_uid
    assert {series.next().uid for _ in range(2)} == set(series_uids)

    late = make_dataset(study_uid=study_uid, series_uid=series_uids[0], instance_number=99)
    assert statuses(send(server.port, [write_file(late, tmp_path / "late.dcm")])) == [0]
    # The next study event is the revision (not a second first event), with everything.
    revision = study.next()
    assert (revision.revision, revision.is_revision, len(revision.instances)) == (1, True, 10)
    assert (series.next().uid, server.scp is not None) == (series_uids[0], True)
    # Marked done once the callbacks returned.
    assert wait_until(lambda: delivery.studies(data_dir)[0].events == 2)
    [summary] = delivery.studies(data_dir)
    assert (summary.instances, summary.series) == (10, 2)


def test_events_on_release_fire_without_waiting_for_the_timeout(server_factory, tmp_path):
    study = StudyEvents()
    server = server_factory(study_callbacks=[study], study_timeout=3600, events_on_release=True)
    ds = make_dataset()
    assert statuses(send(server.port, [write_file(ds, tmp_path / "a.dcm")])) == [0]
    assert study.next().study_instance_uid == ds.StudyInstanceUID


def test_a_restart_mid_timer_still_fires(tmp_path):
    data_dir, studies = tmp_path / "data", tmp_path / "studies.log"
    datasets = [make_dataset(study_uid="1.2.3.4.5", instance_number=i) for i in range(3)]
    paths = [write_file(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(datasets)]
    # A timer that cannot run out before the kill.
    server = ServerProcess(data_dir, study_log=studies, study_timeout=3600)
    assert statuses(send(server.port, paths)) == [0] * 3
    server.kill()
    assert log_lines(studies) == []
    # The next run resumes the timer from the journal's arrival times.
    with ServerProcess(data_dir, study_log=studies, study_timeout=0.5):
        assert wait_until(lambda: log_lines(studies))
    assert log_lines(studies) == ["1.2.3.4.5", "0", "3"]


def test_300_instances_with_a_callback_log_their_association_line(server_factory, tmp_path):
    queue_size, count = 8, 300
    sent, seen = threading.Event(), []
    logged = threading.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if f"{count} instances" in record.getMessage():
                logged.set()

    def hold(ds: Any) -> None:
        seen.append(ds.SOPInstanceUID)
        if len(seen) == count - queue_size:
            # The queue is full of instances as the association ends.
            assert sent.wait(TIMEOUT)

    handler, logger = Catch(), logging.getLogger("dicom_inlet")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        server = server_factory(callbacks=[hold], callback_queue_size=queue_size)
        paths = [
            write_file(make_dataset(rows=4, columns=4), tmp_path / f"{i}.dcm") for i in range(count)
        ]
        assert statuses(send(server.port, paths)) == [0] * count
        sent.set()
        assert logged.wait(TIMEOUT)
        assert len(seen) == count
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_on_study_runs_a_command_without_a_shell(server_factory, data_dir, tmp_path):
    record = tmp_path / "ran.txt"
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys, pathlib\n"
        f"pathlib.Path({os.fspath(record)!r}).write_text("
        "repr((sys.argv[1:], os.environ['DICOM_INLET_STUDY_UID'], "
        "os.environ['DICOM_INLET_INSTANCES'])))\n"
    )
    hook = delivery.run_command([sys.executable, os.fspath(script), "$HOME;", "a b"])
    server = server_factory(study_callbacks=[hook], study_timeout=0.2)
    ds = make_dataset()
    assert statuses(send(server.port, [write_file(ds, tmp_path / "a.dcm")])) == [0]
    assert wait_until(record.exists)
    folder = os.fspath(data_dir / "PAT001" / ds.StudyInstanceUID)
    # Arguments arrive verbatim: no shell expanded or split them.
    assert record.read_text() == repr((["$HOME;", "a b", folder], ds.StudyInstanceUID, "1"))


def test_status_command_prints_the_journal(server_factory, data_dir, tmp_path, capsys):
    server = server_factory()
    ds = make_dataset(AccessionNumber="ACC42", Modality="CT", StudyDate="20240102")
    assert statuses(send(server.port, [write_file(ds, tmp_path / "a.dcm")])) == [0]
    server.shutdown()
    assert main(["status", os.fspath(data_dir)]) == 0
    out = capsys.readouterr().out
    assert ds.StudyInstanceUID in out and "ACC42" in out and "20240102" in out
    assert out.splitlines()[-1] == "1 studies"
    [entry] = delivery.instances(data_dir)
    assert (entry.state, entry.calling_ae, entry.path) == (
        "-",
        SCU_AET,
        data_dir / patient_layout(ds),
    )
    [series] = delivery.series(data_dir, ds.StudyInstanceUID)
    assert (series.modality, series.instances) == ("CT", 1)
    assert main(["replay", os.fspath(data_dir)]) == 0
    assert "0 parked instances" in capsys.readouterr().out


def test_journal_off_and_unusable_journal(server_factory, data_dir, tmp_path, capsys):
    seen: queue.Queue[str] = queue.Queue()
    server = server_factory(callbacks=[lambda ds: seen.put(ds.SOPInstanceUID)], journal=False)
    ds = make_dataset()
    assert statuses(send(server.port, [write_file(ds, tmp_path / "a.dcm")])) == [0]
    assert seen.get(timeout=TIMEOUT) == ds.SOPInstanceUID
    server.shutdown()
    assert not (data_dir / ".journal").exists()
    with pytest.raises(ValueError, match="need the journal"):
        StoreSCPServer(NODE, tmp_path / "x", journal=False, study_callbacks=[print])
    assert main(["status", os.fspath(data_dir)]) == 2
    assert "no journal at" in capsys.readouterr().err

    broken = tmp_path / "broken"
    (broken / ".journal").mkdir(parents=True)
    (broken / ".journal" / "journal.sqlite").write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(OSError, match=r"journal .*journal\.sqlite is unusable"):
        StoreSCPServer(NODE, broken).run()
    result = subprocess.run(
        [sys.executable, "-m", "dicom_inlet", "status", os.fspath(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "is unusable" in result.stderr


class FailingStudies:
    """Study callback noting ``(uid, revision, instances)`` of each call; raises for the
    studies in ``failing``."""

    def __init__(self, *failing: str) -> None:
        self.calls: queue.Queue[tuple[str, int, int]] = queue.Queue()
        self.failing = set(failing)

    def __call__(self, event: delivery.Completion) -> None:
        self.calls.put((event.uid, event.revision, len(event.instances)))
        if event.uid in self.failing:
            raise RuntimeError("the PACS forward refused")

    def next(self) -> tuple[str, int, int]:
        return self.calls.get(timeout=TIMEOUT)


def storescu(port: int, paths: list[Path]) -> None:
    result = run_tool(dcmtk_tool("storescu"), "-aec", SCP_AET, HOST, str(port), *paths)
    assert result.returncode == 0, result.stderr


def study_files(tmp_path: Path, name: str, count: int) -> tuple[str, list[Path]]:
    uid = pydicom.uid.generate_uid()
    datasets = [make_dataset(study_uid=uid, instance_number=i) for i in range(count)]
    return uid, [write_file(ds, tmp_path / f"{name}{i}.dcm") for i, ds in enumerate(datasets)]


def test_a_failing_study_event_is_parked_listed_kept_over_a_restart_and_replayed(
    server_factory, data_dir, tmp_path, capsys
):
    failed_uid, failed_files = study_files(tmp_path, "a", 2)
    studies = FailingStudies(failed_uid)
    options: dict[str, Any] = {
        "study_callbacks": [studies],
        "callback_retries": 2,
        "retry_backoff": 0.01,
    }
    server = server_factory(study_timeout=0.2, **options)
    storescu(server.port, failed_files)
    # The first call and two retries, then parked.
    assert [studies.next() for _ in range(3)] == [(failed_uid, 0, 2)] * 3
    assert wait_until(server.parked_events)
    [parked] = server.parked_events()
    assert (parked.level, parked.uid, parked.attempts, parked.events) == ("study", failed_uid, 3, 0)
    assert "RuntimeError: the PACS forward refused" in (parked.error or "")
    server.shutdown()
    assert main(["status", os.fspath(data_dir), "--failed"]) == 0
    out = capsys.readouterr().out.splitlines()
    [line] = [line for line in out if failed_uid in line]
    assert line.split()[:3] == ["study", failed_uid, "3"]
    assert line.endswith("RuntimeError: the PACS forward refused")
    assert out[-1] == "1 parked events"

    # After a restart it does not fire: a newer study's event comes first, where the older
    # one would be due first (the timers go by last arrival) were it not parked.
    server = server_factory(study_timeout=0.2, **options)
    other_uid, other_files = study_files(tmp_path, "b", 1)
    storescu(server.port, other_files)
    assert studies.next() == (other_uid, 0, 1)
    assert studies.calls.empty()
    server.shutdown()

    # Replayed (with no server: due at the next start), it fires at once though the timeout
    # is an hour, the callback now succeeding; then it is listed no more.
    with pytest.raises(ValueError, match="not both"):
        delivery.replay(data_dir, [1], study=failed_uid)
    assert main(["replay", os.fspath(data_dir), "--study", "1.2.3"]) == 0
    assert capsys.readouterr().out.startswith("0 parked")
    assert main(["replay", os.fspath(data_dir), "--study", failed_uid]) == 0
    assert capsys.readouterr().out.startswith("1 parked")
    studies.failing.clear()
    server = server_factory(study_timeout=3600, **options)
    assert studies.next() == (failed_uid, 0, 2)
    assert wait_until(lambda: delivery.studies(data_dir)[0].events == 1)
    assert server.parked_events() == delivery.parked_events(data_dir) == []
    assert studies.calls.empty()


def journal_sql(data_dir: Path, script: str, query: str = "SELECT 1") -> list[list[Any]]:
    """Runs `script`, then `query`, on the journal from another process; `query`'s rows.

    Never from this one while a server here has the journal open: Python's sqlite3 is another
    copy of SQLite than the core's, POSIX locks do not tell the two apart, and the second one
    to open the database would take it for unused and truncate the shared-memory file the
    first has mapped (SIGBUS)."""
    program = (
        "import json, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.executescript(sys.argv[2])\n"
        "print(json.dumps(db.execute(sys.argv[3]).fetchall()))\n"
    )
    database = os.fspath(data_dir / ".journal" / "journal.sqlite")
    done = subprocess.run(
        [sys.executable, "-c", program, database, script, query], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_version_1_journal_migrates_and_parks_events(server_factory, data_dir, tmp_path):
    studies = FailingStudies()
    server = server_factory(study_callbacks=[studies], study_timeout=3600)
    uid, files = study_files(tmp_path, "a", 2)
    storescu(server.port, files)
    server.shutdown()
    # The journal as version 1 wrote it: its study waiting for its event.
    journal_sql(
        data_dir,
        """DROP INDEX groups_due; DROP INDEX groups_parked;
        ALTER TABLE groups DROP COLUMN attempts; ALTER TABLE groups DROP COLUMN error;
        ALTER TABLE groups DROP COLUMN failed;
        CREATE INDEX groups_changed ON groups (last_received) WHERE changed = 1;
        DROP TABLE id_blocks; PRAGMA user_version = 1;""",
    )
    studies.failing.add(uid)
    server = server_factory(
        study_callbacks=[studies], study_timeout=0.2, callback_retries=0, retry_backoff=0.01
    )
    assert studies.next() == (uid, 0, 2)
    assert wait_until(server.parked_events)
    assert [(e.uid, e.attempts) for e in server.parked_events()] == [(uid, 1)]
    assert journal_sql(data_dir, "", "PRAGMA user_version") == [[_core.JOURNAL_VERSION]]
    assert _core.JOURNAL_VERSION >= 2
    [summary] = delivery.studies(data_dir)
    assert (summary.instances, summary.events) == (2, 0)


def test_a_study_event_failing_at_shutdown_stays_due_for_the_next_start(
    server_factory, data_dir, tmp_path
):
    uid, files = study_files(tmp_path, "a", 1)
    studies = FailingStudies(uid)
    retrying = {"callback_retries": 5, "retry_backoff": 3600}
    server = server_factory(study_callbacks=[studies], study_timeout=0.2, **retrying)
    storescu(server.port, files)
    assert studies.next() == (uid, 0, 1)
    # The shutdown cuts the hour's backoff short and ends: the event is neither parked nor
    # given again by this run.
    server.shutdown()
    assert delivery.parked_events(data_dir) == []
    while not studies.calls.empty():
        assert studies.calls.get_nowait() == (uid, 0, 1)
    studies.failing.clear()
    server_factory(study_callbacks=[studies], study_timeout=0.2)
    assert studies.next() == (uid, 0, 1)
    assert wait_until(lambda: delivery.studies(data_dir)[0].events == 1)
