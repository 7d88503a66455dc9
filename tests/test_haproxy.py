"""A rolling restart behind HAProxy loses nothing and refuses nothing.

Three ``dicom-inlet serve`` nodes on one data_dir behind Debian's HAProxy (``mode tcp``,
health checks ``GET /readyz`` on each node's metrics port), DCMTK ``storescu`` and our SCU
sending through it while each node in turn gets SIGTERM and is started again. SIGTERM makes
``/readyz`` fail at once and the node keeps accepting for ``--drain-delay`` seconds, far
longer than HAProxy takes to mark it down (``inter`` x ``fall``), so HAProxy stops sending it
new connections before it stops listening; a connection refused anyway would be retried on
another node (``retries``, ``option redispatch``) before any byte reached the sender.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import HOST, TIMEOUT, dataset_bytes, dcmtk_tool, make_dataset, wait_until, write_file
from test_cli import LISTENING, ServeProcess
from test_shutdown import free_port

from dicom_inlet import scu

NODES = 3
BATCH = 4
#: Batches each sender completes after the rolling restart, so traffic spans all of it.
AFTER = 2
DRAIN_DELAY = 2.0


def haproxy() -> str:
    path = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/sbin/haproxy") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = "HAProxy is needed for the load balancer test (Debian package haproxy)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class Node:
    """One ``dicom-inlet serve`` process on fixed ports, so it can be started again."""

    def __init__(self, index: int, data_dir: Path, cwd: Path, extra: Sequence[str] = ()) -> None:
        self.name = f"n{index}"
        self.extra = list(extra)
        self.port = free_port()
        self.metrics_port = free_port()
        self.data_dir = data_dir
        self.cwd = cwd
        self.process: ServeProcess | None = None

    def start(self) -> None:
        args = [str(self.data_dir), "--host", HOST, "--port", str(self.port)]
        args += ["--metrics-port", str(self.metrics_port), "--node-id", self.name]
        args += ["--drain-delay", str(DRAIN_DELAY), "--shutdown-timeout", "120", *self.extra]
        self.process = ServeProcess(args, cwd=self.cwd)
        self.process.wait_for(LISTENING)

    def terminate(self) -> int:
        assert self.process is not None
        return self.process.stop(signal.SIGTERM, TIMEOUT * 4)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


class HAProxy:
    def __init__(self, nodes: list[Node], directory: Path) -> None:
        self.port = free_port()
        self.socket = directory / "haproxy.sock"
        servers = "\n".join(
            f"    server {n.name} {HOST}:{n.port} check port {n.metrics_port}" for n in nodes
        )
        config = directory / "haproxy.cfg"
        config.write_text(f"""global
    stats socket {self.socket} level admin

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout check 2s
    retries 3
    option redispatch 1

