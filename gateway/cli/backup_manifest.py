"""manifest.json in a backup folder: what the backup holds, so that a restore can prove it got all of it.

Written last, so a folder without one is a backup that did not finish. It holds no secret and no personal
data: times, versions, table names with row counts, file names with their SHA-256, the administrator's key
fingerprint. The keys tar's own SHA-256 is there too (the tar is dominated by random key material, so its
hash gives nothing away), to check a tar the administrator decrypted themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gateway.cli.backup_db import BackupError

MANIFEST = "manifest.json"
FORMAT = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(folder: Path, manifest: dict[str, Any]) -> None:
    partial = folder / (MANIFEST + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, folder / MANIFEST)


def read(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(
            f"{path} is missing: {folder} is not a backup, or its backup did not finish; use another backup"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BackupError(f"{path} is not valid JSON: the backup is damaged; use another backup") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(f"{path}: not a manifest this version of referral-gateway can read (format {FORMAT})")
    return data


def check_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest names is there with its recorded SHA-256: a damaged copy is refused whole."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BackupError(f"{folder / MANIFEST} lists no files: the backup is damaged; use another backup")
    for name, expected in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise BackupError(f"{path} is missing from the backup; nothing was restored: use another backup")
        if sha256_file(path) != expected:
            raise BackupError(
                f"{path} does not match the SHA-256 in {MANIFEST}: it is damaged; nothing was restored; "
                "use another backup"
            )
