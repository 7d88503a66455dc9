"""dicom-inlet's own storage SCU as a sender for ``peers.py``, so receivers can be measured above
DCMTK ``storescu``'s ceiling. Run as
``python benches/inlet_send.py HOST PORT DIR [--associations N] [--window W]
[--tls-ca CA --tls-cert CERT --tls-key KEY]`` (TLS when ``--tls-ca`` is given).

Start-up (imports, listing the files) and exit stay off the clock: it prints ``READY``, waits
for a line on stdin, sends every file below ``DIR``, prints ``DONE`` and the CPU seconds it
used since, and exits non-zero unless all were stored.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dicom_inlet import send
from dicom_inlet.scu import files_in
from dicom_inlet.tls import ClientTLS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--associations", type=int, default=1)
    parser.add_argument("--window", type=int, default=1, help="asynchronous operations window")
    parser.add_argument("--tls-ca", help="connect with TLS, trusting this CA")
    parser.add_argument("--tls-cert", help="our client certificate")
    parser.add_argument("--tls-key", help="its key")
    args = parser.parse_args()
    tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else False
    paths = files_in(args.directory)
    print("READY", flush=True)
    sys.stdin.readline()
    cpu = time.process_time()
    result = send(
        args.host,
        args.port,
        paths,
        called_aet="ANY",
        calling_aet="BENCHSCU",
        associations=args.associations,
        async_window=args.window,
        tls=tls,
    )
    print(f"DONE {time.process_time() - cpu:.6f}", flush=True)
    for failure in result.failures[:5]:
        print(f"{failure.path}: {failure.status} {failure.error_comment}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
