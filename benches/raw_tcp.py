"""Raw loopback TCP, the ceiling for any DICOM transfer of the same bytes on this machine: the
file bytes ``peers.py`` sends as DICOM, from a plain socket source to a plain socket sink.

    python benches/raw_tcp.py sink PORT
    python benches/raw_tcp.py source HOST PORT DIR

The source hands each file to the kernel (``sendfile``: no copy through user space, which a
DICOM sender reading files cannot avoid). The sink discards what it receives, each read waiting
for a full chunk (``MSG_WAITALL``: reads returning whatever little has arrived wake the sink
per packet and, on loopback, halve the throughput). At end of stream it answers the byte count,
so the source exits only once every byte has arrived (as a C-STORE-RSP follows the last
fragment). Like ``inlet_send.py``, the source prints ``READY`` once connected, waits for a line
on stdin, sends, and prints ``DONE`` and the CPU seconds it used since once the sink has
answered; it exits non-zero when the counts differ.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import time
from pathlib import Path

CHUNK = 256 * 1024


def sink(port: int) -> None:
    buffer = bytearray(CHUNK)
    with socket.create_server(("127.0.0.1", port)) as server:
        while True:
            connection, _ = server.accept()
            with connection:
                received = 0
                while n := connection.recv_into(buffer, CHUNK, socket.MSG_WAITALL):
                    received += n
                # A readiness probe has closed already: nothing to answer.
                with contextlib.suppress(OSError):
                    connection.sendall(received.to_bytes(8, "big"))


def source(host: str, port: int, directory: Path) -> int:
    paths = sorted(p for p in directory.rglob("*") if p.is_file())
    with socket.create_connection((host, port)) as connection:
        print("READY", flush=True)
        sys.stdin.readline()
        cpu = time.process_time()
        sent = 0
        for path in paths:
            with path.open("rb") as f:
                sent += connection.sendfile(f)
        connection.shutdown(socket.SHUT_WR)
        answer = connection.recv(8)
    print(f"DONE {time.process_time() - cpu:.6f}", flush=True)
    received = int.from_bytes(answer, "big") if len(answer) == 8 else -1
    if received != sent:
        print(f"sent {sent} bytes, the sink received {received}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    modes.add_parser("sink").add_argument("port", type=int)
    source_parser = modes.add_parser("source")
    source_parser.add_argument("host")
    source_parser.add_argument("port", type=int)
    source_parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    if args.mode == "sink":
        sink(args.port)
        return 0
    return source(args.host, args.port, args.directory)


if __name__ == "__main__":
    sys.exit(main())
