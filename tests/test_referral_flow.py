"""End to end in one process: a referral arrives by real SMTP, is routed, alerted, acknowledged."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import aiohttp
from sqlalchemy import select

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.reference import normalise_reference
from gateway.core.schema import events, referrals
from tests.conftest import both_databases, maildir_messages, make_message, referral_body, smtp_send

MASH = "mash-duty@demo-council.example"
TRIAGE = "triage@demo-council.example"
REFERRER = "ann.example@nhs.example"

pytestmark = both_databases


def ack_link(alert_text: str) -> str:
    match = re.search(r"(http://\S+/ack/\S+)", alert_text)
    assert match, alert_text
    return match.group(1)


async def referral_state(gw: Gateway, reference: str) -> str:
    async with gw.engine.connect() as conn:
        return str(
            (await conn.execute(select(referrals.c.state).where(referrals.c.reference == reference))).scalar_one()
        )


async def test_referral_by_email_is_routed_alerted_and_receipted(gateway: Gateway, home: Path) -> None:
    code, text = await smtp_send(gateway.smtp_port, make_message(referral_body(), message_id="<m1@nhs.example>"))
    assert code == 250
    reference = text.split()[-1]
    assert normalise_reference(reference) == reference  # the check character is right

    assert await gateway.process_all() == 1
    # The team mailbox and the two on the rota on Wednesday morning (Asha and Ben), and the receipt.
    assert await gateway.deliver_all() == 4
    for member in ("asha.okafor@demo-council.example", "ben.carter@demo-council.example"):
        (personal,) = maildir_messages(home, member)
        assert personal["X-Referral-Reference"] == reference
        assert f"The link is for {member} only" in personal.get_content()
    assert maildir_messages(home, "chloe.davies@demo-council.example") == []  # not on duty today

    (alert,) = maildir_messages(home, MASH)
    assert alert["X-Referral-Reference"] == reference
    assert "URGENT referral" in alert["Subject"]
    body = alert.get_content()
    assert reference in body and "MASH duty team" in body
    # Unencrypted mail carries no personal data about the child or the concern.
    for secret in ("Sam Testchild", "W1A", "Example Street", "Zebra-crossing", "9990000018"):
        assert secret not in alert.as_string()

    (receipt,) = maildir_messages(home, REFERRER)
    assert reference in receipt["Subject"] and reference in receipt.get_content()
    assert "Sam Testchild" not in receipt.as_string()
    assert await referral_state(gateway, reference) == "alerted"


async def test_acknowledge_by_link_get_confirms_post_records(gateway: Gateway, home: Path, clock: FakeClock) -> None:
    code, text = await smtp_send(gateway.smtp_port, make_message(referral_body(), message_id="<m2@nhs.example>"))
    assert code == 250
    reference = text.split()[-1]
    await gateway.process_all()
    await gateway.deliver_all()
    link = ack_link(maildir_messages(home, MASH)[0].get_content())
    link = link.replace("127.0.0.1:8080", f"127.0.0.1:{gateway.http_port}")
    clock.advance(timedelta(minutes=5))

    async with aiohttp.ClientSession() as http:
        async with http.get(link) as response:
            page = await response.text()
            assert response.status == 200
            assert f"Acknowledge referral {reference}" in page
            assert response.headers["Referrer-Policy"] == "no-referrer"
        assert await referral_state(gateway, reference) == "alerted"  # GET changed nothing

        async with http.post(link, data={"name": ""}) as response:
            assert response.status == 400
            assert "Enter your full name" in await response.text()
        assert await referral_state(gateway, reference) == "alerted"

        async with http.post(link, data={"name": "Dee Worker"}) as response:
            assert response.status == 200
            assert "acknowledged by <strong>Dee Worker</strong>" in await response.text()
        assert await referral_state(gateway, reference) == "acknowledged"

        async with http.post(link, data={"name": "Someone Else"}) as response:
            page = await response.text()
            assert "already acknowledged" in page and "Dee Worker" in page

    async with gateway.engine.connect() as conn:
        row = (await conn.execute(select(referrals).where(referrals.c.reference == reference))).one()
        acks = (
            await conn.execute(select(events).where(events.c.referral_id == row.id, events.c.kind == "acknowledged"))
        ).all()
    assert row.acknowledged_by == "Dee Worker" and row.acknowledged_at == clock.now()
    assert len(acks) == 1 and acks[0].actor == "person:Dee Worker"

    await gateway.deliver_all()
    notices = [m for m in maildir_messages(home, REFERRER) if "acknowledged" in m["Subject"]]
    assert len(notices) == 1
    assert "Dee Worker" in notices[0].get_content() and "MASH duty team" in notices[0].get_content()


async def test_incomplete_referral_goes_to_triage_saying_what_is_missing(gateway: Gateway, home: Path) -> None:
    body = "Referrer name: Ann Example\nChild name: Sam Testchild\nDetails:\nWorried about Sam.\n"
    code, _ = await smtp_send(gateway.smtp_port, make_message(body, message_id="<m3@nhs.example>"))
    assert code == 250
    await gateway.process_all()
    await gateway.deliver_all()
    (alert,) = maildir_messages(home, TRIAGE)
    assert alert["Subject"].startswith("[INCOMPLETE]")
    text = alert.get_content()
    assert "INCOMPLETE" in text
    assert "postcode" in text.lower() and "urgency" in text.lower()
    assert "Sam Testchild" not in text and "Worried" not in text
    assert maildir_messages(home, MASH) == []


async def test_same_message_twice_makes_one_referral(gateway: Gateway, home: Path) -> None:
    msg = make_message(referral_body(), message_id="<twice@nhs.example>")
    first = await smtp_send(gateway.smtp_port, msg)
    second = await smtp_send(gateway.smtp_port, msg)
    assert first[0] == second[0] == 250
    assert first[1].split()[-1] == second[1].split()[-1]  # the same reference both times
    assert await gateway.process_all() == 1
    async with gateway.engine.connect() as conn:
        assert len((await conn.execute(select(referrals.c.id))).all()) == 1


async def test_unknown_recipient_refused_at_rcpt(gateway: Gateway) -> None:
    code, text = await smtp_send(
        gateway.smtp_port, make_message(referral_body()), recipients=("someone-else@demo-council.example",)
    )
    assert code == 550
    assert "referrals@demo-council.example" in text
