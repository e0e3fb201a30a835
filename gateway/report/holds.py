"""Legal holds: a coordinator keeps a referral's content past the retention period.

A hold is set and lifted by a named, active coordinator (from the referral page or
`referral-gateway hold`), each an audit event (`legal_hold`, `legal_hold_lifted`) with who
(the actor `user:<id>`) and why. The audit chain is kept forever and is never purged, so the
reason must hold no personal data: it is a code from REASONS plus, optionally, the matter's own
reference (a court case number, a police crime reference), checked by MATTER to be a reference
rather than words. Free text could name a child; a code and a case number cannot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import audit
from gateway.core.db import Database
from gateway.core.reference import InvalidReference, normalise_reference
from gateway.core.schema import referrals
from gateway.core.transitions import transition
from gateway.staff.users import Role, User

# Why a referral is held: code (stored in the audit chain; keep stable) -> words shown.
REASONS: dict[str, str] = {
    "court": "Court proceedings",
    "police": "A police investigation",
    "review": "A safeguarding practice review",
    "subject_access": "A subject access request",
    "complaint": "A complaint or an inquiry",
    "other": "Another legal reason (give the matter reference)",
}
NEEDS_MATTER = frozenset({"other"})
# A matter reference: letters, digits, "/", "-" and ".", with at least one digit, no spaces.
MATTER = re.compile(r"(?=[^0-9]*[0-9])[A-Za-z0-9][A-Za-z0-9/.-]{1,31}")


class HoldError(Exception):
    """A hold that cannot be set or lifted; the message says why and what to do, and names no person."""


@dataclass(frozen=True)
class Held:
    referral_id: str
    reference: str
    held: bool  # after the change


def check(reason: str, matter: str) -> str:
    """The matter reference, tidied; raises HoldError when the reason or the matter will not do."""
    if reason not in REASONS:
        raise HoldError(f"Choose the reason for the hold: one of {', '.join(REASONS)}")
    matter = matter.strip()
    if matter and not MATTER.fullmatch(matter):
        raise HoldError(
            "The matter reference must be the case's own reference (letters, digits, / - and ., with a digit, "
            "no spaces, at most 32), such as ZW26C00123: never a name"
        )
    if reason in NEEDS_MATTER and not matter:
        raise HoldError("Give the matter reference for this hold")
    return matter


def _coordinator(user: User) -> None:
    if user.role is not Role.COORDINATOR or not user.active:
        raise HoldError("Only an active coordinator may set or lift a legal hold")


async def _find(conn: AsyncConnection, reference_or_id: str) -> tuple[str, str, bool, datetime | None]:
    """The referral's id, reference, hold and purge time, its row locked (the first lock, as ever)."""
    query = select(referrals.c.id, referrals.c.reference, referrals.c.legal_hold, referrals.c.purged_at)
    if re.fullmatch(r"[0-9a-f]{32}", reference_or_id):
        query = query.where(referrals.c.id == reference_or_id)
    else:
        try:
            query = query.where(referrals.c.reference == normalise_reference(reference_or_id))
        except InvalidReference as exc:
            raise HoldError(str(exc)) from None
    row = (await conn.execute(query.with_for_update())).first()
    if row is None:
        raise HoldError(f"No referral has the reference {reference_or_id}: check it and try again")
    return str(row.id), str(row.reference), bool(row.legal_hold), row.purged_at


async def set_hold(
    db: Database, user: User, reference_or_id: str, reason: str, matter: str, now: datetime, via: str
) -> Held:
    """Put a referral under a legal hold; nothing is written when HoldError is raised."""
    _coordinator(user)
    matter = check(reason, matter)
    async with db.write() as conn:
        referral_id, reference, held, purged_at = await _find(conn, reference_or_id)
        if held:
            raise HoldError(f"Referral {reference} is already under a legal hold")
        if purged_at is not None:
            raise HoldError(
                f"The content of referral {reference} was removed on {purged_at.date().isoformat()}: "
                "there is nothing left to hold (its events and metadata are always kept)"
            )
        detail = {"reason": reason, "via": via} | ({"matter": matter} if matter else {})
        event = audit.Event(referral_id, now, f"user:{user.id}", "legal_hold", detail)
        await transition(conn, referral_id, [event], legal_hold=True)
    return Held(referral_id, reference, True)


async def lift_hold(db: Database, user: User, reference_or_id: str, now: datetime, via: str) -> Held:
    """Lift a referral's legal hold: the retention policy applies to it again from now."""
    _coordinator(user)
    async with db.write() as conn:
        referral_id, reference, held, _ = await _find(conn, reference_or_id)
        if not held:
            raise HoldError(f"Referral {reference} is not under a legal hold")
        event = audit.Event(referral_id, now, f"user:{user.id}", "legal_hold_lifted", {"via": via})
        await transition(conn, referral_id, [event], legal_hold=False)
    return Held(referral_id, reference, False)
