"""In the batch's write transaction: the child index rows of each routed referral, and any
cumulative concern they raise (gateway.history.concern): one alert to each of the team's managers
and each coordinator with an email address, queued with the event on the new referral's timeline.

The alert carries no personal data (references, counts, the window and a link), so it goes in clear
like any other alert without content; the managers read the referrals behind sign-in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Settings
from gateway.core import audit
from gateway.history import concern, index
from gateway.history.keys import Hasher
from gateway.outbox.compose import Composer, Outgoing
from gateway.pipeline.work import Prepared

log = logging.getLogger(__name__)


class ConcernWriter:
    def __init__(self, settings: Settings, hasher: Hasher, composer: Composer) -> None:
        self._s = settings
        self._hasher = hasher
        self._composer = composer
        c = settings.concern
        self._rule = concern.Rule(c.window, c.referrals, c.organisations)

    def _member(self, prep: Prepared) -> concern.Member:
        assert prep.routed is not None
        m = prep.message
        org = self._hasher.organisation(prep.organisation)
        return concern.Member(m.referral_id, m.reference, m.received_at, prep.routed.urgency, org)

    async def write(
        self, conn: AsyncConnection, batch: Sequence[Prepared], now: datetime, actor: str
    ) -> tuple[dict[str, list[audit.Event]], list[tuple[str, Outgoing]]]:
        """Index the batch's routed referrals; returns the concern events and alerts to queue
        (each alert with the referral it is about)."""
        routed = sorted(
            (p for p in batch if p.routed is not None), key=lambda p: (p.message.received_at, p.message.referral_id)
        )
        rows: list[dict[str, object]] = []
        for prep in routed:
            m = prep.message
            rows += index.rows(self._hasher, m.referral_id, m.received_at, prep.child_digests, prep.organisation)
        await index.insert(conn, rows)
        events: dict[str, list[audit.Event]] = {}
        outgoing: list[tuple[str, Outgoing]] = []
        if not self._s.concern.enabled:
            return events, outgoing
        pending = {p.message.referral_id: self._member(p) for p in routed}
        for prep in routed:
            if not prep.child_digests:
                continue
            new = pending[prep.message.referral_id]
            found = await concern.check(conn, new, dict(prep.child_digests), self._rule, pending)
            if found is None:
                continue
            assert prep.routed is not None
            sent = self._alerts(prep, found, now)
            outgoing += [(new.referral_id, out) for out in sent]
            detail = {**found.detail(), "alerted": len(sent)}
            events[new.referral_id] = [audit.Event(new.referral_id, now, actor, concern.EVENT, detail)]
            log.info("processing: referral %s raised a cumulative concern (%d alert(s))", new.reference, len(sent))
        return events, outgoing

    def _alerts(self, prep: Prepared, found: concern.Concern, now: datetime) -> list[Outgoing]:
        assert prep.routed is not None
        team = self._s.team(prep.routed.team_id)
        people = [m for m in team.members if m.manager] + list(self._s.coordinators)
        seen: set[str] = set()
        out: list[Outgoing] = []
        for person in people:
            if person.email and person.email not in seen:
                seen.add(person.email)
                out.append(
                    self._composer.concern_alert(
                        to=person.email,
                        team=team,
                        referral_id=prep.message.referral_id,
                        reference=prep.message.reference,
                        detail=found.detail(),
                        now=now,
                    )
                )
        return out
