"""Report: what coordinators must act on. Nothing leaves this list by itself: only an
acknowledgement, a closure or a coordinator's recorded decision (gateway.report.decisions) ends an item's
time here. The CLI (`report undelivered`) and the web page (gateway.web.report_page) show the same rows.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Settings
from gateway.core.db import snapshot
from gateway.core.lifecycle import TRACKED_OPEN, State
from gateway.core.schema import deliveries, events, messages, referrals, sms_webhooks
from gateway.report import report_table
from gateway.report.decisions import covered, referral_key, sms_key
from gateway.report.timeline import Detail, texts

FORMATS = ("table", "csv", "json")
HELD_SMS_SHOWN = timedelta(days=7)  # held texts are listed this long (they carry no referral)

# Kinds of reason an item is on the report: code (a filter value) -> words.
KINDS: dict[str, str] = {
    "quarantined": "Quarantined",
    "unprocessed": "Not yet processed",
    "late": "Not acknowledged in time",
    "failed": "Delivery failed for good",
    "held": "Text held over its rate limit",
    "repeat": "Repeat of an earlier referral",
    "forwarding": "Forwarded, not yet delivered",
}
# On the report, though nothing is at risk (the earlier referral is the live one): a partner
# sending again may not have had the first receipt, and a replay nobody sent is worth a look.
# Like every item, it stays until a coordinator records a decision.
SHOWN = frozenset({*TRACKED_OPEN, State.REPEAT})


@dataclass(frozen=True)
class Row:
    reference: str
    team: str
    state: str
    received_at: datetime
    age: timedelta
    reason: str
    escalation: str = ""  # the chain's latest step and everyone alerted so far
    key: str = ""  # the item's key for a decision (gateway.report.decisions): "referral:<id>" or "sms:<sid>"
    team_id: str | None = None
    kinds: tuple[str, ...] = ()  # codes from KINDS, one per kind of reason


@dataclass(frozen=True)
class Dead:
    """A delivery that failed for good, as the report words it."""

    kind: str
    team_id: str | None
    last_error: str | None
    attempts: int


def human(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return (f"{days}d " if days else "") + (f"{hours}h " if hours or days else "") + f"{mins:02d}m"


async def undelivered(engine: AsyncEngine, settings: Settings, now: datetime) -> list[Row]:
    """Late, undeliverable, quarantined and stuck referrals, and failed deliveries, oldest first."""
    async with snapshot(engine) as conn:
        dead = select(deliveries.c.referral_id).where(deliveries.c.state == "dead")
        rows = (
            await conn.execute(
                select(referrals, messages.c.last_error.label("processing_error"))
                .outerjoin(messages, messages.c.id == referrals.c.message_id)
                .where(or_(referrals.c.state.in_([s.value for s in SHOWN]), referrals.c.id.in_(dead)))
                .order_by(referrals.c.received_at)
            )
        ).all()
        # Items a coordinator has decided on are off the report (unless something failed since).
        decided = await covered(conn, [r.id for r in rows])
        rows = [r for r in rows if referral_key(r.id) not in decided]
        ids = [r.id for r in rows]
        dead_rows = (
            await conn.execute(
                select(
                    deliveries.c.referral_id,
                    deliveries.c.kind,
                    deliveries.c.team_id,
                    deliveries.c.last_error,
                    deliveries.c.attempts,
                ).where(deliveries.c.state == "dead", deliveries.c.referral_id.in_(ids))
            )
        ).all()
        quarantine = (
            await conn.execute(
                select(events.c.referral_id, events.c.kind, events.c.detail).where(
                    events.c.kind.in_(("quarantined", "repeat")), events.c.referral_id.in_(ids)
                )
            )
        ).all()
        held = (
            await conn.execute(
                select(sms_webhooks.c.received_at, sms_webhooks.c.message_sid)
                .where(
                    sms_webhooks.c.kind == "inbound",
                    sms_webhooks.c.outcome.like("over the rate limit%"),
                    sms_webhooks.c.received_at >= now - HELD_SMS_SHOWN,
                )
                .order_by(sms_webhooks.c.received_at)
            )
        ).all()
        held = [sms for sms in held if sms_key(sms.message_sid) not in decided]
        steps = (
            await conn.execute(
                select(events.c.referral_id, events.c.at, events.c.detail)
                .where(events.c.kind == "escalation_step", events.c.referral_id.in_(ids))
                .order_by(events.c.id)
            )
        ).all()
        handovers = (
            await conn.execute(
                select(events.c.referral_id, events.c.detail)
                .where(events.c.kind == "handed_over", events.c.referral_id.in_(ids))
                .order_by(events.c.id)
            )
        ).all()
    # After a hand-over at close the deadline is the out-of-hours team's (gateway.route.handover).
    handed: dict[str, Detail] = {h.referral_id: d for h in handovers if "to" in (d := json.loads(h.detail))}
    dead_by: dict[str, list[Dead]] = {}
    for d in dead_rows:
        dead_by.setdefault(d.referral_id, []).append(Dead(d.kind, d.team_id, d.last_error, d.attempts))
    quarantined: dict[str, Detail] = {q.referral_id: json.loads(q.detail) for q in quarantine if q.kind != "repeat"}
    repeat_of = {q.referral_id: str(json.loads(q.detail).get("of", "?")) for q in quarantine if q.kind == "repeat"}
    steps_by: dict[str, list[tuple[datetime, Detail]]] = {}
    for step in steps:
        steps_by.setdefault(step.referral_id, []).append((step.at, json.loads(step.detail)))
    out: list[Row] = []
    for r in rows:
        reasons: list[str] = []
        kinds: list[str] = []
        team = settings.team_name(r.team_id) if r.team_id else "(not routed)"
        if r.state == State.QUARANTINED:
            q = quarantined.get(r.id, {})
            reasons.append(f"quarantined at stage {q.get('stage', '?')}: {q.get('reason', 'unknown')}")
            kinds.append("quarantined")
        elif r.state == State.REPEAT:
            reasons.append(
                f"a repeat of {repeat_of.get(r.id, '?')}: the same partner-signed content received again, "
                "so no second referral was made"
            )
            kinds.append("repeat")
        elif r.state == State.FORWARDING:
            reasons.append(
                "not ours: forwarded to a neighbouring authority, not yet delivered (still ours until it is)"
            )
            kinds.append("forwarding")
        elif r.state == State.RECEIVED:
            # The immediate deadline's length (a rule, not a duration: before, this sum raised
            # TypeError and the whole report failed whenever a referral was waiting); "end of the
            # next working day" has no length, and 15 minutes is the default immediate deadline.
            grace = r.received_at + (settings.deadlines.immediate.amount or timedelta(minutes=15))
            if now >= grace or r.processing_error:
                reasons.append(
                    "not yet processed" + (f" (last error: {r.processing_error})" if r.processing_error else "")
                )
                kinds.append("unprocessed")
        if r.state in (State.ROUTED, State.ALERTED, State.UNDELIVERABLE) and r.due_at and now >= r.due_at:
            found = settings.find_team(r.team_id) if r.team_id else None
            allowed = settings.deadline_rule(found, r.urgency).describe() if found else "its deadline"
            if r.id in handed:
                to = settings.team_name(str(handed[r.id]["to"]))
                allowed = f"{handed[r.id].get('deadline', 'its deadline')} of the hand-over to {to} at office close"
            reasons.append(f"not acknowledged within {allowed} (overdue by {human(now - r.due_at)})")
            kinds.append("late")
        for failed in dead_by.get(r.id, ()):
            who = f"to {settings.team_name(failed.team_id)}" if failed.team_id else "to the referrer"
            if failed.kind == "forward":
                who = "to a neighbouring authority"
            reasons.append(f"{failed.kind} {who} failed for good after {failed.attempts} attempts: {failed.last_error}")
            if "failed" not in kinds:
                kinds.append("failed")
        if reasons:
            escalation = escalation_summary(steps_by.get(r.id, []))
            out.append(
                Row(
                    r.reference,
                    team,
                    r.state,
                    r.received_at,
                    now - r.received_at,
                    "; ".join(reasons),
                    escalation,
                    key=referral_key(r.id),
                    team_id=r.team_id,
                    kinds=tuple(kinds),
                )
            )
    # Texts that were not referrals (an ACK, HELP, STOP) and came over a number's rate limit: stored
    # but not acted on, so a person should look (an ACK held back means a chain still running).
    for sms in held:
        out.append(
            Row(
                f"SMS {sms.message_sid[-8:]}",
                "-",
                "held",
                sms.received_at,
                now - sms.received_at,
                "a text (not a referral) over its number's SMS rate limit was stored, not acted on",
                key=sms_key(sms.message_sid),
                kinds=("held",),
            )
        )
    return out


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell a spreadsheet will not run: one starting with =, +, @, a tab or a carriage
    return, or - followed by more, is prefixed with ' (OWASP's advice for CSV injection). Staff
    names and reasons reach this export, and coordinators open it in a spreadsheet."""
    if cell[:1] in ("=", "+", "@", "\t", "\r") or (cell.startswith("-") and len(cell) > 1):
        return "'" + cell
    return cell


