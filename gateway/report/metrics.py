"""The gauges /metrics reads from the database at each scrape: referrals by state and channel, the
outbox, dead deliveries, unacknowledged referrals per team, and how far processing lags behind.

Read at scrape time rather than counted as things happen, so that every instance against one
database reports the same truth and a restart loses nothing. Each query is one indexed pass over
the rows that can still change (pending and dead deliveries, open referrals, unprocessed messages:
the state and queue indexes), except the referral counts, one grouped pass over the referrals
table's state and channel columns. Labels are states, channels, kinds and team ids: never personal
data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Settings
from gateway.core.db import snapshot
from gateway.core.lifecycle import State
from gateway.core.model import Channel
from gateway.core.schema import deliveries, messages, referrals

UNACKNOWLEDGED = (State.ROUTED, State.ALERTED, State.UNDELIVERABLE)
# How far back "the last successful delivery" is looked for: bounds the index range it reads.
LAST_SENT_WINDOW = timedelta(days=7)


@dataclass
class Snapshot:
    """The numbers of one scrape, read in one consistent database snapshot."""

    referrals: dict[tuple[str, str], int] = field(default_factory=dict)  # (state, channel) -> count
    pending: dict[str, tuple[int, datetime]] = field(default_factory=dict)  # kind -> (count, oldest created)
    dead: dict[str, int] = field(default_factory=dict)  # kind -> count
    last_sent: datetime | None = None
    open_by_team: dict[str, tuple[int, int, datetime]] = field(default_factory=dict)  # (count, overdue, oldest)
    unprocessed: tuple[int, datetime | None] = (0, None)


async def read(engine: AsyncEngine, now: datetime) -> Snapshot:
    snap = Snapshot()
    async with snapshot(engine) as conn:
        state, channel = referrals.c.state, referrals.c.channel
        rows = await conn.execute(select(state, channel, func.count()).group_by(state, channel))
        snap.referrals = {(state, channel): count for state, channel, count in rows}
        rows = await conn.execute(
            select(deliveries.c.kind, func.count(), func.min(deliveries.c.created_at))
            .where(deliveries.c.state == "pending")
            .group_by(deliveries.c.kind)
        )
        snap.pending = {kind: (count, oldest) for kind, count, oldest in rows}
        rows = await conn.execute(
            select(deliveries.c.kind, func.count()).where(deliveries.c.state == "dead").group_by(deliveries.c.kind)
        )
        snap.dead = {kind: count for kind, count in rows}
        snap.last_sent = await conn.scalar(
            select(func.max(deliveries.c.sent_at)).where(
                deliveries.c.state == "sent", deliveries.c.next_attempt_at >= now - LAST_SENT_WINDOW
            )
        )
        overdue = func.sum(case((and_(referrals.c.due_at.is_not(None), referrals.c.due_at < now), 1), else_=0))
        rows = await conn.execute(
            select(referrals.c.team_id, func.count(), overdue, func.min(referrals.c.received_at))
            .where(referrals.c.state.in_([s.value for s in UNACKNOWLEDGED]))
            .group_by(referrals.c.team_id)
        )
        snap.open_by_team = {team or "": (count, int(late or 0), oldest) for team, count, late, oldest in rows}
        row = (
            await conn.execute(
                select(func.count(), func.min(messages.c.received_at)).where(messages.c.processed_at.is_(None))
            )
        ).one()
        snap.unprocessed = (int(row[0]), row[1])
    return snap


def _age(now: datetime, then: datetime | None) -> float:
    return max((now - then).total_seconds(), 0.0) if then is not None else 0.0


def families(snap: Snapshot, settings: Settings, now: datetime, heartbeats: dict[str, float]) -> list[Metric]:
    """Every series is written even at zero (each state for each channel, each configured team,
    each outbox kind seen), so an alert rule's `increase()` sees the first one arrive."""
    by_state = GaugeMetricFamily(
        "gateway_referrals", "Referrals now in each state, by the channel they came by", labels=["state", "channel"]
    )
    accepted = CounterMetricFamily(
        "gateway_referrals_accepted", "Referrals accepted (answered yes) since the database began", labels=["channel"]
    )
    quarantined = CounterMetricFamily(
        "gateway_referrals_quarantined", "Referrals quarantined (unreadable or untrusted) so far", labels=["channel"]
    )
    channels = sorted({c.value for c in Channel} | {channel for _, channel in snap.referrals})
    for channel in channels:
        for state in State:
            by_state.add_metric([state.value, channel], snap.referrals.get((state.value, channel), 0))
        accepted.add_metric([channel], sum(n for (_, c), n in snap.referrals.items() if c == channel))
        quarantined.add_metric([channel], snap.referrals.get((State.QUARANTINED.value, channel), 0))

    depth = GaugeMetricFamily("gateway_outbox_depth", "Outbound messages waiting to be sent, by kind", labels=["kind"])
    oldest = GaugeMetricFamily(
        "gateway_outbox_oldest_age_seconds", "Age of the oldest outbound message waiting, by kind", labels=["kind"]
    )
    dead = GaugeMetricFamily(
        "gateway_deliveries_failed", "Deliveries that failed for good (every attempt used), by kind", labels=["kind"]
    )
    for kind in sorted({"alert", "receipt", *snap.pending, *snap.dead}):
        count, created = snap.pending.get(kind, (0, None))
        depth.add_metric([kind], count)
        oldest.add_metric([kind], _age(now, created))
        dead.add_metric([kind], snap.dead.get(kind, 0))
    last_sent = GaugeMetricFamily(
        "gateway_last_delivery_sent_timestamp_seconds",
        f"When a delivery last succeeded (Unix time; 0: none in the last {LAST_SENT_WINDOW.days} days)",
    )
    last_sent.add_metric([], snap.last_sent.timestamp() if snap.last_sent else 0.0)

    unacked = GaugeMetricFamily(
        "gateway_unacknowledged", "Referrals routed to a team and not yet acknowledged", labels=["team"]
    )
    overdue = GaugeMetricFamily(
        "gateway_unacknowledged_overdue", "Unacknowledged referrals past their deadline, by team", labels=["team"]
    )
    oldest_open = GaugeMetricFamily(
        "gateway_oldest_unacknowledged_age_seconds",
        "Age of the team's oldest unacknowledged referral (0: none)",
        labels=["team"],
    )
    for team in sorted({t.id for t in settings.teams} | set(snap.open_by_team)):
        count, late, received = snap.open_by_team.get(team, (0, 0, None))
        unacked.add_metric([team], count)
        overdue.add_metric([team], late)
        oldest_open.add_metric([team], _age(now, received))

    waiting, first = snap.unprocessed
    queue = GaugeMetricFamily("gateway_processing_queue", "Stored messages not yet processed (opened, routed)")
    queue.add_metric([], waiting)
    lag = GaugeMetricFamily(
        "gateway_processing_lag_seconds", "Age of the oldest stored message not yet processed (0: none)"
    )
    lag.add_metric([], _age(now, first))

    loops = GaugeMetricFamily(
        "gateway_worker_last_step_age_seconds",
        "Seconds since each background loop of this process last finished a step",
        labels=["loop"],
    )
    for name, age in heartbeats.items():
        loops.add_metric([name], age)
    database = [by_state, accepted, quarantined, depth, oldest, dead, last_sent, unacked, overdue, oldest_open]
    return [*database, queue, lag, loops]


def readiness(ready: bool, checks: dict[str, bool]) -> list[Metric]:
    """/readyz's answer as series, for alert rules that need no HTTP probe."""
    whole = GaugeMetricFamily("gateway_ready", "1 when /readyz answers 200 (every check passes), else 0")
    whole.add_metric([], 1.0 if ready else 0.0)
    each = GaugeMetricFamily("gateway_ready_check", "1 when this /readyz check passes, else 0", labels=["check"])
    for name, ok in checks.items():
        each.add_metric([name], 1.0 if ok else 0.0)
    return [whole, each]


class Fixed(Collector):
    """A collector of families already read (prometheus' collect() cannot await a query)."""

    def __init__(self, found: Iterable[Metric]) -> None:
        self._found = list(found)

    def collect(self) -> Iterator[Metric]:
        return iter(self._found)
