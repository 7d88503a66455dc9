"""The README's Python example, run as written (bar the port and address): it logs, keeps
serving, hands each stored instance to its callback, and stops on Ctrl-C."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import HOST, TIMEOUT, make_dataset, send, statuses, write_file
from test_cli import LISTENING, ServeProcess

README = Path(__file__).resolve().parents[1] / "README.md"


def server_example() -> str:
    section = README.read_text().split("## Use it from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


class ExampleProcess(ServeProcess):
    """A Python script instead of ``dicom-inlet serve``, its stdout and stderr as one."""

    def __init__(self, script: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", script],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.proc.stderr = self.proc.stdout  # what ServeProcess reads
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, name="example-output", daemon=True)
        self.reader.start()


def test_readme_python_example_serves_until_ctrl_c(tmp_path: Path):
    script = server_example()
    assert "logging.basicConfig" in script and "run(block=True)" in script
    assert '"ip": "0.0.0.0"' in script and '"port": 11112' in script
    script = script.replace('"ip": "0.0.0.0"', f'"ip": "{HOST}"').replace(
        '"port": 11112', '"port": 0'
    )
    example = ExampleProcess(script, cwd=tmp_path)
    try:
        port = int(example.wait_for(LISTENING).group(2))
        ds = make_dataset()
        path = write_file(ds, tmp_path / "src" / "one.dcm")
        assert statuses(send(port, [path])) == [0x0000]
        stored = example.wait_for(r"^stored (\S+) (\S+)$")
        assert stored.group(2) == ds.SOPInstanceUID
        assert Path(stored.group(1)).is_relative_to(tmp_path / "dicom-data")
        example.proc.send_signal(signal.SIGINT)
        example.wait_for(r"INFO stopped after .* 1 instance stored")
        assert example.proc.wait(TIMEOUT) == 0, example.text()
    finally:
        example.kill()
