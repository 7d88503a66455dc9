"""A pynetdicom Storage SCP that writes each received instance as a file: the peer
``peers.py`` measures. Run as ``python benches/pynetdicom_scp.py DATA_DIR PORT``.

It follows pynetdicom's own fastest recipe: the handler writes ``event.encoded_dataset()``
(preamble, file meta and the received data set bytes, not decoded) and the largest PDU we
advertise is the one dicom-inlet uses (``--max-pdu`` another).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

SUCCESS = 0x0000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("port", type=int)
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--max-pdu", type=int, default=262_144, help="largest PDU we accept")
    args = parser.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)

    def handle_store(event: evt.Event) -> int:
        name = os.path.join(args.data_dir, f"{event.request.AffectedSOPInstanceUID}.dcm")
        with open(name, "wb") as f:
            f.write(event.encoded_dataset())
        return SUCCESS

    ae = AE(ae_title=args.aet)
    ae.maximum_pdu_size = args.max_pdu
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", args.port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
