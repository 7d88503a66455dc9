"""The ``dicom-inlet`` command line: ``serve`` (Storage SCP), ``send`` (storage SCU), ``echo``,
and ``status``/``replay`` (the journal of a data_dir)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any, NoReturn

from dicom_inlet import __version__, console, delivery
from dicom_inlet.identity import UserIdentity, UsersFile
from dicom_inlet.models import DEFAULT_AE_TITLE, DicomNode, StorageSortKey
from dicom_inlet.scu import DEFAULT_CALLED_AET, InstanceResult, echo, files_in, send, status_text
from dicom_inlet.server import DEFAULT_STUDY_TIMEOUT, StoreSCPServer
from dicom_inlet.tls import DEFAULT_TLS_PORT, ClientTLS, ServerTLS

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


def _ae_title(text: str) -> str:
    try:
        return DicomNode(aetitle=text, port=0).ae_title
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def _handler(text: str) -> Callable[..., Any]:
    from dicom_inlet.handlers import load_handler

    try:
        return load_handler(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ---------------------------------------------------------------------------------------------
# serve


def _add_serve(commands: Any) -> argparse.ArgumentParser:
    serve = commands.add_parser(
        "serve",
        help="receive instances (Storage SCP) and store them as DICOM files",
        epilog="example: dicom-inlet serve /srv/dicom -p 104 -a INLET --calling-aet CT1",
        description="Run a Storage SCP: accept associations, answer C-ECHO, store every "
        "C-STORE instance as a Part 10 file under DATA_DIR (data set bytes as received). "
        "Ctrl-C or SIGTERM stops it gracefully; SIGHUP reloads the TLS files (a renewed "
        "certificate) and the --users file. On a terminal a status line shows the "
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
        help=f"TCP port to listen on; 0 picks a free one (default: {DEFAULT_PORT}, or "
        f"{DEFAULT_TLS_PORT} when it serves TLS alone)",
    )
    serve.add_argument(
        "--aet",
        "-a",
        type=_ae_title,
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
        help="have every file, its name and its journal row on disk before answering success",
    )
    serve.add_argument(
        "--handler",
        type=_handler,
        metavar="MODULE:FUNCTION",
        help="decide each instance's status before it is stored: FUNCTION(instance) returns "
        "the C-STORE status (0 success, 0xBxxx warning, else refused and not stored), as "
        "with StoreSCPServer(handler=...); MODULE is imported from the current directory "
        "or the Python path",
    )
    serve.add_argument(
        "--handler-threads",
        type=_positive(int),
        metavar="N",
        help="Python threads running the handler (default: --max-associations)",
    )
    serve.add_argument(
        "--handler-timeout",
        type=_positive(float),
        default=30.0,
        metavar="SECONDS",
        help="seconds to wait for the handler's verdict before refusing with 0xA700 (default: 30)",
    )
    serve.add_argument(
        "--echo-handler",
        type=_handler,
        metavar="MODULE:FUNCTION",
        help="decide each C-ECHO's status: FUNCTION(echo) returns it, as with "
        "StoreSCPServer(echo_handler=...); one that fails or exceeds --handler-timeout "
        "answers 0 (success)",
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
    _add_serve_tls(serve)
    _add_serve_cluster(serve)
    identity = serve.add_argument_group("user identity (PS3.7 D.3.3.7)")
    identity.add_argument(
        "--users",
        type=Path,
        metavar="FILE",
        help="accept only the usernames and passcodes of this file (see 'dicom-inlet users "
        "add'), read again at SIGHUP; other identities get A-ASSOCIATE-RJ",
    )
    identity.add_argument(
        "--require-user-identity",
        action="store_true",
        help="reject associations that present no user identity",
    )
    serve.set_defaults(run=_serve)
    return serve


def _add_serve_tls(serve: argparse.ArgumentParser) -> None:
    tls = serve.add_argument_group("DICOM TLS (PS3.15 Annex B)")
    tls.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="serve TLS with this certificate chain (PEM)"
    )
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's key (PEM)")
    tls.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="require client certificates issued by these CAs (PEM): mutual TLS",
    )
    tls.add_argument(
        "--tls-crl",
        type=Path,
        metavar="FILE",
        help="with --tls-ca: refuse client certificates these CRLs (PEM) revoke, and those "
        "whose issuer has no CRL in the file; read again at SIGHUP",
    )
    tls.add_argument(
        "--tls-port",
        type=_port(0),
        metavar="PORT",
        help="serve TLS on this port and plain TCP on --port (default: TLS alone, on --port)",
    )


def _add_serve_cluster(serve: argparse.ArgumentParser) -> None:
    cluster = serve.add_argument_group("several nodes, load balancers and monitoring")
    cluster.add_argument(
        "--node-id",
        metavar="ID",
        help="this node's name among those sharing DATA_DIR; its spool area is "
        "DATA_DIR/.incoming/ID (default: HOSTNAME-PID)",
    )
    cluster.add_argument(
        "--metrics-port",
        type=_port(0),
        metavar="PORT",
        help="serve Prometheus /metrics, /healthz and /readyz over HTTP on this port "
        "(needs dicom-inlet[metrics]; default: none)",
    )
    cluster.add_argument(
        "--drain-delay",
        type=_positive(float),
        default=0.0,
        metavar="SECONDS",
        help="at SIGTERM, /readyz fails at once but associations are accepted for this long "
        "before the port closes, for the load balancer to notice (default: 0)",
    )
    cluster.add_argument(
        "--journal",
        metavar="URL",
        help="keep the journal in this PostgreSQL database (postgresql://user@host:port/db), "
        "one for all the nodes sharing DATA_DIR (default: SQLite in DATA_DIR/.journal)",
    )
    cluster.add_argument(
        "--journal-lease",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="with --journal URL: a silent node's study timers and undelivered instances "
        "are taken over by the others after this long (default: 10)",
    )
    cluster.add_argument(
        "--events",
        metavar="URL",
        help="publish instance and study events to RabbitMQ at this amqp:// URL, confirmed "
        "before a row counts as delivered (needs dicom-inlet[amqp]; default: none)",
    )
    cluster.add_argument(
        "--events-exchange",
        metavar="NAME",
        help="the durable topic exchange of --events (default: dicom-inlet)",
    )


def _server_tls(args: argparse.Namespace) -> ServerTLS | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_ca is not None or args.tls_crl is not None or args.tls_port is not None:
            raise ValueError("--tls-ca, --tls-crl and --tls-port need --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    if args.tls_crl is not None and args.tls_ca is None:
        raise ValueError("--tls-crl needs --tls-ca, the CAs whose certificates it revokes")
    return ServerTLS(args.tls_cert, args.tls_key, args.tls_ca, args.tls_crl)


def _journal(args: argparse.Namespace) -> bool | str:
    if args.journal is not None and args.no_journal:
        raise ValueError("--journal URL and --no-journal: give one")
    return args.journal if args.journal is not None else not args.no_journal


def _events(args: argparse.Namespace) -> Any:
    if args.events is None:
        if args.events_exchange is not None:
            raise ValueError("--events-exchange needs --events URL")
        return None
    try:
        from dicom_inlet.amqp import DEFAULT_EXCHANGE, AmqpSink
    except ImportError as error:
        raise ImportError(
            f"--events needs pika ({error}): pip install 'dicom-inlet[amqp]'"
        ) from None
    return AmqpSink(args.events, exchange=args.events_exchange or DEFAULT_EXCHANGE)


def _serve(args: argparse.Namespace) -> int:
    tls = _server_tls(args)
    port = args.port
    if port is None:
        port = DEFAULT_TLS_PORT if tls is not None and args.tls_port is None else DEFAULT_PORT
    server = StoreSCPServer(
        DicomNode(aetitle=args.aet, port=port, ip=args.host),
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
        tls=tls,
        tls_port=args.tls_port,
        user_identity=None if args.users is None else UsersFile(args.users),
        require_user_identity=args.require_user_identity,
        handler=args.handler,
        handler_threads=args.handler_threads,
        handler_timeout=args.handler_timeout,
        journal=_journal(args),
        duplicates=args.duplicates,
        study_callbacks=[delivery.run_command(shlex.split(args.on_study))]
        if args.on_study
        else None,
        study_timeout=args.study_timeout,
        events_on_release=args.on_release,
        node_id=args.node_id,
        metrics_port=args.metrics_port,
        drain_delay=args.drain_delay,
        echo_handler=args.echo_handler,
        journal_lease=args.journal_lease,
        events=_events(args),
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
    _add_client_tls(parser)
    identity = parser.add_argument_group("user identity (PS3.7 D.3.3.7)")
    identity.add_argument("--user", metavar="NAME", help="present this username")
    identity.add_argument("--password", metavar="PASSCODE", help="and this passcode")
    identity.add_argument(
        "--token", metavar="JWT", help="present this JSON Web Token instead of a username"
    )


def _user_identity(args: argparse.Namespace) -> UserIdentity | None:
    if args.token is not None:
        if args.user is not None or args.password is not None:
            raise ValueError("--token and --user/--password exclude each other")
        return UserIdentity.jwt(args.token)
    if args.user is None:
        if args.password is not None:
            raise ValueError("--password needs --user")
        return None
    return UserIdentity.username(args.user, args.password)


def _add_client_tls(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("DICOM TLS (PS3.15 Annex B)")
    tls.add_argument("--tls", action="store_true", help="connect with TLS")
    tls.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="trust these CA certificates (PEM) for the peer's (default: the system's)",
    )
    tls.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="our client certificate chain (PEM)"
    )
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    tls.add_argument(
        "--tls-no-verify-hostname",
        action="store_true",
        help="accept a peer certificate issued for another host name (its chain is checked)",
    )


def _client_tls(args: argparse.Namespace) -> ClientTLS | None:
    options = (args.tls_ca, args.tls_cert, args.tls_key)
    if not args.tls:
        if any(option is not None for option in options) or args.tls_no_verify_hostname:
            raise ValueError("the --tls-... options need --tls")
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("a TLS client certificate needs --tls-cert and --tls-key together")
    return ClientTLS(*options, verify_hostname=not args.tls_no_verify_hostname)


def _add_send(commands: Any) -> None:
    send_parser = commands.add_parser(
        "send",
        help="send DICOM files to a Storage SCP (C-STORE)",
        description="Storage SCU: send Part 10 files with C-STORE, each data set streamed "
        "from disk exactly as stored, under the data set's own SOP Class and Instance UIDs "
        "(a file meta that disagrees is logged as a warning). Proposes one presentation "
        "context per SOP class and transfer syntax found, plus Explicit VR Little Endian for "
        "big endian and deflated files and Implicit VR Little Endian for all three (converted "
        "on the fly when the peer accepts only those). Directories are searched recursively; "
        "files that are not DICOM or cannot be read are listed as failed, the others still "
        "sent. Ctrl-C stops taking files, waits for the answers to those under way and prints "
        "what was done (exit code 130). Exit code 0 when the peer stored every instance "
        "(success or warning status), 1 when any failed (each listed with its status and "
        "Error Comment), 2 when nothing could be sent (unreachable peer, association "
        "rejected: the reason is printed).",
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
    peer = f"{args.call}@{args.host}:{args.port}"
    interrupted = False
    try:
        with _interrupt_notice(progress):
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
                tls=_client_tls(args) or False,
                user_identity=_user_identity(args),
            )
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    if interrupted:
        print(
            f"Interrupted: stored {progress.stored} of {console.instances(len(files))} "
            f"({progress.bytes / 1e6:.1f} MB) at {peer} in {progress.elapsed:.2f} s; "
            f"{len(files) - progress.done} not sent."
        )
        _list_failures(progress.failures)
        return EXIT_INTERRUPTED
    rate = result.bytes / 1e6 / result.seconds if result.seconds > 0 else 0.0
    print(
        f"Stored {result.stored} of {console.instances(result.instances)} "
        f"({result.bytes / 1e6:.1f} MB) at {peer} in {result.seconds:.2f} s ({rate:.1f} MB/s)."
    )
    if result.failed:
        _list_failures(result.failures)
        return EXIT_FAILED_INSTANCES
    return 0


def _list_failures(failures: list[InstanceResult]) -> None:
    if failures:
        print(f"{len(failures)} failed:")
        for failure in failures:
            print(f"  {console.describe(failure)}")


@contextlib.contextmanager
def _interrupt_notice(progress: console.SendProgress) -> Iterator[None]:
    """While sending, Ctrl-C says at once what it does (the answers to the instances under
    way are awaited, up to the timeout) before it stops the send as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum: int, frame: object) -> None:
        progress.say("Interrupted: waiting for the answers to the instances under way.")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
        args.host,
        args.port,
        called_aet=args.call,
        calling_aet=args.aet,
        timeout=args.timeout,
        tls=_client_tls(args) or False,
        user_identity=_user_identity(args),
    )
    elapsed = (time.monotonic() - started) * 1000
    print(f"C-ECHO {args.call}@{args.host}:{args.port}: {status_text(status)} ({elapsed:.0f} ms)")
    return 0 if status == 0 else EXIT_FAILED_INSTANCES


