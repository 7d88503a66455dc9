"""Events to RabbitMQ and nodes behind HAProxy: what a cluster's parts cost, measured here.

``python benches/cluster.py [--instances N] [--runs R]`` starts Debian's RabbitMQ (as the
tests do, tests/services.py) and reports, as medians of the runs:

1. pika alone: persistent publishes with publisher confirms on one channel, one at a time
   (as the sink publishes), messages of an instance event's size: the client's ceiling.
2. One ``dicom-inlet serve`` node with ``--events``, N small instances sent over 4
   associations straight to it: instances/s from the first C-STORE until the last journal
   row was confirmed by the broker, with and without ``--events``.
3. 1 vs 3 nodes (``--events``, one data_dir) behind HAProxy (``mode tcp``): the same, with
   the nodes' CPU seconds per instance (from /proc). On a 2-core machine 3 nodes share the
   cores the single node had: the aggregate does not scale here, CPU per instance says what
   more machines would give.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pika  # type: ignore[import-untyped]
from conftest import make_dataset, write_file
from services import RabbitMQ
from test_haproxy import HAProxy, Node

from dicom_inlet import _core, scu

HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pika_rate(broker: RabbitMQ, count: int) -> float:
    """Confirmed persistent publishes per second, one at a time, ~600-byte bodies."""
    exchange = f"bench-{uuid.uuid4().hex[:8]}"
    broker.declare(exchange, exchange)
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.confirm_delivery()
    body = json.dumps({"sop_instance_uid": "1.2.3" * 20, "path": "x" * 300}).encode()
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    start = time.perf_counter()
    for _ in range(count):
        channel.basic_publish(exchange, "instance.A.CT", body, properties, mandatory=True)
    elapsed = time.perf_counter() - start
    channel.queue_delete(exchange)
    channel.exchange_delete(exchange)
    connection.close()
    return count / elapsed


def corpus(directory: Path, count: int) -> list[Path]:
    study = make_dataset().StudyInstanceUID
    files = []
    for i in range(count):
        ds = make_dataset(rows=16, columns=16, study_uid=study, instance_number=i + 1)
        files.append(write_file(ds, directory / f"{i}.dcm"))
    return files


def wait_confirmed(data_dir: Path, count: int, timeout: float = 600) -> None:
    """Until the journal has ``count`` rows and none waits for delivery."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            journal = _core.Journal(data_dir)
            waiting, _ = journal.backlog()
            if waiting == 0 and len(journal.instances()) >= count:
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{data_dir}: not all {count} rows confirmed in {timeout} s")


def run_nodes(
    work: Path, files: list[Path], nodes: int, broker: RabbitMQ | None, balanced: bool
) -> tuple[float, float]:
    """(instances/s until all confirmed, node CPU ms per instance)."""
    data_dir = work / f"data-{uuid.uuid4().hex[:6]}"
    extra: list[str] = []
    if broker is not None:
        exchange = f"bench-{uuid.uuid4().hex[:6]}"
        extra += ["--events", broker.url, "--events-exchange", exchange]
        # A queue for the events: unroutable ones would wait (mandatory), and the run with them.
        broker.declare(exchange, exchange)
    started = [Node(i, data_dir, work, extra) for i in range(nodes)]
    balancer = None
    try:
        for node in started:
            node.start()
        port = started[0].port
        if balanced:
            balancer = HAProxy(started, work)
            for node in started:
                balancer.wait_state(node.name, "UP")
            port = balancer.port
        pids = [n.process.proc.pid for n in started if n.process is not None]
        cpu = sum(cpu_seconds(p) for p in pids)
        start = time.perf_counter()
        result = scu.send(HOST, port, files, called_aet="INLET", associations=4)
        assert all(r.ok for r in result.results)
        if broker is not None:
            wait_confirmed(data_dir, len(files))
        elapsed = time.perf_counter() - start
        cpu = sum(cpu_seconds(p) for p in pids) - cpu
    finally:
        if balancer is not None:
            balancer.stop()
        for node in started:
            node.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    return len(files) / elapsed, cpu * 1000 / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="inlet-cluster-bench-", dir="/dev/shm"))
    broker = RabbitMQ()
    try:
        broker.start()
        files = corpus(work / "src", args.instances)
        print(f"{args.instances} instances of ~{files[0].stat().st_size} bytes, {args.runs} runs")
        rates = [pika_rate(broker, args.instances) for _ in range(args.runs)]
        print(f"pika publish+confirm, one at a time: {statistics.median(rates):,.0f} msg/s")
        cases = [
            ("1 node, no events", 1, None, False),
            ("1 node, --events", 1, broker, False),
            ("1 node behind HAProxy, --events", 1, broker, True),
            ("3 nodes behind HAProxy, --events", 3, broker, True),
        ]
        for name, nodes, events, balanced in cases:
            runs = [run_nodes(work, files, nodes, events, balanced) for _ in range(args.runs)]
            rate = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            what = "stored" if events is None else "confirmed"
            print(f"{name}: {rate:,.0f} instances/s {what}, {cpu:.2f} ms node CPU/instance")
    finally:
        broker.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
