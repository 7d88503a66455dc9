"""The ``dicom-inlet`` command line: ``serve`` (Storage SCP), ``send`` (storage SCU), ``echo``,
and ``status``/``replay`` (the journal of a data_dir)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from dicom_inlet import console, delivery
from dicom_inlet.models import DEFAULT_AE_TITLE, DicomNode, StorageSortKey
from dicom_inlet.scu import DEFAULT_CALLED_AET, echo, files_in, send, status_text
from dicom_inlet.server import DEFAULT_STUDY_TIMEOUT, StoreSCPServer

__all__ = ["main"]

DEFAULT_PORT = 11112
EXIT_FAILED_INSTANCES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Requests outstanding per association we offer at most; the core refuses more.
MAX_ASYNC_WINDOW = 64


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``dicom-inlet send: error: ...``, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class _ConfigError(ValueError):
    pass


class _ConfigChecker(_Parser):
    """The same options, checking a config file's values: errors raise, nothing exits."""

    def error(self, message: str) -> NoReturn:
        raise _ConfigError(message)


def _integer(name: str, lowest: int, highest: int) -> Callable[[str], int]:
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number, got {text!r}"
            ) from None
        if not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(f"{name} must be {lowest} to {highest}, got {value}")
        return value

    return integer


def _port(lowest: int) -> Callable[[str], int]:
    return _integer("port", lowest, 65535)


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def positive(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return positive


# ---------------------------------------------------------------------------------------------
# serve


def _add_serve(commands: Any) -> argparse.ArgumentParser:
    serve = commands.add_parser(
        "serve",
        help="receive instances (Storage SCP) and store them as DICOM files",
        epilog="example: dicom-inlet serve /srv/dicom -p 104 -a INLET --calling-aet CT1",
        description="Run a Storage SCP: accept associations, answer C-ECHO, store every "
        "C-STORE instance as a Part 10 file under DATA_DIR (data set bytes as received). "
        "Ctrl-C or SIGTERM stops it gracefully. On a terminal a status line shows the "
        "associations open, instances and MB/s; otherwise one log line per association.",
    )
    serve.add_argument(
        "data_dir",
        nargs="?",
        default="dicom-data",
        metavar="DATA_DIR",
        help="storage root, created if missing (default: ./dicom-data)",
    )
    serve.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help="TOML file setting any of these options by their long name, - or _ alike "
        '(data_dir = "/srv/dicom", port = 104, calling_aet = ["CT1", "MR2"], durable = '
        "true, ...); the command line wins",
    )
    serve.add_argument(
        "--port",
        "-p",
        type=_port(0),
        default=DEFAULT_PORT,
        help=f"TCP port to listen on; 0 picks a free one (default: {DEFAULT_PORT})",
    )
    serve.add_argument(
        "--aet", "-a", default=DEFAULT_AE_TITLE, help=f"our AE title (default: {DEFAULT_AE_TITLE})"
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
        help="reject associations whose Called AE Title is not ours (A-ASSOCIATE-RJ reason 7)",
    )
    serve.add_argument(
        "--calling-aet",
        action="append",
        default=[],
        metavar="AET",
        help="accept only this Calling AE Title (repeat for several; others get "
        "A-ASSOCIATE-RJ reason 3)",
    )
    serve.add_argument(
        "--max-associations",
        type=_positive(int),
        default=64,
        metavar="N",
        help="associations served at once; the next is rejected as transient, local limit "
        "exceeded (default: 64)",
    )
    serve.add_argument(
        "--max-pdu",
        type=_integer("max-pdu", 0, 2**32 - 1),
        default=262_144,
        metavar="BYTES",
        help="largest P-DATA-TF PDU we receive, announced to peers as Maximum Length "
        "(default: 262144)",
    )
    serve.add_argument(
        "--max-instance-size",
        type=_positive(int),
        metavar="BYTES",
        help="refuse larger data sets with 0xA700 (default: no limit)",
    )
    for name, default, meaning in [
        ("acse", 30.0, "a new connection has to send its A-ASSOCIATE-RQ (ARTIM)"),
        ("network", 60.0, "an association may stay idle before A-ABORT"),
        ("dimse", 30.0, "each PDU of a message under way may take before A-ABORT"),
    ]:
        serve.add_argument(
            f"--{name}-timeout",
            type=_positive(float),
            default=default,
            metavar="SECONDS",
            help=f"seconds {meaning} (default: {default:g})",
        )
    serve.add_argument(
        "--shutdown-timeout",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="seconds open associations get to finish at Ctrl-C before A-ABORT (default: 10)",
    )
    serve.add_argument(
        "--transfer-syntax",
        dest="transfer_syntaxes",
        action="append",
        metavar="UID",
        help="accept this transfer syntax (repeat, in order of preference; default: all "
        "supported, taking the first the peer proposes)",
    )
    serve.add_argument(
        "--sop-class",
        dest="sop_classes",
        action="append",
        metavar="UID",
        help="accept this SOP class (repeat; default: Verification and every storage class)",
    )
    serve.add_argument(
        "--durable",
        action="store_true",
        help="fsync every file and its directory before answering success",
    )
    serve.add_argument(
        "--no-journal",
        action="store_true",
        help="do not record instances in DATA_DIR/.journal (no --on-study, no status)",
    )
    serve.add_argument(
        "--duplicates",
        choices=["replace", "keep-first", "reject", "keep-both"],
        default="replace",
        help="an instance whose file exists: replace it, keep the first, reject it "
        "(0x0111), or keep both as UID~2.dcm (default: replace)",
    )
    serve.add_argument(
        "--on-study",
        metavar="CMD",
        help="run CMD (split like a shell would, but never run by one) with the study "
        "folder appended, once a study has been quiet for --study-timeout; its UIDs are in "
        "DICOM_INLET_STUDY_UID, DICOM_INLET_PATIENT_ID, DICOM_INLET_REVISION",
    )
    serve.add_argument(
        "--study-timeout",
        type=_positive(float),
        default=DEFAULT_STUDY_TIMEOUT,
        metavar="SECONDS",
        help=f"quiet seconds before a study counts as complete (default: "
        f"{DEFAULT_STUDY_TIMEOUT:g})",
    )
    serve.add_argument(
        "--on-release",
        action="store_true",
        help="also run --on-study for an association's studies as soon as it is released",
    )
    serve.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only")
    serve.set_defaults(run=_serve)
    return serve


