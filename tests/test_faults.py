"""Faults and limits: senders vanishing mid-instance, a full disk, a killed server, slow and
raising callbacks, and the configured timeouts and caps.

Nothing received may be lost or half-written: a refused or interrupted instance leaves no
file under data_dir and no spool file in data_dir/.incoming, a success status means the
file is there, and the server goes on serving others. Every wait is for an event (a PDU, a
closed connection, a status) with a generous timeout; the timeouts under test are short.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import resource
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import (
    CT_IMAGE_STORAGE,
    HOST,
    TIMEOUT,
    VERIFICATION,
    associate,
    dataset_bytes,
    dcmtk_tool,
    echo,
    incoming_entries,
    make_dataset,
    patient_layout,
    send,
    statuses,
    stored_files,
    wait_until,
    write_file,
)
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from raw_peer import (
    CT_CONTEXT,
    ECHO_CONTEXT,
    RawPeer,
    abort_pdu,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    data_set_bytes,
    p_data,
    pdv,
)
from server_process import ServerProcess

CT_EXPLICIT = [(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])]
SHORT = 0.5  # seconds: the timeouts under test


def instance_file(tmp_path: Path, *, rows: int = 8, columns: int = 8) -> tuple[Dataset, Path]:
    """A CT instance and its Part 10 file (explicit lengths: DCMTK may send it too)."""
    ds = make_dataset(rows=rows, columns=columns, undefined_length_sequences=False)
    return ds, write_file(ds, tmp_path / "src" / f"{ds.SOPInstanceUID}.dcm")


def assert_stored_as_sent(data_dir: Path, sent: dict[str, tuple[Dataset, Path]]) -> None:
    """Every file under data_dir is one of ``sent`` (by SOP Instance UID), at its layout path,
    a readable instance, with the data set bytes that were sent."""
    for relative in stored_files(data_dir):
        uid = relative.name.removesuffix(".dcm")
        assert uid in sent, f"unexpected file {relative}"
        ds, src = sent[uid]
        assert relative == patient_layout(ds)
        stored = pydicom.dcmread(data_dir / relative)
        assert stored.PixelData == ds.PixelData
        assert dataset_bytes(data_dir / relative) == dataset_bytes(src)


def store_partially(peer: RawPeer, uid: str, data: bytes, data_dir: Path) -> int:
    """Send a C-STORE-RQ and the data set 1 KiB at a time until its spool file exists;
    return how many data set bytes were sent.

    Each fragment restarts the DIMSE timer, so the spool file is seen before any timeout
    can discard it; the data set is not completed (its last KiB is never sent here).
    """
    peer.send(p_data(pdv(CT_CONTEXT, c_store_rq(uid), command=True, last=True)))
    sent = 0
    while sent < len(data) - 1024:
        peer.send(p_data(pdv(CT_CONTEXT, data[sent : sent + 1024], command=False, last=False)))
        sent += 1024
        if incoming_entries(data_dir):
            return sent
    # A loaded server may still be on the first fragments: wait for it.
    assert wait_until(lambda: incoming_entries(data_dir)), "no spool file while data arrived"
    return sent


# --------------------------------------------------------------------------------------
# The sender goes away mid-instance
# --------------------------------------------------------------------------------------


def abort_and_wait(peer: RawPeer) -> None:
    peer.send(abort_pdu())
    # The SCP answers nothing to an A-ABORT (PS3.8 9.2.1): it closes, after its cleanup.
    assert peer.wait_closed() == b""


def half_close_and_wait(peer: RawPeer) -> None:
    assert peer.wait_closed() == b""


def reset(peer: RawPeer) -> None:
    # SO_LINGER 0: close() sends a TCP RST instead of a FIN.
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


@pytest.mark.parametrize(
    "go_away",
    [abort_and_wait, half_close_and_wait, reset],
    ids=["a-abort", "disconnect", "tcp-reset"],
)
def test_sender_gone_mid_instance_leaves_nothing(server_factory, data_dir, tmp_path, go_away):
    server = server_factory()
    ds = make_dataset(rows=256, columns=256)
    with RawPeer(server.port) as peer:
        peer.associate()
        store_partially(peer, ds.SOPInstanceUID, data_set_bytes(ds), data_dir)
        go_away(peer)
    assert wait_until(lambda: server.scp.stats().associations == 0)
    assert incoming_entries(data_dir) == []
    assert stored_files(data_dir) == []
    # The server goes on: the same instance, sent whole, is stored.
    src = write_file(ds, tmp_path / "src" / "whole.dcm")
    assert statuses(send(server.port, [src])) == [0x0000]
    assert_stored_as_sent(data_dir, {ds.SOPInstanceUID: (ds, src)})
    assert incoming_entries(data_dir) == []


# --------------------------------------------------------------------------------------
# Disk full
# --------------------------------------------------------------------------------------


def store_on_full_disk_then_again(
    port: int, data_dir: Path, tmp_path: Path, error: int, make_room: Callable[[], None]
) -> None:
    """A 128 KiB instance is refused with 0xA7xx naming ``error``, leaving nothing behind;
    the server goes on serving; once ``make_room()`` ran, the same association stores it."""
    big, big_src = instance_file(tmp_path, rows=256, columns=256)
    small, small_src = instance_file(tmp_path)
    with associate(port, CT_EXPLICIT) as assoc:
        status = assoc.send_c_store(big_src)
        assert 0xA700 <= status.Status <= 0xA7FF, f"{status.Status:#06x}"
        assert os.strerror(error) in status.ErrorComment
        assert stored_files(data_dir) == []
        assert incoming_entries(data_dir) == []
        assert echo(port) == 0x0000
        make_room()
        assert assoc.send_c_store(big_src).Status == 0x0000
        assert assoc.send_c_store(small_src).Status == 0x0000
    assert sorted(stored_files(data_dir)) == sorted([patient_layout(big), patient_layout(small)])
    assert_stored_as_sent(
        data_dir,
        {big.SOPInstanceUID: (big, big_src), small.SOPInstanceUID: (small, small_src)},
    )
    assert incoming_entries(data_dir) == []


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test; skipped where mounting is not permitted."""
    mountpoint = tmp_path / "small-fs"
    mountpoint.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except FileNotFoundError:
        pytest.skip("no mount command")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True, timeout=TIMEOUT)


