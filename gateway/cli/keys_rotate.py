"""`referral-gateway keys rotate sealing|ack`, `keys rotation-status` and `keys retire-unused`.

A rotation only changes files under keys/; the running gateway (every instance sharing keys/) picks
it up by itself: the re-seal loop checks the sealing key file's stat every [rotation] key_check
(10 s by default) and before every batch, and the acknowledgement-link keys are read again when a
link's key id is not one it holds. No restart and no signal is needed, which also covers several
instances on several hosts.
"""

from __future__ import annotations

import argparse

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import config as config_mod
from gateway.cli.database import with_engine
from gateway.cli.keys_common import KeysError, shown
from gateway.config import Config
from gateway.core import db, keyfiles, sealing_keys
from gateway.core.clock import SystemClock
from gateway.core.reseal import count_by_key
from gateway.core.sealing import KEY_FILE, key_id
from gateway.outbox import token_keys, tokens


def cmd_rotate(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    if args.which == "sealing":
        return _rotate_sealing(cfg)
    if args.which == "ack":
        return _rotate_ack(cfg)
    from gateway.cli.keys_rotate_own import rotate_own  # gpg and openssl: only for these two

    return rotate_own(cfg, args)


def _rotate_sealing(cfg: Config) -> int:
    if not (cfg.keys_dir / KEY_FILE).is_file():
        raise KeysError(f"{shown(cfg, cfg.keys_dir / KEY_FILE)} does not exist: start the gateway once, then rotate")
    old, new = sealing_keys.rotate(cfg.keys_dir)
    print(f"sealing key rotated: new current key {new.hex()}; {old.hex()} kept under keys/retired/")
    print(
        "the running gateway picks it up within [rotation] key_check and re-seals every blob in the background; "
        "`referral-gateway keys rotation-status` shows what remains, `keys retire-unused` then sets the old key aside"
    )
    return 0


def _rotate_ack(cfg: Config) -> int:
    overlap = cfg.settings.ack.link_ttl
    until = tokens.rotate(cfg.keys_dir, SystemClock().now() + overlap)
    print("acknowledgement-link key rotated: new links are signed with the new key from now on")
    print(
        f"links already sent keep working until {until.isoformat(timespec='minutes')} "
        f"(ack.link_ttl, {overlap.days} days); `keys retire-unused` deletes the old key after that"
    )
    return 0


async def _counts(engine: AsyncEngine) -> dict[str, dict[bytes, int]]:
    return await count_by_key(db.Database(engine))


def _by_key(counts: dict[str, dict[bytes, int]]) -> dict[bytes, dict[str, int]]:
    out: dict[bytes, dict[str, int]] = {}
    for column, per_key in counts.items():
        for kid, n in per_key.items():
            out.setdefault(kid, {})[column] = n
    return out


def cmd_rotation_status(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    current = key_id(keyfiles.load(cfg.keys_dir / KEY_FILE, 32))
    retired = sealing_keys.retired_keys(cfg.keys_dir)
    by_key = _by_key(with_engine(cfg, _counts))
    _ack_status(cfg)
    print(f"sealing key: current {current.hex()} ({shown(cfg, cfg.keys_dir / KEY_FILE)})")
    remaining = 0
    for kid in sorted(set(by_key) | set(retired), key=lambda k: (k != current, k)):
        columns = by_key.get(kid, {})
        total = sum(columns.values())
        where = (
            shown(cfg, cfg.keys_dir / KEY_FILE)
            if kid == current
            else (shown(cfg, retired[kid]) if kid in retired else "NOT IN keys/ (restore it under keys/retired/)")
        )
        detail = ", ".join(f"{c} {n}" for c, n in sorted(columns.items()))
        print(f"  {kid.hex()}  {total:>7} blob(s)  {where}" + (f"  ({detail})" if detail and kid != current else ""))
        if kid != current:
            remaining += total
    if remaining:
        print(f"re-seal: {remaining} blob(s) remain under old keys; the running gateway is re-sealing them")
        return 1
    unused = len(retired.keys() - {current})
    print(
        "re-seal: done: every blob is under the current key"
        + (f"; `keys retire-unused` sets aside {unused} retired key(s)" if unused else "")
    )
    return 0


def _ack_status(cfg: Config) -> None:
    if not (cfg.keys_dir / token_keys.KEY_FILE).is_file():
        return
    keys = token_keys.load(cfg.keys_dir, may_create=False)
    now = SystemClock().now()
    print(f"acknowledgement-link key: current {token_keys.key_id(keys.current)}")
    for prev in keys.previous:
        state = "verifies links until" if now < prev.until else "overlap ended (`keys retire-unused` deletes it)"
        print(f"  previous {token_keys.key_id(prev.key)}: {state} {prev.until.isoformat(timespec='minutes')}")


def cmd_retire_unused(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    current = key_id(keyfiles.load(cfg.keys_dir / KEY_FILE, 32))
    by_key = _by_key(with_engine(cfg, _counts))
    kept = 0
    for kid, path in sealing_keys.retired_keys(cfg.keys_dir).items():
        used = sum(by_key.get(kid, {}).values())
        if kid == current:
            continue  # a crash mid-rotation leaves a copy of the current key here: harmless, and kept
        if used:
            kept += 1
            print(f"kept {shown(cfg, path)}: {used} blob(s) still sealed with it (the gateway is re-sealing them)")
            continue
        target = sealing_keys.set_aside(path)
        print(f"set aside {shown(cfg, path)} -> {shown(cfg, target)}: no blob uses it")
    for path, until in tokens.expired_previous(cfg.keys_dir, SystemClock().now()):
        path.unlink()
        print(f"deleted {shown(cfg, path)}: the old acknowledgement-link key (its links expired {until.date()})")
    return 1 if kept else 0
