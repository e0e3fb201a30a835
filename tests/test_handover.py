"""Referrer follow-up and hand-over at close (issue 15, items 4 and 5).

What a referrer and a duty manager would check: a referral nobody has picked up by its deadline
brings the referrer one notice (reference and a number to call, nothing about the child), once,
also after a restart; and an urgent referral still open when MASH closes on Christmas Eve goes to
the Emergency Duty Team at 17:00, who are alerted then, not on 29 December. Read from the maildirs,
the SMS spool and the durable rows; time moves only by the FakeClock.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import deadlines, deliveries, events
from gateway.report import undelivered as report
from gateway.report.timeline import timeline
from tests.conftest import (
    both_databases,
    maildir_messages,
    make_message,
    referral_body,
    referral_row,
    send_referral,
    smtp_send,
    valid_nhs,
    write_config,
)

pytestmark = both_databases

REFERRER = "ann.example@nhs.example"
MASH_PHONE = "020 7946 0001"
EDT = "edt@demo-council.example"
DEV = "dev.malik@demo-council.example"  # MASH manager
GUS = ("gus.lindqvist@demo-council.example", "+447700900106")  # EDT day shift, 08:00-20:00
CHILD_DATA = ("Sam Testchild", "W1A", "Example Street", "Zebra-crossing", valid_nhs(), "03/04/2021")
URGENT_DUE = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)  # MASH: 4 working hours from 10:00 on a Wednesday


async def kinds_of(gw: Gateway, referral_id: str) -> list[str]:
    async with gw.engine.connect() as conn:
        rows = await conn.execute(
            select(events.c.kind).where(events.c.referral_id == referral_id).order_by(events.c.id)
        )
        return [r.kind for r in rows]


async def detail_of(gw: Gateway, referral_id: str, kind: str) -> dict[str, Any]:
    async with gw.engine.connect() as conn:
        (row,) = (
            await conn.execute(
                select(events.c.detail).where(events.c.referral_id == referral_id, events.c.kind == kind)
            )
        ).all()
    detail: dict[str, Any] = json.loads(row.detail)
    return detail


async def deliveries_of(gw: Gateway, referral_id: str, kind: str) -> int:
    async with gw.engine.connect() as conn:
        rows = await conn.execute(
            select(deliveries.c.id).where(deliveries.c.referral_id == referral_id, deliveries.c.kind == kind)
        )
        return len(rows.all())


def follow_ups(home: Path) -> list[str]:
    return [m.get_content() for m in maildir_messages(home, REFERRER) if "not yet been picked up" in str(m["Subject"])]


def sms_spool(home: Path, number: str) -> list[str]:
    folder = home / "var" / "sms" / number / "new"
    return [p.read_text() for p in sorted(folder.iterdir())] if folder.is_dir() else []


async def test_the_referrer_is_told_once_when_the_deadline_is_missed_also_after_a_restart(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    reference = await send_referral(gateway, "f1", urgency="urgent")
    await gateway.process_all()
    await gateway.deliver_all()
    rid = (await referral_row(gateway, reference)).id
    assert follow_ups(home) == []  # the receipt only

    clock.set(URGENT_DUE - timedelta(seconds=1))
    await gateway.fire_deadlines()
    await gateway.deliver_all()
    assert follow_ups(home) == []  # not a second early

    clock.set(URGENT_DUE)
    await gateway.fire_deadlines()
    await gateway.deliver_all()
    (notice,) = follow_ups(home)
    assert f"Your referral {reference} has not yet been picked up by a named worker" in notice
    assert f"call {MASH_PHONE} now" in notice  # the team's own duty phone
    assert not [d for d in CHILD_DATA if d in notice]
    assert (await kinds_of(gateway, rid)).count("referrer_followed_up") == 1
    words = [e.what for e in await timeline(gateway.db, gateway.config.settings, rid, {})]
    assert "The referrer was told it has not yet been picked up, and which number to call" in words
    assert "The follow-up notice to the referrer was queued" in words
    await gateway.stop()

    # A new process on the same home and database; later steps fire, and a second missed deadline
    # (a row as a re-dated deadline would write) is overdue again but tells the referrer nothing more.
    again = Gateway(config_mod.load(home / "config" / "gateway.toml"), clock=clock, workers=False)
    await again.start()
    try:
        async with again.db.write() as conn:
            await conn.execute(
                deadlines.insert(),
                [{"referral_id": rid, "kind": "ack", "due_at": URGENT_DUE + timedelta(hours=1)}],
            )
        clock.set(URGENT_DUE + timedelta(hours=2))
        assert await again.fire_deadlines() >= 2  # the second deadline and step 3
        await again.deliver_all()
        assert (await kinds_of(again, rid)).count("overdue") == 2
        assert (await kinds_of(again, rid)).count("referrer_followed_up") == 1
        assert await deliveries_of(again, rid, "follow_up") == 1
        assert len(follow_ups(home)) == 1
    finally:
        await again.stop()


async def test_two_instances_firing_the_same_deadline_tell_the_referrer_once(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    reference = await send_referral(gateway, "f4", urgency="urgent")
    await gateway.process_all()
    other = Gateway(config_mod.load(home / "config" / "gateway.toml"), clock=clock, workers=False)
    await other.start()
    try:
        clock.set(URGENT_DUE)
        await asyncio.gather(gateway.fire_deadlines(), other.fire_deadlines())
        await asyncio.gather(gateway.deliver_all(), other.deliver_all())
        rid = (await referral_row(gateway, reference)).id
        assert (await kinds_of(gateway, rid)).count("referrer_followed_up") == 1
        assert await deliveries_of(gateway, rid, "follow_up") == 1 and len(follow_ups(home)) == 1
    finally:
        await other.stop()


async def test_nobody_is_told_when_no_receipt_went_out(gateway: Gateway, home: Path, clock: FakeClock) -> None:
    # Sent by an automatic system (RFC 3834: never answered, or we could loop): no receipt went out.
    message = make_message(referral_body(urgency="urgent"), message_id="<f2@nhs.example>")
    message["Auto-Submitted"] = "auto-generated"
    code, text = await smtp_send(gateway.smtp_port, message)
    assert code == 250, text
    reference = text.split()[-1]
    await gateway.process_all()
    await gateway.deliver_all()
    rid = (await referral_row(gateway, reference)).id
    assert "receipt_skipped" in await kinds_of(gateway, rid)

    clock.set(URGENT_DUE)
    await gateway.fire_deadlines()
    await gateway.deliver_all()
    kinds = await kinds_of(gateway, rid)
    assert "overdue" in kinds and "referrer_followed_up" not in kinds
    assert await deliveries_of(gateway, rid, "follow_up") == 0
    assert maildir_messages(home, REFERRER) == []


async def test_follow_up_can_be_turned_off(home: Path, clock: FakeClock, database_url: str) -> None:
    path = write_config(home, database_url=database_url)
    path.write_text(path.read_text().replace("follow_up = true", "follow_up = false"))
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    try:
        reference = await send_referral(gw, "f3", urgency="urgent")
        await gw.process_all()
        clock.set(URGENT_DUE)
        await gw.fire_deadlines()
        await gw.deliver_all()
        rid = (await referral_row(gw, reference)).id
        assert "overdue" in await kinds_of(gw, rid)
        assert await deliveries_of(gw, rid, "follow_up") == 0 and follow_ups(home) == []
    finally:
        await gw.stop()


async def test_an_urgent_referral_at_1655_on_christmas_eve_goes_to_the_edt_at_1700(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    # Thursday 24 December 2026, 16:55 (GMT): MASH is open until 17:00; then Christmas Day, a
    # weekend and Boxing Day (observed on Monday 28th) are closed.
    received = datetime(2026, 12, 24, 16, 55, tzinfo=UTC)
    close = datetime(2026, 12, 24, 17, 0, tzinfo=UTC)
    clock.set(received)
    reference = await send_referral(gateway, "h1", urgency="urgent")
    await gateway.process_all()
    await gateway.deliver_all()
    row = await referral_row(gateway, reference)
    assert (row.team_id, row.due_at) == ("mash", datetime(2026, 12, 29, 12, 55, tzinfo=UTC))
    assert maildir_messages(home, EDT) == []

    clock.set(close - timedelta(seconds=1))
    await gateway.fire_deadlines()
    await gateway.deliver_all()
    assert maildir_messages(home, EDT) == [] and maildir_messages(home, GUS[0]) == []

    clock.set(close)
    assert await gateway.fire_deadlines() == 1
    assert await gateway.fire_deadlines() == 0  # once
    await gateway.deliver_all()
    # The EDT is alerted at the close: its mailbox and Gus, on duty, by email and by text.
    for address in (EDT, GUS[0]):
        (alert,) = maildir_messages(home, address)
        assert reference in str(alert["Subject"]) and "Emergency Duty Team" in str(alert["Subject"])
        body = alert.get_content()
        assert "Acknowledge by: Thursday 24 December 2026, 18:00" in body
        # It says it was handed over, and from whom, so the EDT knows it is MASH's day referral.
        assert "handed over from MASH duty team at office close" in " ".join(body.split())
        assert "A new safeguarding referral" not in body
        assert not [d for d in CHILD_DATA if d in body]
    (text,) = sms_spool(home, GUS[1])
    assert reference in text and not [d for d in CHILD_DATA if d in text]
    assert "handed over from MASH duty team at office close" in text and "Emergency Duty Team" in text

    # While out of hours the deadline is the EDT's own (1 hour on the clock), not 29 December.
    row = await referral_row(gateway, reference)
    handed = await detail_of(gateway, row.id, "handed_over")
    assert (handed["to"], handed["from"]) == ("edt", "mash")
    assert row.due_at == close + timedelta(hours=1) and row.state == "alerted" and row.team_id == "mash"
    words = [e.what for e in await timeline(gateway.db, gateway.config.settings, row.id, {})]
    assert any(w.startswith("Handed to Emergency Duty Team at office close; alerted ") for w in words), words

    # Missed at 18:00: overdue then, with the referrer's follow-up, and only once; and the chain's
    # next step (MASH's managers), which waited for the 29 December deadline, comes forward to it.
    clock.set(close + timedelta(hours=1))
    assert await gateway.fire_deadlines() == 2
    await gateway.deliver_all()
    kinds = await kinds_of(gateway, row.id)
    assert kinds.count("overdue") == 1 and kinds.count("referrer_followed_up") == 1
    assert len(follow_ups(home)) == 1
    (reminder,) = maildir_messages(home, DEV)
    assert reference in str(reminder["Subject"])
    (late,) = await report.undelivered(gateway.engine, gateway.config.settings, clock.now())
    assert late.reference == reference
    assert late.reason.startswith(
        "not acknowledged within 1 hour of the hand-over to Emergency Duty Team at office close"
    )
    clock.set(datetime(2026, 12, 29, 13, 0, tzinfo=UTC))
    await gateway.fire_deadlines()
    assert (await kinds_of(gateway, row.id)).count("overdue") == 1  # the 29 December deadline is gone


async def test_an_acknowledged_or_standard_referral_is_not_handed_over(gateway: Gateway, clock: FakeClock) -> None:
    clock.set(datetime(2026, 12, 24, 16, 0, tzinfo=UTC))
    standard = await send_referral(gateway, "h2", urgency="standard")  # amber: MASH keeps it
    await gateway.process_all()
    rid = (await referral_row(gateway, standard)).id
    async with gateway.engine.connect() as conn:
        kinds = [r.kind for r in await conn.execute(select(deadlines.c.kind).where(deadlines.c.referral_id == rid))]
    assert "handover" not in kinds
    clock.set(datetime(2026, 12, 24, 17, 0, tzinfo=UTC))
    await gateway.fire_deadlines()
    assert "handed_over" not in await kinds_of(gateway, rid)
