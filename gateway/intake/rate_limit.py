"""A limit on POSTs per client: the public form's flood guard, counted in the database.

Shared, so that N instances behind a balancer give a client the limit once, not N times; and a
restart forgets nothing. Each client address and fixed window (aligned to the Unix epoch, the same
on every instance) is one row of form_attempts whose count is raised by one atomic upsert (INSERT ..
ON CONFLICT DO UPDATE .. RETURNING, on SQLite and PostgreSQL alike), so two instances counting the
same client at once both see the sum. Fixed windows let a client send up to twice the limit across
a window's edge: a flood guard needs no finer count, and one row a client keeps the table small.

The address is stored only as the keyed hash the staff sign-in throttle uses
(gateway.staff.throttle.address_hash): personal data never reaches the table. Rows of past windows
are deleted as new attempts are counted. What the form answers over the limit, and the
reverse-proxy caveat, are in gateway.intake.web_form's decisions.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.schema import form_attempts
from gateway.staff.throttle import address_hash

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RateLimiter:
    """At most `limit` events per `window` per client, counted in the database every instance shares."""

    def __init__(self, db: Database, key: bytes, clock: Clock, limit: int, window: timedelta) -> None:
        self._db = db
        self._key = key
        self._clock = clock
        self._limit = limit
        self._window = window

    def _window_start(self, now: datetime) -> datetime:
        return _EPOCH + ((now - _EPOCH) // self._window) * self._window

    def _upsert(self, dialect: str, client: str, start: datetime) -> Any:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        attempts = form_attempts.c.attempts
        return (
            insert(form_attempts)
            .values(client=client, window_start=start, attempts=1)
            .on_conflict_do_update(
                index_elements=[form_attempts.c.client, form_attempts.c.window_start], set_={"attempts": attempts + 1}
            )
            .returning(attempts)
        )

    async def hit(self, client: str) -> float | None:
        """Count one event; None if allowed, else the seconds until the next one would be.

        Refused events are counted too: it costs nothing more (one statement either way) and the
        answer is the same, the window's end. With the database locked or gone the event is let
        through: the referral's own commit then fails and the form keeps every answer (503), where a
        refusal here would turn away a referrer for a fault of ours."""
        now = self._clock.now()
        start = self._window_start(now)
        counting = asyncio.ensure_future(self._count(address_hash(self._key, client), start))
        try:
            # Shielded and bounded as an intake commit is (gateway.intake.store): a database that has
            # gone quiet costs the referrer one busy_timeout here, not a hang, and the count is never
            # cancelled mid-transaction (which could leave a connection holding a lock).
            count = await asyncio.wait_for(asyncio.shield(counting), self._db.busy_timeout)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # OSError: asyncpg's refused connection reaches us unwrapped.
            counting.add_done_callback(_forget)
            log.warning("web form rate limit: not counted (%s); let through", type(exc).__name__)
            return None
        if count <= self._limit:
            return None
        return max((start + self._window - now).total_seconds(), 1.0)

    async def _count(self, hashed: str, start: datetime) -> int:
        async with self._db.write() as conn:
            await conn.execute(delete(form_attempts).where(form_attempts.c.window_start < start))
            return int((await conn.execute(self._upsert(conn.dialect.name, hashed, start))).scalar_one())


def _forget(task: asyncio.Future[int]) -> None:
    # A count that failed or finished late: nothing waits for it; its outcome is retrieved so that
    # asyncio does not log it as never retrieved.
    if not task.cancelled():
        task.exception()