def escalation_summary(steps: list[tuple[datetime, Detail]]) -> str:
    """'step 2 (managers) at 10:15 UTC; alerted: Asha Okafor (email), Dev Malik (sms)'."""
    fired = [(at, d) for at, d in steps if "step" in d]
    if not fired:
        return ""
    at, last = fired[-1]
    alerted = sorted({name for _, d in fired for name in texts(d, "alerted")})
    notify = ", ".join(texts(last, "notify"))
    state = " skipped, nobody reachable" if last.get("skipped") else ""
    return (
        f"step {last['step']} ({notify}){state} at {at.strftime('%Y-%m-%d %H:%M UTC')}; "
        f"alerted: {', '.join(alerted) or 'nobody'}"
    )


def _cells(r: Row) -> list[str]:
    """A row as text, in report_table.HEADER's order."""
    received = r.received_at.strftime("%Y-%m-%d %H:%M UTC")
    return [r.reference, r.team, r.state, received, human(r.age), r.escalation or "-", r.reason]


def render(rows: list[Row], fmt: str, *, wide: bool = False) -> str:
    """The report as `fmt`; a table fits 100 columns unless `wide` (gateway.report.report_table)."""
    if fmt == "json":
        return (
            json.dumps(
                [
                    {
                        "reference": r.reference,
                        "team": r.team,
                        "state": r.state,
                        "received_at": r.received_at.isoformat(),
                        "age_seconds": int(r.age.total_seconds()),
                        "age": human(r.age),
                        "escalation": r.escalation,
                        "reason": r.reason,
                    }
                    for r in rows
                ],
                indent=2,
            )
            + "\n"
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(report_table.HEADER)
        writer.writerows([[spreadsheet_safe(cell) for cell in _cells(r)] for r in rows])
        return buffer.getvalue()
    if not rows:
        return "No undelivered, late or quarantined referrals.\n"
    cells = [_cells(r) for r in rows]
    table = report_table.wide(cells) if wide else report_table.narrow(cells)
    return table + f"{len(rows)} referral(s) need attention.\n"
