"""DICOM TLS (PS3.15 Annex B) both ways, with DCMTK and pynetdicom (Python's ssl) as peers.

The certificates are made here with the ``openssl`` command, in a temporary directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import (
    CT_IMAGE_STORAGE,
    HOST,
    SCP_AET,
    TIMEOUT,
    VERIFICATION,
    dataset_bytes,
    dcmtk_tool,
    logged,
    make_dataset,
    run_tool,
    stored_files,
    wait_until,
    write_file,
)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from test_scu import running_storescp

from dicom_inlet import AssociationAborted, echo, send
from dicom_inlet.tls import ClientTLS, ServerTLS

SERVER_EXT = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
ELSEWHERE_EXT = "subjectAltName=DNS:elsewhere.example\nextendedKeyUsage=serverAuth\n"
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


@dataclass(frozen=True)
class Pki:
    """A test CA with a server and client certificates, and certificates it did not issue."""

    ca: Path
    server: tuple[Path, Path]  # (cert, key), named 127.0.0.1 and localhost
    wrong_name: tuple[Path, Path]  # a server certificate for another host
    client: tuple[Path, Path]
    expired: tuple[Path, Path]
    other_ca: Path
    stranger: tuple[Path, Path]  # a client certificate from the other CA

    @property
    def issuer(self) -> tuple[Path, Path]:
        """The test CA's certificate and key, to issue more certificates with."""
        return self.ca, self.ca.with_suffix(".key")


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", key, "-out", cert, "-subj", f"/CN={name}", "-days", "2"),
    )
    return cert, key


