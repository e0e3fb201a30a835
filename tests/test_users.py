"""Staff accounts: argon2id hashes, the password policy, lockout, disabling, and `referral-gateway users ...`.

Real databases (SQLite in a temp dir; PostgreSQL too where marked), real argon2. Most tests hash with
argon2's cheapest parameters to stay fast; the ones about hashing use the production defaults.
"""

from __future__ import annotations

import asyncio
import io
import os
import pty
import re
import secrets
import select as io_select
import subprocess
import sys
import time
import unicodedata
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from gateway import config as config_mod
from gateway.cli.main import main
from gateway.core import db
from gateway.core.clock import FakeClock, SystemClock
from gateway.core.schema import users as users_table
from gateway.core.sealing import Sealer
from gateway.staff import totp
from gateway.staff.factors import Factors, FactorState
from gateway.staff.passwords import check_password
from gateway.staff.users import (
    LOCKOUT,
    MAX_FAILURES,
    REFUSED_MESSAGE,
    PasswordPolicyError,
    Refusal,
    Role,
    SignInRefused,
    User,
    UserError,
    UsernameTaken,
    Users,
)
from tests.conftest import both_databases, write_config

ROOT = Path(__file__).resolve().parent.parent
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "violet kettle harbour"
OTHER_PASSWORD = "seven quiet lanterns"


@pytest.fixture
async def database(tmp_path: Path, database_url: str) -> AsyncIterator[db.Database]:
    engine = db.make_engine(database_url or f"sqlite+aiosqlite:///{tmp_path / 'users.db'}")
    await db.upgrade(engine)
    yield db.Database(engine)
    await engine.dispose()


@pytest.fixture
def accounts(database: db.Database) -> Users:
    return Users(database, CHEAP)


async def stored_hash(database: db.Database, user_id: str) -> str:
    async with database.read() as conn:
        value: str = (
            await conn.execute(select(users_table.c.password_hash).where(users_table.c.id == user_id))
        ).scalar_one()
    return value


async def add_duty(accounts: Users, clock: FakeClock, username: str = "a.khan") -> User:
    return await accounts.add(username, "Aisha Khan", Role.DUTY, ["mash"], PASSWORD, clock.now())


async def current(accounts: Users, user_id: str) -> User:
    user = await accounts.get(user_id)
    assert user is not None
    return user


def signed_in(result: User | SignInRefused) -> User:
    assert isinstance(result, User), result
    return result


def refused(result: User | SignInRefused) -> SignInRefused:
    assert isinstance(result, SignInRefused), result
    return result


# -- hashing --------------------------------------------------------------------------------------------------


async def test_passwords_are_stored_as_argon2id_and_verified(database: db.Database, clock: FakeClock) -> None:
    accounts = Users(database)  # the production parameters
    user = await accounts.add("A.Khan ", "Aisha Khan", Role.DUTY, ["mash"], PASSWORD, clock.now())
    assert user.username == "a.khan"
    encoded = await stored_hash(database, user.id)
    assert encoded.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert PASSWORD not in encoded

    clock.advance(timedelta(minutes=1))
    ok = signed_in(await accounts.authenticate("A.KHAN", PASSWORD, clock.now()))
    assert ok.id == user.id and ok.last_sign_in_at == clock.now()
    assert refused(await accounts.authenticate("a.khan", PASSWORD + "x", clock.now())).reason is Refusal.BAD_PASSWORD


async def test_a_hash_with_old_parameters_is_upgraded_at_the_next_sign_in(
    database: db.Database, clock: FakeClock
) -> None:
    user = await add_duty(Users(database, CHEAP), clock)
    old = await stored_hash(database, user.id)
    current = Users(database)  # stronger parameters than the hash was made with

    refused(await current.authenticate("a.khan", OTHER_PASSWORD, clock.now()))
    assert await stored_hash(database, user.id) == old  # a wrong password changes nothing
    signed_in(await current.authenticate("a.khan", PASSWORD, clock.now()))
    upgraded = await stored_hash(database, user.id)
    assert upgraded != old and upgraded.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    signed_in(await current.authenticate("a.khan", PASSWORD, clock.now()))
    assert await stored_hash(database, user.id) == upgraded  # rehashed once, not at every sign-in


