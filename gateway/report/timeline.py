"""A referral's timeline in words, from its audit events: what the staff dashboard's referral
page shows. Event details never hold personal data; staff names come from the caller."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from gateway.config import Settings
from gateway.core.clock import uk_time
from gateway.core.db import Database
from gateway.core.model import OUTCOMES
from gateway.core.schema import deliveries, events
from gateway.history.concern import text as concern_text
from gateway.report.holds import REASONS
from gateway.report.retention import period_in_words
from gateway.report.timeline_steps import group

Detail = Mapping[str, object]  # an event's detail, as json.loads gives it back


def texts(detail: Detail, key: str) -> list[str]:
    """A list in an event's detail, as text (absent: empty)."""
    value = detail.get(key)
    return [str(item) for item in value] if isinstance(value, list) else []


def step_text(detail: Detail) -> str:
    notify = ", ".join(texts(detail, "notify"))
    return f"step {detail['step']}" + (f" ({notify})" if notify else "")


@dataclass(frozen=True)
class Sent:
    """What the timeline says of a delivery an event names."""

    channel: str
    team_id: str | None


@dataclass(frozen=True)
class Entry:
    at: datetime
    what: str
    details: tuple[str, ...] = ()  # the lines an alert step's line stands for (timeline_steps)


_DELIVERY_WORDS = {
    "alert": "alert",
    "reminder": "reminder",
    "receipt": "receipt to the referrer",
    "ack_notice": "acknowledgement notice to the referrer",
    "ack_told": "stand-down notice",
    "notice": "notice to the sender",
    "quarantine": "quarantine alert",
    "concern": "cumulative concern alert",
    "outcome_notice": "outcome notice to the referrer",
    "follow_up": "follow-up notice to the referrer",
    # Structured answers (gateway.track.answers)
    "forward": "forward to the neighbouring authority",
    "not_ours_notice": "notice to the referrer of where it went",
    "info_request": "request for more information to the referrer",
    "duplicate_notice": "duplicate notice to the referrer",
    "info_received": "notice of more information",
}


def _actor_name(actor: str, names: Mapping[str, str]) -> str:
    kind, _, who = actor.partition(":")
    if kind == "user":
        return names.get(who, "a staff user")
    if kind == "person":
        return who
    return "the gateway"


