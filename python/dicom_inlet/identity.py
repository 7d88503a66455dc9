"""User identity negotiation (PS3.7 §D.3.3.7): who the requestor of an association says it is.

A requestor (``send``, ``echo``) presents a :class:`UserIdentity`; an SCP decides on it with a
callable (``StoreSCPServer(user_identity=...)``), for example a :class:`UsersFile` of
scrypt-hashed passcodes. The identity travels in the clear unless the association uses TLS.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

__all__ = [
    "JWT",
    "KERBEROS",
    "SAML",
    "USERNAME",
    "USERNAME_AND_PASSCODE",
    "IdentityCheck",
    "UserIdentity",
    "UsersFile",
]

# User-Identity-Type values (PS3.7 Table D.3-14).
USERNAME = 1
USERNAME_AND_PASSCODE = 2
KERBEROS = 3
SAML = 4
JWT = 5


@dataclass(frozen=True)
class UserIdentity:
    """A user identity sub-item of an A-ASSOCIATE-RQ.

    Attributes:
        identity_type: 1 username, 2 username and passcode, 3 Kerberos service ticket,
            4 SAML assertion, 5 JSON Web Token.
        primary: The username (UTF-8), ticket, assertion or token.
        secondary: The passcode (type 2 only; empty otherwise).
        positive_response_requested: Ask the SCP to confirm the identity in its
            A-ASSOCIATE-AC.
        calling_aet: Set by the SCP for its check: the requestor's Calling AE Title.
    """

    identity_type: int
    primary: bytes
    secondary: bytes = b""
    positive_response_requested: bool = False
    calling_aet: str | None = None

    @classmethod
    def username(cls, name: str, passcode: str | None = None) -> UserIdentity:
        """A username, with a passcode when given (types 1 and 2)."""
        if passcode is None:
            return cls(USERNAME, name.encode())
        return cls(USERNAME_AND_PASSCODE, name.encode(), passcode.encode())

    @classmethod
    def jwt(cls, token: str) -> UserIdentity:
        """A JSON Web Token (type 5)."""
        return cls(JWT, token.strip().encode("ascii"))

    @property
    def name(self) -> str | None:
        """The username of types 1 and 2, decoded; None for tokens."""
        if self.identity_type in (USERNAME, USERNAME_AND_PASSCODE):
            return self.primary.decode("utf-8", "replace")
        return None


#: Decides on a user identity: True accepts, False rejects (A-ASSOCIATE-RJ); bytes accept
#: and are the server response sent when one is requested (Kerberos, SAML, JWT).
IdentityCheck: TypeAlias = "Callable[[UserIdentity], bool | bytes]"

# scrypt cost (RFC 7914): 16 MiB of memory and about 50 ms per check.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def _scrypt(passcode: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(passcode, salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=32)


class UsersFile:
    """Usernames and scrypt-hashed passcodes, one ``NAME:scrypt:N:r:p:SALT:HASH`` a line.

    Used as an :data:`IdentityCheck`: accepts a username and passcode (type 2) that match a
    line; refuses everything else (a username alone proves nothing, tokens are not checked).
    The file is read when this is made and at each :meth:`reload` (SIGHUP for ``dicom-inlet
    serve``), so users are added and revoked without a restart.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._users = self._read()

    def reload(self) -> None:
        """Read the file again; the associations that begin from now on are checked against it.

        Raises:
            OSError: The file cannot be read.
            ValueError: A line is malformed, named with its number. Either way the users read
                before stay in force.
        """
        # One assignment: a check running meanwhile sees the old users or the new, whole.
        self._users = self._read()

    def _read(self) -> dict[str, tuple[int, int, int, bytes, bytes]]:
        users = {}
        for number, line in enumerate(self.path.read_text("utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            try:
                name, kind, n, r, p, salt, digest = line.rsplit(":", 6)
                if kind != "scrypt" or not name:
                    raise ValueError
                users[name] = (int(n), int(r), int(p), bytes.fromhex(salt), bytes.fromhex(digest))
            except ValueError:
                raise ValueError(
                    f"{self.path}:{number}: not a NAME:scrypt:N:r:p:SALT:HASH line"
                ) from None
        return users

    def __call__(self, identity: UserIdentity) -> bool:
        name = identity.name
        entry = self._users.get(name) if name is not None else None
        if entry is None or identity.identity_type != USERNAME_AND_PASSCODE:
            return False
        n, r, p, salt, digest = entry
        return hmac.compare_digest(_scrypt(identity.secondary, salt, n, r, p), digest)

    @staticmethod
    def add(path: str | os.PathLike[str], name: str, passcode: str) -> None:
        """Add ``name`` to the file (created if missing), or replace its passcode."""
        if not name or ":" in name or "\n" in name:
            raise ValueError(f"a username must be non-empty without ':' or newlines, got {name!r}")
        salt = secrets.token_bytes(16)
        digest = _scrypt(passcode.encode(), salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
        line = f"{name}:scrypt:{_SCRYPT_N}:{_SCRYPT_R}:{_SCRYPT_P}:{salt.hex()}:{digest.hex()}"
        file = Path(path)
        lines = file.read_text("utf-8").splitlines() if file.exists() else []
        kept = [entry for entry in lines if entry.rsplit(":", 6)[0] != name]
        file.write_text("\n".join([*kept, line]) + "\n", "utf-8")
        file.chmod(0o600)