def _add_users(commands: Any) -> None:
    users = commands.add_parser(
        "users",
        help="manage the users file of 'serve --users'",
        description="Add a user, or replace its passcode, in a users file: one line per user "
        "with the passcode hashed by scrypt (the passcode itself is not stored).",
    )
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user or replace its passcode")
    add.add_argument("file", type=Path, metavar="FILE", help="the users file, created if missing")
    add.add_argument("name", metavar="NAME", help="the username")
    add.add_argument(
        "--password", metavar="PASSCODE", help="the passcode (default: asked for, not echoed)"
    )
    add.set_defaults(run=_users_add)


def _users_add(args: argparse.Namespace) -> int:
    passcode = args.password
    if passcode is None:
        import getpass

        passcode = getpass.getpass(f"passcode for {args.name}: ")
        if passcode != getpass.getpass("again: "):
            raise ValueError("the passcodes differ")
    UsersFile.add(args.file, args.name, passcode)
    print(f"{args.name} added to {args.file}")
    return 0


# ---------------------------------------------------------------------------------------------
# status and replay: the journal of a data_dir


def _add_journal_commands(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="list what a data_dir has received, from its journal",
        description="Print the studies of DATA_DIR's journal as a table: series and "
        "instances, last arrival, and deliveries pending or failed; with --failed, the "
        "parked instances and study/series completion events whose callbacks kept failing.",
    )
    status.add_argument("data_dir", metavar="DATA_DIR", help="the storage root")
    status.add_argument(
        "--failed",
        action="store_true",
        help="list parked instances and completion events and their last error",
    )
    status.add_argument("--journal", metavar="URL", help="the PostgreSQL journal of the nodes")
    status.set_defaults(run=_status)
    replay = commands.add_parser(
        "replay",
        help="deliver parked instances and completion events again at the next start",
        description="Set DATA_DIR's parked deliveries (all, or --id, or those of --study or "
        "--series) back to pending: the next 'serve' on DATA_DIR runs their callbacks again, "
        "a replayed study or series event at once.",
    )
    replay.add_argument("data_dir", metavar="DATA_DIR", help="the storage root")
    which = replay.add_mutually_exclusive_group()
    which.add_argument(
        "--id", dest="ids", type=int, action="append", metavar="N", help="only this journal id"
    )
    which.add_argument(
        "--study", metavar="UID", help="the study's parked event, series events and instances"
    )
    which.add_argument("--series", metavar="UID", help="the series' parked event and instances")
    replay.add_argument("--journal", metavar="URL", help="the PostgreSQL journal of the nodes")
    replay.set_defaults(run=_replay)


