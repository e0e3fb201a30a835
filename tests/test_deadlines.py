"""Per-urgency deadlines: a referral not acknowledged in time is reminded and reported."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from gateway import config as config_mod
from gateway import report
from gateway.app import Gateway
from gateway.clock import FakeClock
from gateway.schema import deadlines, referrals
from tests.conftest import both_databases, maildir_messages, make_message, referral_body, smtp_send

MASH = "mash-duty@demo-council.example"

pytestmark = both_databases


async def send(gateway: Gateway, urgency: str, mid: str) -> str:
    code, text = await smtp_send(gateway.smtp_port, make_message(referral_body(urgency=urgency), message_id=mid))
    assert code == 250
    return text.split()[-1]


async def test_deadline_follows_urgency_and_missed_ones_are_reminded_and_reported(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    immediate = await send(gateway, "immediate", "<d1@nhs.example>")
    standard = await send(gateway, "standard", "<d2@nhs.example>")
    start = clock.now()
    await gateway.process_all()
    await gateway.deliver_all()
    async with gateway.engine.connect() as conn:
        due = {r.reference: r.due_at for r in await conn.execute(select(referrals.c.reference, referrals.c.due_at))}
    assert due == {immediate: start + timedelta(minutes=15), standard: start + timedelta(hours=24)}

    clock.advance(timedelta(minutes=14, seconds=59))
    assert await gateway.fire_deadlines() == 0
    assert await report.undelivered(gateway.engine, gateway.config.settings, clock.now()) == []

    clock.advance(timedelta(seconds=1))
    assert await gateway.fire_deadlines() == 1
    assert await gateway.fire_deadlines() == 0  # fired once, not again
    await gateway.deliver_all()
    reminders = [m for m in maildir_messages(home, MASH) if m["Subject"].startswith("OVERDUE")]
    assert [m["X-Referral-Reference"] for m in reminders] == [immediate]

    clock.advance(timedelta(hours=2))
    (row,) = await report.undelivered(gateway.engine, gateway.config.settings, clock.now())
    assert row.reference == immediate and row.state == "alerted" and row.team == "MASH duty team"
    assert row.reason == "not acknowledged within 15m (overdue by 2h 00m)"
    assert report.human(row.age) == "2h 15m"


async def test_acknowledgement_cancels_the_deadline(gateway: Gateway, clock: FakeClock) -> None:
    reference = await send(gateway, "immediate", "<d3@nhs.example>")
    await gateway.process_all()
    await gateway.deliver_all()
    async with gateway.engine.connect() as conn:
        ref = (await conn.execute(select(referrals).where(referrals.c.reference == reference))).one()
    recipient = gateway.signer.recipient_hash("mash-duty@demo-council.example")
    await gateway.tracker.acknowledge(ref.id, recipient, "Dee Worker")
    clock.advance(timedelta(hours=1))
    assert await gateway.fire_deadlines() == 0
    async with gateway.engine.connect() as conn:
        (deadline,) = (await conn.execute(select(deadlines).where(deadlines.c.referral_id == ref.id))).all()
    assert deadline.cancelled_at is not None and deadline.fired_at is None
    assert await report.undelivered(gateway.engine, gateway.config.settings, clock.now()) == []


async def test_a_team_renamed_in_config_does_not_stop_deadlines_or_the_report(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    reference = await send(gateway, "immediate", "<d4@nhs.example>")
    await gateway.process_all()
    await gateway.deliver_all()
    await gateway.stop()
    path = home / "config" / "gateway.toml"
    path.write_text(
        path.read_text().replace('id = "mash"', 'id = "mash-north"').replace('team = "mash"', 'team = "mash-north"')
    )
    renamed = Gateway(config_mod.load(path), clock=clock, workers=False)
    await renamed.start()
    try:
        clock.advance(timedelta(hours=1))
        assert await renamed.fire_deadlines() == 1  # fired, without a reminder to a team that is gone
        (row,) = await report.undelivered(renamed.engine, renamed.config.settings, clock.now())
        assert row.reference == reference and row.team == "mash (no longer in config)"
        assert "not acknowledged within 15m" in row.reason
    finally:
        await renamed.stop()
    await gateway.start()  # the fixture stops it again
