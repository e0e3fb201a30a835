"""`referral-gateway users add|disable|reset-password|reset-factor|end-sessions|list`: staff accounts
for the web dashboard.

Passwords are asked for twice on the terminal (never as an argument: arguments are visible to other
users in `ps` and kept in shell history), or read as one line from standard input with
--password-stdin, for scripts. Users are never deleted: a leaver is disabled, so the audit trail
keeps naming a real account.

Each person sets up their authenticator app at their first web sign-in (the first administrator
too); reset-password never touches it. reset-factor removes it and the recovery codes (for a lost
phone), ends the user's sessions and makes them set up a new app at their next sign-in. Both that
and end-sessions are recorded in the audit chain with the actor "cli".
"""

from __future__ import annotations

import argparse
import getpass
import sys
import warnings
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from gateway import config as config_mod
from gateway.cli.database import with_database, with_engine
from gateway.cli.groups import command_group
from gateway.config import Config
from gateway.core import db
from gateway.core.clock import LONDON, SystemClock
from gateway.staff import events
from gateway.staff.factors import enrolled, remove_factor
from gateway.staff.passwords import check_password
from gateway.staff.sessions import Sessions
from gateway.staff.users import (
    Role,
    User,
    UserError,
    Users,
    check_profile,
    normalise_username,
    parse_role,
)

_T = TypeVar("_T")


def _with_users(cfg: Config, work: Callable[[Users], Awaitable[_T]]) -> _T:
    return with_engine(cfg, lambda engine: work(Users(db.Database(engine))))


def _read_password(args: argparse.Namespace, username: str) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        if not password:
            raise UserError("no password on standard input; pipe one line holding it to --password-stdin")
        check_password(password, username)
        return password
    try:
        with warnings.catch_warnings():
            # With no terminal, getpass would read the password from stdin *with echo* (and warn).
            warnings.simplefilter("error", getpass.GetPassWarning)
            first = getpass.getpass(f"new password for {username}: ")
            check_password(first, username)  # say what is wrong before asking for it again
            second = getpass.getpass(f"the same password again for {username}: ")
    except getpass.GetPassWarning:
        raise UserError(
            "there is no terminal to ask for the password; run this in a terminal, or pipe the password with "
            "--password-stdin"
        ) from None
    except EOFError:
        raise UserError("no password given; run the command again and type it twice") from None
    if first != second:
        raise UserError("the two passwords differ; run the command again and type the same one twice")
    return first


def _date(when: datetime | None) -> str:
    return when.astimezone(LONDON).strftime("%Y-%m-%d %H:%M") if when else "-"


def _status(user: User, now: datetime) -> str:
    if user.disabled_at is not None:
        return f"disabled {_date(user.disabled_at)}"
    if user.locked(now) and user.locked_until is not None:
        return f"locked until {_date(user.locked_until)}"
    return "active"