frontend dicom
    bind {HOST}:{self.port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /readyz
    default-server inter 200ms fall 1 rise 1
{servers}
""")
        self.process = subprocess.Popen(
            [haproxy(), "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    @classmethod
    def in_front_of(cls, nodes: list[Node], tmp_path: Path) -> HAProxy:
        """Start ``nodes`` and a balancer over them; returned once it sees every node UP."""
        for node in nodes:
            node.start()
        balancer = cls(nodes, tmp_path)
        try:
            for node in nodes:
                balancer.wait_state(node.name, "UP")
        except BaseException:
            balancer.stop()
            raise
        return balancer

    def states(self) -> dict[str, str]:
        """Each server's status (UP, DOWN, ...) from the stats socket; {} before it answers."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(TIMEOUT)
                sock.connect(str(self.socket))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError:
            return {}
        rows = csv.DictReader(data.decode().lstrip("# ").splitlines())
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "nodes" and row["svname"] != "BACKEND"
        }

    def wait_state(self, name: str, status: str) -> None:
        assert wait_until(lambda: self.states().get(name, "").startswith(status), TIMEOUT), (
            self.states()
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(TIMEOUT)


class Sender(threading.Thread):
    """Sends batches of new instances through HAProxy, one association each, until told to
    stop; records what each acknowledged and every attempt that did not fully succeed."""

    def __init__(self, index: int, port: int, directory: Path, stop: threading.Event) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index = index
        self.port = port
        self.directory = directory
        self.stop = stop
        self.acknowledged: dict[str, bytes] = {}
        self.failed_attempts: list[str] = []
        self.batches_after_stop = 0
        self.error: BaseException | None = None

    def batch(self, number: int) -> dict[str, Path]:
        folder = self.directory / f"s{self.index}-b{number}"
        files = {}
        for i in range(BATCH):
            # Explicit lengths: storescu re-encodes undefined-length sequences.
            ds = make_dataset(
                rows=32, columns=32, instance_number=i + 1, undefined_length_sequences=False
            )
            files[ds.SOPInstanceUID] = write_file(ds, folder / f"{i}.dcm")
        return files

    def attempt(self, files: dict[str, Path]) -> set[str]:
        raise NotImplementedError

    def run(self) -> None:
        try:
            number = 0
            while self.batches_after_stop < AFTER:
                files = self.batch(number)
                number += 1
                for _ in range(5):
                    stored = self.attempt(files)
                    for uid in stored:
                        self.acknowledged[uid] = dataset_bytes(files[uid])
                    if stored == set(files):
                        break
                    self.failed_attempts.append(f"batch {number}: {len(stored)}/{len(files)}")
                if self.stop.is_set():
                    self.batches_after_stop += 1
        except BaseException as error:
            self.error = error


class DcmtkSender(Sender):
    def attempt(self, files: dict[str, Path]) -> set[str]:
        folder = next(iter(files.values())).parent
        storescu = [dcmtk_tool("storescu"), "-ll", "error", "-aec", "INLET", "+sd"]
        result = subprocess.run(
            [*storescu, HOST, str(self.port), str(folder)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 4,
        )
        # storescu exits 0 only when every C-STORE got a success status.
        return set(files) if result.returncode == 0 else set()


class InletSender(Sender):
    def attempt(self, files: dict[str, Path]) -> set[str]:
        try:
            result = scu.send(HOST, self.port, list(files.values()), called_aet="INLET")
        except OSError:
            return set()
        return {r.sop_instance_uid for r in result.results if r.ok and r.sop_instance_uid}


def test_rolling_restart_behind_haproxy_loses_and_refuses_nothing(tmp_path: Path):
    haproxy()
    data_dir = tmp_path / "shared"
    nodes = [Node(i, data_dir, tmp_path) for i in range(NODES)]
    balancer: HAProxy | None = None
    stop = threading.Event()
    senders: list[Sender] = []
    try:
        balancer = HAProxy.in_front_of(nodes, tmp_path)
        senders = [
            (DcmtkSender if i % 2 == 0 else InletSender)(i, balancer.port, tmp_path / "src", stop)
            for i in range(4)
        ]
        for sender in senders:
            sender.start()
        # Traffic on every sender before the first restart.
        assert wait_until(lambda: all(len(s.acknowledged) >= BATCH for s in senders))
        for node in nodes:
            before = sum(len(s.acknowledged) for s in senders)
            assert node.terminate() == 0, node.process.text() if node.process else ""
            assert node.process is not None
            text = node.process.text()
            assert "draining: /readyz fails" in text, text
            node.start()
            balancer.wait_state(node.name, "UP")
            # Instances keep flowing between restarts.
            assert wait_until(lambda b=before: sum(len(s.acknowledged) for s in senders) > b)
        stop.set()
        for sender in senders:
            sender.join(TIMEOUT * 4)
            assert not sender.is_alive()
            assert sender.error is None, repr(sender.error)
    finally:
        stop.set()
        if balancer is not None:
            balancer.stop()
        for node in nodes:
            node.kill()

    # Nothing refused: every attempt succeeded in full, through every restart.
    assert [s.failed_attempts for s in senders] == [[]] * len(senders)
    # Every acknowledged instance is on disk, byte for byte, once.
    stored = {p.stem: p for p in data_dir.rglob("*.dcm") if ".incoming" not in p.parts}
    acknowledged = {uid: data for s in senders for uid, data in s.acknowledged.items()}
    assert len(acknowledged) >= 4 * (NODES + AFTER) * BATCH
    assert set(acknowledged) <= set(stored)
    for uid, data in acknowledged.items():
        assert dataset_bytes(stored[uid]) == data, uid
