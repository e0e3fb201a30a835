"""Encryption at rest: every referral's content and raw message is sealed with AES-256-GCM.

A sealed blob is: version byte, 8-byte key id, 12-byte nonce, ciphertext+tag. The key id lets a
key be rotated (old keys kept under keys/retired/ still open old blobs): `keys rotate sealing`
(gateway.core.sealing_keys) replaces the key file, `Sealer.refresh` picks that up in a running
gateway, and gateway.core.reseal moves old blobs to the new key. The associated data binds
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
RETIRED_DIR = "retired"  # keys that only open old blobs; keys/retired/unused/ holds those no blob needs


class SealError(Exception):
    """A blob does not open: wrong key, unknown key id, damaged, or moved to another row."""


def sealed_context(kind: str, row_id: str) -> str:
    """The associated data that binds a blob to its row and purpose ("content:<referral id>")."""
    return f"{kind}:{row_id}"


def key_id(key: bytes) -> bytes:
    """The 8 bytes after the version byte of every blob sealed with `key` (not secret: a hash)."""
    return hashlib.sha256(b"referral-gateway key id" + key).digest()[:8]


def _files_signature(keys_dir: Path) -> tuple[object, ...]:
    """What changes when a key file is replaced or a retired one added or removed (a stat, no read)."""
    current = keys_dir / KEY_FILE
    retired_dir = keys_dir / RETIRED_DIR
    st = current.stat() if current.exists() else None
    retired = sorted(p.name for p in retired_dir.glob("*.key")) if retired_dir.is_dir() else []
    return (st.st_ino, st.st_mtime_ns, st.st_size) if st else (), tuple(retired)


class Sealer:
    def __init__(self, current: bytes, retired: tuple[bytes, ...] = (), keys_dir: Path | None = None) -> None:
        self._keys_dir = keys_dir
        self._signature: tuple[object, ...] = _files_signature(keys_dir) if keys_dir else ()
        self._set(current, retired)

    def _set(self, current: bytes, retired: tuple[bytes, ...]) -> None:
        # Swapped with no await between: a seal or open on this loop sees the old keys or the new.
        self._raw = {key_id(k): k for k in (*retired, current)}
        self._keys = {kid: AESGCM(k) for kid, k in self._raw.items()}
        self._current_id = key_id(current)

    @classmethod
    def from_keys_dir(cls, keys_dir: Path, may_create: bool = True) -> Sealer:
        """may_create=False when the store already holds sealed data: a missing key then means
        a lost key, and making a new one would hide that until someone needs an old referral."""
        path = keys_dir / KEY_FILE
        current = keyfiles.load_or_create(path) if may_create else keyfiles.load(path, 32)
        return cls(current, _retired(keys_dir), keys_dir)

    @property
    def current_id(self) -> bytes:
        return self._current_id

    def refresh(self) -> bool:
        """Picks up a rotation made by `keys rotate sealing` (another process, or another instance
        sharing keys/): re-reads the keys only when a file changed. True when they did."""
        if self._keys_dir is None:
            return False
        signature = _files_signature(self._keys_dir)
        if signature == self._signature:
            return False
        current = keyfiles.load(self._keys_dir / KEY_FILE, 32)
        # A key moved away (`keys retire-unused`) stays in memory: a blob another instance sealed
        # with it just before it picked up the rotation still opens, and is re-sealed.
        self._set(current, (*self._raw.values(), *_retired(self._keys_dir)))
        self._signature = signature
        return True

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


def _retired(keys_dir: Path) -> tuple[bytes, ...]:
    retired_dir = keys_dir / RETIRED_DIR
    return tuple(keyfiles.load(p, 32) for p in sorted(retired_dir.glob("*.key"))) if retired_dir.is_dir() else ()
