"""Signed-in staff sessions, kept in the database so they can be listed and ended one by one.

The browser's cookie holds a random token; the row's id is its SHA-256, so reading this table gives
no one a session. A session is live while it has not ended, its epoch is its user's session_epoch
(bumped when the account is disabled or its password or factor reset, which ends every session at
once), and it is within the idle and absolute limits, which `live` checks and records as the end.

seen_at is written at most once every SEEN_GRANULARITY, not on every request: a page view should
not cost a database write, and the idle limit and the "last seen" the sessions page shows need no
finer grain than that.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from gateway.core import audit
from gateway.core.db import Database
from gateway.core.schema import staff_sessions, users
from gateway.staff import events

IDLE_TIMEOUT = timedelta(minutes=30)
ABSOLUTE_TIMEOUT = timedelta(hours=12)
SEEN_GRANULARITY = timedelta(minutes=1)


@dataclass(frozen=True)
class SessionRecord:
    id: str
    user_id: str
    epoch: int
    signed_in_at: datetime
    seen_at: datetime
    reauth_at: datetime | None
    browser: str


def session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_BROWSERS = (("Edg/", "Edge"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"), ("Safari/", "Safari"))
_SYSTEMS = (
    ("Windows", "Windows"),
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Android", "Android"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
)


def browser_summary(user_agent: str) -> str:
    """A short, coarse name for the sessions page ("Firefox on Windows"): enough to recognise
    one's own devices, too little to fingerprint anyone; never the raw header."""
    agent = re.sub(r"[^\x20-\x7e]", "", user_agent)[:512]
    name = next((word for key, word in _BROWSERS if key in agent), "A browser")
    system = next((word for key, word in _SYSTEMS if key in agent), "")
    return f"{name} on {system}" if system else name


class Sessions:
    def __init__(self, db: Database, idle: timedelta = IDLE_TIMEOUT, absolute: timedelta = ABSOLUTE_TIMEOUT) -> None:
        self._db = db
        self.idle = idle
        self.absolute = absolute

    async def start(self, user_id: str, epoch: int, user_agent: str, now: datetime, how: str) -> str:
        """A new session; returns the token for the cookie. Audited as a sign-in (`how`: code, recovery)."""
        token = secrets.token_urlsafe(32)
        async with self._db.write() as conn:
            await conn.execute(
                staff_sessions.insert().values(
                    id=session_id(token),
                    user_id=user_id,
                    epoch=epoch,
                    signed_in_at=now,
                    seen_at=now,
                    reauth_at=now,  # password and code were typed just now
                    browser=browser_summary(user_agent),
                )
            )
            await audit.append(conn, [events.event(events.SIGNED_IN, events.actor_of(user_id), now, how=how)])
        return token

    async def live(self, token: str, now: datetime, activity: bool = True) -> SessionRecord | None:
        """The session of `token` if it is live, recording use when `activity`; None otherwise (an
        expiry found here is recorded as the session's end, and audited)."""
        sid = session_id(token)
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(staff_sessions, users.c.session_epoch, users.c.disabled_at)
                    .join(users, users.c.id == staff_sessions.c.user_id)
                    .where(staff_sessions.c.id == sid, staff_sessions.c.ended_at.is_(None))
                )
            ).first()
        if row is None or row.disabled_at is not None or row.epoch != row.session_epoch:
            return None
        why = (
            "absolute" if now - row.signed_in_at >= self.absolute else "idle" if now - row.seen_at >= self.idle else ""
        )
        if why:
            await self.end(sid, row.user_id, why, now, actor=events.actor_of(row.user_id))
            return None
        seen = row.seen_at
        if activity and now - seen >= SEEN_GRANULARITY:
            seen = now
            async with self._db.write() as conn:
                await conn.execute(update(staff_sessions).where(staff_sessions.c.id == sid).values(seen_at=now))
        return SessionRecord(sid, row.user_id, row.epoch, row.signed_in_at, seen, row.reauth_at, row.browser)

    async def end(self, sid: str, user_id: str, why: str, now: datetime, actor: str) -> bool:
        """End one session (by its id); False if it had ended already."""
        async with self._db.write() as conn:
            done = await conn.execute(
                update(staff_sessions)
                .where(staff_sessions.c.id == sid, staff_sessions.c.ended_at.is_(None))
                .values(ended_at=now, ended_why=why)
            )
            if done.rowcount:
                kind = events.SIGNED_OUT if why == "signed_out" else events.SESSION_ENDED
                await audit.append(conn, [events.event(kind, actor, now, user=user_id, why=why, count=1)])
        return bool(done.rowcount)

    async def end_all(self, user_id: str, why: str, now: datetime, actor: str, keep: str | None = None) -> int:
        """End every open session of the user but `keep` (a session id); returns how many ended."""
        condition = [staff_sessions.c.user_id == user_id, staff_sessions.c.ended_at.is_(None)]
        if keep is not None:
            condition.append(staff_sessions.c.id != keep)
        async with self._db.write() as conn:
            done = await conn.execute(update(staff_sessions).where(*condition).values(ended_at=now, ended_why=why))
            count = int(done.rowcount)
            if count:
                await audit.append(
                    conn, [events.event(events.SESSION_ENDED, actor, now, user=user_id, why=why, count=count)]
                )
        return count

    async def reauthenticated(self, sid: str, now: datetime) -> None:
        async with self._db.write() as conn:
            await conn.execute(update(staff_sessions).where(staff_sessions.c.id == sid).values(reauth_at=now))

    async def adopt_epoch(self, sid: str, user_id: str) -> None:
        """Keep this session alive across an epoch bump its own user made (changing their password
        ends their other sessions, not the one they are using)."""
        async with self._db.write() as conn:
            epoch = (await conn.execute(select(users.c.session_epoch).where(users.c.id == user_id))).scalar_one()
            await conn.execute(update(staff_sessions).where(staff_sessions.c.id == sid).values(epoch=epoch))

    async def of_user(self, user_id: str, now: datetime) -> list[SessionRecord]:
        """The user's live sessions, the most recently seen first."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(staff_sessions)
                    .join(users, users.c.id == staff_sessions.c.user_id)
                    .where(
                        staff_sessions.c.user_id == user_id,
                        staff_sessions.c.ended_at.is_(None),
                        staff_sessions.c.epoch == users.c.session_epoch,
                        staff_sessions.c.signed_in_at > now - self.absolute,
                        staff_sessions.c.seen_at > now - self.idle,
                    )
                    .order_by(staff_sessions.c.seen_at.desc())
                )
            ).all()
        return [
            SessionRecord(r.id, r.user_id, r.epoch, r.signed_in_at, r.seen_at, r.reauth_at, r.browser) for r in rows
        ]
