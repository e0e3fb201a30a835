"""The daily heartbeat digest: one email to every coordinator at the configured London time, sent
even when there is nothing to report, because its absence is the alarm (SecureDrop's daily notice).

Exactly once a day, across restarts and instances: the day's `digests` row (its primary key is the
London date) is inserted in the same transaction as the outbox rows. A second maker, in this process
after a restart or in another instance on the same database, finds the row, or, if both got past
that check together, loses at the primary key and takes it as "another instance made it".

A gateway that was down at the time sends the day's digest when it comes back that day, saying it
is late. A day that passed with the gateway down gets no digest afterwards: a digest describes the
state now, so yesterday's made today would only repeat today's, and its absence has already raised
the alarm. The next digest says since when none was made.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import date, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from gateway.config import Config
from gateway.config.duty import Person
from gateway.core import audit
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.schema import deliveries, digests
from gateway.core.sealed import Sealed
from gateway.open.crypto import CryptoError
from gateway.open.identity import Identity
from gateway.outbox.compose import Composer, Outgoing
from gateway.outbox.enqueue import outbox_row
from gateway.outbox.protect import Protector, split_headers
from gateway.report.digest_facts import DigestFacts, gather
from gateway.report.digest_health import warnings
from gateway.report.digest_time import due_at, is_due, london_day

log = logging.getLogger(__name__)
LATE = timedelta(minutes=10)  # made this long after it was due: the digest says it is late


def day_text(day: date) -> str:
    """'Wednesday 2 December 2026'."""
    return f"{day:%A} {day.day} {day:%B %Y}"


class DigestMaker:
    def __init__(
        self,
        config: Config,
        db: Database,
        sealed: Sealed,
        composer: Composer,
        protector: Protector,
        identity: Identity,
        clock: Clock,
        owner: str,
    ) -> None:
        self._config = config
        self._db = db
        self._sealed = sealed
        self._composer = composer
        self._protector = protector
        self._identity = identity
        self._clock = clock
        self._owner = owner
        self._made: date | None = None  # the last day this process knows is done: saves a query a poll

    @property
    def done_day(self) -> date | None:
        """The latest London date this instance knows has its digest (made here or elsewhere)."""
        return self._made

    async def run_once(self) -> int:
        """Make today's digest if it is due and not yet made; returns the deliveries queued (0: nothing to do)."""
        s = self._config.settings
        recipients = s.digest_recipients
        now = self._clock.now()
        day = london_day(now)
        if not recipients or self._made == day or not is_due(now, s.digest.time):
            return 0
        async with self._db.read() as conn:
            done = (await conn.execute(select(digests.c.day).where(digests.c.day == day.isoformat()))).first()
        if done is not None:
            self._made = day
            return 0
        facts = await gather(self._db.engine, s, day, now)
        facts.warnings = await warnings(self._config, self._identity, now)
        outgoing = [await self._message(person, facts) for person in recipients]
        rows = [outbox_row(out, None, self._sealed, now) for out in outgoing]
        detail = {"day": day.isoformat(), "recipients": len(rows), "deliveries": [r["id"] for r in rows]}
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    digests.insert().values(
                        day=day.isoformat(),
                        due_at=due_at(day, s.digest.time),
                        made_at=now,
                        made_by=self._owner[:64],
                        recipients=len(rows),
                    )
                )
                await conn.execute(deliveries.insert(), rows)
                await audit.append(conn, [audit.Event(None, now, f"digest:{self._owner}", "digest_made", detail)])
        except IntegrityError:
            # The day's primary key: another instance (or this one before a restart) made it
            # between our check and our insert. Nothing of ours was written.
            log.info("digest for %s: already made by another instance", day.isoformat())
            self._made = day
            return 0
        self._made = day
        log.info("digest for %s queued for %d coordinator(s)", day.isoformat(), len(rows))
        return len(rows)

    async def _message(self, person: Person, facts: DigestFacts) -> Outgoing:
        s = self._config.settings
        assert person.email is not None
        due = due_at(facts.day, s.digest.time)
        missed = facts.previous_digest is not None and facts.previous_digest < facts.day - timedelta(days=1)
        context = {
            "facts": facts,
            "day_text": day_text(facts.day),
            "at": s.digest.time.strftime("%H:%M"),
            "due_at": due,
            "late_by": facts.now - due > LATE,
            "missed": day_text(facts.previous_digest) if missed and facts.previous_digest else "",
            "report_url": f"{s.http.public_url}/report",
        }
        out = self._composer.digest(to=person.email, day=facts.day, now=facts.now, context=context)
        if not self._protector.can_protect(person):
            return out
        head, entity = split_headers(out.message)
        try:
            return dataclasses.replace(out, message=await self._protector.protect(person, head, entity))
        except CryptoError as exc:
            # The digest holds references and counts only, so it may go in clear; a digest that
            # does not come at all would be read as the gateway being down.
            log.warning("digest: not encrypted to coordinator %s (%s); sent as it is", person.id, exc.reason)
            return out