def _serve(args: argparse.Namespace) -> int:
    server = StoreSCPServer(
        DicomNode(aetitle=args.aet, port=args.port, ip=args.host),
        data_dir=args.data_dir,
        sort_by=args.sort_by,
        require_called_aet=args.require_called_aet,
        require_calling_aet=args.calling_aet,
        maximum_associations=args.max_associations,
        maximum_pdu_size=args.max_pdu,
        acse_timeout=args.acse_timeout,
        network_timeout=args.network_timeout,
        dimse_timeout=args.dimse_timeout,
        max_instance_size=args.max_instance_size,
        sop_classes=args.sop_classes,
        transfer_syntaxes=args.transfer_syntaxes,
        durable=args.durable,
        shutdown_timeout=args.shutdown_timeout,
        journal=not args.no_journal,
        duplicates=args.duplicates,
        study_callbacks=[delivery.run_command(shlex.split(args.on_study))]
        if args.on_study
        else None,
        study_timeout=args.study_timeout,
        events_on_release=args.on_release,
    )
    with console.server_status(server, enabled=sys.stderr.isatty() and not args.quiet):
        server.run(block=True)
    return 0


# ---------------------------------------------------------------------------------------------
# send and echo


def _add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", metavar="HOST", help="the peer's host name or address")
    parser.add_argument("port", metavar="PORT", type=_port(1), help="the peer's TCP port")
    parser.add_argument(
        "--aet",
        "-aet",
        default=DEFAULT_AE_TITLE,
        help=f"our AE title, the Calling AE Title (default: {DEFAULT_AE_TITLE})",
    )
    parser.add_argument(
        "--call",
        "-aec",
        default=DEFAULT_CALLED_AET,
        metavar="AET",
        help=f"the peer's AE title, the Called AE Title (default: {DEFAULT_CALLED_AET})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=30.0,
        metavar="SECONDS",
        help="seconds to wait to connect and for each answer (default: 30)",
    )