def fill(path: Path) -> None:
    """Write ``path`` until its filesystem has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_full_filesystem_refuses_then_stores_once_space_is_back(
    small_filesystem, server_factory, tmp_path
):
    # small_filesystem first: it is unmounted after the server has shut down.
    data_dir = small_filesystem / "data"
    server = server_factory(data_dir)
    # Hidden, so stored_files ignores it.
    filler = data_dir / ".filler"
    fill(filler)
    store_on_full_disk_then_again(server.port, data_dir, tmp_path, errno.ENOSPC, filler.unlink)


def test_file_size_limit_refuses_then_stores_once_lifted(data_dir, tmp_path):
    # Where no filesystem can be mounted, a per-process file size limit makes writes fail
    # the same way (EFBIG instead of ENOSPC). Durable mode syncs on that path too.
    with ServerProcess(data_dir, fsize_limit=64 * 1024, durable=True) as child:
        store_on_full_disk_then_again(
            child.port,
            data_dir,
            tmp_path,
            errno.EFBIG,
            lambda: child.set_fsize_limit(resource.RLIM_INFINITY),
        )


# --------------------------------------------------------------------------------------
# kill -9 during a heavy transfer
# --------------------------------------------------------------------------------------


class Sender(threading.Thread):
    """An association storing files until done or the connection is lost; ``stored`` lists
    the SOP Instance UIDs answered with success.

    Hand-built C-STOREs: pynetdicom waits out its DIMSE timeout when the connection breaks
    while it sends.
    """

    def __init__(self, port: int, sent: list[tuple[Dataset, Path]], progress: threading.Semaphore):
        super().__init__(daemon=True)
        self.port, self.sent, self.progress = port, sent, progress
        self.stored: list[str] = []

    def run(self) -> None:
        with RawPeer(self.port) as peer:
            peer.associate()
            for message_id, (ds, src) in enumerate(self.sent, start=1):
                uid = ds.SOPInstanceUID
                command = c_store_rq(uid, message_id=message_id)
                try:
                    response = peer.store(dataset_bytes(src), uid, command=command, fragment=16000)
                except (OSError, AssertionError):  # reset, or closed before the response
                    return
                if response.status == 0x0000:
                    self.stored.append(uid)
                    self.progress.release()


def test_kill_9_mid_transfer_loses_nothing_acknowledged(data_dir, tmp_path):
    sent: dict[str, tuple[Dataset, Path]] = {}

    def batch(name: str, count: int) -> list[tuple[Dataset, Path]]:
        items = [instance_file(tmp_path / name, rows=128, columns=256) for _ in range(count)]
        sent.update((ds.SOPInstanceUID, (ds, src)) for ds, src in items)
        return items

    dcmtk_batches = [batch(f"dcmtk{i}", 60) for i in range(2)]
    raw_batches = [batch(f"raw{i}", 60) for i in range(3)]
    with ServerProcess(data_dir) as child, RawPeer(child.port) as stalled:
        # One sender stops mid-instance, so a spool file is certainly left behind.
        stalled.associate()
        stalled_ds = make_dataset(rows=256, columns=256)
        store_partially(stalled, stalled_ds.SOPInstanceUID, data_set_bytes(stalled_ds), data_dir)
        storescu = [
            subprocess.Popen(
                [dcmtk_tool("storescu"), "-ll", "fatal", "+sd", HOST, str(child.port), str(src)]
            )
            for src in (tmp_path / f"dcmtk{i}" / "src" for i in range(len(dcmtk_batches)))
        ]
        progress = threading.Semaphore(0)
        senders = [Sender(child.port, items, progress) for items in raw_batches]
        for sender in senders:
            sender.start()
        # Kill once 40 instances were acknowledged, with all senders under way.
        for _ in range(40):
            assert progress.acquire(timeout=TIMEOUT)
        child.kill()
        for sender in senders:
            sender.join(TIMEOUT)
            assert not sender.is_alive()
        for process in storescu:
            process.wait(TIMEOUT)
    assert any(name.endswith(".part") for name in incoming_entries(data_dir))

    acknowledged = {uid for sender in senders for uid in sender.stored}
    with ServerProcess(data_dir) as restarted:
        # Cleaned at start.
        assert incoming_entries(data_dir) == []
        stored = {path.name.removesuffix(".dcm") for path in stored_files(data_dir)}
        assert acknowledged <= stored
        assert_stored_as_sent(data_dir, sent)
        # And the restarted server stores.
        ds, src = instance_file(tmp_path)
        assert statuses(send(restarted.port, [src])) == [0x0000]
        assert patient_layout(ds) in stored_files(data_dir)


def test_servers_of_one_process_sharing_a_data_dir_keep_their_instances_apart(
    server_factory, data_dir
):
    # The second server starts while the first is receiving: it must neither remove nor
    # reuse the first one's spool file.
    first = server_factory()
    ds_first, ds_second = make_dataset(rows=64, columns=64), make_dataset(rows=32, columns=32)
    data_first, data_second = data_set_bytes(ds_first), data_set_bytes(ds_second)
    with RawPeer(first.port) as a:
        a.associate()
        sent = store_partially(a, ds_first.SOPInstanceUID, data_first, data_dir)
        second = server_factory()
        with RawPeer(second.port) as b:
            b.associate()
            assert b.store(data_second, ds_second.SOPInstanceUID).status == 0x0000
            b.release()
        a.send(p_data(pdv(CT_CONTEXT, data_first[sent:], command=False, last=True)))
        assert a.response().status == 0x0000
        a.release()
    assert stored_files(data_dir) == sorted([patient_layout(ds_first), patient_layout(ds_second)])
    assert dataset_bytes(data_dir / patient_layout(ds_first)) == data_first
    assert dataset_bytes(data_dir / patient_layout(ds_second)) == data_second
    assert incoming_entries(data_dir) == []


# --------------------------------------------------------------------------------------
# Slow and raising callbacks
# --------------------------------------------------------------------------------------


def test_slow_and_raising_callbacks_hold_back_only_through_the_queue(
    server_factory, data_dir, tmp_path, caplog
):
    caplog.set_level(logging.ERROR, logger="dicom_inlet")
    queue_size = 6
    entered, release = threading.Event(), threading.Event()
    seen: queue.Queue[str] = queue.Queue()

    def slow(ds: Dataset) -> None:
        entered.set()
        assert release.wait(TIMEOUT)

    def raising(ds: Dataset) -> None:
        raise RuntimeError("callback failure")

    def collect(ds: Dataset) -> None:
        seen.put(ds.SOPInstanceUID)

    server = server_factory(
        callbacks=[slow, raising, collect], callback_queue_size=queue_size, callback_retries=0
    )
    sent = [instance_file(tmp_path) for _ in range(1 + (queue_size - 2) + (queue_size + 2))]
    first, within, beyond = sent[:1], sent[1 : queue_size - 1], sent[queue_size - 1 :]
    try:
        assert statuses(send(server.port, [src for _, src in first])) == [0x0000]
        assert entered.wait(TIMEOUT)
        # The callback is stuck; another association's instances still get their answers
        # while they fit the queue (less two places for association-end events).
        assert statuses(send(server.port, [src for _, src in within])) == [0x0000] * len(within)

        # More than the queue holds: that association has to wait for the callbacks...
        results: list[Dataset] = []
        waiting = threading.Thread(
            target=lambda: results.extend(send(server.port, [src for _, src in beyond])),
            daemon=True,
        )
        waiting.start()
        assert wait_until(lambda: server.scp.stats().instances >= queue_size)
        # ...while others are still served.
        assert echo(server.port) == 0x0000
        assert waiting.is_alive()
    finally:
        release.set()
    waiting.join(TIMEOUT)
    assert statuses(results) == [0x0000] * len(beyond)
    # Every instance reached every callback despite the failures, in arrival order.
    assert [seen.get(timeout=TIMEOUT) for _ in sent] == [ds.SOPInstanceUID for ds, _ in sent]
    server.shutdown()
    failures = [r for r in caplog.records if "callback raising failed" in r.getMessage()]
    assert len(failures) == len(sent)
    assert_stored_as_sent(data_dir, {ds.SOPInstanceUID: (ds, src) for ds, src in sent})
    assert len(stored_files(data_dir)) == len(sent)


# --------------------------------------------------------------------------------------
# Timeouts and limits, as configured through StoreSCPServer
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent", [b"", associate_rq()[:30]], ids=["nothing", "part-of-an-associate-rq"]
)
def test_no_associate_rq_within_artim_closes(server_factory, sent):
    server = server_factory(acse_timeout=SHORT)
    with socket.create_connection((HOST, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(sent)
        # No association, so nothing to abort (PS3.8 9.2.3): closed without a PDU.
        assert sock.recv(1024) == b""
    assert echo(server.port) == 0x0000


def test_idle_association_is_aborted(server_factory):
    server = server_factory(network_timeout=SHORT)
    with RawPeer(server.port) as peer:
        peer.associate()
        peer.send(p_data(pdv(ECHO_CONTEXT, c_echo_rq(), command=True, last=True)))
        assert peer.response().status == 0x0000
        # Then nothing: A-ABORT, service provider, reason not specified (PS3.8 9.3.8).
        assert peer.expect_abort() == (2, 0)


def test_stalled_data_set_is_aborted_and_its_spool_removed(server_factory, data_dir):
    server = server_factory(dimse_timeout=SHORT, network_timeout=TIMEOUT)
    ds = make_dataset(rows=256, columns=256)
    with RawPeer(server.port) as peer:
        peer.associate()
        store_partially(peer, ds.SOPInstanceUID, data_set_bytes(ds), data_dir)
        assert peer.expect_abort() == (2, 0)
    assert incoming_entries(data_dir) == []
    assert stored_files(data_dir) == []


def test_association_over_the_limit_is_rejected_transiently(server_factory):
    server = server_factory(maximum_associations=2)
    held = [RawPeer(server.port), RawPeer(server.port)]
    for peer in held:
        peer.associate()
    with RawPeer(server.port) as extra:
        extra.send(associate_rq())
        # Rejected-transient, service provider (presentation), local limit exceeded
        # (PS3.8 9.3.4, table 9-21).
        assert extra.expect_rejection() == (2, 3, 2)
    held[0].release()
    held[0].close()
    assert wait_until(lambda: server.scp.stats().associations == 1)
    with RawPeer(server.port) as again:
        assert again.associate() == [(1, 0), (3, 0)]
        again.release()
    held[1].release()
    held[1].close()


def test_instance_over_the_size_cap_is_refused_and_the_association_goes_on(
    server_factory, data_dir, tmp_path
):
    _, big_src = instance_file(tmp_path, rows=128, columns=128)
    small, small_src = instance_file(tmp_path)
    cap = len(dataset_bytes(big_src)) - 1
    assert len(dataset_bytes(small_src)) < cap
    server = server_factory(max_instance_size=cap)
    with associate(server.port, [*CT_EXPLICIT, (VERIFICATION, [ImplicitVRLittleEndian])]) as assoc:
        status = assoc.send_c_store(big_src)
        assert status.Status == 0xA700
        assert str(cap) in status.ErrorComment
        assert incoming_entries(data_dir) == []
        # The rest of the refused data set was drained: the next request is understood.
        assert assoc.send_c_store(small_src).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
    assert stored_files(data_dir) == [patient_layout(small)]
    assert_stored_as_sent(data_dir, {small.SOPInstanceUID: (small, small_src)})
