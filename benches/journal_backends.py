"""The journal in PostgreSQL against the journal in SQLite, in one run.

    python benches/journal_backends.py [--runs 3] [--work DIR] [--full] [--json]

One ``dicom-inlet serve`` node (no callbacks: the journal's cost alone) receives the CT and the
small instances of ``corpus.py`` (the quick corpus unless ``--full``) from dicom-inlet's SCU
(``inlet_send.py``) over 1, 4 (and 8: small) associations, with the journal in SQLite
(``data_dir/.journal``) and in a PostgreSQL 15 started here (Debian's binaries,
tests/services.py, fsync and synchronous commit on as shipped), both on ``--work``, a tmpfs by
default, so the disk is not what is measured. Runs are interleaved, figures are medians:
files/s (the sender's wall time), which for PostgreSQL is also its rows/s (one row per
instance), and the PostgreSQL server's CPU seconds per 1,000 rows (its processes' utime+stime,
from /proc), for a capacity estimate: how many nodes one database serves.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import corpus

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from services import Postgres  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
# Workload and associations; small x8 gives the most rows/s a node asks of the database.
CASES = [("small", 1), ("small", 4), ("small", 8), ("ct", 1), ("ct", 4)]
TIMEOUT = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(postmaster: int) -> float:
    """CPU seconds of PostgreSQL so far: the postmaster's own and its reaped backends'
    (utime, stime, cutime, cstime), and those of its backends still running."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(entry.name) == postmaster:
            total += sum(int(f) for f in fields[11:15]) / TICK
        elif int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def run_once(journal: str, workload: corpus.Workload, associations: int, work: Path) -> float:
    """files/s of one transfer into a fresh node."""
    data_dir = work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    port = free_port()
    log_path = work / "node.log"
    command = [sys.executable, "-m", "dicom_inlet", "serve", str(data_dir), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--node-id", "bench"]
    command += ["--journal", journal] if journal else []
    with open(log_path, "w") as log:
        node = subprocess.Popen(command, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while "listening" not in log_path.read_text():
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node did not start: {log_path.read_text()}")
            time.sleep(0.05)
        send = [sys.executable, str(HERE / "inlet_send.py"), "127.0.0.1", str(port)]
        send += [str(workload.directory), "--associations", str(associations)]
        sender = subprocess.Popen(
            send,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sender.stdin is not None and sender.stdout is not None
        assert sender.stdout.readline().strip() == "READY"
        start = time.perf_counter()
        sender.stdin.write("go\n")
        sender.stdin.flush()
        assert sender.stdout.readline().startswith("DONE")
        elapsed = time.perf_counter() - start
        if sender.wait(TIMEOUT) != 0:
            raise RuntimeError(f"the sender failed ({journal})")
        return workload.files / elapsed
    finally:
        node.terminate()
        node.wait(TIMEOUT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/dev/shm/inlet-journal-bench"))
    parser.add_argument("--full", action="store_true", help="the full corpus (default: quick)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    spec = corpus.FULL if args.full else corpus.QUICK
    workloads = corpus.build(spec, args.work / f"corpus-{spec.name}", log=lambda m: None)
    database = Postgres(directory=str(args.work), settings={"fsync": "on"})
    database.start()
    results: dict[str, list[float]] = {}
    pg_cpu: dict[str, list[float]] = {}
    try:
        cases = CASES
        for _ in range(args.runs):
            for name, associations in cases:
                workload = workloads[name]
                for backend in ("sqlite", "postgresql"):
                    journal = "" if backend == "sqlite" else database.new_database()
                    before = cpu_seconds(database.process.pid) if database.process else 0.0
                    key = f"{name} x{associations} {backend}"
                    rate = run_once(journal, workload, associations, args.work)
                    results.setdefault(key, []).append(rate)
                    if backend == "postgresql" and database.process:
                        used = cpu_seconds(database.process.pid) - before
                        pg_cpu.setdefault(key, []).append(1000 * used / workload.files)
    finally:
        database.close()
    table = {key: statistics.median(rates) for key, rates in results.items()}
    cpu = {key: statistics.median(values) for key, values in pg_cpu.items()}
    if args.json:
        print(json.dumps({"files_per_s": table, "pg_cpu_s_per_1000_rows": cpu}, indent=1))
        return 0
    print(
        f"{'workload':<12} {'sqlite f/s':>11} {'postgresql f/s':>15} {'ratio':>6} "
        f"{'PG CPU s/1000 rows':>19}"
    )
    for name, associations in CASES:
        lite = table[f"{name} x{associations} sqlite"]
        pg = table[f"{name} x{associations} postgresql"]
        print(
            f"{name + ' x' + str(associations):<12} {lite:>11.0f} {pg:>15.0f} "
            f"{pg / lite:>6.2f} {cpu[f'{name} x{associations} postgresql']:>19.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