def _add_send(commands: Any) -> None:
    send_parser = commands.add_parser(
        "send",
        help="send DICOM files to a Storage SCP (C-STORE)",
        description="Storage SCU: send Part 10 files with C-STORE, each data set streamed "
        "from disk exactly as stored. Proposes one presentation context per SOP class and "
        "transfer syntax found, plus Implicit VR Little Endian for Explicit VR Little Endian "
        "files (converted on the fly if the peer accepts only that). Directories are searched "
        "recursively; files that are not DICOM are listed as failed, the others still sent. "
        "Exit code 0 when the peer stored every instance (success or warning status), 1 when "
        "any failed (each listed with its status and Error Comment), 2 when nothing could be "
        "sent (unreachable peer, association rejected: the reason is printed).",
        epilog="example: dicom-inlet send pacs.example 104 study/ --call PACS -n 4",
    )
    _add_peer_arguments(send_parser)
    send_parser.add_argument(
        "paths", nargs="+", metavar="PATH", type=Path, help="DICOM files or directories"
    )
    send_parser.add_argument(
        "--associations",
        "-n",
        type=_positive(int),
        default=1,
        metavar="N",
        help="parallel associations to the peer, sharing the files (default: 1)",
    )
    send_parser.add_argument(
        "--async-window",
        type=_integer("window", 1, MAX_ASYNC_WINDOW),
        default=1,
        metavar="N",
        help=f"C-STORE requests to keep outstanding per association, 1 to {MAX_ASYNC_WINDOW}, "
        "as far as the "
        "peer grants an asynchronous operations window (default: 1, none proposed)",
    )
    send_parser.add_argument(
        "--max-pdu",
        type=_integer("max-pdu", 0, 2**32 - 1),
        default=262_144,
        metavar="BYTES",
        help="largest P-DATA-TF PDU we receive, announced as Maximum Length; what we send "
        "is cut to the peer's (default: 262144)",
    )
    send_parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress, only failures and the summary"
    )
    send_parser.set_defaults(run=_send)


def _send(args: argparse.Namespace) -> int:
    # Expanded here (send() would do it too) so the progress bar knows the total.
    files = [file for path in args.paths for file in files_in(path)]
    if not files:
        raise ValueError(f"no files under {' '.join(map(str, args.paths))}")
    progress = console.SendProgress(len(files), bar=sys.stderr.isatty(), quiet=args.quiet)
    result = send(
        args.host,
        args.port,
        files,
        called_aet=args.call,
        calling_aet=args.aet,
        associations=args.associations,
        max_pdu=args.max_pdu,
        timeout=args.timeout,
        async_window=args.async_window,
        progress=progress.update,
    )
    progress.close()
    stored = result.instances - result.failed
    rate = result.bytes / 1e6 / result.seconds if result.seconds > 0 else 0.0
    print(
        f"Stored {stored} of {result.instances} instances ({result.bytes / 1e6:.1f} MB) "
        f"at {args.call}@{args.host}:{args.port} in {result.seconds:.2f} s ({rate:.1f} MB/s)."
    )
    if result.failed:
        print(f"{result.failed} failed:")
        for failure in result.failures:
            print(f"  {console.describe(failure)}")
        return EXIT_FAILED_INSTANCES
    return 0


def _add_echo(commands: Any) -> None:
    echo_parser = commands.add_parser(
        "echo",
        help="verify a DICOM peer (C-ECHO)",
        description="Associate with the peer, send a C-ECHO (Verification SOP Class) and "
        "print its status and round trip. Exit code 0 on success, 1 on another status, 2 "
        "when no association could be made (the A-ASSOCIATE-RJ reason is printed).",
        epilog="example: dicom-inlet echo pacs.example 104 --call PACS",
    )
    _add_peer_arguments(echo_parser)
    echo_parser.set_defaults(run=_echo)


