"""Load with default settings, against a server in a child process whose threads, file
descriptors and memory are read from /proc.

Sixteen associations from DCMTK storescu processes and pynetdicom threads store 200
instances each at once: every instance must arrive once, byte-identical, with success, in
bounded memory. A thousand short associations (echo, then release, abort or a dropped
connection) must leave no thread, file descriptor or memory behind.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from conftest import (
    HOST,
    TIMEOUT,
    dataset_bytes,
    dcmtk_tool,
    incoming_entries,
    make_dataset,
    stored_files,
    wait_until,
    write_file,
)
from pydicom import Dataset
from pydicom.uid import generate_uid
from raw_peer import (
    ECHO_CONTEXT,
    P_DATA_TF,
    RawPeer,
    abort_pdu,
    c_echo_rq,
    header_only,
    p_data,
    pdv,
)
from server_process import ServerProcess

ASSOCIATIONS = 16
INSTANCES = 200
# Generous: the server holds one receive buffer per association, not the instances.
MAX_RSS_KIB = 300 * 1024
SHORT_ASSOCIATIONS = 1000


def instance_files(directory: Path, count: int) -> dict[Path, bytes]:
    """``count`` small CT files in ``directory`` differing in their SOP Instance UID, one
    series; returns their patient layout paths and data set bytes.

    Written from one encoded template with the UID replaced by another of the same length,
    which keeps every length field right and is much faster than encoding each.
    """
    root = generate_uid(prefix=None)
    placeholder = f"{root}.100000"
    ds: Dataset = make_dataset(
        sop_instance_uid=placeholder, rows=8, columns=8, undefined_length_sequences=False
    )
    template = write_file(ds, directory / "template").read_bytes()
    (directory / "template").unlink()
    expected = {}
    for n in range(count):
        uid = f"{root}.{100001 + n}"
        path = directory / f"{n:04d}.dcm"
        path.write_bytes(template.replace(placeholder.encode(), uid.encode()))
        layout = Path(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{uid}.dcm")
        expected[layout] = dataset_bytes(path)
    return expected


def test_16_associations_of_200_instances_at_once(tmp_path):
    data_dir = tmp_path / "data"
    batches = [tmp_path / f"sender{i:02d}" for i in range(ASSOCIATIONS)]
    expected: dict[Path, bytes] = {}
    for directory in batches:
        directory.mkdir()
        expected.update(instance_files(directory, INSTANCES))

    # Each pynetdicom sender in a process of its own: pynetdicom's requestor can lose a
    # response to its own reactor thread when many of its associations share one
    # interpreter (a race in pynetdicom, not in the server).
    senders = [
        [dcmtk_tool("storescu"), "-ll", "warn", "-aet", f"DCMTK{i}", "+sd"]
        for i in range(ASSOCIATIONS // 2)
    ] + [
        [sys.executable, "-m", "pynetdicom", "storescu", "-ll", "warn", "-aet", f"PYND{i}", "-cx"]
        for i in range(ASSOCIATIONS // 2)
    ]
    with ServerProcess(data_dir) as child:
        processes = [
            subprocess.Popen(
                [*sender, HOST, str(child.port), str(directory)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for sender, directory in zip(senders, batches, strict=True)
        ]
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT * 4)
            # Both report failure statuses and errors as warnings or worse.
            assert (process.returncode, output) == (0, ""), process.args
        assert child.memory_kib("VmHWM") < MAX_RSS_KIB

    # Each instance once (the layout path holds its UID), and as sent.
    assert stored_files(data_dir) == sorted(expected)
    for layout, data in expected.items():
        assert dataset_bytes(data_dir / layout) == data, layout
    assert incoming_entries(data_dir) == []


# --------------------------------------------------------------------------------------
# Many short associations
# --------------------------------------------------------------------------------------


def released(peer: RawPeer) -> None:
    peer.release()
    assert peer.wait_closed() == b""


def aborted(peer: RawPeer) -> None:
    peer.send(abort_pdu())
    assert peer.wait_closed() == b""


def dropped(peer: RawPeer) -> None:
    peer.close()


ENDINGS: list[Callable[[RawPeer], None]] = [released, released, aborted, dropped]


def short_associations(port: int, count: int, clients: int = 4) -> None:
    """``count`` associations from ``clients`` threads: associate, echo, then end each in
    turn by release, release, abort or dropping the connection."""

    def client(first: int) -> None:
        for n in range(first, count, clients):
            with RawPeer(port) as peer:
                peer.associate()
                peer.send(p_data(pdv(ECHO_CONTEXT, c_echo_rq(n % 65536), command=True, last=True)))
                assert peer.response().status == 0x0000
                ENDINGS[n % len(ENDINGS)](peer)

    errors: list[BaseException] = []

    def guarded(first: int) -> None:
        try:
            client(first)
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 4)
        assert not thread.is_alive()
    if errors:
        raise errors[0]


def test_short_associations_leak_no_thread_fd_or_memory(tmp_path):
    with ServerProcess(tmp_path / "data") as child:
        threads, fds = child.threads(), child.fds()

        def idle() -> bool:
            return child.threads() == threads and child.fds() == fds

        # A first round grows the allocator's arenas to their working size.
        short_associations(child.port, 100)
        assert wait_until(idle), (child.threads(), threads, child.fds(), fds)
        rss = child.memory_kib()

        short_associations(child.port, SHORT_ASSOCIATIONS)
        assert wait_until(idle), (child.threads(), threads, child.fds(), fds)
        grown = child.memory_kib() - rss
        assert grown < 32 * 1024, f"RSS grew by {grown} KiB"


def test_stalled_peers_mid_pdu_hold_bounded_memory(tmp_path):
    # Each peer announces the largest PDU allowed, sends half of it and stalls; others
    # announce a PDU of nearly 4 GiB and are aborted. Memory stays within the PDU limit per
    # association, whatever was announced.
    max_pdu = 262_144
    with (
        ServerProcess(tmp_path / "data", maximum_pdu_size=max_pdu) as child,
        ExitStack() as open_peers,
    ):
        threads, fds, rss = child.threads(), child.fds(), child.memory_kib()
        for n in range(48):
            peer = open_peers.enter_context(RawPeer(child.port))
            peer.associate()
            peer.send(header_only(P_DATA_TF, max_pdu) + bytes(max_pdu // 2))
            with RawPeer(child.port) as greedy:
                greedy.associate()
                greedy.send(header_only(P_DATA_TF, 0xFFFF_FFF0))
                # Invalid PDU parameter value (PS3.8 9.3.8).
                assert greedy.expect_abort() == (2, 6), n
        # Every stalled association is under way: an echo on a new one is answered.
        with RawPeer(child.port) as peer:
            peer.associate()
            peer.send(p_data(pdv(ECHO_CONTEXT, c_echo_rq(), command=True, last=True)))
            assert peer.response().status == 0x0000
            peer.release()
        grown = child.memory_kib() - rss
        assert grown < 64 * 1024, f"RSS grew by {grown} KiB"
        open_peers.close()
        assert wait_until(lambda: child.threads() == threads and child.fds() == fds)
