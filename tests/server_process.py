"""A StoreSCPServer in a child process, for tests that kill it, limit it, or measure it.

The child is this file run as a script: it starts the server on 127.0.0.1, port 0, prints
the bound port, and serves until its stdin closes. The parent reads the child's threads,
open file descriptors and memory from /proc.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SCP_AET = "INLET_CHILD_SCP"
TIMEOUT = 30.0


class ServerProcess:
    """Run ``StoreSCPServer(node, data_dir, **options)`` in a child process.

    ``fsize_limit``: a per-process file size limit (RLIMIT_FSIZE, bytes) with SIGXFSZ
    ignored, so writes past it fail with EFBIG instead of killing the process.
    ``callback_log``: a callback appends each instance's SOP Instance UID to this file (one
    line, flushed), taking ``callback_delay`` seconds first. ``study_log``: a study callback
    appends ``StudyInstanceUID revision instances`` for each study event.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fsize_limit: int | None = None,
        callback_log: str | os.PathLike[str] | None = None,
        callback_delay: float = 0.0,
        study_log: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        config = {
            "data_dir": os.fspath(data_dir),
            "fsize_limit": fsize_limit,
            "callback_log": None if callback_log is None else os.fspath(callback_log),
            "callback_delay": callback_delay,
            "study_log": None if study_log is None else os.fspath(study_log),
            "options": options,
        }
        self.process = subprocess.Popen(
            [sys.executable, __file__, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip().isdigit(), f"child server did not start: {line!r}"
        self.port = int(line)
        self.pid = self.process.pid

    def stop(self) -> int:
        """Shut down gracefully (closing stdin); return the exit code."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
        return self.process.wait(timeout=TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the child."""
        self.process.kill()
        self.process.wait(timeout=TIMEOUT)

    def set_fsize_limit(self, limit: int) -> None:
        """Change the child's file size limit (soft limit only: no privilege needed)."""
        _, hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (limit, hard))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def memory_kib(self, field: str = "VmRSS") -> int:
        """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field} not in /proc/{self.pid}/status")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.stop()


def _child(config: dict[str, Any]) -> None:
    if config["fsize_limit"] is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (config["fsize_limit"], hard))
    import threading

    from dicom_inlet import StoreSCPServer

    options = dict(config["options"])
    if config["callback_log"] is not None:
        log = open(config["callback_log"], "a", encoding="ascii")  # noqa: SIM115
        slow = threading.Event()

        def log_instance(ds: Any) -> None:
            slow.wait(config["callback_delay"])  # a slow consumer, never set
            log.write(f"{ds.SOPInstanceUID}\n")
            log.flush()

        options["callbacks"] = [log_instance]
    if config["study_log"] is not None:
        study_log = open(config["study_log"], "a", encoding="ascii")  # noqa: SIM115

        def log_study(event: Any) -> None:
            study_log.write(f"{event.study_instance_uid} {event.revision} {len(event.instances)}\n")
            study_log.flush()

        options["study_callbacks"] = [log_study]
    node = {"aetitle": SCP_AET, "port": 0, "ip": HOST}
    server = StoreSCPServer(node, data_dir=config["data_dir"], **options)
    server.run(block=False)
    print(server.port, flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
