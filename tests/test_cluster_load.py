"""The cluster under load and failures: 3 nodes behind HAProxy, 8 senders, kill -9, a rolling
restart and a broker restart; nothing acknowledged is lost on disk, in the journal or on the
broker.

Three ``dicom-inlet serve`` nodes share one data_dir behind Debian's HAProxy (``mode tcp``,
``GET /readyz`` health checks) and publish their events to Debian's RabbitMQ. Eight senders
(four DCMTK ``storescu``, four of our SCU) send 200 small instances each, one study per
sender, in batches of one association. Senders pass gates between batches, so traffic runs
before, between and after each failure: ``kill -9`` of one node, then a rolling restart
(SIGTERM, drain, start) of the other two, then a restart of RabbitMQ. A sender resends only
the instances that did not get a success status, so each acknowledged one is sent, stored and
journaled exactly once.

With the PostgreSQL journal (``--journal URL``), study state is global and one node at a time
fires study events: a study spread over the nodes gets exactly one first event, and a
revision only for instances that came after it. With the SQLite journal each node's timers
fire, so there only "at least one" holds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, TIMEOUT, dataset_bytes, dcmtk_tool, make_dataset, wait_until, write_file
from services import RabbitMQ, postgres, rabbitmq
from test_haproxy import HAProxy, Node, haproxy

from dicom_inlet import delivery, scu

pika = pytest.importorskip("pika")

__all__ = ["postgres", "rabbitmq"]  # fixtures, used by name

SENDERS = 8
INSTANCES = 200
BATCH = 20
#: A sender waits at these batch numbers for the failure before it to be done.
GATES = (3, 5, 7)
STUDY_TIMEOUT = 3.0


def _pg_journal() -> bool:
    """Whether this build has the PostgreSQL journal (``serve --journal URL``)."""
    result = subprocess.run(
        [sys.executable, "-m", "dicom_inlet", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return re.search(r"\s--journal\s+URL", result.stdout) is not None


class Sender(threading.Thread):
    """Sends one study of INSTANCES instances in batches, each batch on one association
    through HAProxy; an instance without a success status is sent again (only it)."""

    def __init__(self, index: int, port: int, directory: Path, gates: list[threading.Event]):
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index = index
        self.port = port
        self.gates = gates
        self.aet = f"SENDER{index}"
        self.reached = [threading.Event() for _ in GATES]
        self.acknowledged: dict[str, bytes] = {}
        self.attempts = 0
        self.error: BaseException | None = None
        study = make_dataset().StudyInstanceUID
        self.study = str(study)
        series = make_dataset().SeriesInstanceUID
        self.batches: list[dict[str, Path]] = []
        for number in range(INSTANCES // BATCH):
            folder = directory / f"s{index}" / f"b{number}"
            batch = {}
            for i in range(BATCH):
                # Explicit lengths: storescu re-encodes undefined-length sequences.
                ds = make_dataset(
                    rows=8,
                    columns=8,
                    study_uid=study,
                    series_uid=series,
                    instance_number=number * BATCH + i + 1,
                    undefined_length_sequences=False,
                )
                batch[str(ds.SOPInstanceUID)] = write_file(ds, folder / f"{ds.SOPInstanceUID}.dcm")
            self.batches.append(batch)

    def attempt(self, files: dict[str, Path]) -> set[str]:
        raise NotImplementedError

    def run(self) -> None:
        try:
            for number, batch in enumerate(self.batches):
                if number in GATES:
                    gate = GATES.index(number)
                    self.reached[gate].set()
                    assert self.gates[gate].wait(TIMEOUT * 8), f"gate {gate} never opened"
                left = dict(batch)
                while left:
                    self.attempts += 1
                    assert self.attempts < 10 * len(self.batches), "too many failed attempts"
                    for uid in self.attempt(left):
                        self.acknowledged[uid] = dataset_bytes(left.pop(uid))
        except BaseException as error:
            self.error = error


class DcmtkSender(Sender):
    SENT = re.compile(r"Sending file: (\S+)")

    def attempt(self, files: dict[str, Path]) -> set[str]:
        storescu = [dcmtk_tool("storescu"), "-v", "-aet", self.aet, "-aec", "INLET"]
        result = subprocess.run(
            [*storescu, HOST, str(self.port), *map(str, files.values())],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 4,
        )
        # Each "Sending file" is followed by its response line when one came back.
        done, current = set(), None
        by_path = {str(p): uid for uid, p in files.items()}
        for line in (result.stdout + result.stderr).splitlines():
            if sent := self.SENT.search(line):
                current = by_path.get(sent.group(1))
            elif "Received Store Response (Success)" in line and current is not None:
                done.add(current)
                current = None
        return done


class InletSender(Sender):
    def attempt(self, files: dict[str, Path]) -> set[str]:
        try:
            result = scu.send(
                HOST, self.port, list(files.values()), called_aet="INLET", calling_aet=self.aet
            )
        except OSError:
            return set()
        return {r.sop_instance_uid for r in result.results if r.ok and r.sop_instance_uid}


def terminate(node: Node) -> int:
    """SIGTERM; a node that does not stop in time dumps its threads' stacks (SIGABRT with
    PYTHONFAULTHANDLER set) into its log before the test fails."""
    assert node.process is not None
    try:
        return node.terminate()
    except subprocess.TimeoutExpired:
        node.process.proc.send_signal(signal.SIGABRT)
        node.process.proc.wait(TIMEOUT)
        node.process.reader.join(TIMEOUT)
        pytest.fail(f"{node.name} did not stop:\n{node.process.text()}")


def _events(server: RabbitMQ, queue: str) -> list[dict[str, Any]]:
    """Every message in ``queue``, acknowledged (confirmed ones are there already)."""
    connection = pika.BlockingConnection(pika.URLParameters(server.url))
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(json.loads(body))
    finally:
        connection.close()


def test_cluster_of_three_survives_kill_rolling_restart_and_broker_restart(
    rabbitmq: RabbitMQ, tmp_path: Path, request: pytest.FixtureRequest
):
    haproxy()
    os.environ["PYTHONFAULTHANDLER"] = "1"
    exchange = f"cluster-{uuid.uuid4().hex[:8]}"
    queue = f"{exchange}-all"
    rabbitmq.declare(exchange, queue)

    data_dir = tmp_path / "shared"
    extra = ["--events", rabbitmq.url, "--events-exchange", exchange]
    extra += ["--study-timeout", str(STUDY_TIMEOUT)]
    journal_url = None
    if _pg_journal():
        postgres = request.getfixturevalue("postgres")
        journal_url = postgres.new_database()
        extra += ["--journal", journal_url, "--journal-lease", "3"]
    nodes = [Node(i, data_dir, tmp_path, extra) for i in range(3)]
    balancer: HAProxy | None = None
    gates = [threading.Event() for _ in GATES]
    senders: list[Sender] = []
    try:
        balancer = HAProxy.in_front_of(nodes, tmp_path)
        senders = [
            (DcmtkSender if i % 2 == 0 else InletSender)(i, balancer.port, tmp_path / "src", gates)
            for i in range(SENDERS)
        ]
        for sender in senders:
            sender.start()

        def all_reached(gate: int) -> None:
            for sender in senders:
                assert sender.reached[gate].wait(TIMEOUT * 8), f"{sender.name} at gate {gate}"

        # 1. kill -9 a node while the senders send.
        all_reached(0)
        gates[0].set()
        nodes[0].kill()
        balancer.wait_state(nodes[0].name, "DOWN")
        # 2. A rolling restart of the others, traffic continuing.
        all_reached(1)
        gates[1].set()
        for node in nodes[1:]:
            assert terminate(node) == 0, node.process.text() if node.process else ""
            node.start()
            balancer.wait_state(node.name, "UP")
        # 3. The broker restarts.
        all_reached(2)
        gates[2].set()
        rabbitmq.stop()
        rabbitmq.start()
        for sender in senders:
            sender.join(TIMEOUT * 8)
            assert not sender.is_alive()
            assert sender.error is None, repr(sender.error)

        acknowledged = {uid: data for s in senders for uid, data in s.acknowledged.items()}
        assert len(acknowledged) == SENDERS * INSTANCES
        study_of = {uid: s.study for s in senders for uid in s.acknowledged}

        # Every journal row delivered (confirmed by the broker), none parked.
        def settled() -> bool:
            rows = delivery.instances(data_dir, **({"journal": journal_url} if journal_url else {}))
            return all(r.state == "delivered" for r in rows) and len(rows) >= len(acknowledged)

        assert wait_until(settled, TIMEOUT * 4), "\n".join(
            f"{node.name}:\n{node.process.text()[-4000:]}" for node in nodes if node.process
        )
        # The last study events: each study's newest lists all of it.
        events: list[dict[str, Any]] = []

        def studies_complete() -> bool:
            events.extend(_events(rabbitmq, queue))
            newest: dict[str, set[str]] = {}
            for body in events:
                if body["event"] == "study":
                    listed = {i["sop_instance_uid"] for s in body["series"] for i in s["instances"]}
                    uid = body["study_instance_uid"]
                    if len(listed) >= len(newest.get(uid, ())):
                        newest[uid] = listed
            return all(newest.get(s.study, set()) >= set(s.acknowledged) for s in senders)

        assert wait_until(studies_complete, TIMEOUT * 2)
    finally:
        for gate in gates:
            gate.set()
        if balancer is not None:
            balancer.stop()
        for node in nodes:
            node.kill()

    # On disk once, byte for byte.
    files = [p for p in data_dir.rglob("*.dcm") if not {".incoming", ".journal"} & set(p.parts)]
    stored = Counter(p.stem for p in files)
    assert {uid: stored[uid] for uid in acknowledged} == dict.fromkeys(acknowledged, 1)
    paths = {p.stem: p for p in files}
    for uid, data in acknowledged.items():
        assert dataset_bytes(paths[uid]) == data, uid
    # In the journal once.
    rows = delivery.instances(data_dir, **({"journal": journal_url} if journal_url else {}))
    journaled = Counter(r.sop_instance_uid for r in rows)
    assert {uid: journaled[uid] for uid in acknowledged} == dict.fromkeys(acknowledged, 1)
    # Every acknowledged instance's event confirmed at least once, from the node it reached.
    instance_events = [b for b in events if b["event"] == "instance"]
    assert set(acknowledged) <= {b["sop_instance_uid"] for b in instance_events}
    nodes_of: dict[str, set[str]] = {}
    for body in instance_events:
        assert study_of.get(body["sop_instance_uid"]) == body["study_instance_uid"]
        nodes_of.setdefault(body["study_instance_uid"], set()).add(body["node"])
    # Round robin spread every study over at least two nodes.
    assert all(len(nodes_of[s.study]) >= 2 for s in senders), nodes_of
    # Study events. Each study's newest lists all of it (waited for above). With the
    # PostgreSQL journal one node at a time fires them: revisions 0, 1, 2... each listing
    # more than the one before (late instances only). An event the broker had not confirmed
    # when its node went away (kill, restart) comes again from the next leader with the same
    # revision (never delivered, it was not counted) and lists what arrived meanwhile too: a
    # revision may repeat, never listing fewer than before nor more than the next. With
    # SQLite every node's timers fire, so one study may get the same revision from several
    # nodes.
    by_study: dict[str, dict[int, set[int]]] = {}
    for body in events:
        if body["event"] == "study":
            revisions = by_study.setdefault(body["study_instance_uid"], {})
            revisions.setdefault(body["revision"], set()).add(body["instance_count"])
    assert set(by_study) == {s.study for s in senders}
    if journal_url is not None:
        for study, counts in by_study.items():
            assert sorted(counts) == list(range(len(counts))), (study, counts)
            for revision in range(len(counts) - 1):
                later = counts[revision + 1]
                assert max(counts[revision]) < min(later), (study, counts)
