"""Retention of an SMS referral: the texts and Twilio's callbacks about it are sealed rows of their
own (sms_webhooks), and they go with its content. An SMS referral from a registered professional,
its alert texted to the duty worker (with Twilio's status callback), her ACK by text, the closure;
then the clock moves past the retention period and the gateway purges."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from gateway.core.clock import FakeClock
from gateway.core.schema import sms_webhooks
from gateway.staff.users import Role, Users
from gateway.track.close import close
from gateway.track.verify import verify
from tests.conftest import referral_row
from tests.test_sms import ERIN, IMMEDIATE_TEXT, PAT, SmsWorld, new_sid, put_token, reference_in, twilio_gateway
from tests.twilio_fake import FakeTwilio


@pytest.fixture
async def sms(home: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SmsWorld]:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    put_token(home)
    async with FakeTwilio(now=clock.now) as api, twilio_gateway(home, clock, api) as gw:
        yield SmsWorld(gw, api, home, clock)


async def webhooks(sms: SmsWorld) -> dict[str, tuple[bytes | None, bytes | None]]:
    """Each stored webhook (kind, SID, status) with its sealed form and reply."""
    async with sms.gw.engine.connect() as conn:
        rows = await conn.execute(
            select(
                sms_webhooks.c.kind,
                sms_webhooks.c.message_sid,
                sms_webhooks.c.status,
                sms_webhooks.c.payload,
                sms_webhooks.c.reply,
            )
        )
        return {f"{r.kind} {r.message_sid} {r.status}": (r.payload, r.reply) for r in rows}


async def test_the_texts_about_a_purged_sms_referral_go_with_it(sms: SmsWorld) -> None:
    gw = sms.gw
    referral_sid, ack_sid, other_sid = new_sid(), new_sid(), new_sid()
    reference = reference_in((await sms.text(PAT, IMMEDIATE_TEXT, sid=referral_sid)).text)
    assert await gw.process_all() == 1
    await gw.deliver_all()
    alert_sid = sms.sid_to(ERIN)
    assert await sms.status_callback(alert_sid) == 204  # Twilio reports the alert's status (a callback row)
    assert "acknowledged" in (await sms.text(ERIN, f"ACK {reference}", sid=ack_sid)).text
    await gw.deliver_all()  # the referrer is told by text
    text = "REF W1A 1AA urgent another concern"
    other = reference_in((await sms.text(PAT, text, sid=other_sid)).text)  # stays open
    await gw.process_all()
    await gw.deliver_all()
    users = Users(gw.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    coordinator = await users.add(
        "coord", "Cora Coordinator", Role.COORDINATOR, [], "violet kettle harbour", sms.clock.now()
    )
    row = await referral_row(gw, reference)
    await close(gw.db, gw.tracker.referrers, row.id, coordinator.id, "no_further_action", sms.clock.now())
    await gw.deliver_all()  # the outcome, by text
    before = await webhooks(sms)
    # The referral's own text, the ACK of it, and Twilio's callback about its alert.
    about_it = {f"inbound {referral_sid} ", f"inbound {ack_sid} ", f"status {alert_sid} queued"}
    assert about_it <= set(before) and all(before[key][0] for key in about_it)

    sms.clock.advance(timedelta(days=91))
    assert await gw.purge_all() == 1
    after = await webhooks(sms)
    for key in before:
        if key in about_it:
            assert after[key] == (None, None), key
    kept = [key for key in before if key not in about_it]
    assert kept and all(after[key] == before[key] for key in kept)  # the other referral's text is whole
    assert (await referral_row(gw, other)).purged_at is None
    assert await verify(gw.engine, sms.clock.now()) == []
