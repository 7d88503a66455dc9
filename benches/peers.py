"""dicom-inlet side by side with DCMTK, pynetdicom and pacsanini, on one corpus, in one run.

    python benches/peers.py [--quick] [--runs 3] [--json] [--corpus DIR] [--work DIR]
                            [--receivers A,B] [--senders A,B] [--workloads A,B] [--window W]
                            [--inlet LABEL=PYTHON]... [--pacsanini PYTHON]

Builds (once, cached) the deterministic corpus of ``corpus.py``, then for every workload, sender
and receiver starts the receiver on 127.0.0.1, sends the workload and measures files/s, MB/s
(10^6 bytes of files sent per second of the sender's wall time), the receiver's peak RSS during
the transfer (VmHWM, reset once the receiver is idle), its CPU seconds (utime+stime, children
included) and the sender's (as the Python senders report it for their sending; DCMTK's from
its rusage, start-up included as it is on the clock). Runs are interleaved (run 1 of every
receiver, in an order shuffled with a fixed seed per run, then run 2...), each figure is the
median of the runs, and each ratio is the median of per-run ratios to DCMTK ``storescp +B``
(``--fork +B`` for the concurrent workload) measured in the same run with the same sender.

Senders: DCMTK ``/usr/bin/storescu`` (``TCP_NODELAY=1``: without it DCMTK stalls ~40 ms per
response; one process per shard for the concurrent workload), and dicom-inlet's own SCU
(``inlet_send.py``, parallel associations for the concurrent workload; ``--window W`` makes it
propose an asynchronous operations window), which is faster and so shows receivers above
``storescu``'s ceiling; its start-up and exit stay off the clock. For the 200 MB instances,
the same bytes also go from a plain socket source to a plain socket sink (``raw_tcp.py``): the
loopback TCP ceiling every receiver's MB/s is divided by.

DICOM TLS (CT and 200 MB): ``storescu +tls`` and ``dicom-inlet send --tls`` into ``dicom-inlet
TLS`` (``serve --tls-cert --tls-key --tls-ca``) and DCMTK ``storescp +tls +B``, both requiring a
client certificate, with certificates ``openssl`` makes in the work directory (ECDSA P-256).
Their ratios are to ``storescp +tls +B`` with the same sender; dicom-inlet's TLS rows are also
divided by its plain TCP rows of the same runs (``dicom-inlet send --tls`` by ``dicom-inlet
send``, ``storescu +tls`` by ``storescu``; the lowest and highest run's ratio beside the
median, since these targets sit near it), and their files/s by those of ``storescp +tls
--ignore`` (receives over TLS, stores nothing): the TLS sender's own ceiling. For ``storescu
+tls``, one thread, the notes also give the most any receiver could reach against plain TCP and
against ``storescp +tls +B``: a run takes at least the sender's CPU seconds, so no ratio can
pass the other row's time divided by them, same run. A build added
with ``--inlet LABEL=PYTHON`` has a ``LABEL TLS`` row too, to compare builds over TLS.

Store handlers: dicom-inlet with a handler that only answers 0x0000 (``inlet_handler.py``,
compared with dicom-inlet without one), and the SCP of pynetdicom's storage examples, whose
handler decodes each data set and writes it with ``save_as`` (``seed_scp.py``), under
pynetdicom and under ``dicom_inlet.pynetdicom`` (the same code, only the import differs).

pacsanini (``pacsanini_scp.py``), whose API dicom-inlet keeps, pins old pydicom/pynetdicom, so it
runs from its own venv given by ``--pacsanini``, and is skipped without it. At ~20 CT files/s it
receives the CT and small workloads only: the 200 MB instances would take minutes per run.

Receivers that store are checked to have written every file; each run starts on an empty data
directory, removed after the run. Put ``--work`` on a journaled filesystem (or tmpfs): ext4
without a journal (as on this project's VMs) scans past every inode deleted in the last minutes
on each file creation, so a run would pay for the deletions of the runs before it.

``--pin`` keeps the receiver on the first half of the CPUs and the senders on the other half
(``sched_setaffinity`` before each starts, so every thread inherits it), as a sender on another
machine would be. Unpinned, a one-request-at-a-time exchange on two shared cores runs up to
~1.5x faster when the scheduler happens to put both ends on one core (no wake-up across cores)
than when it splits them, so a receiver's extra thread (the journal's ingest) moves its figures
by where it leaves the others, not by what it costs.

The journal's cost and durability's are notes under each table: ``dicom-inlet`` against
``dicom-inlet --no-journal``, ``--durable`` against ``--durable --no-journal`` and against not
durable, same runs. Durability means something only on a disk: measure those rows with
``--work`` on a real journaled file system (a loop-mounted ext4 image does), with ``--window 8``
for our SCU's asynchronous window on one association, and ``ct x4`` for four associations.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import corpus

HERE = Path(__file__).resolve().parent
STORESCU = "/usr/bin/storescu"  # pynetdicom installs a Python `storescu` that shadows DCMTK's
STORESCP = "/usr/bin/storescp"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 60.0
# Concurrent senders for the "ct x4" workload, one CT shard (patient) each.
CONCURRENT = corpus.SHARDS


SENDERS = ("storescu", "dicom-inlet send", "dicom-rs storescu")


@dataclass(frozen=True)
class Receiver:
    name: str
    argv: tuple[str, ...]  # {dir}, {port} and {expect} are filled in; PDU marks pdu_argv's place
    workloads: tuple[str, ...]
    stores: bool = True  # writes one file per instance under {dir}
    reports_done: bool = False  # prints "ALL" once every instance went through Python
    senders: tuple[str, ...] = SENDERS
    pdu_argv: tuple[str, ...] = ()  # sets the max PDU to {pdu}; () for a receiver that can't

    def at_pdu(self, size: int | None) -> Receiver | None:
        """This receiver announcing ``size`` as its max PDU (None: its default), named for it;
        None if it has no such setting."""
        if size is None:
            return replace(self, argv=tuple(a for a in self.argv if a != PDU))
        if not self.pdu_argv:
            return None
        i = self.argv.index(PDU)
        options = tuple(a.format(pdu=size) for a in self.pdu_argv)
        argv = (*self.argv[:i], *options, *self.argv[i + 1 :])
        return replace(self, name=self.name + pdu_suffix(size), argv=argv)


# Where a receiver's max PDU option goes in its argv.
PDU = "{max pdu}"
FLAT = "--sort-by image"


def pdu_suffix(size: int | None) -> str:
    """What names a receiver run at ``size`` (None: its default max PDU)."""
    return "" if size is None else f" @{size // 1024}K"


def pdu_group(name: str) -> str:
    """The max PDU suffix of a receiver's name ("" for its default)."""
    _, at, size = name.rpartition(" @")
    return at + size if at and size.endswith("K") and size[:-1].isdigit() else ""


