"""`referral-gateway restore --from DIR`: a backup back into a fresh data_dir / keys_dir, then proved.

The keys need the administrator's secret key. Either `--gnupghome` names a GnuPG home that holds it (gpg
decrypts keys.tar.gpg; its agent asks for the passphrase), or the administrator decrypts the file themselves,
on a machine of their choosing (a smartcard, an offline laptop), and passes the tar with `--keys-from`.
Everything is checked before anything is written: the manifest's SHA-256 of each file, the tar's hash, that
the targets are empty (or --force). After writing, the restored copy must show the manifest's row counts, pass
`verify`, and open every referral's sealed content and every raw message with the restored keys.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import config as config_mod
from gateway.cli import backup_keys, backup_manifest
from gateway.cli.backup_db import (
    BackupError,
    count_rows,
    known_revisions,
    postgres_tables,
    restore_postgres,
    restore_sqlite,
    sqlite_path,
)
from gateway.config import Config
from gateway.core import db
from gateway.core.keyfiles import KeyFileError
from gateway.core.schema import messages, referrals
from gateway.core.sealed import Sealed
from gateway.core.sealing import Sealer, SealError
from gateway.track.verify import verify


def cmd_restore(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    folder: Path = args.source
    manifest = backup_manifest.read(folder)
    if manifest.get("migration_revision") not in known_revisions():
        raise BackupError(
            f"{folder} was made by referral-gateway {manifest.get('gateway_version')} at migration "
            f"{manifest.get('migration_revision')}, which this version does not know; install that version "
            "or a later one, then restore; nothing was restored"
        )
    backup_manifest.check_files(folder, manifest)
    tar = _keys_tar(folder, manifest, args.gnupghome, args.keys_from)
    kind = manifest["database"]["kind"]
    url = cfg.database_url
    if (kind == "sqlite") != url.startswith("sqlite"):
        raise BackupError(
            f"the backup holds a {kind} database but {cfg.file} configures "
            f"{'SQLite' if url.startswith('sqlite') else 'PostgreSQL'}; set [database] url to match; "
            "nothing was restored"
        )
    _refuse_overwrite(cfg, tar, kind, args.force)

    database = folder / manifest["database"]["file"]
    if kind == "sqlite":
        restore_sqlite(database, sqlite_path(url))
    else:
        asyncio.run(restore_postgres(database, url, args.force))
    count = backup_keys.unpack(tar, cfg.keys_dir)
    problems, readable = asyncio.run(_check(cfg, manifest))
    for problem in problems:
        print(problem)
    if problems:
        print(f"restore: {len(problems)} problem(s) in the restored copy; do not serve from it, use another backup")
        return 1
    print(
        f"restore: OK: {kind} database at migration {manifest['migration_revision']} from {manifest['created_at']} "
        f"with the manifest's row counts; {count} key files into {cfg.keys_dir}; verify passes; "
        f"every referral opens with the restored keys ({readable['referrals']}"
        + (f", and {readable['purged']} purged by retention)" if readable["purged"] else ")")
    )
    return 0


def _keys_tar(folder: Path, manifest: dict[str, Any], gnupghome: Path | None, keys_from: Path | None) -> bytes:
    keys = manifest["keys"]
    if keys_from is not None:
        tar = keys_from.read_bytes()
        source = str(keys_from)
    elif gnupghome is not None:
        tar = backup_keys.decrypt(gnupghome, folder / keys["file"])
        source = f"{folder / keys['file']} decrypted"
    else:
        raise BackupError(
            f"restore needs the keys, encrypted in {folder / keys['file']} to {keys['encrypted_to']}: pass "
            "--gnupghome DIR (a GnuPG home with that secret key), or decrypt it yourself "
            f"(gpg --decrypt --output keys.tar {folder / keys['file']}) and pass --keys-from keys.tar"
        )
    if hashlib.sha256(tar).hexdigest() != keys["tar_sha256"]:
        raise BackupError(
            f"{source} is not this backup's keys (its SHA-256 differs from the manifest's); nothing was restored"
        )
    backup_keys.open_tar(tar, source)
    return tar


def _refuse_overwrite(cfg: Config, tar: bytes, kind: str, force: bool) -> None:
    if force:
        return
    target = sqlite_path(cfg.database_url) if kind == "sqlite" else None
    if target is not None and target.exists():
        used = f"{target} exists"
    elif target is not None and cfg.data_dir.is_dir() and any(cfg.data_dir.iterdir()):
        used = f"{cfg.data_dir} (data_dir) is not empty"
    else:
        used = ""
    if used:
        raise BackupError(
            f"{used}; restore into a fresh data_dir, or pass --force to replace the database there "
            "(stop the gateway first); nothing was restored"
        )
    if kind == "postgresql" and asyncio.run(postgres_tables(cfg.database_url)):
        raise BackupError(
            "the configured PostgreSQL database already has tables; restore into a new, empty database "
            "(createdb), or pass --force to replace them (stop the gateway first); nothing was restored"
        )
    changed = backup_keys.conflicts(tar, cfg.keys_dir)
    if changed:
        raise BackupError(
            f"{cfg.keys_dir} (keys_dir) already holds other versions of {', '.join(changed[:5])}"
            f"{' and more' if len(changed) > 5 else ''}; restore into a fresh keys_dir, or pass --force to replace "
            "them (the keys there now would be lost: back them up first); nothing was restored"
        )


async def _check(cfg: Config, manifest: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    engine = db.make_engine(cfg.database_url, cfg.settings.database.busy_timeout)
    try:
        async with db.snapshot(engine) as conn:
            rows, revision = await count_rows(conn)
        problems = [
            f"table {name}: {rows.get(name)} rows restored, the manifest says {expected}"
            for name, expected in sorted(manifest["database"]["rows"].items())
            if rows.get(name) != expected
        ]
        if revision != manifest["migration_revision"]:
            problems.append(f"migration {revision} restored, the manifest says {manifest['migration_revision']}")
        problems += await verify(engine, datetime.now(UTC))
        unreadable, readable = await _open_everything(cfg, engine)
        return problems + unreadable, readable
    finally:
        await engine.dispose()


async def _open_everything(cfg: Config, engine: AsyncEngine) -> tuple[list[str], dict[str, int]]:
    """Each referral's content and raw message, opened with the restored keys: the proof that the keys in the
    backup are the ones the database was sealed with. A referral not processed yet when the backup was taken
    has only its raw message; one purged by retention has neither. References only in what is printed."""
    try:
        sealed = Sealed(Sealer.from_keys_dir(cfg.keys_dir, may_create=False))
    except KeyFileError as exc:
        return [f"keys: {exc}"], {"referrals": 0, "purged": 0}
    problems: list[str] = []
    counts = {"referrals": 0, "purged": 0}
    query = select(referrals.c.id, referrals.c.reference, referrals.c.content, messages.c.id, messages.c.raw)
    async with db.snapshot(engine) as conn:
        rows = (await conn.execute(query.join_from(referrals, messages))).all()
    for referral_id, reference, content, message_id, raw in rows:
        if content is None and raw == b"":
            counts["purged"] += 1
            continue
        try:
            if content is not None:
                sealed.content(referral_id, content)
            if raw != b"":
                sealed.raw(message_id, raw)
        except (SealError, ValueError) as exc:
            problems.append(f"referral {reference}: its sealed data does not open with the restored keys ({exc})")
            continue
        counts["referrals"] += 1
    return problems, counts
