"""Stopping ``dicom-inlet serve``: what Ctrl-C waits for, a second Ctrl-C cutting it short,
the final summary; and ``--quiet`` still showing warnings. Real subprocesses and signals."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
from pathlib import Path

from conftest import (
    CT_IMAGE_STORAGE,
    HOST,
    TIMEOUT,
    associate,
    echo,
    make_dataset,
    send,
    statuses,
    wait_until,
    write_file,
)
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from test_cli import LISTENING, ServeProcess


def test_ctrl_c_says_what_it_waits_for_and_a_second_one_aborts(tmp_path: Path):
    # A grace far longer than the test's timeout: only the second Ctrl-C can end it in time.
    server = ServeProcess(
        [str(tmp_path / "data"), "--port", "0", "--host", HOST, "--shutdown-timeout", "3600"],
        cwd=tmp_path,
    )
    try:
        port = int(server.wait_for(LISTENING).group(2))
        contexts = [(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])]
        with associate(port, contexts) as held:
            path = write_file(make_dataset(), tmp_path / "one.dcm")
            assert held.send_c_store(path).Status == 0x0000

            server.proc.send_signal(signal.SIGINT)
            server.wait_for(
                r"stopping: waiting up to 3600 s for 1 open association to finish; "
                r"Ctrl-C again aborts them"
            )
            server.proc.send_signal(signal.SIGINT)
            server.wait_for("aborting the open associations now")
            summary = server.wait_for(r"stopped after [\d.]+ s: (.*)")
            assert summary.group(1).startswith("1 instance stored, 0 failed, "), summary.string
            assert server.proc.wait(TIMEOUT) == 0, server.text()
            assert wait_until(lambda: held.is_aborted), "the held association was aborted"
    finally:
        server.kill()
    assert "Traceback" not in server.text()


def test_ctrl_c_with_nothing_open_stops_at_once_with_a_summary(tmp_path: Path):
    server = ServeProcess([str(tmp_path / "data"), "--port", "0", "--host", HOST], cwd=tmp_path)
    try:
        server.wait_for(LISTENING)
        server.proc.send_signal(signal.SIGINT)
        server.wait_for("stopping: no open associations")
        server.wait_for(r"stopped after [\d.]+ s: 0 instances stored, 0 failed, 0 bytes")
        assert server.proc.wait(TIMEOUT) == 0, server.text()
    finally:
        server.kill()


def test_a_stop_signal_the_kernel_gives_another_thread_still_stops_the_server(tmp_path: Path):
    # POSIX lets the kernel give a process's signal to any thread not blocking it; send it
    # to one of the core's threads, as the kernel may, and the main thread must still wake.
    server = ServeProcess([str(tmp_path / "data"), "--port", "0", "--host", HOST], cwd=tmp_path)
    try:
        server.wait_for(LISTENING)
        pid = server.proc.pid
        tasks = Path(f"/proc/{pid}/task")
        [tid, *_] = [t for t in (int(t.name) for t in tasks.iterdir()) if t != pid]
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.tgkill(pid, tid, signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
        server.wait_for("stopping: no open associations")
        assert server.proc.wait(TIMEOUT) == 0, server.text()
    finally:
        server.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def test_quiet_still_shows_warnings(tmp_path: Path):
    port = free_port()
    server = ServeProcess(
        [str(tmp_path / "data"), "--port", str(port), "--host", HOST, "--quiet"], cwd=tmp_path
    )
    try:
        # --quiet prints no "listening" line to wait on.
        assert wait_until(lambda: echo(port) == 0x0000), server.text()
        bad = write_file(
            make_dataset(), tmp_path / "bad.dcm", media_sop_instance_uid=generate_uid()
        )
        assert statuses(send(port, [bad])) == [0xA900]
        failure = server.wait_for(r"WARNING C-STORE from .* refused: 0xA900").string
        assert "SOP Instance UID: data set" in failure
        server.wait_for(r"WARNING association .* 0 instances, 1 failed")
        assert server.interrupt() == 0, server.text()
    finally:
        server.kill()
    assert " INFO " not in server.text()
