"""Receiver cost per instance that the machine's load does not change: user-space instructions
(``valgrind --tool=callgrind``) and system calls (``strace -c -f``) of one receiver process.

    python benches/receive_cost.py {callgrind,strace} [--receiver inlet|storescp]
                                   [--max-pdu 16384] [--files 10,40] [--corpus DIR] [--work DIR]

The receiver runs under the tool twice, each time taking one DCMTK ``storescu`` association of
the first N CT files of the ``peers.py`` quick corpus (N from ``--files``); the difference of the
two counts divided by the difference of N is the cost of one more instance, with start-up, the
association and exit cancelled out. Both receivers announce the same ``--max-pdu``, so
``storescu`` sends PDUs of that size to each. callgrind counts user space only: the kernel's
share (copying from the socket, into the page cache) shows as the system calls strace counts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import corpus
from peers import DCMTK_ENV, STORESCP, STORESCU, _children, count_files, free_port, wait_ready

RECEIVERS = {
    "inlet": (
        sys.executable,
        *("-m", "dicom_inlet", "serve", "{dir}", "--port", "{port}", "--host", "127.0.0.1"),
        *("-q", "--aet", "INLET", "--max-pdu", "{pdu}"),
    ),
    "storescp": (
        STORESCP,
        "-aet",
        "STORESCP",
        "+B",
        "--max-pdu",
        "{pdu}",
        "-od",
        "{dir}",
        "{port}",
    ),
}


def tool_argv(tool: str, out: Path) -> list[str]:
    if tool == "task-clock":
        return ["perf", "stat", "-e", "task-clock", "-x", ",", "-o", str(out)]
    if tool == "profile":
        return ["perf", "record", "-q", "-e", "cpu-clock", "-F", "20000", "-g", "-o", str(out)]
    if tool == "callgrind":
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q"]
    return ["strace", "-f", "-c", "-o", str(out)]


def read_counts(tool: str, out: Path) -> dict[str, int]:
    """callgrind: {"instructions": total}; strace: {syscall: calls} and "total"."""
    if tool == "profile":
        return {}  # read with perf report (--keep)
    text = out.read_text()
    if tool == "task-clock":
        msec = re.search(r"^([\d.]+),msec,task-clock", text, re.M)[1]
        return {"CPU µs": round(float(msec) * 1e3)}
    if tool == "callgrind":
        return {"instructions": int(re.search(r"^(?:summary|totals): (\d+)", text, re.M)[1])}
    counts = {}
    for line in text.splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[3].isdigit():
            counts[fields[-1]] = int(fields[3])
    return counts


def run_once(args: argparse.Namespace, files: list[Path], work: Path) -> dict[str, int]:
    data_dir, out = work / "data", work / f"{args.tool}.out"
    data_dir.mkdir()
    port = free_port()
    values = {"dir": str(data_dir), "port": str(port), "pdu": str(args.max_pdu)}
    argv = tool_argv(args.tool, out) + [a.format(**values) for a in RECEIVERS[args.receiver]]
    env = {**DCMTK_ENV, "PYTHONHASHSEED": "0"}
    log = work / "receiver.log"
    with log.open("wb") as err:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=work)
    try:
        wait_ready(port, process, log)
        send = [STORESCU, "-aet", "BENCHSCU", "-aec", "ANY", "127.0.0.1", str(port)]
        subprocess.run([*send, *map(str, files)], env=DCMTK_ENV, check=True)
        if (got := count_files(data_dir)) != len(files):
            raise RuntimeError(f"{args.receiver} stored {got} of {len(files)} files")
    finally:
        # strace and perf wait for their child to exit: stop the receiver itself.
        target = process.pid if args.tool == "callgrind" else _children(process.pid)[0]
        for _ in range(60):  # a SIGTERM before the server's handler is installed is lost
            os.kill(target, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
                break
    counts = read_counts(args.tool, out)
    shutil.rmtree(data_dir)
    if args.keep:
        shutil.move(out, args.keep)  # the tool's own report, for callgrind_annotate
    else:
        out.unlink()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tool", choices=("callgrind", "strace", "task-clock", "profile"))
    parser.add_argument("--receiver", choices=sorted(RECEIVERS), default="inlet")
    parser.add_argument("--max-pdu", type=int, default=16_384)
    parser.add_argument("--files", default="10,40", help="two instance counts (default: 10,40)")
    parser.add_argument("--corpus", type=Path, help="corpus cache (default: as peers.py --quick)")
    parser.add_argument("--work", type=Path, help="receiver's data directory's parent")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs (median)")
    parser.add_argument("--keep", type=Path, help="keep the tool's report of each run here")
    args = parser.parse_args(argv)
    few, many = (int(n) for n in args.files.split(","))
    root = args.corpus or Path(tempfile.gettempdir(), "dicom-inlet-bench", "corpus-quick")
    ct = corpus.build(corpus.QUICK, root, print)["ct"]
    files = sorted(ct.directory.rglob("*.dcm"))[:many]
    size = sum(f.stat().st_size for f in files[few:]) / (many - few)
    work = Path(tempfile.mkdtemp(prefix="receive-cost-", dir=args.work))
    per: dict[str, list[float]] = {}
    try:
        for _ in range(args.repeat):
            a = run_once(args, files[:few], work)
            b = run_once(args, files, work)
            for name in set(a) | set(b):
                per.setdefault(name, []).append((b.get(name, 0) - a.get(name, 0)) / (many - few))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.receiver} at max PDU {args.max_pdu}, {args.tool}, per instance "
        f"({size / 1e3:,.0f} kB files, {few} vs {many} instances, median of {args.repeat}):"
    )
    for name, values in sorted(per.items(), key=lambda item: -statistics.median(item[1])):
        if abs(median := statistics.median(values)) >= 0.05:
            print(f"  {name:16} {median:14,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
