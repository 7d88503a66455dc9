"""The journal in PostgreSQL, shared by nodes on one data_dir: rows from every node with the
node that acknowledged them, one completion event for a study split over two nodes, the
timers and a dead node's undelivered rows taken over after kill -9, stores refused (never
acknowledged unjournaled) while the database is down, and a bad URL told in one line. A real
PostgreSQL 15 (tests/services.py), real nodes, real DICOM peers."""

from __future__ import annotations

import logging
import queue
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import (
    HOST,
    TIMEOUT,
    dataset_bytes,
    make_dataset,
    send,
    statuses,
    stored_files,
    wait_until,
    write_file,
)
from server_process import ServerProcess
from services import Postgres, postgres, require_postgres  # noqa: F401 (the fixture)
from test_cli import ServeProcess

from dicom_inlet import StoreSCPServer, delivery
from dicom_inlet.cli import main

NODE = {"aetitle": "INLET", "port": 0, "ip": HOST}


def one(postgres_: Postgres, database: str, sql: str) -> list[list[str]]:
    """Rows of ``sql`` in the database of URL ``database``, as strings."""
    output = postgres_.psql(database.rsplit("/", 1)[1], sql).stdout
    return [line.split("|") for line in output.splitlines() if line]


class Events:
    """A callback collecting what it is given."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()

    def __call__(self, event: Any) -> None:
        self.events.put(event)

    def next(self) -> Any:
        return self.events.get(timeout=TIMEOUT)


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_instances_from_two_nodes_are_journaled_in_postgres_with_their_node(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    url = postgres.new_database()
    data_dir = tmp_path / "shared"
    calls = {"a": Events(), "b": Events()}
    nodes = {
        node: StoreSCPServer(NODE, data_dir, journal=url, node_id=node, callbacks=[calls[node]])
        for node in "ab"
    }
    for node in nodes.values():
        node.run(block=False)
    try:
        sent = {node: [make_dataset(instance_number=i) for i in range(3)] for node in "ab"}
        for node, datasets in sent.items():
            for ds in datasets:
                ds.file_meta = pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
            assert statuses(send(nodes[node]._bound_port, datasets)) == [0, 0, 0]
        # Each node's callbacks got its own instances; the rows say which node took them.
        for node, datasets in sent.items():
            got = {calls[node].next().SOPInstanceUID for _ in datasets}
            assert got == {ds.SOPInstanceUID for ds in datasets}
        rows = one(postgres, url, "SELECT sop_instance_uid, node FROM instances ORDER BY id")
        assert sorted(map(tuple, rows)) == sorted(
            (ds.SOPInstanceUID, node) for node, datasets in sent.items() for ds in datasets
        )
        assert wait_until(
            lambda: {e.state for e in delivery.instances(data_dir, journal=url)} == {"delivered"}
        )
        entries = delivery.instances(data_dir, journal=url)
        assert sorted((e.sop_instance_uid, e.node) for e in entries) == sorted(map(tuple, rows))
        for entry in entries:
            assert entry.path.is_file() and entry.path.is_relative_to(data_dir)
        # The index (and `dicom-inlet status --journal URL`) lists them.
        assert [s.instances for s in delivery.studies(data_dir, journal=url)] == [1] * 6
        assert main(["status", str(data_dir), "--journal", url]) == 0
        table = capsys.readouterr().out
        assert all(ds.StudyInstanceUID in table for ds in sent["a"] + sent["b"])
    finally:
        for node in nodes.values():
            node.shutdown()


def test_a_study_split_over_two_nodes_gets_one_completion_event(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
):
    url = postgres.new_database()
    data_dir = tmp_path / "shared"
    studies = Events()
    options: dict[str, Any] = {"journal": url, "journal_lease": 1.0, "study_timeout": 1.0}
    nodes = [
        StoreSCPServer(NODE, data_dir, node_id=f"n{i}", study_callbacks=[studies], **options)
        for i in range(2)
    ]
    for node in nodes:
        node.run(block=False)
    try:
        study = pydicom.uid.generate_uid()
        files = [
            write_file(make_dataset(study_uid=study, instance_number=i), tmp_path / f"{i}.dcm")
            for i in range(6)
        ]
        # Half on each node, alternating associations.
        for i in range(0, 6, 2):
            assert statuses(send(nodes[0]._bound_port, files[i : i + 1])) == [0]
            assert statuses(send(nodes[1]._bound_port, files[i + 1 : i + 2])) == [0]
        event = studies.next()
        assert (event.study_instance_uid, event.revision) == (study, 0)
        sent = {pydicom.dcmread(f).SOPInstanceUID for f in files}
        assert {i.sop_instance_uid for i in event.instances} == sent
        assert {i.path.relative_to(data_dir) for i in event.instances} == set(
            stored_files(data_dir)
        )
        # A late instance on the other node: a revision listing everything; the next event
        # is that revision, not a second first event from the other node.
        late = write_file(make_dataset(study_uid=study, instance_number=9), tmp_path / "9.dcm")
        assert statuses(send(nodes[1]._bound_port, [late])) == [0]
        revision = studies.next()
        assert (revision.study_instance_uid, revision.revision) == (study, 1)
        assert len(revision.instances) == 7
        assert studies.events.empty()
    finally:
        for node in nodes:
            node.shutdown()


def leader(postgres_: Postgres, url: str) -> str | None:
    rows = one(postgres_, url, "SELECT node FROM leases WHERE name = 'timers'")
    return rows[0][0] if rows else None


def test_the_killed_leaders_pending_study_timer_fires_on_another_node(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
):
    url = postgres.new_database()
    data_dir = tmp_path / "shared"
    logs = {node: tmp_path / f"{node}.studies" for node in ("first", "second")}
    options: dict[str, Any] = {"journal": url, "journal_lease": 1.5, "study_timeout": 8.0}
    first = ServerProcess(data_dir, study_log=logs["first"], node_id="first", **options)
    try:
        assert wait_until(lambda: leader(postgres, url) == "first")
        with ServerProcess(data_dir, study_log=logs["second"], node_id="second", **options) as s:
            study = pydicom.uid.generate_uid()
            datasets = [make_dataset(study_uid=study, instance_number=i) for i in range(3)]
            files = [write_file(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(datasets)]
            assert statuses(send(first.port, files[:2])) == [0, 0]
            assert statuses(send(s.port, files[2:])) == [0]
            # The leader dies before its timer runs out (8 s of quiet).
            first.kill()
            assert log_lines(logs["first"]) == []
            # Its lease expires; the second node takes the timers and fires the study, once,
            # with the instances of both nodes.
            assert wait_until(lambda: log_lines(logs["second"]), timeout=TIMEOUT)
            assert log_lines(logs["second"]) == [f"{study} 0 3"]
            assert leader(postgres, url) == "second"
    finally:
        first.kill()


def test_a_killed_nodes_undelivered_instances_are_delivered_by_another_node(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
):
    url = postgres.new_database()
    data_dir = tmp_path / "shared"
    logs = {node: tmp_path / f"{node}.calls" for node in ("stuck", "live")}
    options: dict[str, Any] = {"journal": url, "journal_lease": 1.5}
    # Its callbacks never return: what it acknowledges stays undelivered.
    stuck = ServerProcess(
        data_dir, callback_log=logs["stuck"], callback_delay=3600, node_id="stuck", **options
    )
    try:
        with ServerProcess(data_dir, callback_log=logs["live"], node_id="live", **options):
            datasets = [make_dataset(instance_number=i) for i in range(5)]
            files = [write_file(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(datasets)]
            assert statuses(send(stuck.port, files)) == [0] * 5
            stuck.kill()
            assert log_lines(logs["stuck"]) == []
            sent = {ds.SOPInstanceUID for ds in datasets}
            # Once its lease expired, the live node claims the rows and runs its callbacks
            # on them (reading the held versions under the shared data_dir).
            assert wait_until(lambda: set(log_lines(logs["live"])) == sent)
            assert wait_until(
                lambda: (
                    {e.state for e in delivery.instances(data_dir, journal=url)} == {"delivered"}
                )
            )
            nodes = one(postgres, url, "SELECT DISTINCT node FROM instances")
            assert nodes == [["live"]]
            assert list((data_dir / ".journal" / "held" / "stuck").iterdir()) == []
    finally:
        stuck.kill()


def test_stores_fail_while_postgres_is_down_and_succeed_once_it_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # Its own server: this test stops it.
    require_postgres()
    database = Postgres()
    try:
        database.start()
        url = database.new_database()
        data_dir = tmp_path / "data"
        calls = Events()
        server = StoreSCPServer(NODE, data_dir, journal=url, callbacks=[calls])
        server.run(block=False)
        files = [
            write_file(make_dataset(instance_number=i), tmp_path / f"{i}.dcm") for i in range(3)
        ]
        try:
            assert statuses(send(server._bound_port, files[:1])) == [0]
            database.stop()
            with caplog.at_level(logging.WARNING, logger="dicom_inlet"):
                refused = send(server._bound_port, files[1:2])
            assert [s.Status for s in refused] == [0xA700]
            assert "journal" in refused[0].ErrorComment
            assert any(
                r.levelno == logging.WARNING and "journal" in r.getMessage() for r in caplog.records
            )
            database.start()
            assert statuses(send(server._bound_port, files[2:])) == [0]
            # Journaled: exactly the acknowledged ones; delivered: the same.
            told_stored = {pydicom.dcmread(f).SOPInstanceUID for f in (files[0], files[2])}
            delivered = {calls.next().SOPInstanceUID for _ in told_stored}
            assert delivered == told_stored
            journaled = {e.sop_instance_uid for e in delivery.instances(data_dir, journal=url)}
            assert journaled == told_stored
            # On disk: the acknowledged ones as sent. (The refused one's complete file may
            # stand too, placed before its row failed: its sender retries and replaces it.)
            on_disk = {
                pydicom.dcmread(data_dir / p).SOPInstanceUID: p for p in stored_files(data_dir)
            }
            assert told_stored <= set(on_disk)
            for path in (files[0], files[2]):
                uid = pydicom.dcmread(path).SOPInstanceUID
                assert dataset_bytes(data_dir / on_disk[uid]) == dataset_bytes(path)
        finally:
            server.shutdown()
    finally:
        database.close()


def test_a_bad_journal_url_is_told_in_one_line(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
):
    missing = postgres.url("no_such_database")
    cases = {
        "mysql://somewhere/db": "a postgresql:// URL, got 'mysql://somewhere/db'",
        "postgresql://127.0.0.1:1/x": "cannot reach the journal postgresql://127.0.0.1:1/x",
        missing: 'database "no_such_database" does not exist',
        "postgresql://[bad": "invalid journal URL",
    }
    for url, said in cases.items():
        node = ServeProcess([str(tmp_path / "d"), "--port", "0", "--journal", url], cwd=tmp_path)
        assert node.proc.wait(TIMEOUT) != 0
        node.reader.join(TIMEOUT)
        lines = [line for line in node.text().splitlines() if line.strip()]
        assert len(lines) == 1 and said in lines[0], node.text()


def test_a_failing_study_event_is_parked_in_postgres_listed_and_replayed_on_a_running_node(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    url = postgres.new_database()
    data_dir = tmp_path / "shared"
    failing = pydicom.uid.generate_uid()
    calls: queue.Queue[str] = queue.Queue()
    healthy = {"yes": False}

    def on_study(event: delivery.Completion) -> None:
        calls.put(event.uid)
        if event.uid == failing and not healthy["yes"]:
            raise RuntimeError("the PACS forward refused")

    options: dict[str, Any] = {
        "journal": url,
        "journal_lease": 1.0,
        "study_timeout": 0.2,
        "study_callbacks": [on_study],
        "callback_retries": 2,
        "retry_backoff": 0.01,
    }

    def study(uid: str, name: str) -> list[Path]:
        return [
            write_file(make_dataset(study_uid=uid, instance_number=i), tmp_path / f"{name}{i}")
            for i in range(2)
        ]

    def event_counts() -> dict[str, int]:
        return {s.study_instance_uid: s.events for s in delivery.studies(data_dir, url)}

    node = StoreSCPServer(NODE, data_dir, node_id="n0", **options)
    node.run(block=False)
    try:
        assert statuses(send(node._bound_port, study(failing, "a"))) == [0, 0]
        assert [calls.get(timeout=TIMEOUT) for _ in range(3)] == [failing] * 3
        assert wait_until(node.parked_events)
        [parked] = node.parked_events()
        assert (parked.uid, parked.attempts) == (failing, 3)
        assert "RuntimeError: the PACS forward refused" in (parked.error or "")
    finally:
        node.shutdown()
    parked_row = f"SELECT changed, attempts FROM groups WHERE uid = '{failing}'"
    assert one(postgres, url, parked_row) == [["2", "3"]]
    assert main(["status", str(data_dir), "--failed", "--journal", url]) == 0
    out = capsys.readouterr().out.splitlines()
    [line] = [line for line in out if failing in line]
    assert line.split()[:3] == ["study", failing, "3"]
    assert out[-1] == "1 parked events"

    # Restarted, the node fires a newer study first (the timers go by last arrival): the
    # parked one does not fire; replayed on the running node, it fires once more.
    node = StoreSCPServer(NODE, data_dir, node_id="n0", **options)
    node.run(block=False)
    try:
        other = pydicom.uid.generate_uid()
        assert statuses(send(node._bound_port, study(other, "b"))) == [0, 0]
        assert calls.get(timeout=TIMEOUT) == other
        assert calls.empty()
        healthy["yes"] = True
        assert node.replay(study=failing) == 1
        assert calls.get(timeout=TIMEOUT) == failing
        assert wait_until(lambda: not node.parked_events())
        assert wait_until(lambda: event_counts() == {failing: 1, other: 1})
    finally:
        node.shutdown()
    assert calls.empty()


def test_a_version_1_postgres_journal_migrates_when_a_node_opens_it(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
):
    url = postgres.new_database()
    data_dir = tmp_path / "shared"
    node = StoreSCPServer(NODE, data_dir, journal=url, node_id="n0")
    node.run(block=False)
    node.shutdown()
    # Back to what version 1 created (its groups without the parked columns).
    postgres.psql(
        url.rsplit("/", 1)[1],
        "ALTER TABLE groups DROP COLUMN attempts, DROP COLUMN error, DROP COLUMN failed;"
        "DROP INDEX groups_due;"
        "CREATE INDEX groups_changed ON groups (last_received) WHERE changed = 1;"
        "UPDATE journal_schema SET version = 1;",
    )
    assert one(postgres, url, "SELECT version FROM journal_schema") == [["1"]]
    node = StoreSCPServer(NODE, data_dir, journal=url, node_id="n0")
    node.run(block=False)
    try:
        assert node.parked_events() == []
    finally:
        node.shutdown()
    assert one(postgres, url, "SELECT version FROM journal_schema") == [["2"]]
    indexes = one(postgres, url, "SELECT indexname FROM pg_indexes WHERE tablename = 'groups'")
    assert sorted(i for [i] in indexes) == ["groups_due", "groups_parked", "groups_pkey"]
