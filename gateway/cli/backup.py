"""`referral-gateway backup --to DIR`: the database and the keys, consistent while the gateway serves.

The folder gets the database copy (gateway.db or database.pgdump), keys.tar.gpg (keys/ encrypted to the
administrator's OpenPGP key, never in the clear) and manifest.json, written last. `restore` (gateway.cli.restore)
puts them back. The database is copied before the keys are read: a sealing key rotated in between is then in
the tar (under keys/retired/) with its successor, so every blob in the copy opens.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from importlib import metadata
from pathlib import Path

from gateway import config as config_mod
from gateway.cli import backup_keys, backup_manifest
from gateway.cli.backup_db import BackupError, DatabaseCopy, backup_postgres, backup_sqlite, sqlite_path
from gateway.cli.groups import top_level
from gateway.cli.restore import cmd_restore
from gateway.config import Config
from gateway.core.clock import SystemClock
from gateway.open.crypto import CryptoError
from gateway.open.crypto.backends import read_keys
from gateway.open.crypto.sequoia import SequoiaPGP


def cmd_backup(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    folder: Path = args.to
    fingerprint = _admin_key(cfg)  # checked before anything is written
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BackupError(f"{folder} is not an empty folder; back up into a new one (e.g. one named by the date)")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        copy = _copy_database(cfg, folder)
        tar, count = backup_keys.pack(cfg.keys_dir)
        encrypted = _encrypt(cfg, fingerprint, tar)
        fd = os.open(folder / backup_keys.KEYS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(encrypted)
            handle.flush()
            os.fsync(handle.fileno())
    except BackupError as exc:
        raise BackupError(f"{exc}. {folder} has no manifest.json: it is not a backup; delete it") from None
    files = {name: backup_manifest.sha256_file(folder / name) for name in (copy.file, backup_keys.KEYS_FILE)}
    backup_manifest.write(
        folder,
        {
            "format": backup_manifest.FORMAT,
            "created_at": SystemClock().now().isoformat(timespec="seconds"),
            "gateway_version": metadata.version("referral-gateway"),
            "migration_revision": copy.revision,
            "database": {"kind": copy.kind, "file": copy.file, "rows": copy.rows},
            "keys": {
                "file": backup_keys.KEYS_FILE,
                "encrypted_to": fingerprint,
                "files": count,
                "tar_sha256": hashlib.sha256(tar).hexdigest(),
            },
            "files": files,
        },
    )
    for outside in _keys_outside(cfg):
        print(f"note: {outside} is outside {cfg.keys_dir} and not in the backup; back it up yourself", file=sys.stderr)
    print(
        f"backup: OK: {folder}: {copy.kind} database at migration {copy.revision} "
        f"({copy.rows.get('referrals', 0)} referrals, {copy.rows.get('messages', 0)} messages); "
        f"{count} key files encrypted to {fingerprint}"
    )
    return 0


def _encrypt(cfg: Config, fingerprint: str, tar: bytes) -> bytes:
    """The keys tar encrypted to the administrator's key, by gpg or (sequoia backend: its certificate is a
    file in keys/openpgp/certs/) by Sequoia; either way an OpenPGP message `gpg --decrypt` opens."""
    home = cfg.keys_dir / cfg.settings.keys.openpgp_dir()
    if cfg.settings.keys.openpgp_backend == "gnupg":
        return backup_keys.encrypt(home, fingerprint, tar)
    with SequoiaPGP.opened(home) as pgp:
        try:
            return pgp.encrypt_to(tar, fingerprint)
        except CryptoError as exc:
            raise BackupError(
                f"could not encrypt the keys to [backup] admin_openpgp {fingerprint} ({exc.reason}); import the "
                "administrator's public key with `referral-gateway keys import FILE`; nothing was written"
            ) from None


def _admin_key(cfg: Config) -> str:
    fingerprint = cfg.settings.backup.admin_openpgp
    if fingerprint is None:
        raise BackupError(
            f"[backup] admin_openpgp is not set in {cfg.file}; nothing was backed up. The keys open every sealed "
            "referral, so a backup holds them only encrypted to an administrator's OpenPGP key: import its public "
            'key with `referral-gateway keys import FILE`, then set admin_openpgp = "<its 40-hex fingerprint>"'
        )
    home = cfg.keys_dir / cfg.settings.keys.openpgp_dir()
    secret, public = read_keys(cfg.settings.keys.openpgp_backend, home)
    if fingerprint in {key.fingerprint for key in secret}:
        raise BackupError(
            f"[backup] admin_openpgp {fingerprint} is a key the gateway holds the secret half of; a lost gateway "
            "would take the only key that opens its backups with it. Name an administrator's own key, kept elsewhere"
        )
    key = next((k for k in public if k.fingerprint == fingerprint), None)
    if key is None:
        raise BackupError(
            f"[backup] admin_openpgp {fingerprint} is not in the gateway's keyring {home}; import the administrator's "
            "public key with `referral-gateway keys import FILE`; nothing was backed up"
        )
    if key.revoked or (key.expires is not None and key.expires <= SystemClock().now()):
        raise BackupError(
            f"[backup] admin_openpgp {fingerprint} is {'revoked' if key.revoked else 'expired'}; import the "
            "administrator's renewed key, or name another; nothing was backed up"
        )
    return fingerprint


def _keys_outside(cfg: Config) -> list[Path]:
    """Key files the config names by an absolute path elsewhere: the backup holds keys_dir only."""
    s = cfg.settings
    named = [s.keys.smime_key, s.keys.smime_cert, s.smtp.tls_cert, s.smtp.tls_key, s.sms.auth_token_file]
    named += [s.mail.relay.password_file] if s.mail.relay else []
    found = []
    for path in (cfg.keys_dir / p for p in named if p is not None):
        if path.exists() and not path.resolve().is_relative_to(cfg.keys_dir.resolve()):
            found.append(path)
    return found


def _copy_database(cfg: Config, folder: Path) -> DatabaseCopy:
    url = cfg.database_url
    if url.startswith("sqlite"):
        return backup_sqlite(sqlite_path(url), folder)
    if url.startswith("postgresql"):
        return asyncio.run(backup_postgres(url, folder))
    raise BackupError(f"[database] url {url.split(':', 1)[0]}: backup knows SQLite and PostgreSQL only")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path) -> None:
    """Adds `backup` and `restore` to the `referral-gateway` parser."""
    command = top_level(sub, default_config, BackupError)
    p = command(
        "backup", "copy the database and the keys (encrypted to [backup] admin_openpgp) into a new folder", cmd_backup
    )
    p.add_argument("--to", metavar="DIR", type=Path, required=True, help="a new or empty folder for this backup")
    p = command(
        "restore",
        "restore a backup into a fresh data_dir and keys_dir (the gateway stopped), then check it",
        cmd_restore,
    )
    p.add_argument(
        "--from", dest="source", metavar="DIR", type=Path, required=True, help="the backup folder (with manifest.json)"
    )
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--gnupghome",
        metavar="HOME",
        type=Path,
        help="a GnuPG home with the administrator's secret key: decrypts keys.tar.gpg",
    )
    keys.add_argument(
        "--keys-from",
        metavar="TAR",
        type=Path,
        help="keys.tar that you decrypted yourself (gpg --decrypt keys.tar.gpg)",
    )
    p.add_argument("--force", action="store_true", help="replace a database and keys that are already there")
