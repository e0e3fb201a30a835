"""The second factor of staff sign-in: a TOTP authenticator and one-time recovery codes.

- The TOTP secret is sealed at rest (gateway.core.sealing, context "totp:<user id>"), so a copy of
  the database alone gives no codes. A row exists only for a confirmed authenticator: a new secret
  waits in the user's encrypted session cookie until they type a code from it (`enrol`).
- A code is accepted once: the step of the last accepted code is stored, and the update that moves
  it on is conditional (`last_step < step`), so two requests racing with one code cannot both win.
- Recovery codes: RECOVERY_CODES of them, 16 characters from an alphabet without look-alikes
  (about 79 bits each), shown once and stored as argon2id hashes (OWASP's minimum parameters: each
  check costs ~25 ms, and a use checks at most RECOVERY_CODES of them). Each is used once; making
  new ones replaces all the old.
- Failures are not counted here: the caller counts them towards the account's lockout
  (gateway.staff.users.Users.count_failure), so codes and passwords share one limit.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update

from gateway.core.db import Database
from gateway.core.schema import recovery_codes, staff_factors
from gateway.core.sealing import Sealer
from gateway.staff import totp

RECOVERY_CODES = 10
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
_CODE_LENGTH = 16


def recovery_hasher() -> PasswordHasher:
    """argon2id at OWASP's minimum (19 MiB, 2 passes): the codes are random, not chosen by people."""
    return PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(_CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, _CODE_LENGTH, 4))


def normalise_recovery_code(text: str) -> str:
    """As typed: any case, with or without the hyphens or spaces."""
    raw = "".join(ch for ch in text.lower() if ch in _ALPHABET)
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


class AlreadyEnrolled(Exception):
    """The user has an authenticator already: a first-sign-in enrolment may not replace it."""


@dataclass(frozen=True)
class FactorState:
    enrolled: bool  # a confirmed authenticator
    codes_saved: bool  # the user said they saved their recovery codes
    recovery_left: int


class Factors:
    """`hasher` (for recovery codes) is injectable so tests can use cheap parameters."""

    def __init__(self, db: Database, sealer: Sealer, hasher: PasswordHasher | None = None) -> None:
        self._db = db
        self._sealer = sealer
        self._hasher = hasher or recovery_hasher()
        self._hashing = asyncio.Semaphore(2)

    def _seal(self, user_id: str, secret: str) -> bytes:
        return self._sealer.seal(secret.encode(), f"totp:{user_id}")

    async def state(self, user_id: str) -> FactorState:
        async with self._db.read() as conn:
            row = (await conn.execute(select(staff_factors).where(staff_factors.c.user_id == user_id))).first()
            left = (
                await conn.execute(
                    select(func.count())
                    .select_from(recovery_codes)
                    .where(recovery_codes.c.user_id == user_id, recovery_codes.c.used_at.is_(None))
                )
            ).scalar_one()
        return FactorState(row is not None, row is not None and row.codes_saved_at is not None, int(left))

    async def enrol(self, user_id: str, secret: str, code: str, now: datetime, replace: bool = False) -> bool:
        """Make `secret` the user's authenticator if `code` is one of its codes now. False if the
        code does not match. `replace`: a signed-in user's new app replaces the old (keeping the
        recovery codes); without it (the first sign-in) an authenticator set up meanwhile by
        another half-signed-in session raises AlreadyEnrolled rather than being replaced."""
        step = totp.matching_step(secret, code, now, 0)
        if step is None:
            return False
        async with self._db.write() as conn:
            old = (
                await conn.execute(select(staff_factors.c.codes_saved_at).where(staff_factors.c.user_id == user_id))
            ).first()
            if old is not None and not replace:
                raise AlreadyEnrolled(user_id)
            await conn.execute(delete(staff_factors).where(staff_factors.c.user_id == user_id))
            await conn.execute(
                staff_factors.insert().values(
                    user_id=user_id,
                    secret=self._seal(user_id, secret),
                    created_at=now,
                    last_step=step,
                    codes_saved_at=old.codes_saved_at if old else None,
                )
            )
        return True

    async def check_code(self, user_id: str, code: str, now: datetime) -> bool:
        """Whether `code` is the user's current code and has not been used; if so it is used now."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(staff_factors).where(staff_factors.c.user_id == user_id))).first()
        if row is None:
            return False
        secret = self._sealer.open(row.secret, f"totp:{user_id}").decode()
        step = totp.matching_step(secret, code, now, row.last_step)
        if step is None:
            return False
        async with self._db.write() as conn:
            moved = await conn.execute(
                update(staff_factors)
                .where(staff_factors.c.user_id == user_id, staff_factors.c.last_step < step)
                .values(last_step=step)
            )
        return moved.rowcount == 1  # 0: another request used this code (or a later one) meanwhile

    async def new_recovery_codes(self, user_id: str, now: datetime) -> list[str]:
        """Fresh codes replacing every earlier one (used or not); shown once, stored hashed. The
        user must say they saved them again (`codes_saved`)."""
        codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
        async with self._hashing:
            hashes = await asyncio.to_thread(lambda: [self._hasher.hash(c) for c in codes])
        async with self._db.write() as conn:
            await conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
            await conn.execute(
                recovery_codes.insert(), [{"user_id": user_id, "code_hash": h, "created_at": now} for h in hashes]
            )
            await conn.execute(
                update(staff_factors).where(staff_factors.c.user_id == user_id).values(codes_saved_at=None)
            )
        return codes

    async def codes_saved(self, user_id: str, now: datetime) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(staff_factors).where(staff_factors.c.user_id == user_id).values(codes_saved_at=now)
            )

    async def use_recovery_code(self, user_id: str, code: str, now: datetime) -> bool:
        """Whether `code` is one of the user's unused recovery codes; if so it is used up now."""
        given = normalise_recovery_code(code)
        if len(given) != _CODE_LENGTH + 3:
            return False
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(recovery_codes.c.id, recovery_codes.c.code_hash).where(
                        recovery_codes.c.user_id == user_id, recovery_codes.c.used_at.is_(None)
                    )
                )
            ).all()

        def find() -> int | None:
            for row in rows:
                try:
                    if self._hasher.verify(row.code_hash, given):
                        return int(row.id)
                except (VerificationError, InvalidHashError):  # not this one (or a damaged hash)
                    continue
            return None

        async with self._hashing:
            found = await asyncio.to_thread(find)
        if found is None:
            return False
        async with self._db.write() as conn:
            used = await conn.execute(
                update(recovery_codes)
                .where(recovery_codes.c.id == found, recovery_codes.c.used_at.is_(None))
                .values(used_at=now)
            )
        return used.rowcount == 1  # 0: used by a request racing this one

    async def reset(self, user_id: str) -> bool:
        return await remove_factor(self._db, user_id)


async def remove_factor(db: Database, user_id: str) -> bool:
    """Remove the authenticator and the recovery codes: the user enrols again at their next sign-in.
    False if there was nothing to remove. (No key needed: the command line uses it too.)"""
    async with db.write() as conn:
        removed = await conn.execute(delete(staff_factors).where(staff_factors.c.user_id == user_id))
        await conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
    return bool(removed.rowcount)


async def enrolled(db: Database) -> set[str]:
    """The ids of users with an authenticator set up."""
    async with db.read() as conn:
        return {row.user_id for row in (await conn.execute(select(staff_factors.c.user_id))).all()}