def _echo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    status = echo(
        args.host, args.port, called_aet=args.call, calling_aet=args.aet, timeout=args.timeout
    )
    elapsed = (time.monotonic() - started) * 1000
    print(f"C-ECHO {args.call}@{args.host}:{args.port}: {status_text(status)} ({elapsed:.0f} ms)")
    return 0 if status == 0 else EXIT_FAILED_INSTANCES


# ---------------------------------------------------------------------------------------------
# status and replay: the journal of a data_dir


def _add_journal_commands(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="list what a data_dir has received, from its journal",
        description="Print the studies of DATA_DIR's journal as a table: series and "
        "instances, last arrival, and deliveries pending or failed; with --failed, the "
        "parked instances whose callbacks kept failing.",
    )
    status.add_argument("data_dir", metavar="DATA_DIR", help="the storage root")
    status.add_argument(
        "--failed", action="store_true", help="list parked instances and their last error"
    )
    status.set_defaults(run=_status)
    replay = commands.add_parser(
        "replay",
        help="deliver parked instances again at the next start",
        description="Set DATA_DIR's parked deliveries (all, or --id) back to pending: the "
        "next 'serve' on DATA_DIR runs their callbacks again.",
    )
    replay.add_argument("data_dir", metavar="DATA_DIR", help="the storage root")
    replay.add_argument(
        "--id", dest="ids", type=int, action="append", metavar="N", help="only this journal id"
    )
    replay.set_defaults(run=_replay)


def _status(args: argparse.Namespace) -> int:
    print(delivery.status_table(args.data_dir, failed=args.failed))
    return 0


def _replay(args: argparse.Namespace) -> int:
    count = delivery.replay(args.data_dir, args.ids)
    print(f"{count} parked instances pending again")
    return 0


# ---------------------------------------------------------------------------------------------


def _parser(kind: type[_Parser] = _Parser) -> tuple[_Parser, argparse.ArgumentParser]:
    """The command line parser and its ``serve`` subparser."""
    parser = kind(
        prog="dicom-inlet",
        description="A fast DICOM Storage SCP (receive with C-STORE, answer C-ECHO) and "
        "storage SCU (send files, verify peers).",
        epilog="Run 'dicom-inlet COMMAND --help' for a command's options.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    serve = _add_serve(commands)
    _add_send(commands)
    _add_echo(commands)
    _add_journal_commands(commands)
    return parser, serve


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with open(path, "rb") as file:
        return tomllib.load(file)


def _config_defaults(path: Path) -> dict[str, Any]:
    """The serve options a TOML file sets, checked and converted by the option parser
    itself: each key becomes its ``--long-option`` (``data_dir`` the positional)."""
    argv: list[str] = []
    for key, value in _read_toml(path).items():
        flag = "--" + key.replace("_", "-")
        if key in ("data_dir", "data-dir") and isinstance(value, str):
            argv.append(value)
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, bool) and item:
                argv.append(flag)
            elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
                argv.extend([flag, str(item)])
            elif not isinstance(item, bool):
                raise _ConfigError(f"{key}: unsupported value {item!r}")
    checker, _ = _parser(_ConfigChecker)
    given = vars(checker.parse_args(["serve", *argv]))
    defaults = vars(checker.parse_args(["serve"]))
    given.pop("config")
    return {dest: value for dest, value in given.items() if value != defaults[dest]}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser, serve = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None:
        # The file's values become the defaults, so the command line still wins.
        try:
            serve.set_defaults(**_config_defaults(args.config))
        except (OSError, ValueError) as error:
            serve.error(f"config file {args.config}: {error}")
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _parse(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("\ndicom-inlet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, ValueError) as error:
        # User mistakes and unreachable or refusing peers: one line, no traceback.
        # ConnectionError (and AssociationRejected, with its reason) is an OSError.
        print(f"dicom-inlet {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
