"""Cost per instance of one receiver or one sender process: user-space instructions
(``valgrind --tool=callgrind``) and system calls (``strace -c -f``), which the machine's load
does not change, CPU time (``perf stat -e task-clock``) or a profile (``perf record``).

    python benches/receive_cost.py {callgrind,strace,task-clock,profile}
                                   [--receiver inlet|storescp] [--sender storescu|inlet]
                                   [--measure receiver|sender] [--tls] [--workload ct|big]
                                   [--max-pdu 16384] [--files 10,40] [--corpus DIR] [--work DIR]
                                   [--serve-arg=--no-journal ...]

The measured process runs under the tool twice, each time taking (or sending) one association
of the first N files of a ``peers.py`` quick corpus workload (N from ``--files``; past its
end the files are sent again, e.g. ``--files 10,600`` for CT, as on a loaded machine start-up
varies by more than 100 instances cost); the difference of the two counts divided by the
difference of N is the cost of one more instance, with start-up, the association and exit
cancelled out. The receiver announces ``--max-pdu``, so
either sender sends PDUs of that size. ``--tls`` runs both ends over DICOM TLS (certificates
made by ``openssl`` as ``peers.py`` does). callgrind counts user space only: the kernel's share
(copying from the socket, into the page cache) shows as the system calls strace counts and in
task-clock.
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
from peers import (
    DCMTK_ENV,
    STORESCP,
    STORESCU,
    _children,
    count_files,
    free_port,
    make_certificates,
    wait_ready,
)

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
RECEIVER_TLS = {
    "inlet": ("--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-ca", "{ca}"),
    "storescp": ("+tls", "{key}", "{cert}", "+cf", "{ca}"),
}
SENDERS = {
    "storescu": (STORESCU, "-aet", "BENCHSCU", "-aec", "ANY"),
    "inlet": (
        sys.executable,
        "-m",
        "dicom_inlet",
        "send",
        "-q",
        "--aet",
        "BENCHSCU",
        "--call",
        "ANY",
    ),
}
SENDER_TLS = {
    "storescu": ("+tls", "{client_key}", "{client}", "+cf", "{ca}"),
    "inlet": ("--tls", "--tls-ca", "{ca}", "--tls-cert", "{client}", "--tls-key", "{client_key}"),
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


def commands(
    args: argparse.Namespace, values: dict[str, str], files: list[Path]
) -> tuple[list[str], list[str]]:
    """The receiver's and the sender's argv."""
    receiver = list(RECEIVERS[args.receiver])
    if args.receiver == "inlet":
        receiver += args.serve_arg
    if args.tls:  # before storescp's "-od DIR PORT"; anywhere for ours
        at = len(receiver) - 3 if args.receiver == "storescp" else len(receiver)
        receiver[at:at] = RECEIVER_TLS[args.receiver]
    sender = [*SENDERS[args.sender], *(SENDER_TLS[args.sender] if args.tls else ())]
    sender += ["127.0.0.1", "{port}", *map(str, files)]
    return [a.format(**values) for a in receiver], [a.format(**values) for a in sender]


def run_once(
    args: argparse.Namespace, files: list[Path], work: Path, tls: dict[str, str]
) -> dict[str, int]:
    data_dir, out = work / "data", work / f"{args.tool}.out"
    data_dir.mkdir()
    port = free_port()
    values = {"dir": str(data_dir), "port": str(port), "pdu": str(args.max_pdu), **tls}
    receiver, sender = commands(args, values, files)
    tool = tool_argv(args.tool, out)
    on_receiver = args.measure == "receiver"
    if on_receiver:
        receiver = tool + receiver
    else:
        sender = tool + sender
    env = {**DCMTK_ENV, "PYTHONHASHSEED": "0"}
    log = work / "receiver.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            receiver, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=work
        )
    try:
        wait_ready(port, process, log)
        subprocess.run(sender, env=env, check=True, cwd=work)
        # Files sent again replace their first copy (storescp may keep both).
        if (got := count_files(data_dir)) < len(set(files)):
            raise RuntimeError(f"{args.receiver} stored {got} of {len(set(files))} files")
    finally:
        # strace and perf wait for their child to exit: stop the receiver itself.
        under_tool = on_receiver and args.tool != "callgrind"
        target = _children(process.pid)[0] if under_tool else process.pid
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
    parser.add_argument("--sender", choices=sorted(SENDERS), default="storescu")
    parser.add_argument("--measure", choices=("receiver", "sender"), default="receiver")
    parser.add_argument("--tls", action="store_true", help="both ends over DICOM TLS")
    parser.add_argument("--workload", choices=("ct", "big"), default="ct")
    parser.add_argument("--max-pdu", type=int, default=16_384)
    parser.add_argument("--files", default="10,40", help="two instance counts (default: 10,40)")
    parser.add_argument("--corpus", type=Path, help="corpus cache (default: as peers.py --quick)")
    parser.add_argument("--work", type=Path, help="receiver's data directory's parent")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs (median)")
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="one more argument for `dicom-inlet serve`, e.g. --serve-arg=--no-journal to see "
        "what the journal costs (repeatable)",
    )
    parser.add_argument("--keep", type=Path, help="keep the tool's report of each run here")
    args = parser.parse_args(argv)
    few, many = (int(n) for n in args.files.split(","))
    root = args.corpus or Path(tempfile.gettempdir(), "dicom-inlet-bench", "corpus-quick")
    workload = corpus.build(corpus.QUICK, root, print)[args.workload]
    # More instances than the workload has send it again, so start-up weighs less.
    found = sorted(workload.directory.rglob("*.dcm"))
    files = [found[i % len(found)] for i in range(many)]
    size = sum(f.stat().st_size for f in files[few:]) / (many - few)
    work = Path(tempfile.mkdtemp(prefix="receive-cost-", dir=args.work))
    tls = make_certificates(work / "pki") if args.tls else {}
    per: dict[str, list[float]] = {}
    try:
        for _ in range(args.repeat):
            a = run_once(args, files[:few], work, tls)
            b = run_once(args, files, work, tls)
            for name in set(a) | set(b):
                per.setdefault(name, []).append((b.get(name, 0) - a.get(name, 0)) / (many - few))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    measured = args.receiver if args.measure == "receiver" else f"{args.sender} (sender)"
    peer = args.sender if args.measure == "receiver" else args.receiver
    print(
        f"{measured} from/to {peer}{' over TLS' if args.tls else ''} at max PDU "
        f"{args.max_pdu}, {args.tool}, per instance "
        f"({size / 1e3:,.0f} kB files, {few} vs {many} instances, median of {args.repeat}):"
    )
    for name, values in sorted(per.items(), key=lambda item: -statistics.median(item[1])):
        if abs(median := statistics.median(values)) >= 0.05:
            print(f"  {name:16} {median:14,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
