"""Closing: the duty team's first decision on an acknowledged referral (its outcome), recorded by a
named staff user; the referrer is told the outcome, and nothing else, in the same transaction."""

from __future__ import annotations

from datetime import datetime

from gateway.core import audit
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.model import OUTCOMES
from gateway.core.records import find_referral
from gateway.core.transitions import transition
from gateway.track.referrer import Referrers


class NotAcknowledged(Exception):
    """Only an acknowledged referral can be closed: somebody named must have had it first."""


async def close(db: Database, referrers: Referrers, referral_id: str, user_id: str, outcome: str, now: datetime) -> str:
    """Record the outcome (a `closed` event by the user) and queue the notice to the referrer, in
    one transaction; returns the reference. Raises NotAcknowledged (nothing written) otherwise."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    actor = f"user:{user_id}"
    async with db.write() as conn:
        row = await find_referral(conn, referral_id, lock=True)
        if row is None or row.state != State.ACKNOWLEDGED:
            raise NotAcknowledged(row.reference if row else referral_id)
        batch = [audit.Event(referral_id, now, actor, "closed", {"outcome": outcome})]
        # The referrer is told as for the acknowledgement notice (Referrers), so the two cannot drift.
        batch += await referrers.tell(conn, row, "outcome_notice", {"outcome": OUTCOMES[outcome]}, now, actor)
        await transition(conn, referral_id, batch)
    return row.reference
