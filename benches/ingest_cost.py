"""CPU time of the journal's ingest thread per row, in isolation from the rest of the server.

    python benches/ingest_cost.py [--rows 4000] [--runs 5] [--work /dev/shm/ingest-cost]

A server in this process (no callbacks: rows are committed, nothing is delivered) receives
``--rows`` small instances of a ``corpus.py`` corpus (SHARDS patients x 2 studies x 2 series,
as a scanner sends them) from dicom-inlet's SCU on one association, its data_dir and journal
on ``--work`` (a tmpfs, so the disk is not what is measured). The figure is the ingest
thread's time on a CPU (``/proc/self/task/<tid>/schedstat``, nanoseconds) from before the
first instance until ``sync_journal()`` returned, divided by the rows: the row log's
decoding, SQLite's inserts and the commits, at the batch sizes a real arrival rate gives.
Each run is a fresh data_dir, without and with study events (which keep the groups' rows
too); figures are medians of the runs, interleaved. Build with ``maturin develop --release``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from pathlib import Path

import corpus

from dicom_inlet import StoreSCPServer, send
from dicom_inlet.scu import files_in

# The journal's ingest thread, as the kernel names it (15 characters of its name).
INGEST_THREAD = "dicom-inlet-jou"


def ingest_cpu_ns() -> int:
    """Nanoseconds the ingest thread has run so far (the one of this process)."""
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == INGEST_THREAD:
                return int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue
    raise RuntimeError("no journal ingest thread in this process")


def run_once(paths: list[Path], work: Path, events: bool) -> float:
    """Ingest CPU microseconds per row of one transfer into a fresh data_dir."""
    data_dir = work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    options = {"study_callbacks": [lambda completion: None], "study_timeout": 3600.0}
    server = StoreSCPServer(
        {"aetitle": "INGEST", "port": 0, "ip": "127.0.0.1"},
        data_dir=str(data_dir),
        **(options if events else {}),
    )
    server.run(block=False)
    try:
        assert server.scp is not None
        # Answered by the ingest thread: it runs, under its name.
        server.scp.sync_journal()
        before = ingest_cpu_ns()
        result = send("127.0.0.1", server.port, paths, called_aet="INGEST")
        assert result.stored == len(paths), result.failures[:3]
        server.scp.sync_journal()
        after = ingest_cpu_ns()
    finally:
        server.shutdown()
    return (after - before) / 1000 / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/dev/shm/ingest-cost"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    # One of each other kind: the corpus writes every directory.
    spec = corpus.Spec("ingest", ct=1, small=args.rows, big=1, big_frames=1)
    workloads = corpus.build(spec, args.work / "corpus", log=lambda *a: None)
    paths = files_in(workloads["small"].directory)
    figures: dict[str, list[float]] = {"no events": [], "study events": []}
    for _ in range(args.runs):
        for name in figures:
            figures[name].append(run_once(paths, args.work, name == "study events"))
    medians = {name: statistics.median(runs) for name, runs in figures.items()}
    if args.json:
        print(json.dumps({"rows": len(paths), "us_per_row": medians, "runs": figures}))
        return
    print(f"ingest CPU per row, {len(paths)} rows, median of {args.runs} (pid {os.getpid()}):")
    for name, runs in figures.items():
        spread = ", ".join(f"{r:.2f}" for r in runs)
        print(f"  {name:12} {medians[name]:6.2f} us/row  ({spread})")


if __name__ == "__main__":
    main()
