"""Secret key files under keys/: created once with mode 0600, refused if others can read them."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path


class KeyFileError(Exception):
    """A key file is missing, unreadable, the wrong size or readable by others."""


def load_or_create(path: Path, size: int = 32) -> bytes:
    """Read a raw secret key, making a new random one on first run.

    O_EXCL makes creation race-free (two instances starting together cannot write two keys) and
    the mode is set at creation, so the secret is never readable by others, not even briefly.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load(path, size)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(size))
        handle.flush()
        os.fsync(handle.fileno())
    return load(path, size)


def require_made(keys_dir: Path, names: Sequence[str]) -> None:
    """For a gateway on PostgreSQL, which never makes the keys every instance must share (two
    starting together would each make different ones): refuse to start until they are made."""
    missing = [name for name in names if not (keys_dir / name).exists()]
    if missing:
        raise KeyFileError(
            f"{keys_dir}: {', '.join(missing)} missing; with a PostgreSQL database the gateway never makes keys "
            "at start (instances starting together would each make different ones). Run `referral-gateway keys "
            "init` once, give every instance the same keys/, then start the gateway"
        )


def load(path: Path, size: int | None = None) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: key file is missing; restore it from backup (data sealed with it cannot be read without it)"
        ) from None
    except PermissionError:
        raise KeyFileError(f"{path}: key file is not readable by this user; chown it to the gateway's user") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: key file is readable by others; run: chmod 600 {path}")
    if size is not None and len(data) != size:
        raise KeyFileError(
            f"{path}: key file holds {len(data)} bytes, expected {size}; it is damaged: restore it from backup"
        )
    return data


def fsync_dir(directory: Path) -> None:
    """Makes a rename or a new file in `directory` durable (the rename itself lives in the folder)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Writes a secret (mode 0600 from creation) under a temporary name, fsyncs it, then renames it
    into place: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
