"""What every OpenPGP backend offers the gateway, and what the two share.

Two implementations: `gnupg` (gateway.open.crypto.openpgp, gpg through python-gnupg, keys in a GnuPG home)
and `sequoia` (gateway.open.crypto.sequoia, pysequoia in worker processes, keys as armoured files). They
take the same security decisions and give the same reason strings, so policy, reports and sender notices do
not depend on which one runs; tests/test_openpgp.py runs one set of tests over both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Literal, Protocol

from gateway.open.crypto import CryptoKeyError, Signature

Backend = Literal["sequoia", "gnupg"]
BACKENDS: tuple[Backend, ...] = ("sequoia", "gnupg")
FPR = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")
EXPIRE = re.compile(r"0|\d{1,4}[dwmy]?|\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: str  # primary key, upper-case hex
    uids: tuple[str, ...]  # user ids as the backend lists them
    emails: tuple[str, ...]  # lower-case addresses found in the user ids
    created: datetime  # aware, UTC
    expires: datetime | None  # aware, UTC; None = does not expire
    revoked: bool = False


class OpenPGPBackend(Protocol):
    # The gateway's replaced keys by primary fingerprint: each decrypts until its overlap ends.
    retired: dict[str, datetime]
    now: Callable[[], datetime]

    async def decrypt(self, data: bytes) -> tuple[bytes, Signature | None]: ...
    async def verify_detached(self, signed: bytes, signature: bytes) -> Signature: ...
    async def verify_inline(self, data: bytes) -> tuple[bytes, Signature]: ...
    async def encrypt_and_sign(self, data: bytes, recipients: Sequence[str], signer: str) -> bytes: ...
    def import_keys(self, armoured: bytes) -> list[str]: ...
    def keys(self, secret: bool = False) -> list[KeyInfo]: ...
    def export_public(self, fingerprint: str) -> bytes: ...
    def generate_key(self, name: str, email: str, expire: str = "2y") -> str: ...
    def close(self) -> None: ...


def emails(uids: Sequence[str]) -> tuple[str, ...]:
    found = (parseaddr(uid)[1].lower() for uid in uids)
    return tuple(dict.fromkeys(a for a in found if "@" in a))


def check_fpr(fingerprint: str) -> str:
    fpr = fingerprint.replace(" ", "").upper()
    if not FPR.fullmatch(fpr):
        # A short id or an address could select the wrong key: only a full fingerprint names a key.
        raise CryptoKeyError("not a key fingerprint")
    return fpr


def check_new_key(name: str, email: str, expire: str) -> None:
    """The same refusals in both backends: gpg's parameter file is line-based (a newline would add
    parameters), and a user id with <> in the name would carry a second address."""
    if any(not s or any(ord(c) < 32 or c in "<>" for c in s) for s in (name, email)) or "@" not in email:
        raise CryptoKeyError("invalid name or email for a key")
    if not EXPIRE.fullmatch(expire):
        raise CryptoKeyError("invalid key expiry")