async def test_a_password_typed_with_other_unicode_forms_still_matches(accounts: Users, clock: FakeClock) -> None:
    composed = "café au lait à la gare"
    await accounts.add("b.jones", "Ben Jones", Role.COORDINATOR, [], composed, clock.now())
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    signed_in(await accounts.authenticate("b.jones", decomposed, clock.now()))


# -- refusals -------------------------------------------------------------------------------------------------


@both_databases
async def test_lockout_after_repeated_failures_and_its_expiry(accounts: Users, clock: FakeClock) -> None:
    user = await add_duty(accounts, clock)
    for _ in range(MAX_FAILURES - 1):
        assert (
            refused(await accounts.authenticate("a.khan", "wrong guess 123", clock.now())).reason
            is Refusal.BAD_PASSWORD
        )
    assert not (await current(accounts, user.id)).locked(clock.now())
    refused(await accounts.authenticate("a.khan", "wrong guess 123", clock.now()))
    locked = await current(accounts, user.id)
    assert locked.locked_until == clock.now() + LOCKOUT and locked.failed_attempts == 0

    # Locked: even the right password is refused, and further guesses do not extend the lock.
    clock.advance(LOCKOUT - timedelta(seconds=1))
    assert refused(await accounts.authenticate("a.khan", PASSWORD, clock.now())).reason is Refusal.LOCKED
    refused(await accounts.authenticate("a.khan", "wrong guess 123", clock.now()))
    assert (await current(accounts, user.id)).locked_until == locked.locked_until

    clock.advance(timedelta(seconds=1))
    back = signed_in(await accounts.authenticate("a.khan", PASSWORD, clock.now()))
    assert back.locked_until is None and back.failed_attempts == 0


async def test_only_a_complete_sign_in_clears_the_count_of_failures(accounts: Users, clock: FakeClock) -> None:
    user = await add_duty(accounts, clock)
    for _ in range(MAX_FAILURES - 1):
        refused(await accounts.authenticate("a.khan", "wrong guess 123", clock.now()))
    # The right password alone (its second factor still to come) does not clear the count, or
    # wrong codes between right passwords would never lock the account.
    signed_in(await accounts.authenticate("a.khan", PASSWORD, clock.now()))
    refused(await accounts.authenticate("a.khan", "wrong guess 123", clock.now()))
    assert (await current(accounts, user.id)).locked(clock.now())

    clock.advance(LOCKOUT)
    signed_in(await accounts.authenticate("a.khan", PASSWORD, clock.now()))
    await accounts.clear_failures(user.id)  # what a complete sign-in does after the second factor
    for _ in range(MAX_FAILURES - 1):
        refused(await accounts.authenticate("a.khan", "wrong guess 123", clock.now()))
    await accounts.clear_failures(user.id)
    refused(await accounts.authenticate("a.khan", "wrong guess 123", clock.now()))
    assert not (await current(accounts, user.id)).locked(clock.now())


async def test_a_disabled_user_is_refused_and_their_sessions_end(accounts: Users, clock: FakeClock) -> None:
    user = await add_duty(accounts, clock)
    clock.advance(timedelta(hours=1))
    disabled = await accounts.disable("A.Khan", clock.now())
    assert disabled.disabled_at == clock.now() and disabled.session_epoch == user.session_epoch + 1
    refusal = refused(await accounts.authenticate("a.khan", PASSWORD, clock.now()))
    assert refusal.reason is Refusal.DISABLED and refusal.message == REFUSED_MESSAGE

    clock.advance(timedelta(hours=1))
    again = await accounts.disable("a.khan", clock.now())  # idempotent: the first time is kept
    assert again.disabled_at == disabled.disabled_at and again.session_epoch == disabled.session_epoch


class CountingHasher(PasswordHasher):
    """argon2's hasher, counting verifications."""

    verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified += 1
        return super().verify(hash, password)


