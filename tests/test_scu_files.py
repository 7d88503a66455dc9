"""What ``send`` makes of files as they come: pydicom's own test files (a file meta naming
another instance, big endian, deflated of odd length) against DCMTK storescp and our SCP,
and directory entries that cannot be read."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pydicom
import pytest
from conftest import HOST, SCP_AET, dataset_bytes, make_dataset, patient_layout, write_file
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from test_scu import Peer, running_storescp

from dicom_inlet import InstanceResult, send

# pydicom's liver_expb_1frame.dcm has a UID longer than 64 characters.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

# Big endian files of pydicom's with sequences, odd-length values and every numeric VR
# between them; image_dfl.dcm is deflated with an odd-length stream.
BIG_ENDIAN_FILES = [
    "MR_small_bigendian.dcm",
    "rtdose_expb.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "liver_expb_1frame.dcm",
]
DEFLATED_FILE = "image_dfl.dcm"

# Storage SOP classes of the files above, by DCMTK's names.
_DCMTK_CLASSES = [
    "VerificationSOPClass",
    "CTImageStorage",
    "MRImageStorage",
    "RTDoseStorage",
    "RTPlanStorage",
    "SecondaryCaptureImageStorage",
    "SegmentationStorage",
]


def pydicom_file(name: str, into: Path) -> Path:
    """A copy of one of pydicom's test files."""
    source = get_testdata_file(name)
    assert source is not None, f"pydicom lacks its test file {name}"
    into.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, into / name))


@contextlib.contextmanager
def explicit_le_only_storescp(tmp_path: Path) -> Iterator[Peer]:
    """DCMTK storescp accepting the test files' SOP classes in Explicit VR Little Endian
    only (an association negotiation profile: its +x options always add other syntaxes)."""
    config = tmp_path / "explicit-only.cfg"
    contexts = [
        f"PresentationContext{i} = {name}\\ExplicitOnly"
        for i, name in enumerate(_DCMTK_CLASSES, start=1)
    ]
    config.write_text(
        "\n".join(
            [
                "[[TransferSyntaxes]]",
                "[ExplicitOnly]",
                f"TransferSyntax1 = {ExplicitVRLittleEndian}",
                "[[PresentationContexts]]",
                "[ExplicitOnlyContexts]",
                *contexts,
                "[[Profiles]]",
                "[ExplicitOnly]",
                "PresentationContexts = ExplicitOnlyContexts",
                "",
            ]
        )
    )
    with running_storescp(tmp_path / "storescp", "-xf", str(config), "ExplicitOnly") as peer:
        yield peer


_WORDS = {"OW": "u2", "OL": "u4", "OF": "f4", "OD": "f8", "OV": "u8"}


def decoded_values(ds: pydicom.Dataset) -> list[tuple[Any, Any]]:
    """Every element of a data set, nested ones included, as values independent of the
    transfer syntax it was read in: pydicom decodes the numbers of US, FL, AT... but keeps
    OW and the other word VRs as raw bytes, which are made little endian here."""
    big_endian = not ds.original_encoding[1]
    values = []
    for element in ds.iterall():
        value = element.value
        if element.VR == "SQ":
            value = len(value)  # its items' elements follow in iterall
        elif big_endian and element.VR in _WORDS and isinstance(value, bytes):
            value = (
                numpy.frombuffer(value, ">" + _WORDS[element.VR])
                .astype("<" + _WORDS[element.VR])
                .tobytes()
            )
        values.append((element.tag, value))
    return values


def assert_same_values(stored: Path, original: Path) -> None:
    again, sent = pydicom.dcmread(stored), pydicom.dcmread(original)
    assert decoded_values(again) == decoded_values(sent)


@pytest.fixture
def explicit_only_inlet(server_factory: Any) -> Any:
    """Our SCP accepting Explicit VR Little Endian only, filing by SOP Instance UID."""
    return server_factory(transfer_syntaxes=[ExplicitVRLittleEndian], sort_by="IMAGE")


def stored_in(data_dir: Path, result: InstanceResult) -> Path:
    return data_dir / f"{result.sop_instance_uid}.dcm"


# ---------------------------------------------------------------------------------------------
# The data set's own UIDs


