"""Acknowledgement deadlines: set per team and urgency (clock or working time), missed ones are an
`overdue` event and a line on the coordinators' report, each fires once, and an acknowledgement
cancels every deadline and escalation step still to come."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import deadlines, deliveries, events
from gateway.report import undelivered as report
from tests.conftest import START, both_databases, maildir_messages, referral_row, send_referral

MASH = "mash-duty@demo-council.example"
IN_BOROUGH = "W1A 1AA"  # MASH in office hours
OUT_OF_AREA = "M1 1AE"  # the default route: front door triage

pytestmark = both_databases


send = send_referral
referral = referral_row


async def rows_of(gateway: Gateway, referral_id: str) -> list[Any]:
    async with gateway.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(deadlines).where(deadlines.c.referral_id == referral_id).order_by(deadlines.c.id)
                )
            ).all()
        )


async def events_of(gateway: Gateway, referral_id: str, kind: str) -> list[tuple[datetime, dict[str, Any]]]:
    async with gateway.engine.connect() as conn:
        rows = await conn.execute(
            select(events.c.at, events.c.detail)
            .where(events.c.referral_id == referral_id, events.c.kind == kind)
            .order_by(events.c.id)
        )
        return [(row.at, json.loads(row.detail)) for row in rows]


async def test_deadline_follows_the_team_and_the_urgency(gateway: Gateway, clock: FakeClock) -> None:
    # Received Wednesday 25 November 2026, 10:00 UTC (10:00 in London, in office hours).
    cases = [
        # MASH sets its own (red and amber): 15 minutes; 4 working hours; 24 hours on the clock.
        ("immediate", IN_BOROUGH, "mash", "15 minutes", START + timedelta(minutes=15)),
        ("urgent", IN_BOROUGH, "mash", "4 working hours", datetime(2026, 11, 25, 14, 0, tzinfo=UTC)),
        ("standard", IN_BOROUGH, "mash", "1 day", START + timedelta(hours=24)),
        # Triage sets none: the gateway-wide [deadlines], in clock time.
        ("urgent", OUT_OF_AREA, "triage", "1 hour", START + timedelta(hours=1)),
        ("standard", OUT_OF_AREA, "triage", "1 day", START + timedelta(hours=24)),
    ]
    for n, (urgency, postcode, team, rule, due) in enumerate(cases):
        reference = await send(gateway, f"d{n}", urgency=urgency, postcode=postcode)
        assert await gateway.process_all() == 1
        row = await referral(gateway, reference)
        assert (row.team_id, row.urgency, row.due_at) == (team, urgency, due), urgency
        ((_, routed),) = await events_of(gateway, row.id, "routed")
        assert routed["deadline"] == rule and routed["due_at"] == due.isoformat()
        (ack,) = [r for r in await rows_of(gateway, row.id) if r.kind == "ack"]
        assert ack.due_at == due and ack.fired_at is None and ack.cancelled_at is None

    # Working time stops at the close of the office and goes on when it opens: an urgent
    # referral at 15:00 has 2 working hours on Wednesday and 2 on Thursday (from 09:00).
    clock.set(datetime(2026, 11, 25, 15, 0, tzinfo=UTC))
    late = await referral(gateway, await send(gateway, "d-late", urgency="urgent"))
    assert late.due_at is None  # not processed yet
    await gateway.process_all()
    assert (await referral(gateway, late.reference)).due_at == datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    # Amber is 24 hours on the clock, over a weekend too (the report shows it late on Saturday).
    clock.set(datetime(2026, 11, 27, 15, 0, tzinfo=UTC))
    friday = await send(gateway, "d-friday", urgency="standard")
    await gateway.process_all()
    assert (await referral(gateway, friday)).due_at == datetime(2026, 11, 28, 15, 0, tzinfo=UTC)


async def test_a_missed_deadline_fires_once_as_overdue_and_is_on_the_report(gateway: Gateway, clock: FakeClock) -> None:
    reference = await send(gateway, "m1", urgency="urgent")  # MASH: 4 working hours, due 14:00
    await gateway.process_all()
    await gateway.deliver_all()
    rid = (await referral(gateway, reference)).id
    due = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)

    clock.set(due - timedelta(seconds=1))
    assert await gateway.fire_deadlines() == 0
    assert await events_of(gateway, rid, "overdue") == []
    assert await report.undelivered(gateway.engine, gateway.config.settings, clock.now()) == []

    clock.set(due)
    # The acknowledgement deadline, and the urgent chain's step 2 that waits for it.
    assert await gateway.fire_deadlines() == 2
    assert await gateway.fire_deadlines() == 0  # fired once, not again
    assert await events_of(gateway, rid, "overdue") == [(due, {"due_at": due.isoformat(), "state": "alerted"})]
    (ack,) = [r for r in await rows_of(gateway, rid) if r.kind == "ack"]
    assert ack.fired_at == due and ack.cancelled_at is None

    clock.set(due + timedelta(hours=2, minutes=5))
    (row,) = await report.undelivered(gateway.engine, gateway.config.settings, clock.now())
    assert row.reference == reference and row.state == "alerted" and row.team == "MASH duty team"
    assert row.reason == "not acknowledged within 4 working hours (overdue by 2h 05m)"
    assert report.human(row.age) == "6h 05m"
    assert "not acknowledged within 4 working hours" in report.render([row], "table")

    # Still once after more time, more escalation steps and more calls.
    clock.set(due + timedelta(hours=5))
    # Step 3 (the coordinators) and the hand-over at 17:00 close (MASH hands urgent ones to the
    # EDT), not the deadline again.
    assert await gateway.fire_deadlines() == 2
    assert await gateway.fire_deadlines() == 0
    assert len(await events_of(gateway, rid, "overdue")) == 1


async def test_acknowledgement_cancels_every_deadline_and_step_still_to_come(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    reference = await send(gateway, "a1", urgency="immediate")
    other = await send(gateway, "a2", urgency="immediate")
    await gateway.process_all()
    await gateway.deliver_all()
    clock.set(START + timedelta(minutes=10))
    assert await gateway.fire_deadlines() == 2  # step 2 of each
    rid, other_id = (await referral(gateway, reference)).id, (await referral(gateway, other)).id

    clock.set(START + timedelta(minutes=12))
    alert = next(m for m in maildir_messages(home, MASH) if m["X-Referral-Reference"] == reference)
    match = re.search(r"http://\S+/ack/(\S+)", alert.get_content())
    assert match
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{gateway.http_port}/ack/{match.group(1)}", data={"name": "Dee Worker"}) as reply,
    ):
        assert reply.status == 200

    rows = await rows_of(gateway, rid)
    fired = [r for r in rows if r.fired_at is not None]
    unfired = [r for r in rows if r.fired_at is None]
    assert [(r.kind, r.due_at - START) for r in fired] == [("step", timedelta(minutes=10))]
    assert sorted((r.kind, r.due_at - START) for r in unfired) == [
        ("ack", timedelta(minutes=15)),
        ("handover", timedelta(hours=7)),  # 17:00, when MASH closes
        ("step", timedelta(minutes=25)),
    ]
    assert all(r.cancelled_at == clock.now() for r in unfired)  # in the acknowledgement's transaction
    assert all(r.cancelled_at is None for r in fired)
    # The other referral's chain goes on.
    assert [r.cancelled_at for r in await rows_of(gateway, other_id)] == [None, None, None, None]

    async with gateway.engine.connect() as conn:
        queued_before = (await conn.execute(select(deliveries.c.id).where(deliveries.c.referral_id == rid))).all()
    clock.set(START + timedelta(hours=6))
    assert await gateway.fire_deadlines() == 2  # the other referral's deadline and its step 3
    assert await events_of(gateway, rid, "overdue") == []
    assert [d["step"] for _, d in await events_of(gateway, rid, "escalation_step")] == [1, 2]
    async with gateway.engine.connect() as conn:
        queued_after = (await conn.execute(select(deliveries.c.id).where(deliveries.c.referral_id == rid))).all()
    assert queued_after == queued_before
    assert [r.reference for r in await report.undelivered(gateway.engine, gateway.config.settings, clock.now())] == [
        other
    ]


async def test_a_team_renamed_in_config_does_not_stop_deadlines_or_the_report(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    reference = await send(gateway, "r1", urgency="immediate")
    await gateway.process_all()
    await gateway.deliver_all()
    rid = (await referral(gateway, reference)).id
    await gateway.stop()
    path = home / "config" / "gateway.toml"
    text = path.read_text()
    assert text.count('id = "mash"') == 1
    path.write_text(text.replace('id = "mash"', 'id = "mash-north"').replace('team = "mash"', 'team = "mash-north"'))
    renamed = Gateway(config_mod.load(path), clock=clock, workers=False)
    await renamed.start()
    try:
        clock.set(START + timedelta(hours=1))
        # Both fire: the deadline is missed (overdue), and the escalation step, which stops
        # rather than alert people by a team name that is gone.
        assert await renamed.fire_deadlines() == 2
        assert await renamed.fire_deadlines() == 0
        assert len(await events_of(renamed, rid, "overdue")) == 1
        (_, stopped) = (await events_of(renamed, rid, "escalation_step"))[-1]
        assert stopped == {"stopped": "team 'mash' is no longer in the config"}
        async with renamed.engine.connect() as conn:
            kinds = (await conn.execute(select(deliveries.c.kind).where(deliveries.c.referral_id == rid))).scalars()
            assert "reminder" not in set(kinds)
        (row,) = await report.undelivered(renamed.engine, renamed.config.settings, clock.now())
        assert row.reference == reference and row.team == "mash (no longer in config)"
        assert row.reason == "not acknowledged within its deadline (overdue by 45m)"
        assert row.escalation.startswith("step 1 (on-duty, mailbox) at 2026-11-25 10:00 UTC; alerted: ")
    finally:
        await renamed.stop()
    await gateway.start()  # the fixture stops it again
