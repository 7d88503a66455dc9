"""dicom-inlet with a store handler that only answers 0x0000: the cost of the verdict step
(a Python thread deciding each instance before it is stored), measured by ``peers.py``
against dicom-inlet without a handler. Run as ``python benches/inlet_handler.py DATA_DIR PORT``.
"""

from __future__ import annotations

import argparse
import sys

from dicom_inlet import StoreSCPServer
from dicom_inlet.handlers import IncomingInstance


def success(instance: IncomingInstance) -> int:
    return 0x0000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("port", type=int)
    parser.add_argument("--aet", default="INLET")
    args = parser.parse_args()
    node = {"aetitle": args.aet, "port": args.port, "ip": "127.0.0.1"}
    StoreSCPServer(node, data_dir=args.data_dir, handler=success).run(block=True)


if __name__ == "__main__":
    sys.exit(main())