@pytest.mark.parametrize("peer_name", ["storescp", "dicom-inlet"])
def test_the_data_sets_uids_are_sent_and_a_mismatched_meta_is_a_warning(
    peer_name: str, tmp_path: Path, server: Any, data_dir: Path, caplog: Any
):
    # Both name another instance in their file meta than in their data set.
    paths = [pydicom_file(name, tmp_path / "src") for name in ["rtdose.dcm", "rtplan.dcm"]]
    datasets = [pydicom.dcmread(path) for path in paths]
    for ds in datasets:
        assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    with contextlib.ExitStack() as stack:
        if peer_name == "storescp":
            peer = stack.enter_context(running_storescp(tmp_path / "out", "+xa"))
            port = peer.port
        else:
            port = server.port
        with caplog.at_level(logging.WARNING, logger="dicom_inlet.scu"):
            result = send(HOST, port, paths, called_aet=SCP_AET)
        received = peer.received() if peer_name == "storescp" else None
    assert [r.status for r in result.results] == [0x0000, 0x0000]
    assert result.stored == 2 and result.failed == 0
    for path, ds, sent in zip(paths, datasets, result.results, strict=True):
        assert sent.sop_instance_uid == ds.SOPInstanceUID
        assert sent.sop_class_uid == ds.SOPClassUID
        meta_uid = ds.file_meta.MediaStorageSOPInstanceUID
        assert sent.warning is not None
        assert meta_uid in sent.warning and ds.SOPInstanceUID in sent.warning
        [logged] = [r for r in caplog.records if str(path) in r.getMessage()]
        assert logged.levelno == logging.WARNING
        assert meta_uid in logged.getMessage() and ds.SOPInstanceUID in logged.getMessage()
        stored = (
            received[ds.SOPInstanceUID]
            if received is not None
            else dataset_bytes(data_dir / patient_layout(ds))
        )
        assert stored == dataset_bytes(path)


def test_a_file_meta_that_agrees_gives_no_warning(server: Any, tmp_path: Path, caplog: Any):
    path = write_file(make_dataset(), tmp_path / "ct.dcm")
    with caplog.at_level(logging.WARNING, logger="dicom_inlet.scu"):
        [sent] = send(HOST, server.port, path).results
    assert sent.ok and sent.warning is None
    assert caplog.records == []


# ---------------------------------------------------------------------------------------------
# Conversions for a peer that takes neither the file's syntax nor Implicit VR LE


def test_big_endian_and_deflated_go_as_explicit_vr_little_endian_to_dcmtk(tmp_path: Path):
    paths = [pydicom_file(name, tmp_path / "src") for name in [*BIG_ENDIAN_FILES, DEFLATED_FILE]]
    with explicit_le_only_storescp(tmp_path) as peer:
        result = send(HOST, peer.port, paths, called_aet=SCP_AET)
        received = peer.received()
    assert [r.status for r in result.results] == [0x0000] * len(paths), result.failures
    assert {r.transfer_syntax_uid for r in result.results} == {ExplicitVRLittleEndian}
    stored = {path.name: path for path in (tmp_path / "storescp").iterdir()}
    assert len(stored) == len(paths)
    for path, sent in zip(paths, result.results, strict=True):
        assert sent.bytes == len(received[sent.sop_instance_uid])
        [copy] = [
            p for p in stored.values() if pydicom.dcmread(p).SOPInstanceUID == sent.sop_instance_uid
        ]
        assert_same_values(copy, path)


def test_conversions_into_our_scp_keep_every_value(
    explicit_only_inlet: Any, data_dir: Path, tmp_path: Path
):
    # Our own files too: sequences of defined and undefined length, in both orders.
    ours = [
        write_file(
            make_dataset(undefined_length_sequences=undefined, instance_number=i),
            tmp_path / "src" / f"ours{i}.dcm",
            syntax,
        )
        for i, (undefined, syntax) in enumerate(
            [(True, ExplicitVRBigEndian), (False, ExplicitVRBigEndian),
             (True, DeflatedExplicitVRLittleEndian), (False, DeflatedExplicitVRLittleEndian)]
        )
    ]  # fmt: skip
    paths = [*ours, *(pydicom_file(name, tmp_path / "src") for name in BIG_ENDIAN_FILES)]
    result = send(HOST, explicit_only_inlet.port, paths, called_aet=SCP_AET, max_pdu=16384)
    assert [r.status for r in result.results] == [0x0000] * len(paths), result.failures
    for path, sent in zip(paths, result.results, strict=True):
        assert sent.transfer_syntax_uid == ExplicitVRLittleEndian
        stored = stored_in(data_dir, sent)
        assert sent.bytes == len(dataset_bytes(stored))
        assert_same_values(stored, path)


