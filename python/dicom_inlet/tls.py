"""DICOM TLS settings (PS3.15 Annex B, BCP 195 profile): TLS 1.2 and 1.3, strong suites only.

The certificates and keys are PEM files. The Rust core (rustls) does the handshake and the
encryption; no OpenSSL is involved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEFAULT_TLS_PORT", "ClientTLS", "ServerTLS"]

#: The port IANA registered for DICOM over TLS ("dicom-tls").
DEFAULT_TLS_PORT = 2762


@dataclass(frozen=True)
class ServerTLS:
    """TLS for a Storage SCP.

    Attributes:
        cert: Our certificate chain (PEM), the node's certificate first.
        key: Its private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
        ca: CA certificates (PEM) that client certificates must chain to. When set, every
            client must present a valid certificate (mutual TLS, as IHE ATNA secure nodes
            do); when None, clients are not asked for one.
        crl: Certificate revocation lists (PEM) of the CAs in ``ca`` (needs ``ca``). A
            client certificate they revoke is refused, and so is one whose issuer has no
            CRL in the file, as its status cannot be told. Read again with the other files
            at a reload (``StoreSCPServer.reload_tls()``, SIGHUP for the CLI).
    """

    cert: str | os.PathLike[str]
    key: str | os.PathLike[str]
    ca: str | os.PathLike[str] | None = None
    crl: str | os.PathLike[str] | None = None


@dataclass(frozen=True)
class ClientTLS:
    """TLS for the storage SCU (``send``, ``echo``).

    Attributes:
        ca: CA certificates (PEM) the server's certificate must chain to; None uses the
            system's trust store.
        cert: Our client certificate chain (PEM), for a server that requires one.
        key: Its private key (PEM).
        verify_hostname: Require the server's certificate to name the host we connect to.
    """

    ca: str | os.PathLike[str] | None = None
    cert: str | os.PathLike[str] | None = None
    key: str | os.PathLike[str] | None = None
    verify_hostname: bool = True
