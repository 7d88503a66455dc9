"""The Storage SCP of pynetdicom's storage examples, under pynetdicom or under
dicom-inlet's ``dicom_inlet.pynetdicom``: the same code, only the import differs. Its
handler decodes each data set, adds the file meta and writes it with ``save_as``. Run as
``python benches/seed_scp.py MODULE DATA_DIR PORT`` (MODULE: pynetdicom or
dicom_inlet.pynetdicom).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import threading
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("module", choices=["pynetdicom", "dicom_inlet.pynetdicom"])
    parser.add_argument("data_dir")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    pn = importlib.import_module(args.module)
    os.makedirs(args.data_dir, exist_ok=True)
    os.chdir(args.data_dir)  # the handler saves under the SOP Instance UID, relative

    def handle_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(ds.SOPInstanceUID, enforce_file_format=True)
        return 0x0000

    ae = pn.AE()
    ae.supported_contexts = pn.StoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", args.port), block=False, evt_handlers=[(pn.evt.EVT_C_STORE, handle_store)]
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