def describe(
    kind: str,
    actor: str,
    detail: Detail,
    settings: Settings,
    names: Mapping[str, str],
    sent: Mapping[str, Sent],
) -> str:
    """One event in words. Event details never hold personal data; staff names come from `names`."""
    delivery = sent.get(str(detail.get("delivery", "")))
    what = _DELIVERY_WORDS.get(str(detail.get("kind", "")), str(detail.get("kind", "message")))
    channel = f" by {delivery.channel}" if delivery is not None else ""
    team_id = str(detail.get("team") or "") or (delivery.team_id if delivery is not None else None)
    team = f" to {settings.team_name(team_id)}" if team_id else ""
    by = _actor_name(actor, names)
    match kind:
        case "received":
            return f"Received ({actor.removeprefix('intake:')})"
        case "parsed":
            problems = texts(detail, "problem_fields")
            text = "Read" + (" (encrypted)" if detail.get("encrypted") else "")
            text += f"; {detail.get('attachments', 0)} attachment(s)"
            return text + (f"; incomplete: {', '.join(problems)}" if problems else "")
        case "routed":
            due = datetime.fromisoformat(str(detail["due_at"])) if detail.get("due_at") else None
            text = f"Routed{team} by the route {detail.get('route', '?')}"
            return text + (f"; to be acknowledged within {detail.get('deadline')}, by {uk_time(due)}" if due else "")
        case "delivery_queued":
            return f"The {what}{team} was queued"
        case "delivery_sent":
            return f"The {what}{team} was sent{channel} (attempt {detail.get('attempt', 1)})"
        case "delivery_confirmed":
            return f"The {what}{team} was delivered{channel} (confirmed by the provider)"
        case "delivery_failed":
            return f"The {what}{team} failed{channel} (attempt {detail.get('attempt', '?')}); trying again"
        case "delivery_dead":
            return f"The {what}{team} failed for good{channel}: {detail.get('reason', 'no reason given')}"
        case "alerted":
            return f"Alerted {team.removeprefix(' to ')}".rstrip() + (
                f" by {detail['channel']}" if detail.get("channel") else ""
            )
        case "escalation_step" if "step" in detail:
            if detail.get("skipped"):
                return f"Escalation {step_text(detail)}: skipped, nobody reachable"
            alerted = ", ".join(texts(detail, "alerted")) or "nobody"
            return f"Escalation {step_text(detail)}: alerted {alerted}"
        case "escalation_step":
            return f"Escalation: {detail.get('stopped') or detail.get('failed') or 'no step'}"
        case "overdue":
            return "Not acknowledged by its deadline"
        case "handed_over" if "to" in detail:
            due = datetime.fromisoformat(str(detail["due_at"])) if detail.get("due_at") else None
            alerted = ", ".join(texts(detail, "alerted")) or "nobody"
            return f"Handed to {settings.team_name(str(detail['to']))} at office close; alerted {alerted}" + (
                f"; to be acknowledged by {uk_time(due)}" if due else ""
            )
        case "handed_over":
            return f"Not handed over at office close: {detail.get('stopped', '?')}"
        case "referrer_followed_up":
            return "The referrer was told it has not yet been picked up, and which number to call"
        case "acknowledged":
            return f"Acknowledged by {by}" + (f" ({detail['via']})" if detail.get("via") else "")
        case "closed":
            return f"Closed by {by}: {OUTCOMES.get(str(detail.get('outcome')), 'outcome not recorded')}"
        case "viewed":
            return f"Viewed by {by}"
        case "attachment_opened":
            return f"Attachment {detail.get('index', '?')} opened by {by}"
        case "raw_message_opened":
            return f"The message as it was sent downloaded by {by}"
        case "quarantined":
            text = f"Quarantined at stage {detail.get('stage', '?')}: {detail.get('reason', '?')}"
            sender = detail.get("sender")  # absent on quarantines recorded before senders were always considered
            if sender == "told":
                return text + "; the sender was told it was not passed on"
            return text + (f"; the sender could not be told ({sender})" if sender else "")
        case "undeliverable":
            return f"Undeliverable{team}: {detail.get('reason', 'every alert failed')}"
        case "repeat":
            return f"A repeat of {detail.get('of', '?')}: the same partner-signed content, received before; not routed"
        case "received_again":
            when = datetime.fromisoformat(str(detail["received_at"])) if detail.get("received_at") else None
            return (
                f"Received again as {detail.get('as', '?')}"
                + (f" on {uk_time(when)}" if when else "")
                + (": the same signed content, closed as a repeat")
            )
        case "receipt_skipped":
            return f"No receipt sent ({detail.get('why', '?')})"
        case "legal_hold":
            matter = f", matter {detail['matter']}" if detail.get("matter") else ""
            return f"Legal hold set by {by}: {REASONS.get(str(detail.get('reason')), 'reason not recorded')}{matter}"
        case "legal_hold_lifted":
            return f"Legal hold lifted by {by}"
        case "cumulative_concern":
            told = (
                f"; {detail['alerted']} manager(s) and coordinator(s) alerted"
                if detail.get("alerted")
                else "; nobody had an email address to alert"
            )
            words = concern_text(detail)
            return words[:1].upper() + words[1:] + told
        # Structured answers (gateway.track.answers): the reasons are sealed, shown apart on the page.
        case "rerouted":
            was = f" (was {settings.team_name(str(detail['from_team']))})" if detail.get("from_team") else ""
            return (
                f"Not ours: routed afresh{team}{was} by {by}; to be acknowledged within {detail.get('deadline', '?')}"
            )
        case "forwarding":
            how = "the referral, encrypted" if detail.get("encrypted") else "a notice with no personal data (no key)"
            return f"Not ours: forwarded to {detail.get('neighbour', '?')} by {by} ({how}); ours until delivered"
        case "forwarded":
            return "Delivered to the neighbouring authority: no longer ours"
        case "forward_dead":
            return "The forward to the neighbouring authority failed for good: back with the duty team"
        case "information_requested":
            how = "encrypted, with what is missing" if detail.get("encrypted") else "asked to call, no details in clear"
            return f"More information requested from the referrer by {by} ({detail.get('by', '?')}, {how})"
        case "information_received":
            return f"More information received from the referrer (as {detail.get('reply', '?')})"
        case "reply":
            return f"A reply to {detail.get('to', '?')}'s request for more information: added to it, not routed"
        case "duplicate":
            return f"Duplicate of {detail.get('of', '?')}, marked by {by}: closed here"
        case "duplicate_linked":
            return f"{detail.get('duplicate', '?')} was linked to it as a duplicate by {by}"
        case "purged":
            period = period_in_words(str(detail.get("closed_after", "?")))
            return f"Content removed under the retention policy (closed more than {period})"
    return kind.replace("_", " ").capitalize()


async def timeline(db: Database, settings: Settings, referral_id: str, names: Mapping[str, str]) -> list[Entry]:
    async with db.read() as conn:
        rows = (
            await conn.execute(select(events).where(events.c.referral_id == referral_id).order_by(events.c.id))
        ).all()
        sent = {
            d.id: Sent(d.channel, d.team_id)
            for d in await conn.execute(
                select(deliveries.c.id, deliveries.c.channel, deliveries.c.team_id).where(
                    deliveries.c.referral_id == referral_id
                )
            )
        }
    lines = []
    for r in rows:
        detail = json.loads(r.detail)
        lines.append((r.at, r.kind, detail, describe(r.kind, r.actor, detail, settings, names, sent)))
    grouped = group(lines, {delivery_id: s.channel for delivery_id, s in sent.items()})
    return [Entry(g.at, g.what, tuple(g.details)) for g in grouped]