def _issue(
    directory: Path, name: str, ca: tuple[Path, Path], extensions: str, days: int = 2
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", key, "-out", csr, "-subj", f"/CN={name}"),
    )
    # A negative number of days gives a certificate that expired yesterday.
    _openssl(
        *("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-out", cert),
        *("-days", str(days), "-extfile", ext),
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        message = "the openssl command is needed to make test certificates (package openssl)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("pki")
    ca = _ca(directory, "ca")
    other = _ca(directory, "other-ca")
    return Pki(
        ca=ca[0],
        server=_issue(directory, "server", ca, SERVER_EXT),
        wrong_name=_issue(directory, "elsewhere", ca, ELSEWHERE_EXT),
        client=_issue(directory, "client", ca, CLIENT_EXT),
        expired=_issue(directory, "expired", ca, CLIENT_EXT, days=-1),
        other_ca=other[0],
        stranger=_issue(directory, "stranger", other, CLIENT_EXT),
    )


def dcmtk_tls(pki: Pki, client: tuple[Path, Path] | None) -> list[str | Path]:
    """DCMTK's TLS options: our client certificate (or anonymous TLS), trusting the test CA."""
    own = ["+tla"] if client is None else ["+tls", client[1], client[0]]
    return [*own, "+cf", pki.ca]


def server_tls(pki: Pki, *, mutual: bool = True) -> ServerTLS:
    return ServerTLS(*pki.server, ca=pki.ca if mutual else None)


def client_tls(pki: Pki, **overrides: Any) -> ClientTLS:
    options: dict[str, Any] = {"ca": pki.ca, "cert": pki.client[0], "key": pki.client[1]}
    return ClientTLS(**{**options, **overrides})


# ---------------------------------------------------------------------------------------------
# DCMTK into dicom-inlet


@pytest.mark.parametrize("with_client_cert", [True, False], ids=["mutual", "server-only"])
def test_dcmtk_storescu_over_tls_stores_the_bytes_sent(
    pki: Pki, server_factory: Any, data_dir: Path, tmp_path: Path, with_client_cert: bool
) -> None:
    server = server_factory(tls=server_tls(pki, mutual=with_client_cert))
    # Large enough for hundreds of TLS records per instance.
    datasets = [
        make_dataset(rows=512, columns=512, undefined_length_sequences=False) for _ in range(3)
    ]
    paths = [
        write_file(ds, tmp_path / f"{i}.dcm", ExplicitVRLittleEndian)
        for i, ds in enumerate(datasets)
    ]
    client = pki.client if with_client_cert else None
    done = run_tool(
        dcmtk_tool("storescu"), *dcmtk_tls(pki, client), "-aec", SCP_AET, HOST, server.port, *paths
    )
    assert done.returncode == 0, done.stderr
    stored = {pydicom.dcmread(data_dir / p).SOPInstanceUID: p for p in stored_files(data_dir)}
    assert len(stored) == 3
    for ds, path in zip(datasets, paths, strict=True):
        assert dataset_bytes(data_dir / stored[ds.SOPInstanceUID]) == dataset_bytes(path)


def test_plain_and_tls_are_served_on_two_ports(pki: Pki, server_factory: Any) -> None:
    server = server_factory(tls=server_tls(pki), tls_port=0)
    assert server.tls_port not in (None, 0, server.port)
    echoscu = dcmtk_tool("echoscu")
    assert run_tool(echoscu, HOST, server.port).returncode == 0
    secure = run_tool(echoscu, *dcmtk_tls(pki, pki.client), HOST, server.tls_port)
    assert secure.returncode == 0, secure.stderr
    # Each port speaks only its own protocol.
    assert run_tool(echoscu, HOST, server.tls_port).returncode != 0


def _garbage_client_hello(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        # A TLS handshake record header, then a body that is no ClientHello.
        sock.sendall(b"\x16\x03\x01\x00\x40" + bytes(range(64)))
        sock.settimeout(TIMEOUT)
        while sock.recv(4096):
            pass


def _stall(port: int, neighbour: Callable[[], None]) -> None:
    """Start a handshake and stall; ``neighbour`` runs while it stalls."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x16\x03\x01")
        neighbour()
        sock.settimeout(TIMEOUT)
        while sock.recv(4096):
            pass


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("plain DICOM", "does not speak TLS"),
        ("no client certificate", "sent no certificate"),
        ("expired certificate", "certificate refused: expired"),
        ("certificate of another CA", "not issued by a trusted CA"),
        ("garbage ClientHello", "TLS handshake failed"),
        ("stalled handshake", "no complete handshake within acse_timeout"),
    ],
)
def test_refused_handshakes_are_logged_and_others_served(
    pki: Pki,
    server_factory: Any,
    association_log: pytest.LogCaptureFixture,
    case: str,
    reason: str,
) -> None:
    server = server_factory(tls=server_tls(pki), acse_timeout=2.0)
    echoscu = dcmtk_tool("echoscu")
    port = server.port
    if case == "plain DICOM":
        assert run_tool(echoscu, HOST, port).returncode != 0
    elif case == "no client certificate":
        assert run_tool(echoscu, *dcmtk_tls(pki, None), HOST, port).returncode != 0
    elif case == "expired certificate":
        assert run_tool(echoscu, *dcmtk_tls(pki, pki.expired), HOST, port).returncode != 0
    elif case == "certificate of another CA":
        assert run_tool(echoscu, *dcmtk_tls(pki, pki.stranger), HOST, port).returncode != 0
    elif case == "garbage ClientHello":
        _garbage_client_hello(port)
    else:

        def neighbour() -> None:
            served = run_tool(echoscu, *dcmtk_tls(pki, pki.client), HOST, port)
            assert served.returncode == 0, served.stderr

        _stall(port, neighbour)
    assert wait_until(lambda: logged(association_log, reason, logging.WARNING)), [
        r.getMessage() for r in association_log.records
    ]
    # A neighbour is served as ever.
    good = run_tool(echoscu, *dcmtk_tls(pki, pki.client), HOST, port)
    assert good.returncode == 0, good.stderr


def test_tls_on_the_plain_port_gets_an_abort_that_says_so(
    pki: Pki, server_factory: Any, association_log: pytest.LogCaptureFixture
) -> None:
    server = server_factory()
    echoscu = dcmtk_tool("echoscu")
    assert run_tool(echoscu, *dcmtk_tls(pki, pki.client), HOST, server.port).returncode != 0
    assert wait_until(lambda: logged(association_log, "TLS handshake on the plain port"))
    assert run_tool(echoscu, HOST, server.port).returncode == 0


# ---------------------------------------------------------------------------------------------
# dicom-inlet's SCU into DCMTK and pynetdicom


def test_send_over_tls_into_dcmtk_storescp(pki: Pki, tmp_path: Path) -> None:
    from dicom_inlet.cli import main

    datasets = [make_dataset(rows=256, columns=256) for _ in range(4)]
    paths = [
        write_file(ds, tmp_path / f"{i}.dcm", ExplicitVRLittleEndian)
        for i, ds in enumerate(datasets)
    ]
    options = ["+tls", pki.server[1], pki.server[0], "+cf", pki.ca]
    with running_storescp(tmp_path / "out", *map(str, options)) as peer:
        tls = client_tls(pki)
        assert echo(HOST, peer.port, called_aet=SCP_AET, tls=tls) == 0
        result = send(HOST, peer.port, paths[:2], called_aet=SCP_AET, tls=tls, async_window=4)
        assert result.failed == 0, result.failures
        # The command line, the same way.
        client = ["--tls", "--tls-ca", str(pki.ca)]
        client += ["--tls-cert", str(pki.client[0]), "--tls-key", str(pki.client[1])]
        cli = ["send", HOST, str(peer.port), *map(str, paths[2:]), "--call", SCP_AET, "-q"]
        assert main([*cli, *client]) == 0
        received = peer.received()
    for ds, path in zip(datasets, paths, strict=True):
        assert received[ds.SOPInstanceUID] == dataset_bytes(path)


def test_server_certificates_are_verified(pki: Pki, server_factory: Any) -> None:
    server = server_factory(tls=server_tls(pki, mutual=False))
    with pytest.raises(AssociationAborted, match="not issued by a trusted CA"):
        echo(HOST, server.port, tls=ClientTLS(ca=pki.other_ca))
    # The certificate names 127.0.0.1 and localhost: both check out.
    assert echo("localhost", server.port, tls=ClientTLS(ca=pki.ca)) == 0
    elsewhere = server_factory(tls=ServerTLS(*pki.wrong_name))
    with pytest.raises(AssociationAborted, match="issued for another host name"):
        echo(HOST, elsewhere.port, tls=ClientTLS(ca=pki.ca))
    assert echo(HOST, elsewhere.port, tls=ClientTLS(ca=pki.ca, verify_hostname=False)) == 0


def test_mutual_tls_needs_our_client_certificate(pki: Pki, server_factory: Any) -> None:
    server = server_factory(tls=server_tls(pki))
    with pytest.raises(AssociationAborted):
        echo(HOST, server.port, tls=ClientTLS(ca=pki.ca))
    assert echo(HOST, server.port, tls=client_tls(pki)) == 0


def test_send_over_tls_into_pynetdicom_with_ssl_context(pki: Pki, tmp_path: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(*map(str, pki.server))
    context.verify_mode = ssl.CERT_REQUIRED
    received: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title=SCP_AET)
    ae.add_supported_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_supported_context(VERIFICATION)
    scp = ae.start_server(
        (HOST, 0),
        block=False,
        ssl_context=context,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    try:
        port = scp.socket.getsockname()[1]
        ds = make_dataset(rows=300, columns=300)
        path = write_file(ds, tmp_path / "ct.dcm", ExplicitVRLittleEndian)
        result = send(HOST, port, [path], called_aet=SCP_AET, tls=client_tls(pki))
        assert result.failed == 0, result.failures
    finally:
        scp.shutdown()
    assert received[ds.SOPInstanceUID] == dataset_bytes(path)


def _client_context(pki: Pki, tls12_cipher: str | None = None) -> ssl.SSLContext:
    """Python's ssl (OpenSSL) as a client with the test client certificate; TLS 1.2 with only
    the cipher named, if one is."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(*map(str, pki.client))
    if tls12_cipher is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(tls12_cipher)
    return context


# Each AEAD the record layer after the handshake opens and seals, in each version.
@pytest.mark.parametrize(
    "tls12_cipher", [None, "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"]
)
def test_pynetdicom_over_tls_into_dicom_inlet(
    pki: Pki, server_factory: Any, data_dir: Path, tmp_path: Path, tls12_cipher: str | None
) -> None:
    server = server_factory(tls=server_tls(pki))
    context = _client_context(pki, tls12_cipher)
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    ds = make_dataset(rows=300, columns=300)
    path = write_file(ds, tmp_path / "ct.dcm", ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, server.port, ae_title=SCP_AET, tls_args=(context, "localhost"))
    try:
        assert assoc.is_established
        tls = assoc.dul.socket.socket
        assert (tls.version(), tls.cipher()[0]) == (
            ("TLSv1.3", "TLS_AES_128_GCM_SHA256")
            if tls12_cipher is None
            else ("TLSv1.2", tls12_cipher)
        )
        assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()
    (stored,) = stored_files(data_dir)
    assert dataset_bytes(data_dir / stored) == dataset_bytes(path)


def _altered_record(pki: Pki, port: int) -> ssl.SSLError:
    """A TLS handshake by Python's ssl, then one record with its last byte (of the tag) changed
    on the way; the error our side's answer raises in the client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = _client_context(pki).wrap_bio(incoming, outgoing, server_hostname=HOST)
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                flight = sock.recv(65536)
                assert flight, "the server closed the connection during the handshake"
                incoming.write(flight)
        sock.sendall(outgoing.read())
        tls.write(b"\x01\x00" + bytes(200))
        record = bytearray(outgoing.read())
        record[-1] ^= 1
        sock.sendall(record)
        while chunk := sock.recv(65536):
            incoming.write(chunk)
    with pytest.raises(ssl.SSLError) as raised:
        while True:
            tls.read()
    return raised.value


def test_an_altered_record_is_refused_with_bad_record_mac_and_others_served(
    pki: Pki, server_factory: Any, association_log: pytest.LogCaptureFixture
) -> None:
    server = server_factory(tls=server_tls(pki))
    error = _altered_record(pki, server.port)
    assert "BAD_RECORD_MAC" in str(error.reason), error
    assert wait_until(
        lambda: logged(association_log, "a TLS record that does not decrypt", logging.WARNING)
    ), [r.getMessage() for r in association_log.records]
    good = run_tool(dcmtk_tool("echoscu"), *dcmtk_tls(pki, pki.client), HOST, server.port)
    assert good.returncode == 0, good.stderr


# ---------------------------------------------------------------------------------------------
# Renewed certificates


def _renewed(pki: Pki, directory: Path, cert: Path, key: Path) -> None:
    """Write over ``cert`` and ``key`` a server certificate the other CA issued: a renewal
    (another CA, so a client can tell which one it was served)."""
    other_ca = (pki.other_ca, pki.other_ca.with_suffix(".key"))
    renewed = _issue(directory, "renewed", other_ca, SERVER_EXT)
    shutil.copyfile(renewed[0], cert)
    shutil.copyfile(renewed[1], key)


def _served_copy(pki: Pki, directory: Path) -> tuple[Path, Path]:
    """The test server certificate and key, copied where a renewal can replace them."""
    cert, key = directory / "served.pem", directory / "served.key"
    shutil.copyfile(pki.server[0], cert)
    shutil.copyfile(pki.server[1], key)
    return cert, key


def _openssl_time(command: str, option: str, path: Path) -> int:
    """A date ``openssl COMMAND -noout OPTION`` prints as ``name=date``, in seconds since the
    epoch."""
    out = subprocess.run(
        ["openssl", command, "-noout", option, "-in", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return ssl.cert_time_to_seconds(out.stdout.strip().split("=", 1)[1])


def not_after(cert: Path) -> int:
    """The certificate's notAfter, as ``openssl`` reads it."""
    return _openssl_time("x509", "-enddate", cert)


def next_update(crl: Path) -> int:
    """The CRL's nextUpdate, as ``openssl`` reads it."""
    return _openssl_time("crl", "-nextupdate", crl)


@pytest.mark.parametrize(
    ("days", "level", "told"),
    [
        (2, logging.WARNING, "expires at"),
        (-1, logging.ERROR, "expired at"),
        (365, logging.INFO, "valid until"),
    ],
    ids=["soon", "expired", "a-year"],
)
def test_the_served_certificate_and_its_expiry_are_told_at_start(
    pki: Pki,
    server_factory: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    days: int,
    level: int,
    told: str,
) -> None:
    cert, key = _issue(tmp_path, f"for-{days}-days", pki.issuer, SERVER_EXT, days=days)
    with caplog.at_level(logging.INFO, logger="dicom_inlet"):
        server_factory(tls=ServerTLS(cert, key))
    (record,) = [r for r in caplog.records if "TLS certificate CN=" in r.getMessage()]
    assert record.levelno == level
    assert f"CN=for-{days}-days" in record.getMessage()
    assert told in record.getMessage()
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(not_after(cert)))
    assert until in record.getMessage()


def test_reloaded_tls_files_serve_new_associations_and_open_ones_go_on(
    pki: Pki, server_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = _served_copy(pki, tmp_path)
    server = server_factory(tls=ServerTLS(cert, key))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, server.port, ae_title=SCP_AET, tls_args=(context, "localhost"))
    try:
        assert assoc.is_established
        _renewed(pki, tmp_path, cert, key)
        with caplog.at_level(logging.INFO, logger="dicom_inlet"):
            assert server.reload_tls() is True
        assert logged(caplog, f"TLS files reloaded: certificate {cert}, key {key}")
        # The test PKI's certificates last two days: told at WARNING.
        assert logged(caplog, "TLS certificate CN=renewed expires at", logging.WARNING)
        # The association begun before goes on with what it began with.
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()
    assert echo(HOST, server.port, tls=ClientTLS(ca=pki.other_ca)) == 0
    with pytest.raises(AssociationAborted, match="not issued by a trusted CA"):
        echo(HOST, server.port, tls=ClientTLS(ca=pki.ca))
    # A renewal caught half-written is refused, naming the file; the server goes on with
    # the certificate it had.
    cert.write_text(cert.read_text()[:200])
    with pytest.raises(ValueError, match=f"TLS certificate file {cert}"):
        server.reload_tls()
    assert echo(HOST, server.port, tls=ClientTLS(ca=pki.other_ca)) == 0
    assert server_factory(tmp_path / "plain").reload_tls() is False


def _revoking(pki: Pki, directory: Path, *revoked: Path) -> Path:
    """A CRL of the test CA revoking these certificates, made by ``openssl ca`` in
    ``directory`` (created)."""
    directory.mkdir()
    index, number, config = (directory / n for n in ("index.txt", "crlnumber", "ca.cnf"))
    index.write_text("")
    number.write_text("01\n")
    config.write_text(
        "[ca]\ndefault_ca = test\n[test]\n"
        f"database = {index}\ncrlnumber = {number}\ncertificate = {pki.ca}\n"
        f"private_key = {pki.issuer[1]}\ndefault_md = sha256\n"
        "default_crl_days = 2\n"
    )
    for cert in revoked:
        _openssl("ca", "-config", config, "-revoke", cert)
    crl = directory / "crl.pem"
    _openssl("ca", "-config", config, "-gencrl", "-out", crl)
    return crl


def test_revoked_client_certificates_are_refused_and_a_reload_takes_a_new_crl(
    pki: Pki,
    server_factory: Any,
    association_log: pytest.LogCaptureFixture,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    retired = _issue(tmp_path, "retired", pki.issuer, CLIENT_EXT)
    crl = tmp_path / "served-crl.pem"
    os.replace(_revoking(pki, tmp_path / "first", retired[0]), crl)
    server = server_factory(tls=ServerTLS(*pki.server, ca=pki.ca, crl=crl))
    echoscu = dcmtk_tool("echoscu")
    assert run_tool(echoscu, *dcmtk_tls(pki, retired), HOST, server.port).returncode != 0
    assert wait_until(
        lambda: logged(association_log, "certificate refused: revoked", logging.WARNING)
    )
    served = run_tool(echoscu, *dcmtk_tls(pki, pki.client), HOST, server.port)
    assert served.returncode == 0, served.stderr
    # The next CRL revokes the other client too: taken at a reload, for new associations.
    os.replace(_revoking(pki, tmp_path / "second", retired[0], pki.client[0]), crl)
    with caplog.at_level(logging.INFO, logger="dicom_inlet"):
        assert server.reload_tls() is True
    assert logged(caplog, f"TLS files reloaded: certificate {pki.server[0]}")
    assert logged(caplog, f", CRL {crl}")
    due = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(next_update(crl)))
    assert logged(caplog, f"TLS CRLs checked against client certificates, next update {due}")
    assert run_tool(echoscu, *dcmtk_tls(pki, pki.client), HOST, server.port).returncode != 0
    # A client whose CA has no CRL in the file cannot be told not revoked: refused too.
    both = tmp_path / "both-cas.pem"
    both.write_text(pki.ca.read_text() + pki.other_ca.read_text())
    server = server_factory(tmp_path / "other", tls=ServerTLS(*pki.server, ca=both, crl=crl))
    assert run_tool(echoscu, *dcmtk_tls(pki, pki.stranger), HOST, server.port).returncode != 0
    assert wait_until(
        lambda: logged(association_log, "of unknown revocation status", logging.WARNING)
    )


def test_overdue_crls_are_told_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    from dicom_inlet.server import _log_crl

    with caplog.at_level(logging.INFO, logger="dicom_inlet"):
        _log_crl(int(time.time()) - 3600)
    assert logged(caplog, "TLS CRLs were due for renewal at", logging.WARNING)


def test_sighup_reloads_the_tls_files_of_the_cli_server(pki: Pki, tmp_path: Path) -> None:
    from test_cli import LISTENING, ServeProcess

    cert, key = _served_copy(pki, tmp_path)
    server = ServeProcess(
        [
            *(str(tmp_path / "data"), "--port", "0", "--host", HOST, "--aet", SCP_AET),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
        ],
        cwd=tmp_path,
    )
    try:
        port = int(server.wait_for(LISTENING).group(2))
        assert echo(HOST, port, tls=ClientTLS(ca=pki.ca)) == 0
        key.write_text("not a key\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(f"TLS files not reloaded, the old ones still served: .*{key}")
        assert echo(HOST, port, tls=ClientTLS(ca=pki.ca)) == 0
        _renewed(pki, tmp_path, cert, key)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for("TLS files reloaded")
        assert echo(HOST, port, tls=ClientTLS(ca=pki.other_ca)) == 0
    finally:
        assert server.interrupt() == 0


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_serves_tls_and_sends_with_it(pki: Pki, tmp_path: Path) -> None:
    from test_cli import LISTENING, ServeProcess

    from dicom_inlet.cli import main

    data_dir = tmp_path / "data"
    server = ServeProcess(
        [
            *(str(data_dir), "--port", "0", "--host", HOST, "--aet", SCP_AET),
            *("--tls-cert", str(pki.server[0]), "--tls-key", str(pki.server[1])),
            *("--tls-ca", str(pki.ca), "--tls-port", "0"),
        ],
        cwd=tmp_path,
    )
    try:
        server.wait_for(LISTENING)
        tls_port = int(server.wait_for(r"DICOM TLS on port (\d+)").group(1))
        path = write_file(make_dataset(), tmp_path / "ct.dcm", ExplicitVRLittleEndian)
        client = ["--tls", "--tls-ca", str(pki.ca)]
        client += ["--tls-cert", str(pki.client[0]), "--tls-key", str(pki.client[1])]
        assert main(["echo", HOST, str(tls_port), "--call", SCP_AET, *client]) == 0
        assert main(["send", HOST, str(tls_port), str(path), "--call", SCP_AET, "-q", *client]) == 0
        (stored,) = stored_files(data_dir)
        assert dataset_bytes(data_dir / stored) == dataset_bytes(path)
    finally:
        server.kill()


def test_cli_tls_mistakes_are_one_line_errors(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_inlet.cli import main

    assert main(["echo", HOST, "1", "--tls-ca", str(pki.ca)]) == 2
    assert "need --tls" in capsys.readouterr().err
    assert main(["echo", HOST, "1", "--tls", "--tls-cert", str(pki.client[0])]) == 2
    assert "--tls-cert and --tls-key together" in capsys.readouterr().err
    assert main(["serve", "--tls-cert", str(pki.server[0]), "--port", "0"]) == 2
    assert "both --tls-cert and --tls-key" in capsys.readouterr().err
    serve = ["serve", "--tls-cert", str(pki.server[0]), "--tls-key", str(pki.server[1])]
    assert main([*serve, "--tls-crl", str(pki.ca), "--port", "0"]) == 2
    assert "--tls-crl needs --tls-ca" in capsys.readouterr().err
    missing = str(pki.ca.parent / "missing.pem")
    assert main(["echo", HOST, "1", "--tls", "--tls-ca", missing]) == 2
    assert f"TLS CA file {missing}" in capsys.readouterr().err


def test_toml_config_takes_the_tls_keys(pki: Pki, tmp_path: Path) -> None:
    from dicom_inlet.cli import _parse

    config = tmp_path / "inlet.toml"
    config.write_text(
        f'tls_cert = "{pki.server[0]}"\ntls_key = "{pki.server[1]}"\n'
        f'tls_ca = "{pki.ca}"\ntls_crl = "{pki.ca}"\ntls_port = 2762\n'
    )
    args = _parse(["serve", "--config", str(config)])
    assert (args.tls_cert, args.tls_key, args.tls_ca, args.tls_crl) == (*pki.server, pki.ca, pki.ca)
    assert args.tls_port == 2762
