"""`referral-gateway purge [--dry-run]` and `referral-gateway hold REF | --lift REF`: retention.

`purge` removes the sealed content of referrals closed more than `[retention] closed_after` ago
(gateway.report.retention says what goes and what never does); `--dry-run` lists them and changes
nothing, and with `--at` says what would go by a later date. `hold` puts a referral under a legal
hold, or lifts one, in the name of a coordinator's account (`--by`), audited as theirs: a
command line has no signed-in user, and a hold must say who decided it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from gateway import config as config_mod
from gateway.cli.database import with_database
from gateway.cli.groups import top_level
from gateway.core import db
from gateway.core.clock import LONDON, SystemClock, uk_time
from gateway.report import holds, retention
from gateway.staff.users import Users

_T = TypeVar("_T")


def _at(text: str) -> datetime:
    """An ISO time; without a zone it is UK time."""
    given = datetime.fromisoformat(text)
    return (given if given.tzinfo else given.replace(tzinfo=LONDON)).astimezone(UTC)


def _line(item: retention.Candidate) -> str:
    closed = item.closed_at.astimezone(LONDON).date().isoformat()
    return f"{item.reference}  closed {closed}  removes: {', '.join(item.removes())}"


def _json(item: retention.Candidate) -> dict[str, object]:
    return {
        "reference": item.reference,
        "closed_at": item.closed_at.isoformat(),
        "removes": item.removes(),
    }


def cmd_purge(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    settings = cfg.settings
    if args.at and not args.dry_run:
        print("error: --at only plans (with --dry-run): a purge always runs as of now", file=sys.stderr)
        return 2
    now = _at(args.at) if args.at else SystemClock().now()
    policy = f"closed more than {retention.as_written(settings.retention.closed_after)} before {uk_time(now)}"
    if args.dry_run:
        found = with_database(cfg, lambda database: retention.dry_run(database, settings, now))
    else:
        found = with_database(cfg, lambda database: retention.purge(database, settings, now, "cli"))
    if args.format == "json":
        print(json.dumps({"dry_run": args.dry_run, "referrals": [_json(item) for item in found]}, indent=2))
        return 0
    for item in found:
        print(_line(item))
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"purge: {verb} the content of {len(found)} referral(s) {policy}"
        + ("; nothing was changed" if args.dry_run else "; their events and metadata are kept")
    )
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    if bool(args.reference) == bool(args.lift):
        raise holds.HoldError("name one referral: `hold REF --reason CODE --by USER` or `hold --lift REF --by USER`")
    if args.reference and not args.reason:
        raise holds.HoldError(f"say why with --reason, one of: {', '.join(holds.REASONS)}")

    async def work(database: db.Database) -> holds.Held:
        user = await Users(database).find(args.by)
        if user is None:
            raise holds.HoldError(f"there is no user {args.by!r}; `referral-gateway users list` shows who there is")
        now = SystemClock().now()
        if args.lift:
            return await holds.lift_hold(database, user, args.lift, now, "cli")
        return await holds.set_hold(database, user, args.reference, args.reason, args.matter or "", now, "cli")

    held = with_database(cfg, work)
    if held.held:
        print(f"referral {held.reference} is under a legal hold: retention will not remove its content")
    else:
        print(f"the legal hold on referral {held.reference} is lifted: retention applies to it again")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path) -> None:
    command = top_level(sub, default_config, holds.HoldError)
    p = command("purge", "remove the content of referrals closed longer ago than [retention] closed_after", cmd_purge)
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; change nothing")
    p.add_argument("--at", help="with --dry-run: as of this time (ISO; UK time if no zone; default now)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = command("hold", "put a referral under a legal hold (retention keeps its content), or lift one", cmd_hold)
    p.add_argument("reference", nargs="?", help="the referral to hold (its reference, like 7KM4-Q9XC)")
    p.add_argument("--lift", metavar="REF", help="lift the hold on this referral instead")
    p.add_argument("--reason", choices=tuple(holds.REASONS), help="why it is held (a code: never free text)")
    p.add_argument("--matter", help="the matter's own reference, such as ZW26C00123 (never a name)")
    p.add_argument("--by", required=True, metavar="USERNAME", help="the coordinator deciding it (their account)")