async def test_an_unknown_user_is_refused_like_a_wrong_password(database: db.Database, clock: FakeClock) -> None:
    accounts = Users(database)  # real cost: the point is that both refusals pay it
    await add_duty(accounts, clock)
    unknown = refused(await accounts.authenticate("nobody", PASSWORD, clock.now()))
    wrong = refused(await accounts.authenticate("a.khan", OTHER_PASSWORD, clock.now()))
    nonsense = refused(await accounts.authenticate("not a username!", PASSWORD, clock.now()))
    assert unknown.message == wrong.message == nonsense.message == REFUSED_MESSAGE
    assert (unknown.reason, unknown.user_id) == (Refusal.UNKNOWN_USER, None)

    # Both pay one argon2 verification: a hasher that counts them (the library's, not ours) shows it.
    counting = CountingHasher()
    accounts = Users(database, hasher=counting)
    for name in ("nobody", "a.khan"):
        before = counting.verified
        refused(await accounts.authenticate(name, OTHER_PASSWORD, clock.now()))
        assert counting.verified == before + 1, name


async def test_reset_password_unlocks_and_ends_sessions(accounts: Users, clock: FakeClock) -> None:
    user = await add_duty(accounts, clock)
    for _ in range(MAX_FAILURES):
        refused(await accounts.authenticate("a.khan", "wrong guess 123", clock.now()))
    clock.advance(timedelta(minutes=1))
    reset = await accounts.reset_password("a.khan", OTHER_PASSWORD, clock.now())
    assert reset.locked_until is None and reset.password_changed_at == clock.now()
    assert reset.session_epoch == user.session_epoch + 1
    assert refused(await accounts.authenticate("a.khan", PASSWORD, clock.now())).reason is Refusal.BAD_PASSWORD
    signed_in(await accounts.authenticate("a.khan", OTHER_PASSWORD, clock.now()))


# -- policy and profile ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("short one", "has 9 characters; use at least 12"),
        ("a.khan-is-my-name", "contains the username"),
        ("abababababababab", "fewer than 5 different characters"),
        ("Password2025!", "most common"),
        ("P@ssw0rd1234", "most common"),
        ("passwordpassword", "most common"),
        ("Summer2026!!", "most common"),
        ("qwertyuiop123", "most common"),
        ("123456789012", "most common"),
        ("Safeguarding1!", "most common"),
        ("x" * 2000, "use at most 1024"),
    ],
)
def test_the_password_policy_says_what_to_do(password: str, says: str) -> None:
    with pytest.raises(PasswordPolicyError, match=says):
        check_password(password, "a.khan")


@pytest.mark.parametrize("password", [PASSWORD, "Tr4in-station-rain", "kettle 4 harbour 9 violet", "830194726153"])
def test_the_password_policy_accepts_long_unusual_passwords(password: str) -> None:
    check_password(password, "a.khan")


async def test_profiles_are_checked(accounts: Users, clock: FakeClock) -> None:
    with pytest.raises(UserError, match="duty worker needs at least one team"):
        await accounts.add("a.khan", "Aisha Khan", Role.DUTY, [], PASSWORD, clock.now())
    with pytest.raises(UserError, match="leave out --team"):
        await accounts.add("b.jones", "Ben Jones", Role.COORDINATOR, ["mash"], PASSWORD, clock.now())
    with pytest.raises(UserError, match="not a usable username"):
        await accounts.add("a khan", "Aisha Khan", Role.DUTY, ["mash"], PASSWORD, clock.now())
    with pytest.raises(PasswordPolicyError):
        await accounts.add("a.khan", "Aisha Khan", Role.DUTY, ["mash"], "password", clock.now())
    await add_duty(accounts, clock)
    with pytest.raises(UsernameTaken):
        await accounts.add("A.KHAN", "Another Khan", Role.ADMIN, [], PASSWORD, clock.now())
    assert [u.username for u in await accounts.all()] == ["a.khan"]


async def test_roles_decide_which_teams_a_user_sees(accounts: Users, clock: FakeClock) -> None:
    duty = await add_duty(accounts, clock)
    coordinator = await accounts.add("b.jones", "Ben Jones", Role.COORDINATOR, [], PASSWORD, clock.now())
    admin = await accounts.add("c.admin", "Cat Admin", Role.ADMIN, [], PASSWORD, clock.now())
    assert duty.may_see_team("mash") and not duty.may_see_team("edt")
    assert coordinator.may_see_team("mash") and coordinator.may_see_team("edt")
    assert not admin.may_see_team("mash")


# -- the command line -----------------------------------------------------------------------------------------


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = ""
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def cli_sign_in(config: Path, username: str, password: str) -> User | SignInRefused:
    cfg = config_mod.load(config)
    engine = db.make_engine(cfg.database_url)
    try:
        return await Users(db.Database(engine)).authenticate(username, password, SystemClock().now())
    finally:
        await engine.dispose()


