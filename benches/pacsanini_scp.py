"""pacsanini's ``StoreSCPServer``, the server dicom-inlet is API-compatible with: the peer
``peers.py`` measures. pacsanini pins old pydicom/pynetdicom, so this runs in its own venv:
``PACSANINI_PYTHON benches/pacsanini_scp.py DATA_DIR PORT``.

Every instance goes through pacsanini's own C-STORE handler (decode, then ``save_as`` under
PatientID/Study/Series, its default layout). Only the listening socket differs:
``StoreSCPServer.run`` binds all interfaces, so the same association acceptor (pacsanini's
AE title, every storage context, pynetdicom's defaults) is started here on 127.0.0.1 instead.
"""

from __future__ import annotations

import argparse
import signal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("port", type=int)
    parser.add_argument("--aet", default="PACSANINI")
    args = parser.parse_args()
    # Blocked before any thread exists (numpy's BLAS starts some on import, pynetdicom one per
    # association), all inheriting the mask, so the signal waits for sigwait below instead of
    # killing the process through one of them.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    from pacsanini.net.storescp import StoreSCPServer
    from pynetdicom import AE, AllStoragePresentationContexts

    server = StoreSCPServer(
        {"aetitle": args.aet, "ip": "127.0.0.1", "port": args.port}, data_dir=args.data_dir
    )
    ae = AE(ae_title=server.node.aetitle)
    ae.supported_contexts = AllStoragePresentationContexts
    server.scp = ae.start_server(
        ("127.0.0.1", args.port),
        block=False,
        evt_handlers=server.handlers,
        ae_title=server.node.aetitle,
    )
    signal.sigwait(stop)
    server.shutdown()


if __name__ == "__main__":
    main()
