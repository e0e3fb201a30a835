"""The acknowledgement-link keys on disk: the current one, previous ones kept for an overlap, and
the key recipients are hashed with.

keys/ack-signing.key signs every new link. `keys rotate ack` moves it to
keys/ack-previous/<key id>-<until>.key, where it still verifies links until `until` (the moment
the last link it signed expires: now + ack.link_ttl), and makes a new one. Recipients' hashes are
stored (deliveries.recipient_hash, sms_webhooks.sender_hash) and compared later, so they must not
change with the signing key: the first rotation copies the key they were made with to
keys/ack-recipient.key, and they are made with that from then on.

The order of the steps keeps keys/ usable after a crash at any point: the recipient key first,
then the previous key, and only then the new current key (one rename).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.core import keyfiles

KEY_FILE = "ack-signing.key"
RECIPIENT_KEY_FILE = "ack-recipient.key"
PREVIOUS_DIR = "ack-previous"
_PREVIOUS_NAME = re.compile(r"[0-9a-f]{8}-([0-9]{1,12})\.key")


def key_id(key: bytes) -> str:
    """Named in each new link ("k"), so a verifier picks the one key that can match."""
    return hashlib.sha256(b"referral-gateway ack key id" + key).hexdigest()[:8]


@dataclass(frozen=True)
class PreviousKey:
    key: bytes
    until: datetime  # links it signed are refused after this (they have all expired by then)
    path: Path


@dataclass(frozen=True)
class AckKeys:
    current: bytes
    recipient: bytes
    previous: tuple[PreviousKey, ...]


def _signature(keys_dir: Path) -> tuple[object, ...]:
    st = os.stat(keys_dir / KEY_FILE)
    # os.listdir, not Path.glob("*.key"): the same names (hidden ones too, any kind of entry), and
    # nothing when the directory is missing or unreadable, in a tenth of the time. Every ack link
    # signed checks this, several per referral.
    try:
        names = os.listdir(keys_dir / PREVIOUS_DIR)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return st.st_ino, st.st_mtime_ns, ()
    return st.st_ino, st.st_mtime_ns, tuple(sorted(name for name in names if name.endswith(".key")))


def signature(keys_dir: Path) -> tuple[object, ...]:
    """What changes when a rotation happened (a stat and a listing; nothing is read)."""
    try:
        return _signature(keys_dir)
    except FileNotFoundError:
        return ()


def _until_of(path: Path) -> datetime:
    """A previous key's overlap end, from its name: <key id>-<unix time>.key."""
    match = _PREVIOUS_NAME.fullmatch(path.name)
    if match is None:
        raise keyfiles.KeyFileError(
            f"{path}: not a key `keys rotate ack` made (named <key id>-<unix time>.key); move it out of {path.parent}"
        )
    return datetime.fromtimestamp(int(match.group(1)), UTC)


def load(keys_dir: Path, may_create: bool) -> AckKeys:
    path = keys_dir / KEY_FILE
    current = keyfiles.load_or_create(path) if may_create else keyfiles.load(path, 32)
    recipient_path = keys_dir / RECIPIENT_KEY_FILE
    recipient = keyfiles.load(recipient_path, 32) if recipient_path.exists() else current
    previous = []
    prev_dir = keys_dir / PREVIOUS_DIR
    for p in sorted(prev_dir.glob("*.key")) if prev_dir.is_dir() else []:
        previous.append(PreviousKey(keyfiles.load(p, 32), _until_of(p), p))
    return AckKeys(current, recipient, tuple(previous))


def rotate(keys_dir: Path, until: datetime) -> datetime:
    """A new current key; the old one verifies links until `until`. Returns `until` (whole seconds)."""
    path = keys_dir / KEY_FILE
    old = keyfiles.load(path, 32)
    recipient_path = keys_dir / RECIPIENT_KEY_FILE
    if not recipient_path.exists():
        keyfiles.write_atomic(recipient_path, old)
    stamp = int(until.timestamp())
    keyfiles.write_atomic(keys_dir / PREVIOUS_DIR / f"{key_id(old)}-{stamp}.key", old)
    keyfiles.write_atomic(path, secrets.token_bytes(32))
    return datetime.fromtimestamp(stamp, UTC)


def expired_previous(keys_dir: Path, now: datetime) -> list[tuple[Path, datetime]]:
    """Previous keys whose overlap has ended: every link they signed has expired."""
    prev_dir = keys_dir / PREVIOUS_DIR
    if not prev_dir.is_dir():
        return []
    out = []
    for p in sorted(prev_dir.glob("*.key")):
        until = _until_of(p)
        if until <= now:
            out.append((p, until))
    return out
