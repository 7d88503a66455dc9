"""Real services the cluster tests need, started on 127.0.0.1 for the test session.

Each fixture starts Debian's own server binary in a temporary directory of its own, on a free
port, and stops it at the end. Outside CI a missing binary skips the tests that need it; under
CI (``CI`` set) it fails them, since ``.ci/run`` installs the packages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"
TIMEOUT = 30.0

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing under CI (.ci/run installs it)")
    pytest.skip(f"{what} is not installed")


class Postgres:
    """A PostgreSQL server of Debian's, in its own data directory, on a free port.

    PostgreSQL refuses to run as root: as root it runs as the ``postgres`` user (setpriv,
    which execs it, so signals reach the server itself),
    with its directory given to that user.
    """

    def __init__(
        self, directory: str | None = None, settings: dict[str, str] | None = None
    ) -> None:
        # Tests need no durability from it: fsync off unless asked (benches/ keep it on).
        self.settings = {"fsync": "off", "max_connections": "200", **(settings or {})}
        self.root = Path(tempfile.mkdtemp(prefix="inlet-pg-", dir=directory))
        self.data = self.root / "data"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*self._as_user, str(POSTGRES_BIN / tool), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)

    def start(self) -> None:
        """initdb once, then the server (again after :meth:`stop`)."""
        if not self.data.exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
            )
        # TCP on loopback only; no Unix socket (the temporary directory is not one's to share).
        command = [
            *self._as_user,
            str(POSTGRES_BIN / "postgres"),
            "-D",
            str(self.data),
            "-h",
            HOST,
            "-p",
            str(self.port),
            "-k",
            "",
        ]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (owned by the process)
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + TIMEOUT
        while self.psql("postgres", "SELECT 1", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.root / "server.log").read_text(errors="replace"))
            time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, as when the database goes away."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            self.process.wait(timeout=TIMEOUT)
        self.process = None

    def psql(
        self, database: str, sql: str, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``sql`` in ``database``; rows come back unaligned, one a line, ``|`` between."""
        command = [str(POSTGRES_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        command += ["-h", HOST, "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql]
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=check)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = "inlet_" + uuid.uuid4().hex[:12]
        self.psql("postgres", f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def require_postgres() -> None:
    """Skip (fail under CI) where PostgreSQL 15 is not installed."""
    if not (POSTGRES_BIN / "postgres").is_file():
        _missing(f"PostgreSQL 15 ({POSTGRES_BIN}, Debian package postgresql)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL 15 server for the session (``new_database()`` per test)."""
    require_postgres()
    server = Postgres()
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.close()
