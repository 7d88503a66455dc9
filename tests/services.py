"""Real services the cluster tests need, started on 127.0.0.1 for the test session.

Each fixture starts Debian's own server binary in a temporary directory of its own, on a free
port, and stops it at the end. Outside CI a missing binary skips the tests that need it; under
CI (``CI`` set) it fails them, since ``.ci/run`` installs the packages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
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


# RabbitMQ ----------------------------------------------------------------------------------

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
#: Erlang's port mapper daemon; each broker gets one of its own, on its own port.
EPMD = Path("/usr/bin/epmd")


class RabbitMQ:
    """A RabbitMQ server of Debian's, in its own directory, on free loopback ports.

    Its AMQP listener, its Erlang distribution port and its epmd all get free ports on
    127.0.0.1 (the management plugin stays off: an empty plugins file); database, logs,
    config and the Erlang cookie ($HOME) live in a temporary directory. It runs as root
    well with these settings (Debian's wrapper in /usr/sbin would switch users: the script
    behind it is started directly). :meth:`stop` and :meth:`start` keep its database, so
    durable exchanges, queues and persistent messages survive a restart.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="inlet-rabbitmq-"))
        self.port = _free_port()
        self.dist_port = _free_port()
        self.epmd_port = _free_port()
        self.node = f"inlet-{uuid.uuid4().hex[:8]}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {HOST}:{self.port}\n"
            # The default guest user may connect on loopback only: that is where we are.
            "loopback_users.guest = true\n"
            # A disk alarm would block publishers; tmpfs may be small.
            "disk_free_limit.absolute = 1MB\n"
        )
        (self.root / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/%2F"

    def declare(
        self, exchange: str, queue: str, *, bind: str | None = "#", **arguments: object
    ) -> None:
        """A durable topic ``exchange`` and a durable ``queue`` bound to it by ``bind`` (none
        if None): where the server's events are published and read back."""
        import pika  # type: ignore[import-untyped]

        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            channel.exchange_declare(exchange, exchange_type="topic", durable=True)
            channel.queue_declare(queue, durable=True, arguments=arguments or None)
            if bind is not None:
                channel.queue_bind(queue, exchange, routing_key=bind)
        finally:
            connection.close()

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.root),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=HOST,
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.root / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.root / "pid"),
        )
        return env

    def _answers(self) -> bool:
        """Whether the broker speaks AMQP yet (its listener opens last of all)."""
        import pika

        try:
            socket.create_connection((HOST, self.port), timeout=TIMEOUT).close()
            pika.BlockingConnection(pika.URLParameters(self.url)).close()
        except Exception:
            return False
        return True

    def start(self) -> None:
        """Start it (again after :meth:`stop`) and return once it takes AMQP connections."""
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (owned by the process)
        # A session of its own: stop() signals the shell script and the Erlang VM together.
        self.process = subprocess.Popen(
            [str(RABBITMQ_SERVER)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=self._environment(),
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + TIMEOUT * 2
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log())
            # Polling a starting broker; not a synchronisation between our own threads.
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM: the broker closes its connections and stops, as at a service restart."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=TIMEOUT)

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")

    def close(self) -> None:
        self.stop()
        # The broker's epmd outlives it (it daemonizes): ask the one on our port to go.
        if EPMD.exists():
            env = dict(os.environ, ERL_EPMD_PORT=str(self.epmd_port))
            subprocess.run(
                [str(EPMD), "-kill"], env=env, capture_output=True, timeout=TIMEOUT, check=False
            )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    """A RabbitMQ broker for the session; tests use exchanges and queues of their own."""
    if not RABBITMQ_SERVER.is_file():
        _missing(f"RabbitMQ ({RABBITMQ_SERVER}, Debian package rabbitmq-server)")
    pytest.importorskip("pika")
    # pika logs each refused connection with a traceback; the tests say what they wait for.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    broker = RabbitMQ()
    try:
        broker.start()
        yield broker
    finally:
        with contextlib.suppress(Exception):
            broker.close()
