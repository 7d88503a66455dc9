"""Hostile peers: malformed PDUs and A-ASSOCIATE-RQs, data sets that contradict their command
or cannot be parsed, hostile filing values.

Each case is sent as hand-built bytes over a raw socket on 127.0.0.1 and must get a precise
answer: an A-ABORT with the right source and reason (PS3.8 9.3.8), an A-ASSOCIATE-RJ with the
right result, source and reason (PS3.8 9.3.4), or a DIMSE failure status where the DIMSE layer
can answer (PS3.4 B.2.3). Afterwards no file and no spool file is left, and the server goes on
serving others: a pynetdicom store succeeds.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    VERIFICATION,
    associate,
    dataset_bytes,
    incoming_entries,
    make_dataset,
    patient_layout,
    send,
    statuses,
    stored_files,
    write_file,
)
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from raw_peer import (
    ASSOCIATE_AC,
    ASSOCIATE_RQ,
    CT_CONTEXT,
    ECHO_CONTEXT,
    P_DATA_TF,
    RELEASE_RP,
    RELEASE_RQ,
    RawPeer,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    command_set,
    data_set_bytes,
    element,
    header_only,
    item,
    p_data,
    pdu,
    pdv,
    presentation_context,
    us,
    user_information,
)

from dicom_inlet import StoreSCPServer

MAX_PDU = 65536
DEFLATED_CONTEXT = 5
REJECTED_CONTEXT = 7
CONTEXTS = (
    (CT_CONTEXT, CT_IMAGE_STORAGE, (ExplicitVRLittleEndian,)),
    (ECHO_CONTEXT, VERIFICATION, ("1.2.840.10008.1.2",)),
    (DEFLATED_CONTEXT, CT_IMAGE_STORAGE, (DeflatedExplicitVRLittleEndian,)),
    (REJECTED_CONTEXT, "1.2.3.4.5.6.7", (ExplicitVRLittleEndian,)),
)


@pytest.fixture
def server(server_factory) -> StoreSCPServer:
    # A long dimse_timeout: a case waiting for a timeout instead of answering at once fails.
    return server_factory(maximum_pdu_size=MAX_PDU, dimse_timeout=120.0, network_timeout=120.0)


def assert_still_serving(server: StoreSCPServer, data_dir: Path, tmp_path: Path) -> None:
    """A pynetdicom store succeeds, and its file is the only one under data_dir."""
    ds = make_dataset(rows=8, columns=8)
    src = write_file(ds, tmp_path / "src" / f"{ds.SOPInstanceUID}.dcm")
    assert statuses(send(server.port, [src])) == [0x0000]
    assert stored_files(data_dir) == [patient_layout(ds)]
    assert dataset_bytes(data_dir / patient_layout(ds)) == dataset_bytes(src)
    assert incoming_entries(data_dir) == []


def associated(port: int) -> RawPeer:
    peer = RawPeer(port)
    results = peer.associate(associate_rq(contexts=CONTEXTS))
    assert results == [(1, 0), (3, 0), (5, 0), (7, 3)]
    return peer


@pytest.fixture(scope="module")
def instance() -> tuple[str, bytes]:
    """A small CT instance: (SOP Instance UID, explicit VR LE data set bytes)."""
    ds = make_dataset(rows=16, columns=16)
    return ds.SOPInstanceUID, data_set_bytes(ds)


# --------------------------------------------------------------------------------------
# Malformed PDUs after a valid association -> A-ABORT, source 2 (service provider)
# --------------------------------------------------------------------------------------


def store_pdvs(uid: str, data: bytes, **kw) -> list[bytes]:
    return [
        pdv(CT_CONTEXT, c_store_rq(uid, **kw), command=True, last=True),
        pdv(CT_CONTEXT, data, command=False, last=True),
    ]


def big_command() -> bytes:
    # Over the 64 KiB bound on a command set, in PDVs each within the max PDU.
    return b"".join(
        p_data(pdv(ECHO_CONTEXT, bytes(60000), command=True, last=False)) for _ in range(2)
    )


Build = Callable[[str, bytes], bytes]

# name -> (bytes after the association, given the instance's UID and data set; (source, reason))
MALFORMED_AFTER_ASSOCIATION: dict[str, tuple[Build, tuple[int, int]]] = {
    # Reason 6, invalid PDU parameter value: lengths that cannot be right.
    "pdu-longer-than-max-pdu": (lambda u, d: header_only(P_DATA_TF, MAX_PDU + 1), (2, 6)),
    "length-0xfffffff0-then-stall": (lambda u, d: header_only(P_DATA_TF, 0xFFFFFFF0), (2, 6)),
    "p-data-without-pdv": (lambda u, d: pdu(P_DATA_TF, b""), (2, 6)),
    "pdv-length-0": (lambda u, d: pdu(P_DATA_TF, bytes(4)), (2, 6)),
    "pdv-length-1": (lambda u, d: pdu(P_DATA_TF, struct.pack(">I", 1) + b"\x01"), (2, 6)),
    "pdv-odd-length-past-pdu": (
        lambda u, d: pdu(P_DATA_TF, struct.pack(">I", 7) + b"\x03\x03" + c_echo_rq()[:4]),
        (2, 6),
    ),
    "pdv-longer-than-pdu": (
        lambda u, d: pdu(P_DATA_TF, struct.pack(">I", 1000) + b"\x03\x03" + c_echo_rq()),
        (2, 6),
    ),
    # A valid echo then garbage in the same PDU: refused whole, the echo is not answered.
    "garbage-after-a-valid-pdv": (
        lambda u, d: pdu(
            P_DATA_TF, pdv(ECHO_CONTEXT, c_echo_rq(), command=True, last=True) + b"\x00\x00"
        ),
        (2, 6),
    ),
    # A complete instance then garbage in the same PDU: refused whole, nothing stored.
    "garbage-after-a-complete-instance": (
        lambda u, d: pdu(P_DATA_TF, b"".join(store_pdvs(u, d)) + b"\xff"),
        (2, 6),
    ),
    "release-rq-of-8-bytes": (lambda u, d: pdu(RELEASE_RQ, bytes(8)), (2, 6)),
    "pdu-over-the-control-bound": (lambda u, d: header_only(RELEASE_RQ, 2 << 20), (2, 6)),
    # Presentation contexts that may not carry data.
    "context-never-proposed": (
        lambda u, d: p_data(pdv(9, c_echo_rq(), command=True, last=True)),
        (2, 6),
    ),
    "even-context-id": (lambda u, d: p_data(pdv(2, c_echo_rq(), command=True, last=True)), (2, 6)),
    "rejected-context": (
        lambda u, d: p_data(pdv(REJECTED_CONTEXT, c_echo_rq(), command=True, last=True)),
        (2, 6),
    ),
    # Command sets that do not parse, or a request without the MessageID to answer to.
    "command-set-garbage": (
        lambda u, d: p_data(pdv(ECHO_CONTEXT, b"\xde\xad\xbe\xef" * 5, command=True, last=True)),
        (2, 6),
    ),
    "command-set-truncated": (
        lambda u, d: p_data(pdv(CT_CONTEXT, c_store_rq(u)[:-3], command=True, last=True)),
        (2, 6),
    ),
    "command-set-with-data-set-element": (
        lambda u, d: p_data(
            pdv(
                ECHO_CONTEXT,
                c_echo_rq() + element(0x0008_0016, b"1.2"),
                command=True,
                last=True,
            )
        ),
        (2, 6),
    ),
    "command-set-over-64-kib": (lambda u, d: big_command(), (2, 6)),
    "c-store-without-message-id": (
        lambda u, d: p_data(*store_pdvs(u, d, omit=[0x0000_0110])),
        (2, 6),
    ),
    "c-store-without-command-field": (
        lambda u, d: p_data(*store_pdvs(u, d, omit=[0x0000_0100])),
        (2, 6),
    ),
    "c-store-without-data-set-type": (
        lambda u, d: p_data(*store_pdvs(u, d, omit=[0x0000_0800])),
        (2, 6),
    ),
    # Reason 5, unexpected PDU parameter: well-formed PDVs out of sequence.
    "data-before-any-command": (
        lambda u, d: p_data(pdv(CT_CONTEXT, d, command=False, last=True)),
        (2, 5),
    ),
    "data-set-on-another-context-than-its-command": (
        lambda u, d: p_data(
            pdv(CT_CONTEXT, c_store_rq(u), command=True, last=True),
            pdv(DEFLATED_CONTEXT, d, command=False, last=True),
        ),
        (2, 5),
    ),
    "command-fragments-switch-context": (
        lambda u, d: p_data(
            pdv(ECHO_CONTEXT, c_echo_rq()[:10], command=True, last=False),
            pdv(CT_CONTEXT, c_echo_rq()[10:], command=True, last=True),
        ),
        (2, 5),
    ),
    "command-in-the-middle-of-a-data-set": (
        lambda u, d: p_data(
            pdv(CT_CONTEXT, c_store_rq(u), command=True, last=True),
            pdv(CT_CONTEXT, d[:100], command=False, last=False),
            pdv(ECHO_CONTEXT, c_echo_rq(), command=True, last=True),
        ),
        (2, 5),
    ),
    "dimse-response-sent-to-the-scp": (
        lambda u, d: p_data(
            pdv(
                ECHO_CONTEXT,
                command_set(
                    {
                        0x0000_0100: us(0x8030),
                        0x0000_0120: us(1),
                        0x0000_0800: us(0x0101),
                        0x0000_0900: us(0),
                    }
                ),
                command=True,
                last=True,
            )
        ),
        (2, 5),
    ),
    # Reason 2, unexpected PDU: a PDU of the standard that may not come now.
    "second-a-associate-rq": (lambda u, d: associate_rq(contexts=CONTEXTS), (2, 2)),
    "a-associate-ac": (lambda u, d: pdu(ASSOCIATE_AC, bytes(68)), (2, 2)),
    "unsolicited-a-release-rp": (lambda u, d: pdu(RELEASE_RP, bytes(4)), (2, 2)),
    # Reason 1, unrecognized PDU: a type PS3.8 does not define (its body is never read).
    "unknown-pdu-type-0x08": (lambda u, d: pdu(0x08, bytes(4)), (2, 1)),
    "unknown-pdu-type-0xff-huge": (lambda u, d: header_only(0xFF, 0xFFFFFFF0), (2, 1)),
}


@pytest.mark.parametrize(
    ("build", "expected"),
    MALFORMED_AFTER_ASSOCIATION.values(),
    ids=MALFORMED_AFTER_ASSOCIATION,
)
def test_malformed_pdu_after_association_is_aborted(
    server, data_dir, tmp_path, instance, build, expected
):
    uid, data = instance
    with associated(server.port) as peer:
        peer.send(build(uid, data))
        assert peer.expect_abort() == expected
    assert stored_files(data_dir) == []
    assert incoming_entries(data_dir) == []
    assert_still_serving(server, data_dir, tmp_path)


def test_open_association_survives_hostile_neighbours(server, data_dir, tmp_path, instance):
    uid, data = instance
    ds = make_dataset(rows=8, columns=8)
    src = write_file(ds, tmp_path / "src" / "kept.dcm")
    with associate(server.port, [(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])]) as assoc:
        for build, expected in MALFORMED_AFTER_ASSOCIATION.values():
            with associated(server.port) as peer:
                peer.send(build(uid, data))
                assert peer.expect_abort() == expected
        assert assoc.send_c_store(src).Status == 0x0000
    assert stored_files(data_dir) == [patient_layout(ds)]


# --------------------------------------------------------------------------------------
# Requests the DIMSE layer can answer: a failure status, and the association goes on
# --------------------------------------------------------------------------------------

ANSWERABLE: dict[str, tuple[Callable[[str, bytes], list[bytes]], int]] = {
    "c-store-without-sop-instance-uid": (
        lambda u, d: store_pdvs(u, d, omit=[0x0000_1000]),
        0xC000,
    ),
    "c-store-without-sop-class-uid": (lambda u, d: store_pdvs(u, d, omit=[0x0000_0002]), 0xC000),
    "c-store-without-a-data-set": (
        lambda u, d: [
            pdv(
                CT_CONTEXT,
                command_set(
                    {
                        0x0000_0002: CT_IMAGE_STORAGE.encode(),
                        0x0000_0100: us(0x0001),
                        0x0000_0110: us(1),
                        0x0000_0800: us(0x0101),
                        0x0000_1000: u.encode(),
                    }
                ),
                command=True,
                last=True,
            )
        ],
        0xC000,
    ),
    "c-store-for-another-sop-class-than-the-context": (
        lambda u, d: store_pdvs(u, d, sop_class=MR_IMAGE_STORAGE),
        0x0122,
    ),
    "unknown-command-with-a-data-set": (
        lambda u, d: [
            pdv(
                CT_CONTEXT,
                command_set({0x0000_0100: us(0x0020), 0x0000_0110: us(1), 0x0000_0800: us(0)}),
                command=True,
                last=True,
            ),
            pdv(CT_CONTEXT, d, command=False, last=True),
        ],
        0x0211,
    ),
    "unknown-command-without-a-data-set": (
        lambda u, d: [
            pdv(
                ECHO_CONTEXT,
                command_set({0x0000_0100: us(0x0130), 0x0000_0110: us(1), 0x0000_0800: us(0x0101)}),
                command=True,
                last=True,
            )
        ],
        0x0211,
    ),
}


@pytest.mark.parametrize(("build", "status"), ANSWERABLE.values(), ids=ANSWERABLE)
def test_answerable_bad_request_gets_failure_status(
    server, data_dir, tmp_path, instance, build, status
):
    uid, data = instance
    with associated(server.port) as peer:
        for fragment in build(uid, data):
            peer.send(p_data(fragment))
        response = peer.response()
        assert response.status == status
        assert response.error_comment
        # The same association goes on: a valid instance is stored.
        assert peer.store(data, uid).status == 0x0000
        peer.release()
    [stored] = stored_files(data_dir)
    assert stored.name == f"{uid}.dcm"
    assert dataset_bytes(data_dir / stored) == data
    assert incoming_entries(data_dir) == []


def test_odd_length_pdvs_are_framing_not_an_error(server, data_dir, instance):
    uid, data = instance
    with associated(server.port) as peer:
        assert peer.store(data, uid, fragment=777).status == 0x0000
        peer.release()
    [stored] = stored_files(data_dir)
    assert dataset_bytes(data_dir / stored) == data


# --------------------------------------------------------------------------------------
# Malformed A-ASSOCIATE-RQ -> A-ABORT (unparsable) or A-ASSOCIATE-RJ (unacceptable)
# --------------------------------------------------------------------------------------


def rq_items(*items: bytes) -> bytes:
    """An A-ASSOCIATE-RQ with the given variable items."""
    return associate_rq(items=b"".join(items))


APP = item(0x10, b"1.2.840.10008.3.1.1.1")
ECHO_PC = presentation_context(1, VERIFICATION, ["1.2.840.10008.1.2"])

MALFORMED_RQ: dict[str, tuple[bytes, tuple[int, int]]] = {
    "fixed-part-truncated": (pdu(ASSOCIATE_RQ, bytes(20)), (2, 6)),
    "item-header-truncated": (rq_items(APP, b"\x20\x00\x00"), (2, 6)),
    "item-length-past-pdu": (rq_items(APP, b"\x20\x00\x10\x00" + bytes(20)), (2, 6)),
    "sub-item-past-its-item": (
        rq_items(APP, item(0x20, b"\x01\x00\x00\x00" + b"\x30\x00\x00\x40" + b"1.2"), ECHO_PC),
        (2, 6),
    ),
    "item-length-0xffff-with-short-value": (
        rq_items(APP, b"\x10\x00\xff\xff" + b"1.2.840.10008.3.1.1.1"),
        (2, 6),
    ),
    "no-application-context-item": (rq_items(ECHO_PC, user_information()), (2, 6)),
    "two-application-context-items": (rq_items(APP, APP, ECHO_PC), (2, 6)),
    "context-without-transfer-syntax": (
        rq_items(APP, item(0x20, b"\x01\x00\x00\x00" + item(0x30, VERIFICATION.encode()))),
        (2, 6),
    ),
    "context-without-abstract-syntax": (
        rq_items(APP, item(0x20, b"\x01\x00\x00\x00" + item(0x40, b"1.2.840.10008.1.2"))),
        (2, 6),
    ),
    "non-ascii-uid": (
        rq_items(APP, presentation_context(1, b"1.2.\xff\xfe", ["1.2.840.10008.1.2"])),
        (2, 6),
    ),
    "max-length-sub-item-of-3-bytes": (
        rq_items(APP, ECHO_PC, item(0x50, item(0x51, b"\x00\x40\x00"))),
        (2, 6),
    ),
    "rq-over-the-control-bound": (header_only(ASSOCIATE_RQ, 2 << 20), (2, 6)),
    # Before an association, any other PDU of the standard is unexpected; others unknown.
    "p-data-first": (p_data(pdv(1, c_echo_rq(), command=True, last=True)), (2, 2)),
    "release-rq-first": (pdu(RELEASE_RQ, bytes(4)), (2, 2)),
    "unknown-pdu-first": (pdu(0x09, bytes(10)), (2, 1)),
}


@pytest.mark.parametrize(("rq", "expected"), MALFORMED_RQ.values(), ids=MALFORMED_RQ)
def test_malformed_associate_rq_is_aborted(server, data_dir, tmp_path, rq, expected):
    with RawPeer(server.port) as peer:
        peer.send(rq)
        assert peer.expect_abort() == expected
    assert_still_serving(server, data_dir, tmp_path)


LONG_UID = b"1." + b"9" * 65000

REJECTED_RQ: dict[str, tuple[bytes, tuple[int, int, int]]] = {
    # Permanent, service user, no reason given: nothing to negotiate.
    "no-presentation-context": (rq_items(APP, user_information()), (1, 1, 1)),
    # Permanent, ACSE provider, protocol version not supported (bit 0 is version 1).
    "protocol-version-2": (associate_rq(protocol_version=2), (1, 2, 2)),
    "protocol-version-0": (associate_rq(protocol_version=0), (1, 2, 2)),
    # Permanent, service user, application context name not supported.
    "wrong-application-context": (associate_rq(application_context=b"1.2.3.4"), (1, 1, 2)),
    "64-kib-application-context": (associate_rq(application_context=LONG_UID), (1, 1, 2)),
    # Called AE title not recognized (7), calling AE title not recognized (3).
    "non-ascii-called-ae": (associate_rq(called="CAF\u00c9".encode()), (1, 1, 7)),
    "all-space-called-ae": (associate_rq(called=b" " * 16), (1, 1, 7)),
    "nul-called-ae": (associate_rq(called=bytes(16)), (1, 1, 7)),
    "non-ascii-calling-ae": (associate_rq(calling="\u00dcBER".encode()), (1, 1, 3)),
    "all-space-calling-ae": (associate_rq(calling=b" " * 16), (1, 1, 3)),
    "control-char-calling-ae": (associate_rq(calling=b"EVIL\x1b[31m"), (1, 1, 3)),
}


@pytest.mark.parametrize(("rq", "expected"), REJECTED_RQ.values(), ids=REJECTED_RQ)
def test_unacceptable_associate_rq_is_rejected(server, data_dir, tmp_path, rq, expected):
    with RawPeer(server.port) as peer:
        peer.send(rq)
        assert peer.expect_rejection() == expected
    assert_still_serving(server, data_dir, tmp_path)


def test_256_presentation_contexts_answered_each(server):
    contexts = [(i, VERIFICATION, ["1.2.840.10008.1.2"]) for i in range(256)]
    with RawPeer(server.port) as peer:
        results = peer.associate(associate_rq(contexts=contexts))
        # Ids are odd (PS3.8 9.3.2.2): the odd ones are accepted, even ones refused (2).
        assert results == [(i, 0 if i % 2 else 2) for i in range(256)]
        peer.send(p_data(pdv(255, c_echo_rq(9), command=True, last=True)))
        response = peer.response()
        assert (response.status, response.message_id) == (0x0000, 9)
        peer.release()


def test_64_kib_uids_in_contexts_are_refused_per_context(server, data_dir, instance):
    uid, data = instance
    contexts = [
        (1, LONG_UID, ["1.2.840.10008.1.2"]),
        (3, CT_IMAGE_STORAGE, [LONG_UID.decode()]),
        (5, CT_IMAGE_STORAGE, [ExplicitVRLittleEndian]),
    ]
    with RawPeer(server.port) as peer:
        results = peer.associate(associate_rq(contexts=contexts))
        # Abstract syntax not supported (3), transfer syntaxes not supported (4).
        assert results == [(1, 3), (3, 4), (5, 0)]
        assert peer.store(data, uid, context_id=5).status == 0x0000
        peer.release()
    assert [p.name for p in stored_files(data_dir)] == [f"{uid}.dcm"]


# --------------------------------------------------------------------------------------
# Data set vs command, and data sets that cannot be parsed: failure status, no file
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["SOPInstanceUID", "SOPClassUID"])
def test_data_set_contradicting_its_command_is_refused(server, data_dir, attribute):
    ds = make_dataset(rows=8, columns=8)
    uid = ds.SOPInstanceUID
    setattr(ds, attribute, generate_uid() if attribute == "SOPInstanceUID" else MR_IMAGE_STORAGE)
    data = data_set_bytes(ds)
    with associated(server.port) as peer:
        response = peer.store(data, uid)
        # PS3.4 B.2.3: A9xx, data set does not match SOP class.
        assert response.status == 0xA900
        # What differs, in words, within the Error Comment's 64 characters (LO).
        words = {"SOPInstanceUID": "SOP Instance UID", "SOPClassUID": "SOP Class UID"}
        assert response.error_comment.startswith(f"{words[attribute]}: data set ")
        assert len(response.error_comment) <= 64
        peer.release()
    assert stored_files(data_dir) == []
    assert incoming_entries(data_dir) == []


def explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    """An explicit VR little endian element with a 16-bit length."""
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def nested_sequences(depth: int) -> bytes:
    opening = b"\x08\x00\x06\x00SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    return opening * depth


UNPARSABLE: dict[str, Callable[[bytes], tuple[int, bytes]]] = {
    "invalid-vr": lambda d: (CT_CONTEXT, d[:4] + b"ZZ" + d[6:]),
    "truncated-mid-element": lambda d: (CT_CONTEXT, d[:30]),
    "undefined-length-on-a-text-value": lambda d: (
        CT_CONTEXT,
        b"\x08\x00\x05\x00UT\x00\x00\xff\xff\xff\xff" + d,
    ),
    "delimiter-at-top-level": lambda d: (CT_CONTEXT, b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" + d),
    "sequences-nested-65-deep": lambda d: (CT_CONTEXT, nested_sequences(65) + d),
    "deflate-stream-garbage": lambda d: (DEFLATED_CONTEXT, b"\xff" * 64),
    "deflate-stream-cut": lambda d: (DEFLATED_CONTEXT, data_set_bytes_deflated()[:40]),
}


def data_set_bytes_deflated() -> bytes:
    return data_set_bytes(make_dataset(rows=8, columns=8), DeflatedExplicitVRLittleEndian)


@pytest.mark.parametrize("corrupt", UNPARSABLE.values(), ids=UNPARSABLE)
def test_unparsable_data_set_is_refused(server, data_dir, instance, corrupt):
    uid, data = instance
    context_id, bad = corrupt(data)
    with associated(server.port) as peer:
        response = peer.store(bad, uid, context_id=context_id)
        # PS3.4 B.2.3: Cxxx, cannot understand.
        assert 0xC000 <= response.status <= 0xCFFF, hex(response.status)
        assert "data set" in response.error_comment
        # The association goes on.
        assert peer.store(data, uid).status == 0x0000
        peer.release()
    assert [p.name for p in stored_files(data_dir)] == [f"{uid}.dcm"]
    assert incoming_entries(data_dir) == []


# --------------------------------------------------------------------------------------
# Hostile filing values, in the command and the data set alike
# --------------------------------------------------------------------------------------

HOSTILE_VALUES = {
    "dotdot": "..",
    "dot": ".",
    "traversal": "../../../evil",
    "absolute": "/tmp/evil",
    "nul": "a\x00b",
    "control": "\x01\x1b[31m\x7f",
    "incoming": ".incoming",
    "ten-kb": "9" * 10240,
}


def snapshot(root: Path, exclude: Path) -> set[Path]:
    return {
        Path(d, f)
        for d, _, files in os.walk(root)
        if not Path(d).is_relative_to(exclude)
        for f in files
    }


@pytest.mark.usefixtures("lenient_pydicom")
@pytest.mark.parametrize("value", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES)
def test_hostile_values_everywhere_stay_inside_data_dir(server_factory, tmp_path, value):
    data_dir = tmp_path / "a" / "b" / "data"
    server = server_factory(data_dir)
    ds = make_dataset(
        rows=4,
        columns=4,
        sop_instance_uid=value,
        patient_id=value,
        study_uid=value + "S",
        series_uid=value + "R",
    )
    data = data_set_bytes(ds)
    before = snapshot(tmp_path, data_dir)
    evil = Path("/tmp/evil")
    evil_existed = evil.exists()
    with associated(server.port) as peer:
        assert peer.store(data, value.encode("latin-1")).status == 0x0000
        peer.release()
    [stored] = stored_files(data_dir)
    path = (data_dir / stored).resolve()
    assert path.is_relative_to(data_dir.resolve())
    assert len(stored.parts) == 4
    assert not any(part.startswith(".") for part in stored.parts)
    assert dataset_bytes(path) == data
    assert snapshot(tmp_path, data_dir) == before
    assert evil.exists() == evil_existed
    assert incoming_entries(data_dir) == []


def test_non_ascii_filing_values(server, data_dir, lenient_pydicom):
    ds = make_dataset(rows=4, columns=4, patient_id="\u00e9t\u00e9", study_uid="1.\u00e9")
    with associated(server.port) as peer:
        # Not a UID (PS3.5 9.1): refused, as the file meta could not name the instance.
        bad = make_dataset(rows=4, columns=4, sop_instance_uid="1.\u00e9")
        response = peer.store(data_set_bytes(bad), "1.\u00e9".encode("latin-1"))
        assert response.status == 0xC000
        assert "ASCII" in response.error_comment
        # Filed under sanitised names when only the layout values are non-ASCII.
        assert peer.store(data_set_bytes(ds), ds.SOPInstanceUID).status == 0x0000
        peer.release()
    [stored] = stored_files(data_dir)
    assert stored.parts[0].isascii() and stored.parts[0] != "\u00e9t\u00e9"
    assert stored.name == f"{ds.SOPInstanceUID}.dcm"
    assert incoming_entries(data_dir) == []


def test_empty_uids_are_refused_not_filed(server, data_dir, lenient_pydicom):
    ds = make_dataset(rows=4, columns=4, sop_instance_uid="X")
    ds.SOPInstanceUID = ""
    ds.StudyInstanceUID = ""
    data = data_set_bytes(ds)
    with associated(server.port) as peer:
        response = peer.store(data, b"")
        assert 0xC000 <= response.status <= 0xCFFF, hex(response.status)
        peer.release()
    assert stored_files(data_dir) == []
    assert incoming_entries(data_dir) == []
