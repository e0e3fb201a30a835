"""Rotating the at-rest sealing key on disk: a new current key, the old one kept under keys/retired/.

Every step leaves keys/ in a state that opens every blob, so a crash (or a power cut) at any point
loses nothing and the command can simply be run again:
1. the new key is written to data-at-rest.key.new (mode 0600 from creation, fsynced);
2. the current key is copied to retired/<key id>.key (written to a temporary name, fsynced, renamed):
   from here on it is in two places, which is harmless (keys are looked up by id);
3. data-at-rest.key.new replaces data-at-rest.key in one rename, and the folder is fsynced.
The running gateway picks the change up by itself (Sealer.refresh, from the re-seal loop) and
re-seals old blobs in the background (gateway.core.reseal).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gateway.core import keyfiles
from gateway.core.sealing import KEY_FILE, RETIRED_DIR, key_id

UNUSED_DIR = "unused"  # under retired/: keys no blob needs any more, out of the Sealer's sight


def retired_name(key: bytes) -> str:
    return key_id(key).hex() + ".key"


def rotate(keys_dir: Path) -> tuple[bytes, bytes]:
    """Makes a new current sealing key; returns (old key id, new key id)."""
    current_path = keys_dir / KEY_FILE
    old = keyfiles.load(current_path, 32)  # a missing or open-to-others key stops here, unchanged
    retired_dir = keys_dir / RETIRED_DIR
    retired_dir.mkdir(mode=0o700, exist_ok=True)
    new = secrets.token_bytes(32)
    staged = keys_dir / (KEY_FILE + ".new")
    keyfiles.write_atomic(staged, new)
    keyfiles.write_atomic(retired_dir / retired_name(old), old)
    os.replace(staged, current_path)
    keyfiles.fsync_dir(keys_dir)
    return key_id(old), key_id(new)


def retired_keys(keys_dir: Path) -> dict[bytes, Path]:
    """The retired keys the gateway still opens blobs with, by key id."""
    retired_dir = keys_dir / RETIRED_DIR
    if not retired_dir.is_dir():
        return {}
    return {key_id(keyfiles.load(p, 32)): p for p in sorted(retired_dir.glob("*.key"))}


def set_aside(path: Path) -> Path:
    """Moves a retired key no blob uses to retired/unused/ (kept, not deleted: a backup restored
    later may hold blobs sealed with it; moving it back into retired/ makes them open again)."""
    unused = path.parent / UNUSED_DIR
    unused.mkdir(mode=0o700, exist_ok=True)
    target = unused / path.name
    os.replace(path, target)
    keyfiles.fsync_dir(path.parent)
    return target