def _status(args: argparse.Namespace) -> int:
    print(delivery.status_table(args.data_dir, failed=args.failed, journal=args.journal))
    return 0


def _replay(args: argparse.Namespace) -> int:
    count = delivery.replay(
        args.data_dir, args.ids, args.journal, study=args.study, series=args.series
    )
    print(f"{count} parked instances and events pending again")
    return 0


# ---------------------------------------------------------------------------------------------


def _parser() -> tuple[_Parser, argparse.ArgumentParser]:
    """The command line parser and its ``serve`` subparser."""
    parser = _Parser(
        prog="dicom-inlet",
        description="A fast DICOM Storage SCP (receive with C-STORE, answer C-ECHO) and "
        "storage SCU (send files, verify peers).",
        epilog="Run 'dicom-inlet COMMAND --help' for a command's options.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    serve = _add_serve(commands)
    _add_send(commands)
    _add_echo(commands)
    _add_users(commands)
    _add_journal_commands(commands)
    return parser, serve


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise _ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise _ConfigError(f"{path} is not valid TOML: {error}") from None


def _config_keys(serve: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each option a config file may set, by its long name and its destination, ``_`` for
    ``-``: every option of ``serve`` but ``--config`` and ``--help``."""
    keys: dict[str, argparse.Action] = {}
    for action in serve._actions:
        if action.dest in ("config", "help") or action.dest == argparse.SUPPRESS:
            continue
        names = [name[2:] for name in action.option_strings if name.startswith("--")]
        for name in [*names, action.dest]:
            keys[name.replace("-", "_")] = action
    return keys


def _config_scalar(action: argparse.Action, value: Any, base: Path) -> Any:
    """One TOML value for ``action``, checked as the command line checks it and of the TOML
    type the option means: a string is not a number, nor a boolean a value."""
    if isinstance(value, bool):
        raise _ConfigError(f"takes a value, not {str(value).lower()}")
    if not isinstance(value, (str, int, float)):
        raise _ConfigError(f"takes a single value, got {value!r}")
    convert: Callable[[str], Any] = action.type if callable(action.type) else str
    try:
        converted = convert(str(value))
    except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
        raise _ConfigError(str(error)) from None
    textual = isinstance(converted, (str, PurePath))
    if isinstance(value, str) and not textual:
        raise _ConfigError(f"must be a number, got the string {value!r}")
    if not isinstance(value, str) and textual:
        raise _ConfigError(f"must be a string, got {value!r}")
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise _ConfigError(f"must be one of {choices}, got {value!r}")
    # A file's relative paths mean the same wherever the server is started from.
    if isinstance(converted, PurePath):
        return type(converted)(base / converted)
    if action.dest == "data_dir":
        return str(base / converted)
    return converted


def _config_value(action: argparse.Action, value: Any, base: Path) -> Any:
    if action.nargs == 0:
        # A flag (--durable): only true or false; "false" would otherwise be truthy.
        if not isinstance(value, bool):
            raise _ConfigError(f"must be true or false, got {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return value
        return action.const if value else action.default
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        items = value if isinstance(value, list) else [value]
        return [_config_scalar(action, item, base) for item in items]
    return _config_scalar(action, value, base)


def _config_defaults(serve: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The serve options a TOML file sets, each checked against the definition of its
    command line option (type, range, choices), so a new option needs no code here."""
    keys = _config_keys(serve)
    defaults: dict[str, Any] = {}
    for key, value in _read_toml(path).items():
        action = keys.get(key.replace("-", "_"))
        if action is None:
            raise _ConfigError(f"unknown option {key!r} in {path}")
        try:
            defaults[action.dest] = _config_value(action, value, path.parent)
        except _ConfigError as error:
            raise _ConfigError(f"option {key!r} in {path}: {error}") from None
    return defaults


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser, serve = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None:
        # The file's values become the defaults, so the command line still wins.
        try:
            serve.set_defaults(**_config_defaults(serve, args.config))
        except _ConfigError as error:
            serve.error(str(error))
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
    except (OSError, ValueError, ImportError) as error:
        # User mistakes, a missing extra, and unreachable or refusing peers: one line.
        # ConnectionError (and AssociationRejected, with its reason) is an OSError.
        print(f"dicom-inlet {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
