"""The storage SCU (``dicom_inlet.send`` / ``echo``) against real peers: DCMTK ``storescp``,
a pynetdicom SCP and dicom-inlet's own SCP, all on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import (
    ALL_TEST_SYNTAXES,
    CT_IMAGE_STORAGE,
    HOST,
    MR_IMAGE_STORAGE,
    SCP_AET,
    SCU_AET,
    TIMEOUT,
    VERIFICATION,
    assert_file_meta,
    dataset_bytes,
    dcmtk_tool,
    incoming_entries,
    make_dataset,
    patient_layout,
    stored_files,
    write_file,
)
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dicom_inlet import (
    AssociationError,
    AssociationRejected,
    InstanceResult,
    echo,
    send,
)

PEERS = ["storescp", "pynetdicom", "dicom-inlet"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


class Peer:
    """A running Storage SCP and how to get back what it received, by SOP Instance UID."""

    def __init__(self, port: int, received: Callable[[], dict[str, bytes]]) -> None:
        self.port = port
        self.received = received


@contextlib.contextmanager
def running_storescp(out: Path, *options: str) -> Iterator[Peer]:
    """DCMTK storescp, bit-preserving (+B), storing into ``out`` with these options."""
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [dcmtk_tool("storescp"), "+B", *options, "-aet", SCP_AET, "-od", str(out), str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not accepts_connections(port):
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "storescp does not accept connections"
            threading.Event().wait(0.05)

        def received() -> dict[str, bytes]:
            files = [path for path in out.iterdir() if path.is_file()]
            return {
                pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID: dataset_bytes(path)
                for path in files
            }

        yield Peer(port, received)
    finally:
        process.kill()
        process.wait(TIMEOUT)
        process.stderr.close()  # type: ignore[union-attr]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Peer]:
    """DCMTK storescp accepting every transfer syntax it knows."""
    with running_storescp(tmp_path / "storescp", "+xa") as peer:
        yield peer


@pytest.fixture
def pynetdicom_scp() -> Iterator[Peer]:
    """A pynetdicom Storage SCP keeping each data set's raw bytes as received."""
    received: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        raw = event.request.DataSet.getvalue()
        with lock:
            received[str(event.request.AffectedSOPInstanceUID)] = raw
        return 0x0000

    ae = AE(ae_title=SCP_AET)
    for sop_class in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE):
        ae.add_supported_context(sop_class, ALL_TEST_SYNTAXES)
    ae.add_supported_context(VERIFICATION)
    server = ae.start_server((HOST, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def snapshot() -> dict[str, bytes]:
        with lock:
            return dict(received)

    yield Peer(server.server_address[1], snapshot)
    server.shutdown()
    ae.shutdown()


@pytest.fixture
def inlet_scp(server: Any, data_dir: Path) -> Peer:
    """dicom-inlet's own SCP (the ``server`` fixture), read back from its data_dir."""

    def received() -> dict[str, bytes]:
        return {
            path.stem: dataset_bytes(data_dir / path)
            for path in stored_files(data_dir)
            if path.suffix == ".dcm"
        }

    return Peer(server.port, received)


@pytest.fixture(params=PEERS)
def peer(request: pytest.FixtureRequest) -> Peer:
    fixture = {"storescp": "storescp", "pynetdicom": "pynetdicom_scp", "dicom-inlet": "inlet_scp"}
    return request.getfixturevalue(fixture[request.param])


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    """One CT per test transfer syntax, one MR, and a larger CT spanning many PDUs; sequences
    with explicit lengths so that no peer has a reason to re-encode them."""
    directory = tmp_path / "corpus"
    paths = [
        write_file(
            make_dataset(undefined_length_sequences=False, instance_number=i),
            directory / f"ct{i}.dcm",
            syntax,
        )
        for i, syntax in enumerate(ALL_TEST_SYNTAXES)
    ]
    mr = make_dataset(sop_class_uid=MR_IMAGE_STORAGE, undefined_length_sequences=False)
    paths.append(write_file(mr, directory / "mr.dcm"))
    big = make_dataset(rows=512, columns=512, undefined_length_sequences=False)
    paths.append(write_file(big, directory / "sub" / "big.dcm"))
    return paths


def sent_data_sets(paths: list[Path]) -> dict[str, bytes]:
    return {
        pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID: dataset_bytes(path)
        for path in paths
    }


def test_send_arrives_byte_identical(peer: Peer, corpus: list[Path]) -> None:
    # The asynchronous window is proposed too: every peer must tolerate the item.
    result = send(
        HOST,
        peer.port,
        corpus,
        called_aet=SCP_AET,
        calling_aet=SCU_AET,
        async_window=8,
        max_pdu=16384,
    )
    assert [r.status for r in result.results] == [0x0000] * len(corpus)
    assert [r.path for r in result.results] == corpus
    assert result.failed == 0
    assert result.bytes == sum(len(dataset_bytes(p)) for p in corpus)
    assert peer.received() == sent_data_sets(corpus)


def test_explicit_vr_is_converted_for_a_peer_accepting_only_implicit_vr(tmp_path: Path):
    # storescp +xi accepts Implicit VR Little Endian only (the default syntax, PS3.5 §10.1).
    explicit = write_file(make_dataset(), tmp_path / "explicit.dcm", ExplicitVRLittleEndian)
    big_endian = write_file(make_dataset(), tmp_path / "big.dcm", ExplicitVRBigEndian)
    with running_storescp(tmp_path / "storescp", "+xi") as peer:
        result = send(HOST, peer.port, [explicit, big_endian], called_aet=SCP_AET)
        received = peer.received()
    assert [r.status for r in result.results] == [0x0000, 0x0000]
    assert [r.transfer_syntax_uid for r in result.results] == [ImplicitVRLittleEndian] * 2
    for path, sent in zip([explicit, big_endian], result.results, strict=True):
        original = pydicom.dcmread(path)
        stored = received[sent.sop_instance_uid]
        assert sent.bytes == len(stored)
        again = read_dataset(io.BytesIO(stored), is_implicit_VR=True, is_little_endian=True)
        # Every element, sequences included, decodes to the same value (the pixel data of
        # the big endian file is swapped: OW words).
        pixels = original.pixel_array.astype("<u2").tobytes()
        assert again.PixelData == pixels
        del again.PixelData, original.PixelData
        assert [(e.tag, e.value) for e in again.iterall()] == [
            (e.tag, e.value) for e in original.iterall()
        ]


def test_echo_each_peer(peer: Peer) -> None:
    assert echo(HOST, peer.port, called_aet=SCP_AET, calling_aet=SCU_AET) == 0x0000


def test_directories_datasets_and_several_associations(server: Any, data_dir: Path, tmp_path):
    datasets = [make_dataset(instance_number=i) for i in range(12)]
    for i, ds in enumerate(datasets[:9]):
        write_file(ds, tmp_path / "tree" / f"s{i % 3}" / f"{i:02d}.dcm")
    (tmp_path / "tree" / "README.txt").write_text("not DICOM")
    # Datasets without file meta go as Explicit VR LE; with it, in its transfer syntax.
    implicit = datasets[10]
    implicit.file_meta = pydicom.dataset.FileMetaDataset()
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    sources: list[Any] = [tmp_path / "tree", datasets[9], implicit, datasets[11]]
    seen: list[InstanceResult] = []
    result = send(HOST, server.port, sources, associations=4, progress=seen.append)

    assert result.instances == 13
    assert sorted(map(str, seen)) == sorted(map(str, result.results)), "one call per instance"
    junk = [r for r in result.results if not r.ok]
    assert [r.path for r in junk] == [tmp_path / "tree" / "README.txt"]
    assert "not a DICOM Part 10 file" in (junk[0].error_comment or "")
    assert junk[0].status is None
    # Directory order is sorted; datasets follow in the order given, without a path.
    assert [r.path for r in result.results[10:]] == [None, None, None]
    assert [r.sop_instance_uid for r in result.results[10:]] == [
        ds.SOPInstanceUID for ds in datasets[9:]
    ]
    assert stored_files(data_dir) == sorted(patient_layout(ds) for ds in datasets)
    for ds in datasets[:9]:
        stored = data_dir / patient_layout(ds)
        source = next((tmp_path / "tree").rglob(f"{datasets.index(ds):02d}.dcm"))
        assert dataset_bytes(stored) == dataset_bytes(source)
    assert_file_meta(
        data_dir / patient_layout(implicit),
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=implicit.SOPInstanceUID,
        transfer_syntax=ImplicitVRLittleEndian,
        calling_aet="DICOM_INLET",
    )
    assert_file_meta(
        data_dir / patient_layout(datasets[9]),
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=datasets[9].SOPInstanceUID,
        transfer_syntax=ExplicitVRLittleEndian,
        calling_aet="DICOM_INLET",
    )
    assert "file_meta" not in datasets[9].__dict__, "the caller's Dataset is not modified"
    assert incoming_entries(data_dir) == []


def test_refused_instance_has_status_and_comment(server_factory, data_dir: Path, tmp_path):
    server = server_factory(max_instance_size=20_000)
    good = write_file(make_dataset(), tmp_path / "good.dcm")
    # Larger than the SCP takes: it answers 0xA700 with a comment.
    bad = write_file(make_dataset(rows=128, columns=128), tmp_path / "bad.dcm")
    result = send(HOST, server.port, [bad, good])
    refused, stored = result.results
    assert refused.status == 0xA700
    assert "20000" in (refused.error_comment or "")
    assert not refused.ok and stored.ok
    assert result.failed == 1 and result.failures == [refused]
    assert result.stored == 1 and result.instances == 2


def test_rejected_association_names_the_reason(server_factory, tmp_path):
    server = server_factory(require_called_aet=True)
    path = write_file(make_dataset(), tmp_path / "one.dcm")
    with pytest.raises(AssociationRejected) as rejected:
        send(HOST, server.port, [path], called_aet="NOT_THE_SCP")
    error = rejected.value
    assert (error.result, error.source, error.reason) == (1, 1, 7)
    assert "called AE title not recognized" in str(error)
    assert isinstance(error, ConnectionError)
    with pytest.raises(AssociationRejected, match="called AE title not recognized"):
        echo(HOST, server.port, called_aet="NOT_THE_SCP")
    assert echo(HOST, server.port, called_aet=SCP_AET) == 0x0000


def test_no_accepted_context_and_unreachable_peer(server_factory, tmp_path):
    ct_only = server_factory(sop_classes=[CT_IMAGE_STORAGE, VERIFICATION])
    mr = write_file(make_dataset(sop_class_uid=MR_IMAGE_STORAGE), tmp_path / "mr.dcm")
    with pytest.raises(AssociationError, match="accepted none of the proposed"):
        send(HOST, ct_only.port, [mr])
    ct = write_file(make_dataset(), tmp_path / "ct.dcm")
    result = send(HOST, ct_only.port, [mr, ct])
    assert [r.status for r in result.results] == [None, 0x0000]
    assert "no presentation context" in (result.results[0].error_comment or "")

    with pytest.raises(ConnectionError, match="cannot connect"):
        echo(HOST, free_port(), timeout=5)


def test_user_mistakes_fail_before_sending(server: Any, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"missing\.dcm"):
        send(HOST, server.port, [tmp_path / "missing.dcm"])
    with pytest.raises(ValueError, match="port"):
        echo(HOST, 70000)
    with pytest.raises(ValueError, match="AE title"):
        echo(HOST, server.port, calling_aet="WAY_TOO_LONG_AE_TITLE")
    with pytest.raises(ValueError, match="associations"):
        send(HOST, server.port, [], associations=0)
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        send(HOST, server.port, [make_dataset(remove=["SOPInstanceUID"])])


def test_progress_exception_stops_sending(server_factory: Any, data_dir: Path, tmp_path: Path):
    paths = [write_file(make_dataset(), tmp_path / f"{i}.dcm") for i in range(5)]
    # The sender's threads run ahead of the progress callback: the server holds every
    # instance after the first until the handler timeout answers it (0xA700), long after
    # the callback's exception stopped the taking of new files.
    seen: list[str] = []
    held = threading.Event()

    def hold_all_but_the_first(instance: Any) -> int:
        seen.append(instance.sop_instance_uid)
        if len(seen) > 1:
            held.wait(TIMEOUT)
        return 0x0000

    server = server_factory(handler=hold_all_but_the_first, handler_timeout=1.0)

    def stop(result: InstanceResult) -> None:
        raise RuntimeError(f"stop after {result.path}")

    try:
        with pytest.raises(RuntimeError, match="stop after"):
            send(HOST, server.port, paths, progress=stop)
    finally:
        held.set()
    # The association was released properly: the server serves the next one.
    assert echo(HOST, server.port) == 0x0000
    # The second request may or may not have left before the exception stopped the sender
    # (its threads and the callback race); none after it did.
    assert 1 <= len(seen) <= 2
    assert len(stored_files(data_dir)) == 1
    assert incoming_entries(data_dir) == []


def test_stats_of_the_server(server: Any, tmp_path: Path):
    paths = [write_file(make_dataset(), tmp_path / f"{i}.dcm") for i in range(3)]
    result = send(HOST, server.port, paths)
    stats = server.scp.stats()
    assert (stats.instances, stats.failures, stats.bytes) == (3, 0, result.bytes)
