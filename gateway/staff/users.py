"""Staff accounts for the web dashboard: add, disable, reset a password, and sign in.

Roles: a duty worker sees the referrals of their teams; a coordinator sees everything (reports,
decisions); an administrator manages users and views the config, and sees no referrals.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile) in a
worker thread, at most `HASH_CONCURRENCY` at a time: each hash takes ~0.1 s of CPU and 64 MiB, and
a flood of sign-in attempts must not stall intake or exhaust memory. Hashes made with older
parameters are replaced at the next successful sign-in (check_needs_rehash).

Lockout: `MAX_FAILURES` wrong passwords or second-factor codes in a row lock the account for
`LOCKOUT`; attempts while it is locked are refused without checking the password and do not extend
the lock, so an attacker cannot keep a duty worker out for longer than that by guessing. A complete
sign-in (password and second factor, `clear_failures`), or a password reset by an administrator,
clears the count; a right password alone does not.

Every refusal costs one argon2 verification (of a dummy hash when there is no usable account) and
gives the same answer, so neither the time taken nor the words say whether a username exists.
Logs name users by id only: never a password or hash, and never a refused username (it may be a
password typed into the wrong box).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import ParamSpec, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import RowMapping, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway.core.db import Database
from gateway.core.schema import users
from gateway.staff.passwords import CONTROL, MAX_PASSWORD_LENGTH, check_password, normalise_password
from gateway.staff.passwords import PasswordPolicyError as PasswordPolicyError
from gateway.staff.passwords import UserError as UserError

log = logging.getLogger(__name__)

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")

MAX_FAILURES = 5  # wrong passwords in a row before the account is locked
LOCKOUT = timedelta(minutes=15)  # how long it stays locked
HASH_CONCURRENCY = 2  # argon2 hashes at once (2 cores here; 64 MiB each)


class Role(StrEnum):
    DUTY = "duty"
    COORDINATOR = "coordinator"
    ADMIN = "admin"


class UnknownUser(UserError):
    pass


class UsernameTaken(UserError):
    pass


class Refusal(StrEnum):
    """Why a sign-in was refused: for logs and audit only, never shown (see SignInRefused)."""

    UNKNOWN_USER = "unknown_user"
    BAD_PASSWORD = "bad_password"  # noqa: S105 (a reason code, not a password)
    LOCKED = "locked"
    DISABLED = "disabled"


REFUSED_MESSAGE = (
    "The username or password is not right, or the account is locked or disabled. After "
    f"{MAX_FAILURES} wrong passwords in a row an account is locked for {int(LOCKOUT.total_seconds() // 60)} "
    "minutes: wait, or ask an administrator to reset your password."
)


@dataclass(frozen=True)
class SignInRefused:
    reason: Refusal
    user_id: str | None = None  # for the audit trail; None for an unknown username

    @property
    def message(self) -> str:
        """The one answer for the person signing in, whatever the reason."""
        return REFUSED_MESSAGE


@dataclass(frozen=True)
class User:
    """An account as the rest of the gateway sees it (the password hash never leaves this module)."""

    id: str
    username: str
    display_name: str
    role: Role
    teams: tuple[str, ...]
    failed_attempts: int
    locked_until: datetime | None
    disabled_at: datetime | None
    created_at: datetime
    password_changed_at: datetime
    last_sign_in_at: datetime | None
    session_epoch: int

    @property
    def active(self) -> bool:
        return self.disabled_at is None

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def may_see_team(self, team_id: str) -> bool:
        """Whether this user may see a referral routed to `team_id`."""
        if self.role is Role.COORDINATOR:
            return True
        return self.role is Role.DUTY and team_id in self.teams


def normalise_username(text: str) -> str:
    name = text.strip().lower()
    if not _USERNAME.match(name):
        raise UserError(
            f"{text!r} is not a usable username; use 2 to 64 letters, digits, dots, hyphens, underscores "
            "or @, starting with a letter or digit (for example the person's staff login, like 'a.khan')"
        )
    return name


def check_profile(role: Role, teams: Sequence[str], display_name: str) -> None:
    if role is Role.DUTY and not teams:
        raise UserError("a duty worker needs at least one team; give it with --team ID (repeat for several)")
    if role is not Role.DUTY and teams:
        raise UserError(f"teams are for duty workers; a {role.value} has none, so leave out --team")
    if not display_name.strip() or len(display_name) > 200 or CONTROL.search(display_name):
        raise UserError("give the person's name as it should be shown, up to 200 characters, with --name")


def parse_role(text: str) -> Role:
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise UserError(f"{text!r} is not a role; use one of: {', '.join(r.value for r in Role)}") from None


def _user(row: RowMapping) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        display_name=row["display_name"],
        role=Role(row["role"]),
        teams=tuple(json.loads(row["teams"])),
        failed_attempts=row["failed_attempts"],
        locked_until=row["locked_until"],
        disabled_at=row["disabled_at"],
        created_at=row["created_at"],
        password_changed_at=row["password_changed_at"],
        last_sign_in_at=row["last_sign_in_at"],
        session_epoch=row["session_epoch"],
    )


_T = TypeVar("_T")
_P = ParamSpec("_P")


class Users:
    """The accounts in the database. `hasher` is injectable so tests can use cheap parameters."""

    def __init__(self, db: Database, hasher: PasswordHasher | None = None) -> None:
        self._db = db
        self._hasher = hasher or PasswordHasher()
        self._hashing = asyncio.Semaphore(HASH_CONCURRENCY)
        self._dummy: str | None = None

    async def _cpu(self, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with self._hashing:
            return await asyncio.to_thread(func, *args, **kwargs)

    async def _hash(self, password: str) -> str:
        return await self._cpu(self._hasher.hash, normalise_password(password))

    async def _verify(self, encoded: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(encoded, normalise_password(password))
            except (VerificationError, InvalidHashError):  # wrong password, or a damaged hash: refuse
                return False

        return await self._cpu(verify)

    async def _waste_a_verification(self, password: str) -> None:
        """Costs what checking a real password costs, so a refusal takes as long whatever its reason."""
        if self._dummy is None:
            self._dummy = await self._cpu(self._hasher.hash, secrets.token_urlsafe(16))
        await self._verify(self._dummy, password[:MAX_PASSWORD_LENGTH])

    # -- reading -------------------------------------------------------------------------------------------

    async def get(self, user_id: str) -> User | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        return _user(row._mapping) if row else None

    async def find(self, username: str) -> User | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username.strip().lower()))).first()
        return _user(row._mapping) if row else None

    async def all(self) -> list[User]:
        async with self._db.read() as conn:
            rows = (await conn.execute(select(users).order_by(users.c.username))).all()
        return [_user(row._mapping) for row in rows]

    async def _named(self, username: str) -> User:
        user = await self.find(normalise_username(username))
        if user is None:
            raise UnknownUser(
                f"there is no user {username.strip().lower()!r}; `referral-gateway users list` shows who there is"
            )
        return user

    # -- changes -------------------------------------------------------------------------------------------

    async def add(
        self, username: str, display_name: str, role: Role, teams: Iterable[str], password: str, now: datetime
    ) -> User:
        name = normalise_username(username)
        team_ids = tuple(dict.fromkeys(teams))
        check_profile(role, team_ids, display_name)
        check_password(password, name)
        if await self.find(name) is not None:  # before hashing: the answer comes at once
            raise UsernameTaken(f"there is already a user {name!r}; choose another username, or use reset-password")
        user_id = uuid.uuid4().hex
        encoded = await self._hash(password)
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    users.insert().values(
                        id=user_id,
                        username=name,
                        display_name=display_name.strip(),
                        role=role.value,
                        teams=json.dumps(list(team_ids)),
                        password_hash=encoded,
                        failed_attempts=0,
                        created_at=now,
                        password_changed_at=now,
                        session_epoch=0,
                    )
                )
        except IntegrityError:  # the unique username: someone added the same name meanwhile
            raise UsernameTaken(f"there is already a user {name!r}; choose another username") from None
        log.info("user %s added with role %s", user_id, role.value)
        return await self._fresh(user_id)

    async def disable(self, username: str, now: datetime) -> User:
        """Refuses every later sign-in and ends the user's sessions. Idempotent: the first time is kept."""
        user = await self._named(username)
        if user.disabled_at is not None:
            return user
        async with self._db.write() as conn:
            await conn.execute(
                update(users)
                .where(users.c.id == user.id, users.c.disabled_at.is_(None))
                .values(disabled_at=now, session_epoch=users.c.session_epoch + 1)
            )
        log.info("user %s disabled", user.id)
        return await self._fresh(user.id)

    async def reset_password(self, username: str, password: str, now: datetime) -> User:
        """Sets a new password, unlocks the account and ends its sessions (it does not re-enable it)."""
        user = await self._named(username)
        check_password(password, user.username)
        encoded = await self._hash(password)
        async with self._db.write() as conn:
            await conn.execute(
                update(users)
                .where(users.c.id == user.id)
                .values(
                    password_hash=encoded,
                    password_changed_at=now,
                    failed_attempts=0,
                    locked_until=None,
                    session_epoch=users.c.session_epoch + 1,
                )
            )
        log.info("user %s: password reset", user.id)
        return await self._fresh(user.id)

    async def end_sessions(self, user_id: str) -> None:
        """Every session of this user ends (sign-out signs out everywhere: a copied cookie dies too)."""
        async with self._db.write() as conn:
            await conn.execute(
                update(users).where(users.c.id == user_id).values(session_epoch=users.c.session_epoch + 1)
            )

    async def _fresh(self, user_id: str) -> User:
        user = await self.get(user_id)
        assert user is not None, "a user row vanished; users are never deleted"
        return user

    # -- signing in ----------------------------------------------------------------------------------------

    async def authenticate(self, username: str, password: str, now: datetime) -> User | SignInRefused:
        try:
            name: str | None = normalise_username(username)
        except UserError:
            name = None
        async with self._db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.username == name))).first() if name else None
        if row is None:
            await self._waste_a_verification(password)
            log.info("sign-in refused: unknown username")
            return SignInRefused(Refusal.UNKNOWN_USER)
        user = _user(row._mapping)
        if user.disabled_at is not None or user.locked(now):
            await self._waste_a_verification(password)
            reason = Refusal.DISABLED if user.disabled_at is not None else Refusal.LOCKED
            log.info("sign-in refused for user %s: %s", user.id, reason.value)
            return SignInRefused(reason, user.id)
        if len(password) > MAX_PASSWORD_LENGTH:  # never a real one: refuse, in the usual time
            await self._waste_a_verification(password)
            right = False
        else:
            right = await self._verify(row.password_hash, password)
        if not right:
            await self.count_failure(user.id, now)
            return SignInRefused(Refusal.BAD_PASSWORD, user.id)
        return await self._succeed(user, row.password_hash, password, now)

    async def clear_failures(self, user_id: str) -> None:
        """After a complete sign-in (password and second factor): the count starts again."""
        async with self._db.write() as conn:
            await conn.execute(update(users).where(users.c.id == user_id).values(failed_attempts=0))

    async def count_failure(self, user_id: str, now: datetime) -> None:
        """A wrong password or a wrong second-factor code: MAX_FAILURES in a row lock the account."""
        async with self._db.write() as conn:
            # An increment in SQL, not a read-modify-write: concurrent wrong guesses all count.
            await conn.execute(
                update(users).where(users.c.id == user_id).values(failed_attempts=users.c.failed_attempts + 1)
            )
            failures = (await conn.execute(select(users.c.failed_attempts).where(users.c.id == user_id))).scalar_one()
            if failures >= MAX_FAILURES:
                await conn.execute(
                    update(users).where(users.c.id == user_id).values(failed_attempts=0, locked_until=now + LOCKOUT)
                )
        if failures >= MAX_FAILURES:
            log.warning("user %s locked for %s after %d wrong passwords", user_id, LOCKOUT, failures)
        else:
            log.info("sign-in refused for user %s: wrong password (%d in a row)", user_id, failures)

    async def _succeed(self, user: User, encoded: str, password: str, now: datetime) -> User | SignInRefused:
        new_hash = encoded
        if self._hasher.check_needs_rehash(encoded):
            new_hash = await self._hash(password)
        async with self._db.write() as conn:
            # Only if nothing changed while the password was checked (a reset, a disable, a lock from
            # concurrent guesses): otherwise the check was against a stale state, so refuse.
            result = await conn.execute(
                update(users)
                .where(
                    users.c.id == user.id,
                    users.c.password_hash == encoded,
                    users.c.disabled_at.is_(None),
                    or_(users.c.locked_until.is_(None), users.c.locked_until <= now),
                )
                # failed_attempts stays: a right password alone does not clear the count, or wrong
                # second-factor codes between right passwords would never lock (clear_failures does).
                .values(locked_until=None, last_sign_in_at=now, password_hash=new_hash)
            )
        if result.rowcount != 1:
            log.info("sign-in refused for user %s: the account changed during the check", user.id)
            return SignInRefused(Refusal.BAD_PASSWORD, user.id)
        if new_hash != encoded:
            log.info("user %s: password hash upgraded to the current parameters", user.id)
        log.info("user %s signed in", user.id)
        return await self._fresh(user.id)
