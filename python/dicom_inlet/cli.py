"""The ``dicom-inlet`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from dicom_inlet.models import DEFAULT_AE_TITLE, DicomNode, StorageSortKey
from dicom_inlet.server import StoreSCPServer

__all__ = ["main"]

DEFAULT_PORT = 11112


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, got {port}")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-inlet",
        description="A fast, safe DICOM Storage SCP (C-STORE and C-ECHO receiver).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="receive instances (C-STORE) and store them as DICOM files",
        description="Run a Storage SCP: accept associations, answer C-ECHO, store every "
        "C-STORE instance as a Part 10 file under DATA_DIR. Ctrl-C stops it gracefully.",
    )
    serve.add_argument(
        "data_dir",
        nargs="?",
        default="dicom-data",
        metavar="DATA_DIR",
        help="storage root, created if missing (default: ./dicom-data)",
    )
    serve.add_argument(
        "--port",
        "-p",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port to listen on; 0 picks a free one (default: {DEFAULT_PORT})",
    )
    serve.add_argument(
        "--aet",
        "-a",
        default=DEFAULT_AE_TITLE,
        help=f"our AE title (default: {DEFAULT_AE_TITLE})",
    )
    serve.add_argument(
        "--host", default="0.0.0.0", help="address to bind (default: all interfaces)"
    )
    serve.add_argument(
        "--sort-by",
        choices=[k.value.lower() for k in StorageSortKey],
        default="patient",
        help="directory layout: patient = PatientID/Study/Series/SOP.dcm, study, series, "
        "image = SOPInstanceUID.dcm (default: patient)",
    )
    serve.add_argument(
        "--require-called-aet",
        action="store_true",
        help="reject associations whose called AE title is not ours",
    )
    serve.add_argument(
        "--calling-aet",
        action="append",
        default=[],
        metavar="AET",
        help="accept only this calling AE title (repeat for several)",
    )
    serve.add_argument(
        "--max-associations",
        type=int,
        default=64,
        help="associations served at once (default: 64)",
    )
    serve.add_argument(
        "--durable",
        action="store_true",
        help="fsync every file and directory before answering success",
    )
    serve.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only")
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        server = StoreSCPServer(
            DicomNode(aetitle=args.aet, port=args.port, ip=args.host),
            data_dir=args.data_dir,
            sort_by=args.sort_by,
            require_called_aet=args.require_called_aet,
            require_calling_aet=args.calling_aet,
            maximum_associations=args.max_associations,
            durable=args.durable,
        )
        server.run(block=True)
    except (OSError, ValueError) as error:
        print(f"dicom-inlet: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    return _serve(args)