async def cli_enrol(config: Path, username: str) -> None:
    """What the first web sign-in does: an authenticator and recovery codes (tests/test_mfa.py)."""
    cfg = config_mod.load(config)
    engine = db.make_engine(cfg.database_url)
    try:
        database = db.Database(engine)
        user = await Users(database).find(username)
        assert user is not None
        factors = Factors(
            database, Sealer(secrets.token_bytes(32)), PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        )
        secret, now = totp.new_secret(), SystemClock().now()
        assert await factors.enrol(user.id, secret, totp.code_at(secret, totp.step_of(now)), now)
        await factors.new_recovery_codes(user.id, now)
    finally:
        await engine.dispose()


async def cli_state(config: Path, username: str) -> FactorState:
    cfg = config_mod.load(config)
    engine = db.make_engine(cfg.database_url)
    try:
        database = db.Database(engine)
        user = await Users(database).find(username)
        assert user is not None
        return await Factors(database, Sealer(secrets.token_bytes(32))).state(user.id)
    finally:
        await engine.dispose()


def test_users_commands_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(write_config(tmp_path / "gw"))
    code, out, err = run(
        capsys, monkeypatch, "users", "add", "A.Khan", "--name", "Aisha Khan", "--role", "duty", "--team", "mash",
        "--password-stdin", "--config", config, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("added a.khan (Aisha Khan): duty in mash; user id ")
    code, out, err = run(
        capsys, monkeypatch, "users", "add", "b.jones", "--name", "Ben Jones", "--role", "coordinator",
        "--password-stdin", "--config", config, stdin=OTHER_PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0, err

    code, out, err = run(capsys, monkeypatch, "users", "list", "--config", config)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["USERNAME", "ROLE", "TEAMS", "STATUS", "LAST", "SIGN-IN", "AUTHENTICATOR", "NAME"]
    assert lines[1].split() == ["a.khan", "duty", "mash", "active", "-", "at", "next", "sign-in", "Aisha", "Khan"]
    assert lines[2].split() == ["b.jones", "coordinator", "-", "active", "-", "at", "next", "sign-in", "Ben", "Jones"]
    assert PASSWORD not in out

    signed_in(asyncio.run(cli_sign_in(Path(config), "a.khan", PASSWORD)))
    asyncio.run(cli_enrol(Path(config), "a.khan"))
    code, out, err = run(capsys, monkeypatch, "users", "list", "--config", config)
    assert out.splitlines()[1].split()[6:8] == ["set", "up"]  # after the sign-in date and time
    code, out, err = run(
        capsys, monkeypatch, "users", "reset-password", "a.khan", "--password-stdin", "--config", config,
        stdin="amber tulip quarry\n",
    )  # fmt: skip
    assert code == 0, err
    assert "new password set for a.khan" in out
    refused(asyncio.run(cli_sign_in(Path(config), "a.khan", PASSWORD)))
    signed_in(asyncio.run(cli_sign_in(Path(config), "a.khan", "amber tulip quarry")))
    assert asyncio.run(cli_state(Path(config), "a.khan")).enrolled  # a password reset keeps the factor

    code, out, err = run(capsys, monkeypatch, "users", "reset-factor", "a.khan", "--config", config)
    assert code == 0, err
    assert out.startswith("authenticator of a.khan removed with their recovery codes")
    state = asyncio.run(cli_state(Path(config), "a.khan"))
    assert not state.enrolled and state.recovery_left == 0
    code, out, err = run(capsys, monkeypatch, "users", "reset-factor", "a.khan", "--config", config)
    assert code == 0 and "nothing changed" in out
    code, out, err = run(capsys, monkeypatch, "users", "end-sessions", "a.khan", "--config", config)
    assert code == 0 and out.startswith("ended 0 sessions of a.khan")

    code, out, err = run(capsys, monkeypatch, "users", "disable", "a.khan", "--config", config)
    assert code == 0, err
    assert out.startswith("disabled a.khan")
    code, out, err = run(capsys, monkeypatch, "users", "disable", "a.khan", "--config", config)
    assert code == 0 and "already disabled" in out
    code, out, err = run(capsys, monkeypatch, "users", "list", "--config", config)
    assert out.splitlines()[1].split()[3] == "disabled"
    assert refused(asyncio.run(cli_sign_in(Path(config), "a.khan", "amber tulip quarry"))).reason is Refusal.DISABLED


@pytest.mark.parametrize(
    ("argv", "stdin", "says"),
    [
        (
            ["add", "a.khan", "--name", "A K", "--role", "duty", "--team", "nope"],
            PASSWORD,
            "no team 'nope'.*mash, triage, edt",
        ),
        (["add", "a.khan", "--name", "A K", "--role", "duty"], PASSWORD, "at least one team"),
        (["add", "a.khan", "--name", "A K", "--role", "admin"], "password1234", "most common"),
        (["add", "a.khan", "--name", "A K", "--role", "admin"], "", "no password on standard input"),
        (["reset-password", "nobody"], PASSWORD, "there is no user 'nobody'.*users list"),
        (["disable", "nobody"], "", "there is no user 'nobody'"),
        (["reset-factor", "nobody"], "", "there is no user 'nobody'.*users list"),
        (["end-sessions", "nobody"], "", "there is no user 'nobody'.*users list"),
    ],
)
def test_users_commands_refuse_with_a_fix(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    stdin: str,
    says: str,
) -> None:
    config = str(write_config(tmp_path / "gw"))
    extra = ["--password-stdin"] if argv[0] in ("add", "reset-password") else []
    code, out, err = run(capsys, monkeypatch, "users", *argv, *extra, "--config", config, stdin=stdin + "\n")
    assert code == 2
    assert err.startswith("error: ")
    assert re.search(says, err), err
    code, out, _ = run(capsys, monkeypatch, "users", "list", "--config", config)
    assert out.startswith("no users yet")  # nothing was added


def test_adding_a_taken_username_is_refused_before_asking_for_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(write_config(tmp_path / "gw"))
    add = ["users", "add", "a.khan", "--name", "A K", "--role", "admin", "--password-stdin", "--config", config]
    assert run(capsys, monkeypatch, *add, stdin=PASSWORD + "\n")[0] == 0
    code, _, err = run(capsys, monkeypatch, *add, stdin="")  # no password given: it is not asked for
    assert code == 2 and "already a user 'a.khan'" in err


# -- passwords typed on a real terminal -----------------------------------------------------------------------

# The child makes the pty its controlling terminal (getpass reads /dev/tty), then runs the real command.
_ON_A_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
)


def _on_a_terminal(argv: list[str], answers: list[str]) -> tuple[int, str]:
    """Run `python -m gateway ARGV` on a pseudo-terminal, typing each answer after a new prompt."""
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", _ON_A_TERMINAL, sys.executable, "-m", "gateway", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        start_new_session=True,
    )
    os.close(slave)
    seen, answered_up_to, pending = b"", 0, list(answers)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = io_select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if pending and seen[answered_up_to:].rstrip().endswith(b":"):
                os.write(master, pending.pop(0).encode() + b"\n")
                answered_up_to = len(seen)
    finally:
        os.close(master)
        if time.monotonic() >= deadline:
            child.kill()
    return child.wait(timeout=30), seen.decode()


def test_the_password_is_asked_twice_on_the_terminal_and_not_echoed(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "gw"))
    add = ["users", "add", "a.khan", "--name", "Aisha Khan", "--role", "admin", "--config", config]
    code, shown = _on_a_terminal(add, [PASSWORD, OTHER_PASSWORD])
    assert code == 2 and "the two passwords differ" in shown, shown
    code, shown = _on_a_terminal(add, [PASSWORD, PASSWORD])
    assert code == 0, shown
    assert "new password for a.khan:" in shown and "the same password again for a.khan:" in shown
    assert "added a.khan (Aisha Khan): admin" in shown
    assert PASSWORD not in shown  # getpass turned echo off
    signed_in(asyncio.run(cli_sign_in(Path(config), "a.khan", PASSWORD)))


def test_without_a_terminal_the_password_is_not_read_with_echo(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "gw"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "users",
            "add",
            "a.khan",
            "--name",
            "A K",
            "--role",
            "admin",
            "--config",
            config,
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # no controlling terminal, as under cron or a script
        timeout=60,
    )
    assert done.returncode == 2
    assert "there is no terminal to ask for the password" in done.stderr and "--password-stdin" in done.stderr
