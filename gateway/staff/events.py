"""Staff events in the audit chain: sign-ins, refusals, factor changes, sessions ended.

They go into the same hash chain as the referrals' events (gateway.core.audit), with no referral,
so `referral-gateway verify` checks them too. The actor is "user:<id>" for a signed-in user or the
account concerned, "admin:<id>" for an administrator's act, "cli" for the command line, and
"anonymous" when no account is known. Details hold ids and reason codes only: never a username
that was refused (it may be a password typed into the wrong box), a password, a code, or an address.
"""

from __future__ import annotations

from datetime import datetime

from gateway.core import audit
from gateway.core.db import Database

# The kinds, in one place so the README and the tests can list them.
SIGNED_IN = "staff_signed_in"
SIGN_IN_FAILED = "staff_sign_in_failed"
SIGN_IN_THROTTLED = "staff_sign_in_throttled"
CODE_FAILED = "staff_code_failed"
FACTOR_ENROLLED = "staff_factor_enrolled"
FACTOR_RESET = "staff_factor_reset"
RECOVERY_CODES_MADE = "staff_recovery_codes_made"
RECOVERY_CODE_USED = "staff_recovery_code_used"
REAUTHENTICATED = "staff_reauthenticated"
PASSWORD_CHANGED = "staff_password_changed"  # noqa: S105 (an event kind, not a password)
SIGNED_OUT = "staff_signed_out"
SESSION_ENDED = "staff_session_ended"


def actor_of(user_id: str | None) -> str:
    return f"user:{user_id}" if user_id else "anonymous"


def event(kind: str, actor: str, now: datetime, **detail: object) -> audit.Event:
    return audit.Event(None, now, actor, kind, detail)


async def record(db: Database, *batch: audit.Event) -> None:
    """Append staff events in a transaction of their own (callers that change a row write the
    event in that row's transaction instead, with audit.append)."""
    async with db.write() as conn:
        await audit.append(conn, batch)
