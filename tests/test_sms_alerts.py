"""SMS alerts out through the real twilio client, their delivery status, and acknowledgements by
reply, as a duty worker and a duty manager would check them: who was texted, what the text said,
what happened when the network or Twilio failed, and that ACK stops the chain for everyone.

Twilio is tests/twilio_fake.py on loopback; status callbacks and inbound texts are real signed POSTs
to the gateway's real port (see tests/test_sms.py for the helpers). Time moves only by the FakeClock.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.reference import ALPHABET, new_reference
from gateway.core.schema import deadlines, deliveries, events, referrals, sms_webhooks
from tests.conftest import START, both_databases, maildir_messages, referral_row, send_referral
from tests.test_sms import (
    ASHA,
    BEN,
    CHILD_DETAILS,
    CHILD_NAME,
    CHILD_NHS,
    CHILD_POSTCODE,
    CHLOE,
    DUTY_PHONE,
    ERIN,
    GATEWAY_NUMBER,
    IMMEDIATE_TEXT,
    PAT,
    PUBLIC_URL,
    STRANGER,
    SmsWorld,
    count,
    new_sid,
    put_token,
    reference_in,
    twilio_gateway,
)
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, Fault

REFERRER = "ann.example@nhs.example"  # conftest's email referrer
MASH_MAILBOX, ASHA_EMAIL, BEN_EMAIL = (
    "mash-duty@demo-council.example",
    "asha.okafor@demo-council.example",
    "ben.carter@demo-council.example",
)
ALERT = re.compile(
    r"Demo Borough Council: (?P<urgency>IMMEDIATE|URGENT|STANDARD) referral (?P<reference>\w{4}-\w{4}) "
    r"for (?P<team>[\w ]+?)(?P<escalated> \(escalated\))?\. Acknowledge: "
    + re.escape(PUBLIC_URL)
    + r"/ack/[A-Za-z0-9_\-.]+"
)


@pytest.fixture
async def sms(
    home: Path, clock: FakeClock, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SmsWorld]:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    put_token(home)
    async with FakeTwilio(now=clock.now) as api, twilio_gateway(home, clock, api, database_url=database_url) as gw:
        yield SmsWorld(gw, api, home, clock)


async def email_referral(sms: SmsWorld, mid: str) -> str:
    """An immediate referral by email (child's name, NHS number, postcode, details and all) to MASH:
    Asha and Ben are on duty (Wednesday 10:00) and are texted at step 1, with the mailbox emailed."""
    reference = await send_referral(sms.gw, mid, urgency="immediate")
    assert await sms.gw.process_all() == 1
    await sms.gw.deliver_all()
    return reference


async def sms_rows(gw: Gateway, reference: str, to: str | None = None) -> list[Any]:
    """The SMS delivery rows of a referral (for one number if given), oldest first."""
    row = await referral_row(gw, reference)
    query = (
        select(deliveries)
        .where(deliveries.c.referral_id == row.id, deliveries.c.channel == "sms")
        .order_by(deliveries.c.created_at, deliveries.c.id)
    )
    if to is not None:
        query = query.where(deliveries.c.recipient_hash == gw.signer.recipient_hash(to))
    async with gw.engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def next_step(gw: Gateway, reference: str) -> Any:
    row = await referral_row(gw, reference)
    async with gw.engine.connect() as conn:
        return (
            await conn.execute(
                select(deadlines).where(
                    deadlines.c.referral_id == row.id,
                    deadlines.c.kind == "step",
                    deadlines.c.fired_at.is_(None),
                    deadlines.c.cancelled_at.is_(None),
                )
            )
        ).one_or_none()


async def kinds(gw: Gateway, reference: str) -> list[str]:
    row = await referral_row(gw, reference)
    async with gw.engine.connect() as conn:
        return list((await conn.execute(select(events.c.kind).where(events.c.referral_id == row.id))).scalars())


async def snapshot(gw: Gateway) -> tuple[Any, ...]:
    """Everything an ACK or a callback could change."""
    tables = []
    async with gw.engine.connect() as conn:
        for table in (referrals, deliveries, deadlines, events):
            tables.append(sorted(tuple(map(str, row)) for row in (await conn.execute(select(table))).all()))
    return tuple(tables)


def mistyped(reference: str) -> str:
    """The reference with its first symbol replaced: the check symbol always catches one."""
    other = ALPHABET[(ALPHABET.index(reference[0]) + 1) % len(ALPHABET)]
    return other + reference[1:]


# ---------------------------------------------------------------------------------------------
# (2) Alerts: through Twilio, with a status callback, saying only what to do


async def test_alerts_go_through_twilio_with_a_status_callback_and_carry_only_reference_urgency_team_link(
    sms: SmsWorld,
) -> None:
    reference = await email_referral(sms, "a1")

    sent = sms.sent()
    assert sorted(r.field("To") or "" for r in sent) == [ASHA, BEN]
    for request in sent:
        assert request.answered == 201
        assert request.auth == (ACCOUNT_SID, AUTH_TOKEN)
        assert request.field("From") == GATEWAY_NUMBER
        assert request.field("StatusCallback") == PUBLIC_URL + "/sms/status"  # the public URL, not our port
        body = request.field("Body") or ""
        found = ALERT.fullmatch(body)
        assert found, body  # nothing but reference, urgency, team and link
        assert (found["reference"], found["urgency"], found["team"]) == (reference, "IMMEDIATE", "MASH duty team")
    for number in (ASHA, BEN):
        (row,) = await sms_rows(sms.gw, reference, number)
        assert (row.kind, row.state, row.provider_status) == ("alert", "sent", "queued")
        assert row.provider_id == sms.sid_to(number)
    assert (await referral_row(sms.gw, reference)).state == "alerted"

    # The short link opens the acknowledgement page for that referral.
    link = (ALERT.fullmatch(sms.texts_to(ASHA)[0]) or pytest.fail()).group(0).rsplit(": ", 1)[1]
    path = link.removeprefix(PUBLIC_URL)
    async with aiohttp.ClientSession(trust_env=False) as http, http.get(sms.port_url + path) as page:
        assert page.status == 200
        assert reference in await page.text()


# ---------------------------------------------------------------------------------------------
# Delivery status: callbacks, and a fetch by SID when none came


@both_databases
async def test_delivered_is_recorded_once_and_a_late_earlier_status_changes_nothing(sms: SmsWorld) -> None:
    reference = await email_referral(sms, "d1")
    sid = sms.sid_to(ASHA)

    sms.api.set_status(sid, "sent")
    assert await sms.status_callback(sid) == 204
    assert (await sms_rows(sms.gw, reference, ASHA))[0].provider_status == "sent"
    sms.api.set_status(sid, "delivered")
    assert await sms.status_callback(sid) == 204
    (row,) = await sms_rows(sms.gw, reference, ASHA)
    assert (row.state, row.provider_status) == ("sent", "delivered")

    before = await snapshot(sms.gw)
    stored = await count(sms.gw, sms_webhooks)
    assert await sms.status_callback(sid) == 204  # Twilio retries the same callback
    sms.api.set_status(sid, "sending")
    assert await sms.status_callback(sid) == 204  # an earlier status, arriving late
    assert await snapshot(sms.gw) == before
    assert await count(sms.gw, sms_webhooks) == stored + 1  # the late one is stored, the retry is not


@both_databases
@pytest.mark.parametrize("status", ["undelivered", "failed"])
async def test_a_failed_sms_is_retried_with_backoff_and_brings_the_next_step_forward(
    sms: SmsWorld, status: str
) -> None:
    reference = await email_referral(sms, "f1")
    assert (await next_step(sms.gw, reference)).due_at == START + timedelta(minutes=10)
    sid = sms.sid_to(ASHA)

    sms.clock.set(START + timedelta(minutes=2))
    sms.api.set_status(sid, status, error_code=30003)  # "Unreachable destination handset"
    assert await sms.status_callback(sid) == 204

    (row,) = await sms_rows(sms.gw, reference, ASHA)
    assert row.state == "pending"
    assert row.next_attempt_at == sms.clock.now() + timedelta(seconds=30)  # [outbox] first_retry
    assert status in (row.last_error or "") and "30003" in (row.last_error or "")
    # Asha will not see it, so step 2 (everyone in the team, the manager) is due now, not at +10m.
    assert (await next_step(sms.gw, reference)).due_at == sms.clock.now()
    before = await snapshot(sms.gw)
    assert await sms.status_callback(sid) == 204  # Twilio's retry of the same callback
    assert await snapshot(sms.gw) == before

    assert await sms.gw.fire_deadlines() == 1
    await sms.gw.deliver_all()
    assert CHLOE in {m.to for m in sms.api.messages.values()}  # step 2 reached the whole team now
    assert len(sms.texts_to(ASHA)) == 2  # her step 2 reminder; the alert waits for its retry

    sms.clock.advance(timedelta(seconds=30))
    await sms.gw.deliver_all()
    later = [ALERT.fullmatch(m.body) for m in sms.api.messages.values() if m.to == ASHA and m.sid != sid]
    assert sorted(bool(found and found["escalated"]) for found in later) == [False, True]  # the alert, step 2
    (row, *_) = await sms_rows(sms.gw, reference, ASHA)
    assert row.state == "sent" and row.provider_id not in (None, sid)  # sent again under a new SID
    late = await snapshot(sms.gw)
    assert await sms.status_callback(sid) == 204  # the old SID's late callbacks find nothing
    assert await snapshot(sms.gw) == late


async def test_no_final_status_in_time_is_reconciled_by_fetching_the_message(sms: SmsWorld) -> None:
    reference = await email_referral(sms, "r1")
    asha, ben = sms.sid_to(ASHA), sms.sid_to(BEN)
    sms.api.set_status(asha, "delivered")  # their callbacks are lost on the way
    sms.api.set_status(ben, "sent")

    def fetches() -> list[str]:
        return [r.path for r in sms.api.requests if r.method == "GET"]

    sms.clock.set(START + timedelta(minutes=14, seconds=59))  # [sms] status_timeout = 15m
    assert await sms.gw.reconcile_sms() == 0
    assert fetches() == []
    sms.clock.set(START + timedelta(minutes=15))
    assert await sms.gw.reconcile_sms() == 2
    assert sorted(fetches()) == sorted(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{s}.json" for s in (asha, ben))
    assert (await sms_rows(sms.gw, reference, ASHA))[0].provider_status == "delivered"
    (row,) = await sms_rows(sms.gw, reference, BEN)
    assert (row.state, row.provider_status) == ("sent", "sent")  # not final: looked at again later
    assert await sms.gw.reconcile_sms() == 0  # ...not on every pass

    # Twilio itself fails the lookup: nothing changes, and it is tried again after another wait.
    sms.clock.set(START + timedelta(minutes=30))
    sms.api.fail_next(Fault.SERVER_ERROR)
    assert await sms.gw.reconcile_sms() == 1
    assert (await sms_rows(sms.gw, reference, BEN))[0].state == "sent"

    sms.api.set_status(ben, "undelivered", error_code=30005)
    sms.clock.set(START + timedelta(minutes=44, seconds=59))
    assert await sms.gw.reconcile_sms() == 0
    sms.clock.set(START + timedelta(minutes=45))
    assert await sms.gw.reconcile_sms() == 1
    (row,) = await sms_rows(sms.gw, reference, BEN)
    assert (row.state, row.provider_status, row.provider_id) == ("pending", "undelivered", None)
    assert "30005" in (row.last_error or "")
    assert "delivery_failed" in await kinds(sms.gw, reference)


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.RATE_LIMITED, Fault.HANG])
async def test_twilio_failing_or_hanging_defers_the_sms_and_it_is_sent_later(sms: SmsWorld, fault: Fault) -> None:
    reference = await send_referral(sms.gw, "h1", urgency="immediate")
    assert await sms.gw.process_all() == 1
    sms.api.fail_next(fault)
    await sms.gw.deliver_all()  # a hang ends at the client's timeout ([sms] timeout = 1s)

    rows = await sms_rows(sms.gw, reference)
    waiting = [row for row in rows if row.state == "pending"]
    assert len(waiting) == 1 and len(sms.api.messages) == 1  # the other went
    (row,) = waiting
    assert row.next_attempt_at == START + timedelta(seconds=30)
    expected = {Fault.SERVER_ERROR: "HTTP 500", Fault.RATE_LIMITED: "HTTP 429", Fault.HANG: "unreachable"}[fault]
    assert expected in (row.last_error or "")
    assert "delivery_failed" in await kinds(sms.gw, reference)

    sms.clock.advance(timedelta(seconds=30))
    await sms.gw.deliver_all()
    assert sorted(m.to for m in sms.api.messages.values()) == [ASHA, BEN]  # each texted once, none lost
    assert all(row.state == "sent" for row in await sms_rows(sms.gw, reference))


# ---------------------------------------------------------------------------------------------
# (3) Acknowledgement by reply


@both_databases
async def test_ack_from_the_alerted_phone_stops_the_chain_and_tells_everyone(sms: SmsWorld) -> None:
    reference = await email_referral(sms, "k1")
    sms.clock.set(START + timedelta(minutes=3))
    sid = new_sid()

    reply = await sms.text(ASHA, f"ACK {reference}", sid=sid)
    assert reply.text == (
        f"Thank you, Asha Okafor: referral {reference} is acknowledged. Everyone else alerted has been told."
    )
    row = await referral_row(sms.gw, reference)
    assert (row.state, row.acknowledged_by, row.acknowledged_at) == ("acknowledged", "Asha Okafor", sms.clock.now())
    assert await next_step(sms.gw, reference) is None  # the chain is stopped
    assert await sms.text(ASHA, f"ACK {reference}", sid=sid) == reply  # Twilio's retry: same answer

    await sms.gw.deliver_all()
    # Ben, alerted by text and email, is told on both; Asha is told nothing about her own ACK.
    (told,) = sms.texts_to(BEN)[1:]
    assert told == f"Demo Borough Council: referral {reference} was acknowledged by Asha Okafor. No action needed."
    assert len(sms.texts_to(ASHA)) == 1
    assert len(maildir_messages(sms.home, BEN_EMAIL)) == 2
    assert len(maildir_messages(sms.home, MASH_MAILBOX)) == 2
    assert len(maildir_messages(sms.home, ASHA_EMAIL)) == 1  # her alert only
    (notice,) = [m for m in maildir_messages(sms.home, REFERRER) if "Asha Okafor" in m.get_content()]
    assert reference in notice["Subject"] or reference in notice.get_content()

    # Nobody is chased any more, not at step 2 nor later.
    messages = len(sms.api.messages)
    sms.clock.set(START + timedelta(hours=3))
    assert await sms.gw.fire_deadlines() == 0
    await sms.gw.deliver_all()
    assert len(sms.api.messages) == messages

    # Ben's ACK after Asha's: says who has it, changes nothing.
    before = await snapshot(sms.gw)
    later = await sms.text(BEN, f"ack {reference.lower()}")
    assert "already acknowledged by Asha Okafor" in later.text and "Nothing was changed" in later.text
    assert await snapshot(sms.gw) == before


async def test_ack_alone_acknowledges_the_latest_alert_and_the_sms_referrer_is_told_by_text(sms: SmsWorld) -> None:
    # Two immediate SMS referrals from Pat, a minute apart: both text Erin (triage, on duty).
    first = reference_in((await sms.text(PAT, "REF W1A 1AA immediate first concern")).text)
    await sms.gw.process_all()
    await sms.gw.deliver_all()
    sms.clock.advance(timedelta(minutes=1))
    second = reference_in((await sms.text(PAT, "REF W1A 1AA immediate second concern")).text)
    await sms.gw.process_all()
    await sms.gw.deliver_all()
    assert len(sms.texts_to(ERIN)) == 2

    reply = await sms.text(ERIN, "Ack")
    assert second in reply.text and "acknowledged" in reply.text and first not in reply.text
    assert (await referral_row(sms.gw, second)).acknowledged_by == "Erin Walsh"
    assert (await referral_row(sms.gw, first)).acknowledged_at is None

    await sms.gw.deliver_all()
    (notice,) = sms.texts_to(PAT)  # the referrer, on the number the referral came from
    assert notice == (
        f"Demo Borough Council: your referral {second} was acknowledged by Erin Walsh of the Front door "
        f"triage team. Quote it if you call {DUTY_PHONE}. If a child is in immediate danger call 999."
    )
    # And the first is still open: Erin acknowledges it by its reference.
    assert "acknowledged" in (await sms.text(ERIN, f"ACK {first}")).text
    assert (await referral_row(sms.gw, first)).acknowledged_by == "Erin Walsh"


REFUSALS = {
    # (who texts, what, the reply must say)
    "from a phone that was not alerted": (CHLOE, "ACK {ref}", "No alert for referral {ref} was sent to this phone"),
    "from a phone alerted about another referral": (
        ERIN,
        "ACK {ref}",
        "No alert for referral {ref} was sent to this phone",
    ),
    "from the referrer": (PAT, "ACK {ref}", "No alert for referral {ref} was sent to this phone"),
    "ACK alone from a phone never alerted": (STRANGER, "ACK", "No alert was sent to this phone"),
    "for an unknown reference": (ASHA, "ACK {unknown}", "No alert for referral {unknown} was sent to this phone"),
    "with a mistyped reference": (ASHA, "ACK {typo}", "Check the reference in the alert"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_wrong_ack_is_refused_helpfully_and_changes_nothing(sms: SmsWorld, case: str) -> None:
    reference = await email_referral(sms, "w1")  # texts Asha and Ben
    other = reference_in((await sms.text(PAT, "REF W1A 1AA immediate another concern")).text)
    await sms.gw.process_all()
    await sms.gw.deliver_all()
    assert [(ALERT.fullmatch(text) or pytest.fail(text))["reference"] for text in sms.texts_to(ERIN)] == [other]
    sender, body, says = REFUSALS[case]
    unknown = new_reference()
    values = {"ref": reference, "unknown": unknown, "typo": mistyped(reference)}
    before = await snapshot(sms.gw)

    reply = await sms.text(sender, body.format(**values))

    assert says.format(**values) in reply.text
    assert "nothing was changed" in reply.text.lower()
    assert DUTY_PHONE in reply.text  # someone to call instead
    assert await snapshot(sms.gw) == before
    await sms.gw.deliver_all()
    assert len(sms.api.messages) == 3  # the three alerts, nothing since
    assert (await referral_row(sms.gw, other)).acknowledged_at is None


# ---------------------------------------------------------------------------------------------
# No personal data in any SMS sent, nor in any log line about SMS


async def test_no_sms_sent_and_no_log_line_carries_the_childs_details(
    sms: SmsWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # every library's INFO and up...
    caplog.set_level(logging.DEBUG, logger="gateway")  # ...and all of ours and twilio's
    caplog.set_level(logging.DEBUG, logger="twilio")  # overrides the gateway's WARNING for this test

    by_email = await email_referral(sms, "p1")  # the filled form: name, NHS number, postcode, details
    by_sms = reference_in((await sms.text(PAT, IMMEDIATE_TEXT)).text)
    reference_in((await sms.text(STRANGER, IMMEDIATE_TEXT)).text)
    await sms.text(PAT, f"{CHILD_NAME} {CHILD_NHS} {CHILD_POSTCODE} {CHILD_DETAILS}")  # free text
    await sms.text(ERIN, f"ACK {CHILD_NAME} {CHILD_NHS}")  # refused, and not quoted back
    await sms.gw.process_all()
    sms.api.fail_next(Fault.SERVER_ERROR)
    await sms.gw.deliver_all()
    sms.clock.advance(timedelta(seconds=30))
    await sms.gw.deliver_all()
    for sid in list(sms.api.messages):
        sms.api.set_status(sid, "failed")
        await sms.status_callback(sid)
    await sms.text(ASHA, f"ACK {by_email}")
    await sms.text(ERIN, f"ACK {by_sms}")
    sms.clock.advance(timedelta(minutes=15))
    await sms.gw.fire_deadlines()
    await sms.gw.deliver_all()
    await sms.gw.reconcile_sms()

    bodies = [r.field("Body") or "" for r in sms.sent()]
    assert len(bodies) >= 10 and sms.replies
    lines = [record.getMessage() for record in caplog.records] + [
        json.dumps(record.args, default=str) for record in caplog.records if record.args
    ]
    assert any(record.name.startswith("gateway.sms") for record in caplog.records)
    assert any(record.name.startswith("twilio") for record in caplog.records)
    child = (CHILD_NAME, CHILD_DETAILS, "Zebra-crossing", CHILD_NHS, CHILD_POSTCODE, "W1A1AA", "03/04/2021")
    for text in bodies + sms.replies + lines:
        for secret in child:
            assert secret.lower() not in text.lower(), (secret, text)
    # Numbers and the referrer's name are personal data too: not in any log line.
    for line in lines:
        for secret in (PAT, STRANGER, ASHA, BEN, ERIN, "07700", "Pat Visitor"):
            assert secret not in line, (secret, line)
