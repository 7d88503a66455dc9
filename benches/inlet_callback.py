"""dicom-inlet with one Python callback reading ``ds.SOPInstanceUID`` and ``ds.Modality``: the
peer ``peers.py`` measures against dicom-inlet without callbacks. Run as
``python benches/inlet_callback.py DATA_DIR PORT --expect N``.

Once ``N`` callbacks have run it prints ``ALL`` on stdout, so the benchmark's clock stops when
the last instance has been through Python, not merely stored.
"""

from __future__ import annotations

import argparse
import sys

from pydicom import Dataset

from dicom_inlet import StoreSCPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("port", type=int)
    parser.add_argument("--aet", default="INLET")
    parser.add_argument("--max-pdu", type=int, default=262_144, help="largest PDU we accept")
    parser.add_argument("--expect", type=int, required=True, help="callbacks before 'ALL'")
    args = parser.parse_args()
    seen: set[str] = set()
    modalities: set[str] = set()

    def callback(ds: Dataset) -> None:
        seen.add(ds.SOPInstanceUID)
        modalities.add(ds.Modality)
        if len(seen) == args.expect:
            print("ALL", flush=True)

    node = {"aetitle": args.aet, "port": args.port, "ip": "127.0.0.1"}
    server = StoreSCPServer(
        node, data_dir=args.data_dir, callbacks=[callback], maximum_pdu_size=args.max_pdu
    )
    server.run(block=True)


if __name__ == "__main__":
    sys.exit(main())
