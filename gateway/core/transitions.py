"""The one way a referral's state changes: its events go through the state machine
(gateway.core.lifecycle) and are written, with the cached state and the columns that go with them,
in the caller's transaction. Nothing else writes `referrals.state`.

Lock order matters on PostgreSQL: referral rows first, in id order, and the audit chain head last,
once. Every writer follows it, so two transactions never wait on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import audit, lifecycle
from gateway.core.lifecycle import State
from gateway.core.schema import ALERT_KINDS, deadlines, deliveries, referrals

Columns = Mapping[str, object]  # referral columns written with a change (team_id, due_at, ...)


@dataclass(frozen=True)
class NewReferral:
    """A referral row as intake creates it, before anything has read the message."""

    id: str
    message_id: str
    reference: str
    channel: str
    received_at: datetime


async def create(conn: AsyncConnection, new: Sequence[NewReferral], events: Sequence[audit.Event]) -> None:
    """Insert new referrals with their first events ('received'); each one's state is the one the
    machine derives from those events, never a value written by hand."""
    kinds: dict[str | None, list[str]] = {}  # None: a staff event (never among these)
    for ev in events:
        kinds.setdefault(ev.referral_id, []).append(ev.kind)
    rows = [
        {
            "id": r.id,
            "message_id": r.message_id,
            "reference": r.reference,
            "channel": r.channel,
            "state": lifecycle.derive(kinds[r.id]).value,
            "received_at": r.received_at,
            "incomplete": False,
        }
        for r in new
    ]
    if rows:
        await conn.execute(referrals.insert(), rows)
        await audit.append(conn, events)


async def lock(conn: AsyncConnection, referral_ids: Sequence[str]) -> dict[str, State]:
    """Lock referral rows (in id order, as every writer does) and return their states."""
    rows = await conn.execute(
        select(referrals.c.id, referrals.c.state)
        .where(referrals.c.id.in_(sorted(referral_ids)))
        .order_by(referrals.c.id)
        .with_for_update()
    )
    return {row.id: State(row.state) for row in rows}


async def transitions(
    conn: AsyncConnection,
    batch: Mapping[str, Sequence[audit.Event]],
    values: Mapping[str, Columns] | None = None,
) -> dict[str, State]:
    """Apply events to several referrals in the caller's transaction and return their new states.
    Raises IllegalTransition, before writing anything, if one is not allowed."""
    ids = sorted(batch)
    before = await lock(conn, ids)
    states = dict(before)
    for referral_id in ids:
        state = states[referral_id]
        for ev in batch[referral_id]:
            state = lifecycle.apply(state, ev.kind)
        states[referral_id] = state
    # One statement per shape of change (usually one for the whole batch), not one per referral.
    shapes: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for referral_id in ids:
        extra = (values or {}).get(referral_id, {})
        if not extra and states[referral_id] == before[referral_id]:
            continue  # nothing to write (a receipt sent): the row stays as it is, and locked
        params: dict[str, object] = {"b_id": referral_id, "b_state": states[referral_id].value}
        params |= {f"b_{column}": value for column, value in extra.items()}
        shapes.setdefault(tuple(sorted(extra)), []).append(params)
    for columns, rows in shapes.items():
        statement = (
            update(referrals)
            .where(referrals.c.id == bindparam("b_id"))
            .values(state=bindparam("b_state"), **{column: bindparam(f"b_{column}") for column in columns})
        )
        await conn.execute(statement, rows)
    await audit.append(conn, [ev for referral_id in ids for ev in batch[referral_id]])
    return states


async def transition(conn: AsyncConnection, referral_id: str, batch: Sequence[audit.Event], **values: object) -> State:
    """`transitions` for one referral."""
    return (await transitions(conn, {referral_id: batch}, {referral_id: values}))[referral_id]


async def steps_forward(conn: AsyncConnection, referral_id: str, due: datetime) -> None:
    """Escalation steps of the referral not yet fired and due after `due` become due at `due`."""
    await conn.execute(
        update(deadlines)
        .where(
            deadlines.c.referral_id == referral_id,
            deadlines.c.kind == "step",
            deadlines.c.fired_at.is_(None),
            deadlines.c.cancelled_at.is_(None),
            deadlines.c.due_at > due,
        )
        .values(due_at=due)
    )


async def hasten_next_step(conn: AsyncConnection, referral_id: str, now: datetime) -> None:
    """An alert failed: its recipient will not see it, so the escalation chain's next step is due
    now rather than after a wait nobody can end."""
    await steps_forward(conn, referral_id, now)


async def cancel_deadlines(conn: AsyncConnection, referral_id: str, now: datetime, kind: str | None = None) -> int:
    """Every deadline of the referral not yet fired (of `kind` only, if given) is cancelled:
    acknowledged, answered away, or an ack deadline about to be replaced. Returns how many."""
    open_rows = [
        deadlines.c.referral_id == referral_id,
        deadlines.c.fired_at.is_(None),
        deadlines.c.cancelled_at.is_(None),
    ]
    if kind is not None:
        open_rows.append(deadlines.c.kind == kind)
    done = await conn.execute(update(deadlines).where(*open_rows).values(cancelled_at=now))
    return done.rowcount


async def alert_dead(
    conn: AsyncConnection,
    referral_id: str,
    delivery_id: str,
    team_id: str | None,
    now: datetime,
    actor: str,
    reason: str,
) -> list[audit.Event]:
    """An alert (email or SMS) failed for good: the chain's next step is due now, and if no other
    alert for the referral is still on its way, the referral is undeliverable (on the report).
    Returns the events to add to the caller's batch."""
    await hasten_next_step(conn, referral_id, now)
    other = (
        await conn.execute(
            select(deliveries.c.id)
            .where(
                deliveries.c.referral_id == referral_id,
                deliveries.c.id != delivery_id,
                deliveries.c.kind.in_(ALERT_KINDS),
                deliveries.c.state.in_(("pending", "sent")),
            )
            .limit(1)
        )
    ).first()
    if other is not None:
        return []
    return [audit.Event(referral_id, now, actor, "undeliverable", {"team": team_id, "reason": reason})]
