"""A DICOM peer built from hand-made bytes, for sending what no real SCU would.

PDUs, items and PDVs follow PS3.8 section 9.3 and the command sets PS3.7 annex E, written out
field by field here so a test can bend any one of them. Everything goes over a real TCP socket
to 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from conftest import HOST, SCU_AET, TIMEOUT, VERIFICATION
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"

ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
NO_DATA_SET = 0x0101

# The contexts RawPeer.associate proposes by default: CT storage and Verification.
CT_CONTEXT = 1
ECHO_CONTEXT = 3
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


# --------------------------------------------------------------------------------------
# PDUs and items (PS3.8 9.3)
# --------------------------------------------------------------------------------------


def pdu(pdu_type: int, body: bytes) -> bytes:
    """``type | 00 | u32 BE length | body``."""
    return header_only(pdu_type, len(body)) + body


def header_only(pdu_type: int, length: int) -> bytes:
    """A PDU header announcing ``length`` bytes, for a peer that then sends less or stalls."""
    return bytes([pdu_type, 0]) + struct.pack(">I", length)


def item(item_type: int, value: bytes) -> bytes:
    """An A-ASSOCIATE item or sub-item: ``type | 00 | u16 BE length | value``."""
    return bytes([item_type, 0]) + struct.pack(">H", len(value)) + value


def ae_field(title: str | bytes) -> bytes:
    raw = title.encode("latin-1") if isinstance(title, str) else title
    return raw.ljust(16, b" ")[:16]


def presentation_context(context_id: int, abstract: str | bytes, syntaxes: Sequence[str]) -> bytes:
    abstract = abstract.encode() if isinstance(abstract, str) else abstract
    value = bytes([context_id, 0, 0, 0]) + item(0x30, abstract)
    return item(0x20, value + b"".join(item(0x40, ts.encode()) for ts in syntaxes))


def user_information(max_pdu: int = 16384) -> bytes:
    return item(0x50, item(0x51, struct.pack(">I", max_pdu)) + item(0x52, b"1.2.3.4"))


DEFAULT_CONTEXTS = (
    (CT_CONTEXT, CT_IMAGE_STORAGE, (ExplicitVRLittleEndian,)),
    (ECHO_CONTEXT, VERIFICATION, (ImplicitVRLittleEndian,)),
)


def associate_rq(
    *,
    called: str | bytes = "ANY-SCP",
    calling: str | bytes = SCU_AET,
    contexts: Sequence[tuple[int, str, Sequence[str]]] = DEFAULT_CONTEXTS,
    protocol_version: int = 1,
    application_context: bytes = APPLICATION_CONTEXT,
    items: bytes | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU; ``items`` replaces the whole variable part when given."""
    if items is None:
        items = (
            item(0x10, application_context)
            + b"".join(presentation_context(*c) for c in contexts)
            + user_information()
        )
    fixed = struct.pack(">HH", protocol_version, 0) + ae_field(called) + ae_field(calling)
    return pdu(ASSOCIATE_RQ, fixed + bytes(32) + items)


def pdv(context_id: int, data: bytes, *, command: bool, last: bool) -> bytes:
    """A presentation data value item (PS3.8 9.3.5.1, annex E)."""
    control = (1 if command else 0) | (2 if last else 0)
    return struct.pack(">I", len(data) + 2) + bytes([context_id, control]) + data


def p_data(*pdvs: bytes) -> bytes:
    return pdu(P_DATA_TF, b"".join(pdvs))


def abort_pdu(source: int = 0, reason: int = 0) -> bytes:
    return pdu(ABORT, bytes([0, 0, source, reason]))


def release_rq() -> bytes:
    return pdu(RELEASE_RQ, bytes(4))


# --------------------------------------------------------------------------------------
# Command sets (PS3.7 annex E): group 0000, implicit VR little endian
# --------------------------------------------------------------------------------------


