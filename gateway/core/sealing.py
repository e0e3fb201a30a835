"""Encryption at rest: every referral's content and raw message is sealed with AES-256-GCM.

A sealed blob is: version byte, 8-byte key id, 12-byte nonce, ciphertext+tag. The key id lets a
key be rotated (old keys kept under keys/retired/ still open old blobs). The associated data binds
each blob to its row and purpose, so a blob copied into another row does not open.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.core import keyfiles

_VERSION = b"\x01"
KEY_FILE = "data-at-rest.key"


class SealError(Exception):
    """A blob does not open: wrong key, unknown key id, damaged, or moved to another row."""


def sealed_context(kind: str, row_id: str) -> str:
    """The associated data that binds a blob to its row and purpose ("content:<referral id>")."""
    return f"{kind}:{row_id}"


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"referral-gateway key id" + key).digest()[:8]


class Sealer:
    def __init__(self, current: bytes, retired: tuple[bytes, ...] = ()) -> None:
        self._current_id = _key_id(current)
        self._keys = {_key_id(k): AESGCM(k) for k in (*retired, current)}

    @classmethod
    def from_keys_dir(cls, keys_dir: Path, may_create: bool = True) -> Sealer:
        """may_create=False when the store already holds sealed data: a missing key then means
        a lost key, and making a new one would hide that until someone needs an old referral."""
        path = keys_dir / KEY_FILE
        current = keyfiles.load_or_create(path) if may_create else keyfiles.load(path, 32)
        retired_dir = keys_dir / "retired"
        retired = tuple(keyfiles.load(p, 32) for p in sorted(retired_dir.glob("*.key"))) if retired_dir.is_dir() else ()
        return cls(current, retired)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(12)
        aead = self._keys[self._current_id]
        return _VERSION + self._current_id + nonce + aead.encrypt(nonce, plaintext, context.encode())

    def open(self, blob: bytes, context: str) -> bytes:
        if blob[:1] != _VERSION or len(blob) < 1 + 8 + 12 + 16:
            raise SealError("not a sealed blob of a known version")
        aead = self._keys.get(blob[1:9])
        if aead is None:
            raise SealError("sealed with a key that is not in keys/ (restore it under keys/retired/)")
        try:
            return aead.decrypt(blob[9:21], blob[21:], context.encode())
        except InvalidTag:
            raise SealError("blob is damaged or belongs to another row") from None
