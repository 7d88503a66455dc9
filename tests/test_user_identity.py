"""User identity negotiation (PS3.7 §D.3.3.7) with DCMTK, pynetdicom and our own SCU.

Accepted identities associate and are recorded in the association log line; refused ones get
A-ASSOCIATE-RJ (permanent, service user, no reason given) logged at WARNING with the reason;
malformed sub-items get A-ABORT; every neighbour is still served.
"""

from __future__ import annotations

import logging
import signal
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HOST,
    SCP_AET,
    TIMEOUT,
    VERIFICATION,
    dcmtk_tool,
    logged,
    make_dataset,
    run_tool,
    stored_files,
    wait_until,
    write_file,
)
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from raw_peer import (
    ABORT,
    APPLICATION_CONTEXT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    DEFAULT_CONTEXTS,
    RawPeer,
    associate_rq,
    item,
    presentation_context,
)

from dicom_inlet import AssociationRejected, echo, send
from dicom_inlet.cli import main
from dicom_inlet.identity import JWT, UserIdentity, UsersFile

IDENTITY_REFUSED = (1, 1, 1)  # permanent, DICOM UL service-user, no reason given


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    UsersFile.add(path, "alice", "secret")
    UsersFile.add(path, "bob", "hunter2")
    return path


def test_users_file_checks_scrypt_passcodes(users: Path) -> None:
    check = UsersFile(users)
    assert check(UserIdentity.username("alice", "secret"))
    assert not check(UserIdentity.username("alice", "wrong"))
    assert not check(UserIdentity.username("alice"))  # a username alone proves nothing
    assert not check(UserIdentity.username("mallory", "secret"))
    assert not check(UserIdentity.jwt("a.b.c"))
    assert "secret" not in users.read_text()
    UsersFile.add(users, "alice", "changed")
    assert UsersFile(users)(UserIdentity.username("alice", "changed"))
    assert users.read_text().count("alice:") == 1
    users.write_text("alice:md5:xyz\n")
    with pytest.raises(ValueError, match=r"users:1: not a NAME:scrypt"):
        UsersFile(users)


