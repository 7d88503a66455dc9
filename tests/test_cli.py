"""The command line: ``python -m dicom_inlet serve ...`` as a real subprocess."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    HOST,
    SCU_AET,
    TIMEOUT,
    dataset_bytes,
    image_layout,
    incoming_entries,
    make_dataset,
    patient_layout,
    send,
    statuses,
    stored_files,
    write_file,
)

LISTENING = re.compile(r"listening on (\S+):(\d+)")


class ServeProcess:
    """``python -m dicom_inlet serve ARGS`` with its stderr read line by line by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        # Faulthandler: a process that will not stop is told SIGABRT, and its threads show.
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_inlet", "serve", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, name="serve-stderr", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Consume stderr lines until one matches ``pattern``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no line matching {regex.pattern!r} in time:\n{self.text()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(
                    f"process exited ({self.proc.poll()}) before {regex.pattern!r}:\n{self.text()}"
                )
            match = regex.search(line)
            if match:
                return match

    def text(self) -> str:
        return "".join(self.output)

    def interrupt(self) -> int:
        return self.stop(signal.SIGINT, TIMEOUT)

    def stop(self, number: int, timeout: float) -> int:
        """Send signal `number`; the exit code once it ended, within `timeout` seconds, or
        a failure showing its output and where its Python threads were."""
        self.proc.send_signal(number)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(TIMEOUT)
            self.reader.join(TIMEOUT)
            pytest.fail(f"still running {timeout:g} s after signal {number}:\n{self.text()}")
        self.reader.join(TIMEOUT)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        process = ServeProcess(list(args), cwd=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def test_cli_serve_stores_and_stops_on_sigint(serve, tmp_path):
    data_dir = tmp_path / "cli-data"
    server = serve(str(data_dir), "--port", "0", "--host", HOST, "--aet", "TEST")
    listening = server.wait_for(LISTENING)
    assert listening.group(1) == HOST
    port = int(listening.group(2))
    assert port > 0

    datasets = [make_dataset(instance_number=i) for i in range(3)]
    paths = [write_file(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(datasets)]
    assert statuses(send(port, paths, called_aet="TEST")) == [0x0000] * 3

    summary = server.wait_for(r"\b3 instances\b").string
    assert HOST in summary
    assert SCU_AET in summary
    assert "TEST" in summary
    assert "byte" in summary.lower() or re.search(r"\d+(\.\d+)?\s*[kKMG]i?B", summary)

    assert server.interrupt() == 0, server.text()
    assert "Traceback" not in server.text()

    assert stored_files(data_dir) == sorted(patient_layout(ds) for ds in datasets)
    for ds, path in zip(datasets, paths, strict=True):
        assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(path)
    assert incoming_entries(data_dir) == []


def test_cli_sort_by_image(serve, tmp_path):
    data_dir = tmp_path / "flat"
    server = serve(str(data_dir), "--port", "0", "--host", HOST, "--sort-by", "image")
    port = int(server.wait_for(LISTENING).group(2))

    ds = make_dataset()
    path = write_file(ds, tmp_path / "src" / "one.dcm")
    assert statuses(send(port, [path])) == [0x0000]
    server.wait_for(r"\b1 instances?\b")

    assert server.interrupt() == 0, server.text()
    assert stored_files(data_dir) == [image_layout(ds)]
    assert dataset_bytes(data_dir / image_layout(ds)) == dataset_bytes(path)


def test_cli_rejects_unknown_sort_key(tmp_path):
    result = subprocess.run(
        [
            *[sys.executable, "-m", "dicom_inlet", "serve", str(tmp_path / "d")],
            *["--port", "0", "--host", HOST, "--sort-by", "bogus"],
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "sort-by" in result.stderr or "bogus" in result.stderr