def cmd_add(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    name = normalise_username(args.username)
    role = parse_role(args.role)
    teams = list(dict.fromkeys(args.team))
    check_profile(role, teams, args.name)
    unknown = [t for t in teams if cfg.settings.find_team(t) is None]
    if unknown:
        known = ", ".join(t.id for t in cfg.settings.teams)
        raise UserError(f"{cfg.file} has no team {', '.join(map(repr, unknown))}; use team ids from it: {known}")
    if _with_users(cfg, lambda users: users.find(name)) is not None:  # before asking for a password
        raise UserError(f"there is already a user {name!r}; choose another username, or use reset-password")
    password = _read_password(args, name)
    user = _with_users(cfg, lambda users: users.add(name, args.name, role, teams, password, SystemClock().now()))
    print(
        f"added {user.username} ({user.display_name}): {user.role.value}"
        + (f" in {', '.join(user.teams)}" if user.teams else "")
        + f"; user id {user.id}"
    )
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    name = normalise_username(args.username)
    now = SystemClock().now()
    user = _with_users(cfg, lambda users: users.disable(name, now))
    if user.disabled_at is not None and user.disabled_at < now:
        print(f"{user.username} was already disabled on {_date(user.disabled_at)}; nothing changed")
    else:
        print(f"disabled {user.username}: they cannot sign in, and any session they had has ended")
    return 0


def cmd_reset_password(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    name = normalise_username(args.username)
    if _with_users(cfg, lambda users: users.find(name)) is None:  # before asking for a password
        raise UserError(f"there is no user {name!r}; `referral-gateway users list` shows who there is")
    password = _read_password(args, name)
    user = _with_users(cfg, lambda users: users.reset_password(name, password, SystemClock().now()))
    print(f"new password set for {user.username}; the account is unlocked and its sessions have ended")
    if user.disabled_at is not None:
        print(f"note: {user.username} is disabled (since {_date(user.disabled_at)}) and still cannot sign in")
    return 0


async def _named(users: Users, name: str) -> User:
    user = await users.find(name)
    if user is None:
        raise UserError(f"there is no user {name!r}; `referral-gateway users list` shows who there is")
    return user


def cmd_reset_factor(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    name = normalise_username(args.username)
    now = SystemClock().now()

    async def work(database: db.Database) -> tuple[User, bool]:
        users = Users(database)
        user = await _named(users, name)
        removed = await remove_factor(database, user.id)
        if removed:
            await users.end_sessions(user.id)  # a session signed in with the old app ends too
            await events.record(database, events.event(events.FACTOR_RESET, "cli", now, user=user.id))
        return user, removed

    user, removed = with_database(cfg, work)
    if removed:
        print(
            f"authenticator of {user.username} removed with their recovery codes; their sessions have ended and "
            "they set up a new app at their next sign-in"
        )
    else:
        print(
            f"{user.username} has no authenticator set up yet (they set one up at their next sign-in); nothing changed"
        )
    return 0


def cmd_end_sessions(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    name = normalise_username(args.username)
    now = SystemClock().now()

    async def work(database: db.Database) -> tuple[User, int]:
        users = Users(database)
        user = await _named(users, name)
        count = await Sessions(database).end_all(user.id, "admin", now, "cli")
        await users.end_sessions(user.id)  # and any half-signed-in one
        return user, count

    user, count = with_database(cfg, work)
    print(f"ended {count} session{'s' if count != 1 else ''} of {user.username}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    found = _with_users(cfg, lambda users: users.all())
    with_app = with_database(cfg, enrolled)
    if not found:
        print("no users yet: add the first administrator with `referral-gateway users add NAME --role admin`")
        return 0
    now = SystemClock().now()
    rows = [("USERNAME", "ROLE", "TEAMS", "STATUS", "LAST SIGN-IN", "AUTHENTICATOR", "NAME")]
    for user in found:
        teams = [t if cfg.settings.find_team(t) else f"{t} (not in config)" for t in user.teams]
        rows.append(
            (
                user.username,
                user.role.value,
                ",".join(teams) or "-",
                _status(user, now),
                _date(user.last_sign_in_at),
                "set up" if user.id in with_app else "at next sign-in",
                user.display_name,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[6])
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path) -> None:
    """Adds `users` and its subcommands to the `referral-gateway` parser."""
    command = command_group(
        sub, "users", "add, disable and list staff who sign in to the web dashboard", default_config, UserError
    )

    def password_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password as one line from standard input (for scripts) instead of asking twice",
        )

    p = command("add", "add a user (asks for their first password)", cmd_add)
    p.add_argument("username", help="their staff login, e.g. a.khan (stored lower-case)")
    p.add_argument("--name", required=True, help="their name as the dashboard shows it")
    p.add_argument(
        "--role",
        required=True,
        choices=[r.value for r in Role],
        help="duty: the referrals of their teams; coordinator: everything; admin: users and config",
    )
    p.add_argument(
        "--team", action="append", default=[], metavar="ID", help="a team id from config (duty workers; repeatable)"
    )
    password_option(p)
    p = command("disable", "stop a user signing in and end their sessions", cmd_disable)
    p.add_argument("username")
    p = command("reset-password", "set a new password (also unlocks the account)", cmd_reset_password)
    p.add_argument("username")
    password_option(p)
    p = command(
        "reset-factor",
        "remove a user's authenticator app and recovery codes (a lost phone); they set up a new one at next sign-in",
        cmd_reset_factor,
    )
    p.add_argument("username")
    p = command("end-sessions", "sign a user out everywhere", cmd_end_sessions)
    p.add_argument("username")
    command("list", "show every user with role, teams, status and whether an authenticator is set up", cmd_list)