def element(tag: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    if len(value) % 2:
        value += pad
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def command_set(elements: dict[int, bytes]) -> bytes:
    """Elements in tag order after (0000,0000) CommandGroupLength."""
    body = b"".join(element(tag, value) for tag, value in sorted(elements.items()))
    return element(0x0000_0000, struct.pack("<I", len(body))) + body


def c_store_rq(
    sop_instance: str | bytes,
    *,
    sop_class: str | bytes = CT_IMAGE_STORAGE,
    message_id: int = 1,
    omit: Sequence[int] = (),
) -> bytes:
    """A C-STORE-RQ command set; ``omit`` drops elements by tag."""
    as_bytes = [v.encode("latin-1") if isinstance(v, str) else v for v in (sop_class, sop_instance)]
    elements = {
        0x0000_0002: as_bytes[0],
        0x0000_0100: us(C_STORE_RQ),
        0x0000_0110: us(message_id),
        0x0000_0700: us(0),
        0x0000_0800: us(0),
        0x0000_1000: as_bytes[1],
    }
    return command_set({t: v for t, v in elements.items() if t not in omit})


def c_echo_rq(message_id: int = 1) -> bytes:
    return command_set(
        {
            0x0000_0002: VERIFICATION.encode(),
            0x0000_0100: us(C_ECHO_RQ),
            0x0000_0110: us(message_id),
            0x0000_0800: us(NO_DATA_SET),
        }
    )


def parse_command(data: bytes) -> dict[int, bytes]:
    """Elements of an implicit VR little endian command set, by tag."""
    elements = {}
    offset = 0
    while offset < len(data):
        group, elem, length = struct.unpack_from("<HHI", data, offset)
        elements[(group << 16) | elem] = data[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return elements


@dataclass
class Response:
    """A DIMSE response: its command field, status and error comment."""

    command_field: int
    status: int
    error_comment: str = ""
    message_id: int = 0


def data_set_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` encoded as a data set (no file meta) in ``transfer_syntax``."""
    implicit = transfer_syntax == ImplicitVRLittleEndian
    big = transfer_syntax == "1.2.840.10008.1.2.2"
    encoded = encode(ds, implicit, not big, transfer_syntax == "1.2.840.10008.1.2.1.99")
    assert encoded is not None
    return encoded


# --------------------------------------------------------------------------------------
# The peer
# --------------------------------------------------------------------------------------


class RawPeer:
    """One TCP connection to the SCP, speaking whatever bytes the test hands it."""

    def __init__(self, port: int, *, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            assert chunk, f"connection closed after {len(data)} of {count} bytes"
            data += chunk
        return data

    def read_pdu(self) -> tuple[int, bytes]:
        header = self.recv_exactly(6)
        return header[0], self.recv_exactly(struct.unpack(">I", header[2:])[0])

    def associate(self, rq: bytes | None = None) -> list[tuple[int, int]]:
        """Send an A-ASSOCIATE-RQ (default: CT storage and Verification contexts), expect
        the A-ASSOCIATE-AC; return its (context id, result) pairs."""
        self.send(rq if rq is not None else associate_rq())
        pdu_type, body = self.read_pdu()
        assert pdu_type == ASSOCIATE_AC, f"expected A-ASSOCIATE-AC, got {pdu_type:#04x} {body!r}"
        results = []
        offset = 68
        while offset < len(body):
            item_type = body[offset]
            (length,) = struct.unpack_from(">H", body, offset + 2)
            if item_type == 0x21:
                results.append((body[offset + 4], body[offset + 6]))
            offset += 4 + length
        return results

    def store(
        self,
        data: bytes,
        sop_instance: str | bytes,
        *,
        context_id: int = CT_CONTEXT,
        command: bytes | None = None,
        fragment: int = 4000,
    ) -> Response:
        """C-STORE ``data`` in fragments of ``fragment`` bytes; return the response."""
        self.send(
            p_data(pdv(context_id, command or c_store_rq(sop_instance), command=True, last=True))
        )
        chunks = [data[i : i + fragment] for i in range(0, len(data), fragment)] or [b""]
        for i, chunk in enumerate(chunks):
            self.send(p_data(pdv(context_id, chunk, command=False, last=i == len(chunks) - 1)))
        return self.response()

    def response(self) -> Response:
        pdu_type, body = self.read_pdu()
        assert pdu_type == P_DATA_TF, f"expected P-DATA-TF, got {pdu_type:#04x} {body!r}"
        assert body[5] & 0x03 == 0x03, "response command not in one last fragment"
        elements = parse_command(body[6:])
        return Response(
            command_field=struct.unpack("<H", elements[0x0000_0100])[0],
            status=struct.unpack("<H", elements[0x0000_0900])[0],
            error_comment=elements.get(0x0000_0902, b"").decode("latin-1").strip(),
            message_id=struct.unpack("<H", elements[0x0000_0120])[0],
        )

    def release(self) -> None:
        self.send(release_rq())
        assert self.read_pdu()[0] == RELEASE_RP

    def expect_abort(self) -> tuple[int, int]:
        """Read an A-ABORT; return (source, reason) once the SCP has closed the connection."""
        pdu_type, body = self.read_pdu()
        assert pdu_type == ABORT, f"expected A-ABORT, got {pdu_type:#04x} {body!r}"
        assert len(body) == 4
        self.wait_closed()
        return body[2], body[3]

    def expect_rejection(self) -> tuple[int, int, int]:
        """Read an A-ASSOCIATE-RJ; return (result, source, reason)."""
        pdu_type, body = self.read_pdu()
        assert pdu_type == ASSOCIATE_RJ, f"expected A-ASSOCIATE-RJ, got {pdu_type:#04x} {body!r}"
        assert len(body) == 4
        self.wait_closed()
        return body[1], body[2], body[3]

    def wait_closed(self) -> bytes:
        """Read until the SCP closes the connection; return what came before the close.

        Closing our side first makes the SCP's end of the association observable: it closes
        only after its association thread has cleaned up (spool file removed).
        """
        received = b""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while chunk := self.sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received