@dataclass(frozen=True)
class Pinning:
    """The CPUs the receiver and the senders are kept on (``--pin``)."""

    receiver: frozenset[int]
    senders: frozenset[int]

    @classmethod
    def halves(cls) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        return cls(frozenset(cpus[: len(cpus) // 2]), frozenset(cpus[len(cpus) // 2 :]))


def _on_cpus(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` keeping the child (and every thread it starts) on ``cpus``."""
    return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)


@dataclass
class Sample:
    seconds: float
    files_per_s: float
    mb_per_s: float
    cpu_s: float
    cpu_us_per_file: float
    # The senders' CPU over the run, start-up included where it is on the clock.
    sender_cpu_s: float
    peak_rss_mib: float
    idle_rss_mib: float
    load1: float


@dataclass
class Result:
    workload: str
    sender: str
    receiver: str
    samples: list[Sample] = field(default_factory=list)


# TLS senders, each with the plain sender its rows are compared with.
TLS_SENDERS = {"storescu +tls": "storescu", "dicom-inlet send --tls": "dicom-inlet send"}
STORESCP_TLS = "storescp +tls +B"
# What a TLS sender delivers to a receiver that stores nothing: its own ceiling.
FLOOR_TLS = "storescp +tls --ignore"


def make_certificates(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by ``openssl``."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    files = {n: str(directory / n) for n in ("ca", "ca_key", "cert", "key", "client", "client_key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        files["ca_key"],
        "-out",
        files["ca"],
        "-subj",
        "/CN=bench CA",
        "-days",
        "2",
    )
    for name, key, extensions in (
        ("cert", "key", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "client_key", "extendedKeyUsage=clientAuth\n"),
    ):
        ext = directory / f"{name}.ext"
        ext.write_text(extensions)
        csr = str(directory / f"{name}.csr")
        openssl("req", *ec, "-keyout", files[key], "-out", csr, "-subj", f"/CN={name}")
        openssl(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            files["ca"],
            "-CAkey",
            files["ca_key"],
            "-out",
            files[name],
            "-days",
            "2",
            "-extfile",
            str(ext),
        )
    return files


def receivers(
    python: str,
    inlets: list[tuple[str, str]],
    pacsanini: str | None,
    dicom_rs: Path | None = None,
) -> list[Receiver]:
    """Every receiver measured, at its default max PDU; ``inlets`` are (label, interpreter) of
    dicom-inlet builds, ``pacsanini`` the interpreter of a venv with pacsanini (None: not
    measured), ``dicom_rs`` the install root of dicom-rs's tools (None: not measured)."""
    single = ("ct", "small", "big")
    # The seed's SCP decodes and re-encodes every data set: the 200 MB ones take minutes.
    seed = ("ct", "small")
    inlet_args = ("-m", "dicom_inlet", "serve", "{dir}", "--port", "{port}", "--host")
    inlet_pdu = ("--max-pdu", "{pdu}")
    dcmtk_pdu = ("--max-pdu", "{pdu}")
    found = [
        Receiver(
            label,
            (interpreter, *inlet_args, "127.0.0.1", "-q", "--aet", "INLET", PDU),
            (*single, "ct x4"),
            pdu_argv=inlet_pdu,
        )
        for label, interpreter in inlets
    ]
    # The journal's cost, measured in the same run: on (the default) against off, and
    # durable with the journal against durable without it (the durable of before).
    label, interpreter = inlets[0]
    found += [
        Receiver(
            " ".join((label, *options)),
            (interpreter, *inlet_args, "127.0.0.1", "-q", "--aet", "INLET", *options),
            ("ct", "small", "ct x4"),
        )
        for options in [(NO_JOURNAL,), (DURABLE,), (DURABLE, NO_JOURNAL)]
    ]
    # `storescp -od` writes every file into one folder; this row stores the same way, so the
    # layout (patient/study/series folders by default) is not what a ratio credits.
    found.append(
        Receiver(
            f"{label} {FLAT}",
            (interpreter, *inlet_args, "127.0.0.1", "-q", "--aet", "INLET", PDU, *FLAT.split()),
            ("ct", "small", "ct x4"),
            pdu_argv=inlet_pdu,
        )
    )
    # pacsanini takes minutes per run on the 200 MB instances (module docstring).
    pacsanini_scp = (pacsanini or "", str(HERE / "pacsanini_scp.py"), "{dir}", "{port}")
    # dicom-rs's storescp holds each instance in memory (README), and listens on every
    # interface: the benchmark sends to it on 127.0.0.1 only.
    dicom_rs_scp = (str(dicom_rs / "bin" / "dicom-storescp") if dicom_rs else "", "-p", "{port}")
    return [
        *found,
        Receiver(
            CALLBACK,
            (
                python,
                str(HERE / "inlet_callback.py"),
                "{dir}",
                "{port}",
                "--expect",
                "{expect}",
                PDU,
            ),
            ("ct", "small"),
            reports_done=True,
            pdu_argv=inlet_pdu,
        ),
        Receiver(HANDLER, (python, str(HERE / "inlet_handler.py"), "{dir}", "{port}"), single),
        *(
            Receiver(label, (python, str(HERE / "seed_scp.py"), module, "{dir}", "{port}"), seed)
            for label, module in (
                (SEED_INLET, "dicom_inlet.pynetdicom"),
                (SEED_PYNETDICOM, "pynetdicom"),
            )
        ),
        Receiver(
            "storescp +B",
            (STORESCP, "-aet", "STORESCP", "+B", PDU, "-od", "{dir}", "{port}"),
            single,
            pdu_argv=dcmtk_pdu,
        ),
        Receiver(
            "storescp --ignore",
            (STORESCP, "-aet", "STORESCP", "--ignore", PDU, "{port}"),
            single,
            stores=False,
            pdu_argv=dcmtk_pdu,
        ),
        Receiver(
            "pynetdicom",
            (python, str(HERE / "pynetdicom_scp.py"), "{dir}", "{port}", PDU),
            single,
            pdu_argv=inlet_pdu,
        ),
        *([Receiver(PACSANINI, pacsanini_scp, ("ct", "small"))] if pacsanini else []),
        *(
            [
                Receiver(
                    DICOM_RS_SCP,
                    (*dicom_rs_scp, PDU, "-o", "{dir}"),
                    single,
                    pdu_argv=("-m", "{pdu}"),
                )
            ]
            if dicom_rs
            else []
        ),
        Receiver(
            "storescp --fork +B",
            (STORESCP, "-aet", "STORESCP", "--fork", "+B", PDU, "-od", "{dir}", "{port}"),
            ("ct x4",),
            pdu_argv=dcmtk_pdu,
        ),
        Receiver(
            RAW_SINK,
            (python, str(HERE / "raw_tcp.py"), "sink", "{port}"),
            ("big",),
            stores=False,
            senders=(RAW_SOURCE,),
        ),
        # Each build given with --inlet over TLS too.
        *(
            Receiver(
                f"{label} TLS",
                (
                    *build.argv,
                    "--tls-cert",
                    "{cert}",
                    "--tls-key",
                    "{key}",
                    "--tls-ca",
                    "{ca}",
                ),
                ("ct", "big"),
                senders=tuple(TLS_SENDERS),
            )
            for (label, _), build in zip(inlets, found[: len(inlets)], strict=True)
        ),
        Receiver(
            STORESCP_TLS,
            (
                STORESCP,
                "-aet",
                "STORESCP",
                "+B",
                "+tls",
                "{key}",
                "{cert}",
                "+cf",
                "{ca}",
                "-od",
                "{dir}",
                "{port}",
            ),
            ("ct", "big"),
            senders=tuple(TLS_SENDERS),
        ),
        Receiver(
            FLOOR_TLS,
            (
                STORESCP,
                *("-aet", "STORESCP", "--ignore"),
                *("+tls", "{key}", "{cert}", "+cf", "{ca}", "{port}"),
            ),
            ("ct", "big"),
            stores=False,
            senders=tuple(TLS_SENDERS),
        ),
    ]


def sender_commands(
    sender: str,
    workload: corpus.Workload,
    concurrent: bool,
    port: int,
    window: int,
    tls: dict[str, str],
    dicom_rs: Path | None = None,
) -> list[list[str]]:
    """The processes that send ``workload``. All but storescu and dicom-rs's storescu print
    READY and wait for a line on stdin before sending, then print DONE: their Python start-up
    and exit stay off the clock (that of a compiled program costs little)."""
    dirs = workload.shards if concurrent else (workload.directory,)
    if sender.startswith("storescu"):
        command = [STORESCU]
        if sender in TLS_SENDERS:
            command += ["+tls", tls["client_key"], tls["client"], "+cf", tls["ca"]]
        command += ["-aet", "BENCHSCU", "-aec", "ANY", "+sd", "+r", "127.0.0.1", str(port)]
        return [[*command, str(d)] for d in dirs]
    if sender == DICOM_RS_SCU:
        # The files listed, as it takes them, in the order storescu sends them.
        command = [str(Path(dicom_rs or "", "bin", "dicom-storescu")), f"ANY@127.0.0.1:{port}"]
        return [[*command, *map(str, sorted(d.rglob("*.dcm")))] for d in dirs]
    if sender == RAW_SOURCE:
        script = ["raw_tcp.py", "source"]
    else:
        associations = str(CONCURRENT if concurrent else 1)
        script = ["inlet_send.py", "--associations", associations, "--window", str(window)]
        if sender in TLS_SENDERS:
            script += ["--tls-ca", tls["ca"], "--tls-cert", tls["client"]]
            script += ["--tls-key", tls["client_key"]]
    script[0] = str(HERE / script[0])
    return [[sys.executable, *script, "127.0.0.1", str(port), str(workload.directory)]]


NO_JOURNAL, DURABLE = "--no-journal", "--durable"
# The DCMTK figure each ratio divides by.
CALLBACK = "dicom-inlet + callback"
HANDLER = "dicom-inlet + handler 0x0000"
SEED_INLET = "seed SCP on dicom_inlet.pynetdicom"
SEED_PYNETDICOM = "seed SCP on pynetdicom"
BASELINE = {
    "ct": "storescp +B",
    "small": "storescp +B",
    "big": "storescp +B",
    "ct x4": "storescp --fork +B",
}
FLOOR = "storescp --ignore"
PACSANINI = "pacsanini"
DICOM_RS_SCP = "dicom-rs storescp"
DICOM_RS_SCU = "dicom-rs storescu"
DICOM_RS_CRATES = ("dicom-storescp", "dicom-storescu")
RAW_SINK = "raw TCP sink"
RAW_SOURCE = "raw TCP"


# ---------------------------------------------------------------------------------------------
# /proc readings


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name; index i is field i+3 of proc(5)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _children(pid: int) -> list[int]:
    """Live or zombie children: a zombie's stat still holds its CPU times. Children that were
    reaped are in the parent's cutime/cstime instead, so nothing is lost or counted twice."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) > pid:
            fields = _stat(int(entry))
            if fields is not None and fields[1] == str(pid):
                found.append(int(entry))
    return found


def _cpu_ticks(pid: int) -> int:
    fields = _stat(pid)
    if fields is None:
        return 0
    return sum(int(f) for f in fields[11:15])  # utime stime cutime cstime


def _reaped_cpu_seconds() -> float:
    """The CPU of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pid: int) -> float:
    ticks = _cpu_ticks(pid) + sum(_cpu_ticks(child) for child in _children(pid))
    return ticks / CLOCK_TICK


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM start from the current RSS (proc(5), clear_refs value 5)."""
    with contextlib.suppress(OSError):  # then the peak includes start-up
        Path(f"/proc/{pid}/clear_refs").write_text("5")


class ChildPeaks(threading.Thread):
    """Samples the peak RSS of a forking receiver's children while they live."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.peaks: dict[int, int] = {}

    def run(self) -> None:
        while not self.stop.wait(0.05):
            for child in _children(self.pid):
                self.peaks[child] = max(self.peaks.get(child, 0), _status_kib(child, "VmHWM"))


# ---------------------------------------------------------------------------------------------
# One measurement


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, log: Path) -> None:
    """Poll until the receiver accepts a TCP connection on 127.0.0.1."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)  # polling interval, not synchronisation
    raise RuntimeError(f"receiver not listening on port {port} after {READY_TIMEOUT} s")


def count_files(directory: Path) -> int:
    return sum(
        len(files)
        for root, dirs, files in os.walk(directory)
        # The spool and the journal's folder hold no stored instance.
        if Path(root).relative_to(directory).parts[:1] not in ((".incoming",), (".journal",))
    )


def _await_done(process: subprocess.Popen) -> tuple[threading.Event, list[float]]:
    done, when = threading.Event(), []

    def read() -> None:
        assert process.stdout is not None  # started with stdout=PIPE
        for line in process.stdout:
            if line.strip() == b"ALL":
                when.append(time.perf_counter())
                done.set()

    threading.Thread(target=read, daemon=True).start()
    return done, when


def measure(
    receiver: Receiver,
    sender: str,
    workload: corpus.Workload,
    concurrent: bool,
    data_dir: Path,
    window: int = 1,
    tls: dict[str, str] | None = None,
    dicom_rs: Path | None = None,
    pin: Pinning | None = None,
) -> Sample:
    """One run: start the receiver on an empty ``data_dir``, send, read the figures, stop it."""
    data_dir.mkdir(parents=True)
    work = data_dir.parent
    os.sync()  # leave no writeback of earlier runs to compete with this one
    port = free_port()
    tls = tls or {}
    values = {"dir": str(data_dir), "port": str(port), "expect": str(workload.files), **tls}
    argv = [a.format(**values) for a in receiver.argv]
    log = work / "receiver.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if receiver.reports_done else subprocess.DEVNULL,
            stderr=err,
            env=DCMTK_ENV,
            cwd=work,
            preexec_fn=_on_cpus(pin.receiver if pin else None),
        )
    try:
        wait_ready(port, process, log)
        done = _await_done(process) if receiver.reports_done else None
        idle_kib = _status_kib(process.pid, "VmRSS")
        reset_peak_rss(process.pid)
        children = ChildPeaks(process.pid)
        children.start()
        commands = sender_commands(sender, workload, concurrent, port, window, tls, dicom_rs)
        handshake = not sender.startswith("storescu") and sender != DICOM_RS_SCU
        pipe = subprocess.PIPE if handshake else subprocess.DEVNULL
        if not handshake:  # a compiled sender's start-up is on the clock, as a user sees it
            cpu_before, started = tree_cpu_seconds(process.pid), time.perf_counter()
            reaped_before = _reaped_cpu_seconds()
        senders = [
            subprocess.Popen(
                c,
                env=DCMTK_ENV,
                stdin=pipe,
                stdout=pipe,
                stderr=subprocess.PIPE,
                preexec_fn=_on_cpus(pin.senders if pin else None),
            )
            for c in commands
        ]
        if handshake:
            for s in senders:
                assert s.stdin is not None and s.stdout is not None  # started with PIPE
                if s.stdout.readline().strip() != b"READY":
                    raise RuntimeError(f"{sender} did not start: {s.communicate()[1].decode()}")
            cpu_before, started = tree_cpu_seconds(process.pid), time.perf_counter()
            for s in senders:
                assert s.stdin is not None and s.stdout is not None
                s.stdin.write(b"go\n")
                s.stdin.flush()
            sender_cpu = 0.0
            for s in senders:
                assert s.stdout is not None
                # DONE and its CPU seconds, or nothing if it failed (its exit code says).
                sender_cpu += float((s.stdout.readline().split() or [b"", b"0"])[-1])
            finished = time.perf_counter()
        errors = [s.communicate()[1] for s in senders]
        if not handshake:
            finished = time.perf_counter()
            sender_cpu = _reaped_cpu_seconds() - reaped_before
        if done is not None:
            if not done[0].wait(300):
                raise RuntimeError("callbacks did not all run")
            finished = max(finished, done[1][0])
        cpu = tree_cpu_seconds(process.pid) - cpu_before
        children.stop.set()
        children.join()
        peak_kib = _status_kib(process.pid, "VmHWM") + sum(children.peaks.values())
        load1 = os.getloadavg()[0]
        for s, error in zip(senders, errors, strict=True):
            if s.returncode != 0:
                raise RuntimeError(f"{sender} failed ({s.returncode}): {error.decode()}")
        if receiver.stores and (got := count_files(data_dir)) != workload.files:
            raise RuntimeError(f"{receiver.name} stored {got} of {workload.files} files")
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    seconds = finished - started
    return Sample(
        seconds=seconds,
        files_per_s=workload.files / seconds,
        mb_per_s=workload.bytes / 1e6 / seconds,
        cpu_s=cpu,
        cpu_us_per_file=cpu * 1e6 / workload.files,
        sender_cpu_s=sender_cpu,
        peak_rss_mib=peak_kib / 1024,
        idle_rss_mib=idle_kib / 1024,
        load1=load1,
    )


# ---------------------------------------------------------------------------------------------
# Report

METRICS = ("files_per_s", "mb_per_s", "peak_rss_mib", "cpu_s", "cpu_us_per_file")


def _per_run(samples: list[Sample], base: list[Sample], metric: str) -> list[float]:
    """Each run's figure divided by the baseline's in the same run."""
    return [
        getattr(a, metric) / getattr(b, metric)
        for a, b in zip(samples, base, strict=True)
        if getattr(b, metric) > 0
    ]


def _ratio(samples: list[Sample], base: list[Sample], metric: str) -> float | None:
    """Median over runs of this run's figure divided by the baseline's in the same run."""
    ratios = _per_run(samples, base, metric)
    return statistics.median(ratios) if ratios else None


def summarize(results: list[Result], inlet: str) -> list[dict]:
    """Medians and same-run ratios per (workload, receiver); the callback receiver is also
    compared with ``inlet``, dicom-inlet without callbacks, and ``inlet`` with pacsanini."""
    by_key = {(r.workload, r.sender, r.receiver): r for r in results}
    rows = []
    for r in results:
        row = {
            "workload": r.workload,
            "sender": r.sender,
            "receiver": r.receiver,
            "runs": len(r.samples),
        }
        for metric in (*METRICS, "idle_rss_mib", "seconds", "load1", "sender_cpu_s"):
            row[metric] = statistics.median(getattr(s, metric) for s in r.samples)
        # A receiver at a given max PDU is compared with DCMTK's at the same one.
        at = pdu_group(r.receiver)
        baseline = STORESCP_TLS if r.sender in TLS_SENDERS else BASELINE[r.workload] + at
        others = [
            ("dcmtk", (r.sender, baseline)),
            ("ignore", (r.sender, FLOOR_TLS if r.sender in TLS_SENDERS else FLOOR + at)),
            ("raw_tcp", (RAW_SOURCE, RAW_SINK)),
        ]
        if r.receiver == CALLBACK + at:
            others.append(("no_callback", (r.sender, inlet + at)))
        if r.receiver == HANDLER:
            others.append(("no_handler", (r.sender, inlet)))
        if r.receiver == SEED_INLET:
            others.append(("seed_pynetdicom", (r.sender, SEED_PYNETDICOM)))
        if r.receiver == f"{inlet} TLS":
            others.append(("plain", (TLS_SENDERS[r.sender], inlet)))
        # storescu is one thread: a run over TLS takes at least its CPU seconds, so no
        # receiver gets past the plain or DCMTK row's time divided by them.
        sender_bound = r.receiver == f"{inlet} TLS" and r.sender.startswith("storescu")
        if r.receiver == inlet:
            others.append((PACSANINI, (r.sender, PACSANINI)))
        # The journal's and durability's costs, each against the same receiver without it.
        durable, no_journal = f"{inlet} {DURABLE}", f"{inlet} {NO_JOURNAL}"
        if r.receiver == inlet:
            others.append(("journal_off", (r.sender, no_journal)))
        if r.receiver == durable:
            others.append(("durable_journal_off", (r.sender, f"{durable} {NO_JOURNAL}")))
            others.append(("not_durable", (r.sender, inlet)))
        if r.receiver == f"{durable} {NO_JOURNAL}":
            others.append(("not_durable", (r.sender, no_journal)))
        for label, other in others:
            base = by_key.get((r.workload, *other))
            if base is None:
                continue
            row[f"x_{label}"] = {m: _ratio(r.samples, base.samples, m) for m in METRICS}
            # The spread of the files/s ratio, for a target near its median.
            row[f"x_{label}_runs"] = _per_run(r.samples, base.samples, "files_per_s")
            if sender_bound and label in ("plain", "dcmtk"):
                row[f"ceiling_{label}_runs"] = [
                    b.seconds / s.sender_cpu_s
                    for s, b in zip(r.samples, base.samples, strict=True)
                    if s.sender_cpu_s > 0
                ]
        row["samples"] = [vars(s) for s in r.samples]
        rows.append(row)
    return rows


def _cell(value: float, ratio: float | None, digits: int = 0) -> str:
    text = f"{value:,.{digits}f}"
    return f"{text} ({ratio:.2f}x)" if ratio is not None else text


def table(rows: list[dict], workloads: dict[str, corpus.Workload]) -> str:
    lines = []
    titles = {
        "ct": "CT 512x512 16-bit, 1 association",
        "small": "small instances (~4 KB), 1 association",
        "big": "multi-frame (~200 MB each), 1 association",
        "ct x4": f"CT, {CONCURRENT} concurrent associations",
    }
    for name in titles:
        chosen = [r for r in rows if r["workload"] == name]
        if not chosen:
            continue
        notes = []
        w = workloads[name.split()[0]]
        single = name != "ct x4"
        raw = name == "big" and any(r["receiver"] == RAW_SINK for r in chosen)
        lines += [
            f"**{titles[name]}**: {w.files} files, {w.bytes / 1e6:,.0f} MB; "
            f"ratios to `{BASELINE[name]}` (TLS rows: `{STORESCP_TLS}`) with the same sender (at "
            "the same max PDU for a receiver named @N K)"
            + (f", files/s to `--ignore` (TLS rows: `{FLOOR_TLS}`)" if single else "")
            + (", MB/s to raw loopback TCP" if raw else ""),
            "",
            "| sender | receiver | files/s | MB/s | peak RSS MiB | idle RSS MiB | CPU s "
            "| CPU µs/file | sender CPU s | load |"
            + (" files/s ÷ `--ignore` |" if single else "")
            + (" MB/s ÷ raw TCP |" if raw else ""),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
            + ("---:|" if single else "")
            + ("---:|" if raw else ""),
        ]
        for r in chosen:
            x = r.get("x_dcmtk", {})
            cells = [
                r["sender"],
                r["receiver"],
                _cell(r["files_per_s"], x.get("files_per_s")),
                _cell(r["mb_per_s"], x.get("mb_per_s")),
                _cell(r["peak_rss_mib"], x.get("peak_rss_mib"), 1),
                f"{r['idle_rss_mib']:.1f}",
                _cell(r["cpu_s"], x.get("cpu_s"), 2),
                _cell(r["cpu_us_per_file"], x.get("cpu_us_per_file")),
                f"{r['sender_cpu_s']:.2f}",
                f"{r['load1']:.2f}",
            ]
            for shown, label, metric in (
                (single, "ignore", "files_per_s"),
                (raw, "raw_tcp", "mb_per_s"),
            ):
                ratio = r.get(f"x_{label}", {}).get(metric)
                if shown:
                    cells.append(f"{ratio:.2f}x" if ratio is not None else "")
            lines.append("| " + " | ".join(cells) + " |")
            for label, other in (
                ("no_callback", "without callbacks"),
                ("no_handler", "without a handler"),
                ("seed_pynetdicom", "the same SCP under pynetdicom"),
                (PACSANINI, PACSANINI),
                ("plain", "its plain TCP"),
                ("journal_off", "without the journal"),
                ("durable_journal_off", "durable without the journal"),
                ("not_durable", "the same, not durable"),
            ):
                if f"x_{label}" in r:
                    ratio, runs = r[f"x_{label}"]["files_per_s"], r[f"x_{label}_runs"]
                    spread = f" (runs {min(runs):.2f} to {max(runs):.2f}x)" if len(runs) > 1 else ""
                    notes.append(
                        f"{r['receiver']} ÷ {other}, same runs, sender {r['sender']}: "
                        f"{ratio:.2f}x files/s{spread}"
                    )
            for label, other in (("plain", "its plain TCP"), ("dcmtk", f"`{STORESCP_TLS}`")):
                if ceiling := r.get(f"ceiling_{label}_runs"):
                    notes.append(
                        f"the most {r['sender']}'s own CPU lets any receiver reach against "
                        f"{other} (that run's time ÷ the sender's CPU seconds over TLS): "
                        f"{statistics.median(ceiling):.2f}x "
                        f"(runs {min(ceiling):.2f} to {max(ceiling):.2f}x)"
                    )
        lines += ["", *(f"{n}  " for n in notes), *([""] if notes else [])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def dicom_rs_root(root: Path | None, build: bool, log) -> Path | None:
    """``root`` if dicom-rs's storescp and storescu are installed there, after building them
    when ``build`` asks; None, with a note, if they are not."""
    if root is None:
        log(f"{DICOM_RS_SCP} and {DICOM_RS_SCU} skipped: give --dicom-rs ROOT (--build-dicom-rs)")
        return None
    missing = [c for c in DICOM_RS_CRATES if not (root / "bin" / c).is_file()]
    if missing and build:
        log(f"building {', '.join(missing)} into {root} (once; cargo install at nice 19)")
        command = ["nice", "-n", "19", "cargo", "install", "--root", str(root), *missing]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        missing = [c for c in DICOM_RS_CRATES if not (root / "bin" / c).is_file()]
    if missing:
        log(f"dicom-rs skipped: no {', '.join(missing)} in {root}/bin (--build-dicom-rs)")
        return None
    return root


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small corpus (100 CT, 400 small, 2 x 20 MB) for a fast check",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per receiver (default: 3)")
    parser.add_argument(
        "--corpus",
        type=Path,
        help="corpus cache directory (default: $TMPDIR/dicom-inlet-bench/corpus-full or -quick)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="where the receivers' data directories go, made if missing (default: a fresh "
        "temporary directory)",
    )
    parser.add_argument("--receivers", help="comma-separated receiver names to run (default: all)")
    parser.add_argument(
        "--senders",
        default=",".join((*SENDERS, RAW_SOURCE, *TLS_SENDERS)),
        help=f"comma-separated senders (default: {','.join((*SENDERS, RAW_SOURCE, *TLS_SENDERS))}; "
        f"{DICOM_RS_SCU} only with --dicom-rs)",
    )
    parser.add_argument(
        "--workloads",
        default="ct,small,big,ct x4",
        help="comma-separated workloads (default: ct,small,big,ct x4)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=1,
        help="asynchronous operations window dicom-inlet's sender proposes (default: 1; "
        "receivers that grant none get synchronous requests)",
    )
    parser.add_argument(
        "--inlet",
        action="append",
        default=[],
        metavar="LABEL=PYTHON",
        help="also measure the dicom-inlet installed for this interpreter, as "
        "LABEL (repeatable; default: dicom-inlet=the running interpreter)",
    )
    parser.add_argument(
        "--pacsanini",
        metavar="PYTHON",
        help="interpreter of a venv with pacsanini 0.2.1 installed, to measure pacsanini's "
        "StoreSCPServer (default: pacsanini is skipped)",
    )
    parser.add_argument(
        "--same-pdu",
        nargs="?",
        const="16384,131072",
        metavar="BYTES,BYTES",
        help="also run every receiver that has the setting announcing each of these max PDU "
        "sizes, named RECEIVER @16K etc. and compared with storescp at the same size "
        "(default sizes: 16384,131072)",
    )
    parser.add_argument(
        "--dicom-rs",
        type=Path,
        metavar="ROOT",
        help="cargo install root holding bin/dicom-storescp and bin/dicom-storescu, measured "
        "as a receiver and a sender (default: dicom-rs is skipped)",
    )
    parser.add_argument(
        "--build-dicom-rs",
        action="store_true",
        help="build them into --dicom-rs ROOT first if missing (cargo install at nice 19, "
        "from crates.io; minutes of CPU)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="keep the receiver on the first half of the CPUs and the senders on the other "
        "half, as a sender on another machine would be (default: the scheduler places both)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON on stdout (progress and the table go to stderr)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    spec = corpus.QUICK if args.quick else corpus.FULL
    root = args.corpus or Path(tempfile.gettempdir(), "dicom-inlet-bench", f"corpus-{spec.name}")
    workloads = corpus.build(spec, root, log)
    for w in workloads.values():  # page-cache the corpus so the first run reads no disk
        for path in w.directory.rglob("*.dcm"):
            path.read_bytes()
    inlets = [tuple(i.split("=", 1)) for i in args.inlet] or [("dicom-inlet", sys.executable)]
    dicom_rs = dicom_rs_root(args.dicom_rs, args.build_dicom_rs, log)
    defaults = receivers(sys.executable, inlets, args.pacsanini, dicom_rs)
    sizes = [None, *(int(n) for n in args.same_pdu.split(","))] if args.same_pdu else [None]
    chosen = [r for size in sizes for r in map(lambda d: d.at_pdu(size), defaults) if r]
    wanted = {n.strip() for n in args.receivers.split(",")} if args.receivers else None
    if wanted is not None:
        chosen = [r for r in chosen if {r.name, r.name.removesuffix(pdu_group(r.name))} & wanted]
    if args.pacsanini is None and (wanted is None or PACSANINI in wanted):
        log(f"{PACSANINI} skipped: give --pacsanini PYTHON, a venv with pacsanini 0.2.1")
    names = [w.strip() for w in args.workloads.split(",")]
    senders = [s.strip() for s in args.senders.split(",")]
    if dicom_rs is None:
        senders = [s for s in senders if s != DICOM_RS_SCU]
    results = {
        (w, s, r.name): Result(w, s, r.name)
        for w in names
        for s in senders
        for r in chosen
        if w in r.workloads and s in r.senders
    }
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dicom-inlet-peers-", dir=args.work))
    tls = make_certificates(work / "pki") if set(senders) & set(TLS_SENDERS) else {}
    pin = Pinning.halves() if args.pin else None
    load_start = os.getloadavg()
    try:
        for run in range(args.runs):
            # A fixed shuffle per run: on this VM memory a receiver freed (pynetdicom's 450 MB)
            # costs the next one page faults, so no receiver may always follow the same one.
            order = list(results.items())
            random.Random(run).shuffle(order)
            for i, ((name, sender, receiver_name), result) in enumerate(order):
                receiver = next(r for r in chosen if r.name == receiver_name)
                data_dir = work / f"run{run}-{i}"
                workload = workloads[name.split()[0]]
                concurrent = name.endswith("x4")
                sample = measure(
                    receiver,
                    sender,
                    workload,
                    concurrent,
                    data_dir,
                    args.window,
                    tls,
                    dicom_rs,
                    pin,
                )
                result.samples.append(sample)
                log(
                    f"run {run + 1}/{args.runs} {name:6} {sender:22} {receiver.name:24} "
                    f"{sample.files_per_s:8.1f} files/s {sample.mb_per_s:7.1f} MB/s "
                    f"cpu {sample.cpu_s:5.2f} s rss {sample.peak_rss_mib:6.1f} MiB "
                    f"load {sample.load1:.2f}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = summarize(list(results.values()), inlets[0][0])
    load: dict[str, object] = {"start": load_start, "end": os.getloadavg(), "cores": os.cpu_count()}
    if pin is not None:
        load["pinned"] = {"receiver": sorted(pin.receiver), "senders": sorted(pin.senders)}
        log(f"receivers on CPUs {sorted(pin.receiver)}, senders on CPUs {sorted(pin.senders)}")
    log()
    log(table(rows, workloads))
    log(
        f"load average (1, 5, 15 min) at start {load['start']}, at end {load['end']}, "
        f"{load['cores']} cores"
    )
    if args.json:
        corpus_info = {n: {"files": w.files, "bytes": w.bytes} for n, w in workloads.items()}
        print(json.dumps({"corpus": corpus_info, "load": load, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
