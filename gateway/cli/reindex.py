"""`referral-gateway reindex`: build the child index (gateway.history.index) from sealed content.

Run once after the upgrade that added the index (referrals stored before it are not in it), and
after replacing keys/history-index.key (digests made with the old key match nothing). A command,
not a task at start: it opens every stored referral, which on a large store takes minutes an
administrator should see and choose when to spend, and on PostgreSQL one run serves every instance.
Until it has run, the referral page still finds earlier referrals, by opening older ones as it did
before the index. Safe beside a running gateway and safe to run again (it only repeats work).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway import config as config_mod
from gateway.cli.database import with_database
from gateway.cli.groups import top_level
from gateway.core import db
from gateway.core.clock import SystemClock
from gateway.core.keyfiles import KeyFileError, load
from gateway.core.sealed import Sealed
from gateway.core.sealing import Sealer
from gateway.history import index
from gateway.history.keys import KEY_FILE, Hasher


class ReindexError(Exception):
    """The index cannot be built: a key is missing."""


def cmd_reindex(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    path = cfg.keys_dir / KEY_FILE
    if not path.exists():
        raise ReindexError(
            f"{path}: the index key is missing; start the gateway once (SQLite) or run `referral-gateway keys "
            "init` (PostgreSQL) to make it, give every instance the same keys/, then run reindex again"
        )
    try:
        hasher = Hasher(load(path, 32))
        sealed = Sealed(Sealer.from_keys_dir(cfg.keys_dir, may_create=False))
    except KeyFileError as exc:
        raise ReindexError(str(exc)) from None
    clock = SystemClock()

    def progress(done: int) -> None:
        print(f"reindex: {done} referral(s) indexed so far", flush=True)

    async def run(database: db.Database) -> int:
        return await index.rebuild(database, sealed, hasher, clock.now, progress)

    total = with_database(cfg, run)
    print(f"reindex: OK: the child index holds every referral with content ({total}), under index key {hasher.key_id}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path) -> None:
    command = top_level(sub, default_config, ReindexError)
    command("reindex", "build the child index (linked history) from the stored referrals", cmd_reindex)
