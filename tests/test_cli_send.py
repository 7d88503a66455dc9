"""The command line's sending side and its terminal output: ``dicom-inlet send`` / ``echo``
as real subprocesses, ``serve --config``, and the live lines on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import (
    CT_IMAGE_STORAGE,
    HOST,
    SCP_AET,
    TIMEOUT,
    dataset_bytes,
    image_layout,
    make_dataset,
    patient_layout,
    stored_files,
    write_file,
)
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from test_cli import LISTENING, ServeProcess
from test_scu_files import (
    DEFLATED_FILE,
    assert_same_values,
    explicit_le_only_storescp,
    pydicom_file,
)

from dicom_inlet import InstanceResult, console, echo, send

CLI = [sys.executable, "-m", "dicom_inlet"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_send_summary_and_success(server: Any, data_dir: Path, tmp_path: Path):
    datasets = [make_dataset(instance_number=i) for i in range(5)]
    for i, ds in enumerate(datasets):
        write_file(ds, tmp_path / "study" / f"series{i % 2}" / f"{i}.dcm")
    result = run(
        "send", HOST, str(server.port), str(tmp_path / "study"),
        "--call", SCP_AET, "--aet", "CLI_SCU", "--associations", "2",
    )  # fmt: skip
    assert result.returncode == 0, result
    assert re.search(r"Stored 5 of 5 instances \(\d+\.\d MB\)", result.stdout), result.stdout
    assert f"{SCP_AET}@{HOST}:{server.port}" in result.stdout
    assert "failed" not in result.stdout
    assert stored_files(data_dir) == sorted(patient_layout(ds) for ds in datasets)


def test_send_lists_failed_instances_with_exit_code_1(server_factory: Any, tmp_path: Path):
    server = server_factory(max_instance_size=20_000)
    good = write_file(make_dataset(), tmp_path / "good.dcm")
    refused = write_file(make_dataset(rows=128, columns=128), tmp_path / "refused.dcm")
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    result = run("send", HOST, str(server.port), str(good), str(refused), str(junk), "-q")
    assert result.returncode == 1, result
    assert "Stored 1 of 3 instances" in result.stdout
    assert "2 failed:" in result.stdout
    listed = {line.split(": ")[0].strip(): line for line in result.stdout.splitlines()[2:]}
    assert set(listed) == {str(refused), str(junk)}
    assert "0xA700 refused: out of resources" in listed[str(refused)]
    assert "not a DICOM Part 10 file" in listed[str(junk)]
    assert result.stderr == ""


def test_echo_success(server: Any):
    result = run("echo", HOST, str(server.port), "--call", SCP_AET)
    assert result.returncode == 0, result
    assert f"C-ECHO {SCP_AET}@{HOST}:{server.port}: 0x0000 success" in result.stdout


def test_user_mistakes_are_one_line_errors(server_factory, tmp_path: Path):
    strict = server_factory(require_called_aet=True)
    one = write_file(make_dataset(), tmp_path / "one.dcm")
    assert_one_line_error(
        run("send", HOST, str(strict.port), str(one), "--call", "WRONG"),
        "association rejected (permanent)",
        "called AE title not recognized",
    )
    assert_one_line_error(run("echo", HOST, str(strict.port)), "called AE title not recognized")
    assert_one_line_error(run("echo", HOST, str(closed_port())), "cannot connect")
    assert_one_line_error(
        run("send", HOST, str(strict.port), str(tmp_path / "missing.dcm")),
        "no such file or directory",
        "missing.dcm",
    )
    assert_one_line_error(run("echo", HOST, "eleven"), "argument PORT", "'eleven'")
    assert_one_line_error(run("echo", HOST, "0"), "port must be 1 to 65535")
    assert_one_line_error(run("send", HOST, "104"), "PATH")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        run("send", HOST, str(strict.port), str(tmp_path / "empty")), "no files under", "empty"
    )
    assert_one_line_error(
        run("send", HOST, str(strict.port), str(one), "--async-window", "65"),
        "--async-window",
        "1 to 64",
    )
    assert_one_line_error(
        run("echo", HOST, str(strict.port), "--aet", "A_VERY_LONG_AE_TITLE"), "AE title"
    )


def test_serve_config_file_sets_every_option_and_the_command_line_wins(tmp_path: Path):
    config = tmp_path / "inlet.toml"
    config.write_text(
        "\n".join(
            [
                'data_dir = "from-config"',
                "port = 11",  # overridden below
                f'host = "{HOST}"',
                'aet = "CONFIGURED"',
                'sort_by = "image"',
                "require_called_aet = true",
                'calling-aet = ["CLI_SCU", "OTHER"]',
                "max_associations = 4",
                "max_pdu = 32768",
                "acse_timeout = 5",
                "network_timeout = 30.5",
                "shutdown_timeout = 2",
                "durable = true",
            ]
        )
    )
    server = ServeProcess(["--config", str(config), "--port", "0"], cwd=tmp_path)
    try:
        port = int(server.wait_for(LISTENING).group(2))
        assert port != 11, "--port on the command line wins over the file"
        ds = make_dataset()
        path = write_file(ds, tmp_path / "src" / "one.dcm")
        # require_called_aet and the calling AE list come from the file.
        with pytest.raises(ConnectionError, match="called AE title not recognized"):
            echo(HOST, port, called_aet="ANY-SCP", calling_aet="CLI_SCU")
        with pytest.raises(ConnectionError, match="calling AE title not recognized"):
            echo(HOST, port, called_aet="CONFIGURED", calling_aet="STRANGER")
        result = send(HOST, port, [path], called_aet="CONFIGURED", calling_aet="CLI_SCU")
        assert result.failed == 0
        assert server.interrupt() == 0, server.text()
    finally:
        server.kill()
    data_dir = tmp_path / "from-config"
    assert stored_files(data_dir) == [image_layout(ds)]
    assert dataset_bytes(data_dir / image_layout(ds)) == dataset_bytes(path)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("port = 70000", ["option 'port' in", "port must be 0 to 65535"]),
        ("colour = 'blue'", ["unknown option 'colour' in"]),
        ("max_associations = 'many'", ["option 'max_associations' in", "'many'"]),
        ("port = ", ["is not valid TOML"]),
    ],
)
def test_serve_bad_config_is_a_one_line_error(tmp_path: Path, content: str, words: list[str]):
    config = tmp_path / "inlet.toml"
    config.write_text(content + "\n")
    assert_one_line_error(run("serve", "--config", str(config)), str(config), *words)
    assert_one_line_error(run("serve", "--config", str(tmp_path / "none.toml")), "none.toml")


# ---------------------------------------------------------------------------------------------
# On a terminal


class Terminal:
    """A command whose stderr is a pseudo-terminal, read by a thread as it comes."""

    def __init__(self, *args: str, cwd: Path, columns: int | None = None) -> None:
        master, slave = pty.openpty()
        if columns is not None:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.proc = subprocess.Popen(
            [*CLI, *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        self.master = master
        self.output = ""
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO once the child has closed the terminal
                chunk = b""
            with self.changed:
                self.output += chunk.decode(errors="replace")
                self.changed.notify_all()
                if not chunk:
                    return

    def wait_for(self, pattern: str) -> re.Match[str]:
        with self.changed:
            found = self.changed.wait_for(lambda: re.search(pattern, self.output), TIMEOUT)
        assert found, f"no {pattern!r} in {self.output!r}"
        return found

    def finish(self) -> tuple[int, str]:
        stdout, _ = self.proc.communicate(timeout=TIMEOUT)
        self.reader.join(TIMEOUT)
        os.close(self.master)
        return self.proc.returncode, stdout


def test_send_progress_bar_on_a_terminal(server: Any, tmp_path: Path):
    for i in range(3):
        write_file(make_dataset(), tmp_path / "src" / f"{i}.dcm")
    terminal = Terminal("send", HOST, str(server.port), str(tmp_path / "src"), cwd=tmp_path)
    code, stdout = terminal.finish()
    assert code == 0, terminal.output
    # Drawn in place (carriage return, erase line), ending with every instance counted.
    assert re.search(
        r"\r\x1b\[K\[#+\] 3/3 instances, \d+\.\d MB, [\d.]+ MB/s, \d:\d\d elapsed",
        terminal.output,
    )
    assert terminal.output.endswith("\r\x1b[K"), "the bar is cleared for the summary"
    assert "Stored 3 of 3 instances" in stdout


def test_send_progress_bar_fits_a_narrow_terminal(server: Any, tmp_path: Path):
    for i in range(3):
        write_file(make_dataset(), tmp_path / "src" / f"{i}.dcm")
    terminal = Terminal(
        "send", HOST, str(server.port), str(tmp_path / "src"), cwd=tmp_path, columns=50
    )
    code, _ = terminal.finish()
    assert code == 0, terminal.output
    # A wrapped line would not be redrawn in place: each drawing is cut to the width.
    drawings = [d for d in terminal.output.split("\r\x1b[K") if d]
    assert drawings, terminal.output
    assert all(d.startswith("[#") and len(d) <= 49 for d in drawings), drawings


def test_serve_status_line_on_a_terminal(tmp_path: Path):
    terminal = Terminal("serve", "data", "--port", "0", "--host", HOST, cwd=tmp_path)
    port = int(terminal.wait_for(LISTENING.pattern).group(2))
    paths = [write_file(make_dataset(), tmp_path / "src" / f"{i}.dcm") for i in range(4)]
    assert send(HOST, port, paths).failed == 0
    terminal.wait_for(r"\r\x1b\[K0 associations open · 4 instances stored · [\d.]+ MB · ")
    # Log lines print above the status line, which is then drawn again.
    terminal.wait_for(r"association \S+ DICOM_INLET -> ANY-SCP: 4 instances.*\n")
    terminal.proc.send_signal(signal.SIGINT)
    code, _ = terminal.finish()
    assert code == 0, terminal.output
    assert "Traceback" not in terminal.output


# ---------------------------------------------------------------------------------------------
# Files as they come (issue 9)


def test_send_warns_about_a_file_meta_naming_another_instance(server: Any, tmp_path: Path):
    # pydicom's rtdose.dcm: its file meta names another SOP Instance UID than its data set.
    path = pydicom_file("rtdose.dcm", tmp_path)
    ds = pydicom.dcmread(path)
    result = run("send", HOST, str(server.port), str(path), "--call", SCP_AET)
    assert result.returncode == 0, result
    assert "Stored 1 of 1 instance (" in result.stdout
    [warning] = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert str(path) in warning
    assert ds.file_meta.MediaStorageSOPInstanceUID in warning
    assert ds.SOPInstanceUID in warning


def test_send_lists_unreadable_entries_and_sends_the_rest(server: Any, tmp_path: Path):
    tree = tmp_path / "tree"
    for i in range(2):
        write_file(make_dataset(instance_number=i), tree / f"{i}.dcm")
    (tree / "dangling.dcm").symlink_to(tree / "gone.dcm")
    os.mkfifo(tree / "fifo")
    result = run("send", HOST, str(server.port), str(tree), "-q")
    assert result.returncode == 1, result
    assert "Stored 2 of 4 instances" in result.stdout
    assert f"  {tree / 'dangling.dcm'}: a dangling symbolic link" in result.stdout
    assert f"  {tree / 'fifo'}: not a regular file (a FIFO" in result.stdout
    assert result.stderr == ""


def test_send_converts_big_endian_and_deflated_for_an_explicit_vr_only_dcmtk(tmp_path: Path):
    names = ["MR_small_bigendian.dcm", "rtdose_expb.dcm", DEFLATED_FILE]
    paths = [pydicom_file(name, tmp_path / "src") for name in names]
    with explicit_le_only_storescp(tmp_path) as peer:
        result = run("send", HOST, str(peer.port), *map(str, paths), "--call", SCP_AET)
    assert result.returncode == 0, result
    assert "Stored 3 of 3 instances" in result.stdout
    stored = {pydicom.dcmread(p).SOPInstanceUID: p for p in (tmp_path / "storescp").iterdir()}
    for path in paths:
        copy = stored[pydicom.dcmread(path).SOPInstanceUID]
        assert pydicom.dcmread(copy).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert_same_values(copy, path)


class StallingSCP:
    """A pynetdicom Storage SCP that holds its answer to the second C-STORE until released."""

    def __init__(self) -> None:
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.count = 0
        ae = AE(ae_title=SCP_AET)
        ae.add_supported_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
        self.ae = ae
        self.server = ae.start_server(
            (HOST, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )
        self.port = self.server.server_address[1]

    def on_store(self, event: Any) -> int:
        self.count += 1
        if self.count == 2:
            self.stalled.set()
            self.release.wait(TIMEOUT)
        return 0x0000

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.ae.shutdown()


def test_send_interrupted_prints_what_was_done(tmp_path: Path):
    for i in range(5):
        write_file(make_dataset(), tmp_path / "src" / f"{i}.dcm")
    scp = StallingSCP()
    try:
        proc = subprocess.Popen(
            [*CLI, "send", HOST, str(scp.port), str(tmp_path / "src"), "--call", SCP_AET, "-q"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert scp.stalled.wait(TIMEOUT), "the second instance never arrived"
        proc.send_signal(signal.SIGINT)
        # The notice comes at once, while the answer to the second instance is still awaited.
        assert proc.stderr is not None
        notice = proc.stderr.readline()
        assert notice == "Interrupted: waiting for the answers to the instances under way.\n"
        scp.release.set()
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        scp.close()
    assert proc.returncode == 130, (stdout, stderr)
    # The signal stops the taking of new files; one file may already be on its way when the
    # sender's thread sees it, so the summary must say how many were stored, whatever it is.
    assert scp.count in (2, 3)
    assert re.search(
        rf"^Interrupted: stored {scp.count} of 5 instances \(\d+\.\d MB\) at "
        rf"{SCP_AET}@{HOST}:{scp.port} in [\d.]+ s; {5 - scp.count} not sent\.$",
        stdout,
        re.MULTILINE,
    ), stdout
    assert "Traceback" not in stderr


def test_send_progress_shows_elapsed_time_and_time_left():
    moments = iter([100.0, 110.0, 120.0])
    stream = io.StringIO()
    progress = console.SendProgress(4, bar=True, stream=stream, monotonic=lambda: next(moments))
    ok = InstanceResult(None, None, None, None, 0x0000, None, 1_000_000)
    progress.update(ok)
    assert stream.getvalue().endswith(
        "[######..................] 1/4 instances, 1.0 MB, 0.1 MB/s, 0:10 elapsed, 0:30 left"
    )
    progress.update(InstanceResult(None, None, None, None, None, "gone", 0))
    assert stream.getvalue().endswith(
        "2/4 instances, 1.0 MB, 0.1 MB/s, 0:20 elapsed, 0:20 left, 1 failed"
    )
    assert console.clock(3725) == "1:02:05"
    assert console.instances(1) == "1 instance"