def test_big_endian_and_deflated_go_as_implicit_vr_when_that_is_all(
    server_factory: Any, data_dir: Path, tmp_path: Path
):
    implicit_only = server_factory(transfer_syntaxes=[ImplicitVRLittleEndian], sort_by="IMAGE")
    paths = [pydicom_file(name, tmp_path / "src") for name in ["rtdose_expb.dcm", DEFLATED_FILE]]
    result = send(HOST, implicit_only.port, paths, called_aet=SCP_AET)
    assert [r.transfer_syntax_uid for r in result.results] == [ImplicitVRLittleEndian] * 2
    assert [r.status for r in result.results] == [0x0000] * 2
    for path, sent in zip(paths, result.results, strict=True):
        assert_same_values(stored_in(data_dir, sent), path)


@pytest.mark.parametrize("peer_name", ["storescp", "dicom-inlet"])
def test_an_odd_length_deflated_data_set_is_padded(
    peer_name: str, server: Any, data_dir: Path, tmp_path: Path
):
    path = pydicom_file(DEFLATED_FILE, tmp_path / "src")
    original = dataset_bytes(path)
    assert len(original) % 2 == 1, "the test needs pydicom's odd-length deflated file"
    with contextlib.ExitStack() as stack:
        if peer_name == "storescp":
            peer = stack.enter_context(running_storescp(tmp_path / "out", "+xa"))
            port = peer.port
        else:
            port = server.port
        [sent] = send(HOST, port, path, called_aet=SCP_AET).results
        ds = pydicom.dcmread(path)
        stored = (
            peer.received()[ds.SOPInstanceUID]
            if peer_name == "storescp"
            else dataset_bytes(data_dir / patient_layout(ds))
        )
    assert sent.status == 0x0000, sent
    assert sent.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    # PS3.5 §A.5: one trailing NUL makes it even; the stream before it is untouched.
    assert stored == original + b"\0"
    assert sent.bytes == len(stored)


# ---------------------------------------------------------------------------------------------
# Entries of a directory that cannot be sent


def test_unreadable_entries_fail_alone_and_the_rest_is_sent(
    server: Any, data_dir: Path, tmp_path: Path
):
    tree = tmp_path / "tree"
    datasets = [make_dataset(instance_number=i) for i in range(4)]
    paths = [write_file(ds, tree / f"{i}.dcm") for i, ds in enumerate(datasets)]
    (tree / "a-dangling.dcm").symlink_to(tree / "gone.dcm")
    os.mkfifo(tree / "b-fifo.dcm")
    body = paths[0].read_bytes()
    (tree / "c-truncated.dcm").write_bytes(body[: len(body) - len(dataset_bytes(paths[0])) + 20])
    # The last file vanishes after it was listed, while the first ones are being sent.
    vanishing = paths[-1]

    def remove_one(result: InstanceResult) -> None:
        if vanishing.exists():
            vanishing.unlink()

    result = send(HOST, server.port, tree, progress=remove_one)
    reasons = {r.path.name: r.error_comment for r in result.failures if r.path}
    gone = tree / "gone.dcm"
    assert reasons == {
        "a-dangling.dcm": f"a dangling symbolic link: its target {gone} does not exist",
        "b-fifo.dcm": "not a regular file (a FIFO, socket or device), so not read",
        "c-truncated.dcm": "cannot parse the data set: data set truncated",
        "3.dcm": "no such file (it was removed)",
    }
    assert all(r.status is None for r in result.failures)
    assert (result.instances, result.stored, result.failed) == (7, 3, 4)
    for ds, path in zip(datasets[:3], paths[:3], strict=True):
        assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(path)