def test_cli_users_add(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users"
    assert main(["users", "add", str(path), "carol", "--password", "pw"]) == 0
    assert "carol added" in capsys.readouterr().out
    assert UsersFile(path)(UserIdentity.username("carol", "pw"))
    assert path.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("positive_response", [False, True])
def test_dcmtk_storescu_user_and_password(
    users: Path,
    server_factory: Any,
    data_dir: Path,
    tmp_path: Path,
    association_log: pytest.LogCaptureFixture,
    positive_response: bool,
) -> None:
    server = server_factory(user_identity=UsersFile(users), require_user_identity=True)
    path = write_file(make_dataset(), tmp_path / "ct.dcm", ExplicitVRLittleEndian)
    storescu = dcmtk_tool("storescu")
    rsp = ["-rsp"] if positive_response else []
    good = run_tool(
        storescu, "--user", "alice", "--password", "secret", *rsp, HOST, server.port, path
    )
    assert good.returncode == 0, good.stderr
    assert len(stored_files(data_dir)) == 1
    assert wait_until(lambda: logged(association_log, 'user "alice"'))
    bad = run_tool(storescu, "--user", "alice", "--password", "nope", *rsp, HOST, server.port, path)
    assert bad.returncode != 0
    assert "Association Rejected" in bad.stderr, bad.stderr
    assert wait_until(lambda: logged(association_log, "user identity refused", logging.WARNING)), [
        r.getMessage() for r in association_log.records
    ]
    none = run_tool(storescu, HOST, server.port, path)
    assert none.returncode != 0
    assert wait_until(lambda: logged(association_log, "no user identity, and one is required"))
    assert len(stored_files(data_dir)) == 1


def _pynetdicom_associate(port: int, identity: UserIdentityNegotiation) -> Any:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(VERIFICATION)
    return ae, ae.associate(HOST, port, ae_title=SCP_AET, ext_neg=[identity])


def _identity(kind: int, primary: bytes, secondary: bytes = b"", rsp: bool = False) -> Any:
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = primary
    if kind == 2:
        item.secondary_field = secondary
    item.positive_response_requested = rsp
    return item


def test_pynetdicom_user_identity_accepted_and_rejected(users: Path, server_factory: Any) -> None:
    server = server_factory(user_identity=UsersFile(users))
    ae, assoc = _pynetdicom_associate(server.port, _identity(2, b"bob", b"hunter2", rsp=True))
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        # A username's positive response is the empty server response (PS3.7 D.3.3.7.2).
        assert assoc.acceptor.user_identity.server_response == b""
        assoc.release()
        _, refused = _pynetdicom_associate(server.port, _identity(2, b"bob", b"wrong"))
        assert refused.is_rejected
        rj = refused.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == IDENTITY_REFUSED
    finally:
        ae.shutdown()


def test_a_token_check_answers_with_its_server_response(server_factory: Any) -> None:
    seen: list[UserIdentity] = []

    def check(identity: UserIdentity) -> bool | bytes:
        seen.append(identity)
        return b"confirmed" if identity.primary == b"header.payload.signature" else False

    server = server_factory(user_identity=check)
    token = _identity(JWT, b"header.payload.signature", rsp=True)
    ae, assoc = _pynetdicom_associate(server.port, token)
    try:
        assert assoc.is_established
        assert assoc.acceptor.user_identity.server_response == b"confirmed"
        assoc.release()
    finally:
        ae.shutdown()
    (identity,) = seen
    assert (identity.identity_type, identity.calling_aet) == (JWT, "PYNETDICOM")
    # Our SCU sends tokens too; a refused one is an A-ASSOCIATE-RJ with its codes.
    assert echo(HOST, server.port, user_identity=UserIdentity.jwt("header.payload.signature")) == 0
    with pytest.raises(AssociationRejected) as refused:
        echo(HOST, server.port, user_identity=UserIdentity.jwt("forged"))
    error = refused.value
    assert (error.result, error.source, error.reason) == IDENTITY_REFUSED  # type: ignore[attr-defined]


def test_our_scu_sends_username_and_passcode(
    users: Path, server_factory: Any, data_dir: Path, tmp_path: Path
) -> None:
    server = server_factory(user_identity=UsersFile(users))
    path = write_file(make_dataset(), tmp_path / "ct.dcm", ExplicitVRLittleEndian)
    alice = UserIdentity.username("alice", "secret")
    assert send(HOST, server.port, [path], called_aet=SCP_AET, user_identity=alice).failed == 0
    with pytest.raises(AssociationRejected, match="no reason given"):
        send(HOST, server.port, [path], user_identity=UserIdentity.username("alice", "x"))
    args = ["echo", HOST, str(server.port), "--user", "alice", "--password", "secret"]
    assert main(args) == 0
    assert main([*args[:-1], "wrong"]) == 2
    assert len(stored_files(data_dir)) == 1


def test_identities_are_recorded_when_not_checked(
    server_factory: Any, association_log: pytest.LogCaptureFixture
) -> None:
    server = server_factory()
    assert echo(HOST, server.port, user_identity=UserIdentity.username("dave")) == 0
    assert wait_until(lambda: logged(association_log, 'released, user "dave"'))
    assert echo(HOST, server.port) == 0


def test_a_failing_or_stuck_check_rejects(
    server_factory: Any, association_log: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def check(identity: UserIdentity) -> bool:
        if identity.primary == b"boom":
            raise RuntimeError("directory down")
        if identity.primary == b"stuck":
            release.wait(TIMEOUT)
        return True

    server = server_factory(user_identity=check, acse_timeout=1.0)
    try:
        with pytest.raises(AssociationRejected):
            echo(HOST, server.port, user_identity=UserIdentity.username("boom"))
        assert wait_until(lambda: logged(association_log, "check", logging.ERROR))
        with pytest.raises(AssociationRejected):
            echo(HOST, server.port, user_identity=UserIdentity.username("stuck"))
        assert wait_until(lambda: logged(association_log, "did not answer within acse_timeout"))
    finally:
        release.set()
    assert echo(HOST, server.port, user_identity=UserIdentity.username("carol")) == 0


def _rq_with_identity(sub_item: bytes) -> bytes:
    user_info = item(0x50, item(0x51, struct.pack(">I", 16384)) + sub_item)
    items = (
        item(0x10, APPLICATION_CONTEXT)
        + b"".join(presentation_context(*c) for c in DEFAULT_CONTEXTS)
        + user_info
    )
    return associate_rq(items=items)


def test_64_kib_identity_fields_are_handled_precisely(server_factory: Any) -> None:
    seen: list[int] = []

    def check(identity: UserIdentity) -> bool:
        seen.append(len(identity.primary) + len(identity.secondary))
        return False

    server = server_factory(user_identity=check)
    # The largest fields the user information item can carry reach the check whole.
    name, passcode = b"n" * 40_000, b"p" * 25_000
    value = bytes([2, 0]) + struct.pack(">H", len(name)) + name
    value += struct.pack(">H", len(passcode)) + passcode
    with RawPeer(server.port) as peer:
        peer.send(_rq_with_identity(item(0x58, value)))
        pdu_type, body = peer.read_pdu()
    assert (pdu_type, tuple(body[1:])) == (ASSOCIATE_RJ, IDENTITY_REFUSED)
    assert seen == [65_000]
    # A field length running past its sub-item: A-ABORT, invalid parameter value.
    lying = bytes([1, 0]) + struct.pack(">H", 0xFFFF) + b"short" + struct.pack(">H", 0)
    with RawPeer(server.port) as peer:
        peer.send(_rq_with_identity(item(0x58, lying)))
        pdu_type, body = peer.read_pdu()
    assert (pdu_type, body[2], body[3]) == (ABORT, 2, 6)
    assert seen == [65_000]
    # A neighbour presenting nothing is served (identities are not required here).
    with RawPeer(server.port) as peer:
        peer.send(associate_rq())
        assert peer.read_pdu()[0] == ASSOCIATE_AC


def test_identity_over_tls_reaches_the_check(server_factory: Any, tmp_path: Path) -> None:
    # The identity travels inside TLS like any PDU: checked the same way.
    from test_tls import SERVER_EXT, _ca, _issue

    from dicom_inlet.tls import ClientTLS, ServerTLS

    ca = _ca(tmp_path, "ca")
    cert, key = _issue(tmp_path, "server", ca, SERVER_EXT)
    names: list[str | None] = []

    def check(identity: UserIdentity) -> bool:
        names.append(identity.name)
        return True

    server = server_factory(tls=ServerTLS(cert, key), user_identity=check)
    tls = ClientTLS(ca=ca[0])
    assert echo(HOST, server.port, tls=tls, user_identity=UserIdentity.username("erin", "pw")) == 0
    assert names == ["erin"]


def test_sighup_reloads_the_users_file_of_the_cli_server(users: Path, tmp_path: Path) -> None:
    from test_cli import LISTENING, ServeProcess

    server = ServeProcess(
        [
            *(str(tmp_path / "data"), "--port", "0", "--host", HOST, "--aet", SCP_AET),
            *("--users", str(users)),
        ],
        cwd=tmp_path,
    )
    alice = UserIdentity.username("alice", "secret")
    carol = UserIdentity.username("carol", "pw")
    try:
        port = int(server.wait_for(LISTENING).group(2))
        assert echo(HOST, port, user_identity=alice) == 0
        # Alice revoked, carol added, without a restart.
        lines = [line for line in users.read_text().splitlines() if not line.startswith("alice:")]
        users.write_text("\n".join(lines) + "\n")
        UsersFile.add(users, "carol", "pw")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(f"users file {users} reloaded")
        with pytest.raises(AssociationRejected):
            echo(HOST, port, user_identity=alice)
        assert echo(HOST, port, user_identity=carol) == 0
        # A file broken mid-edit changes nothing.
        users.write_text("carol:md5:xyz\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(r"users file not reloaded, the old users still apply: .*:1: not a NAME")
        assert echo(HOST, port, user_identity=carol) == 0
    finally:
        assert server.interrupt() == 0
