"""SMS in over Twilio, as a registered professional, a stranger and Twilio itself would see it.

Every request is a real HTTP POST to the gateway's real port, signed with twilio's own
RequestValidator over the configured public URL (``[http] public_url`` stays on port 8080 while the
gateway listens on a random port: exactly a reverse proxy in front of it). Alerts and notices go out
through the real twilio client to tests/twilio_fake.py. Time moves only by the FakeClock.

The helpers here (`SmsWorld`, the `sms` fixture) are shared with tests/test_sms_alerts.py.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import delete, func, select
from twilio.request_validator import RequestValidator

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.keyfiles import KeyFileError
from gateway.core.schema import events, messages, referrals, sms_webhooks
from gateway.report import undelivered as report
from tests.conftest import START, both_databases, referral_row, write_config
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, RecordedRequest

PUBLIC_URL = "http://127.0.0.1:8080"  # [http] public_url in config/gateway.toml: what Twilio calls
GATEWAY_NUMBER = "+447700900000"
PAT = "+447700900201"  # Pat Visitor, Demo Community Health (registered in config/gateway.toml)
SOL = "+447700900202"  # Sol Teacher, Demo Primary School (registered by the tests' extra config)
STRANGER = "+447700900999"  # in no directory
ASHA, BEN, CHLOE = "+447700900101", "+447700900102", "+447700900103"  # MASH; Asha and Ben on duty Wednesdays
ERIN = "+447700900105"  # triage, on duty weekdays 09:00-17:00
DUTY_PHONE = "020 7946 0000"  # [gateway] duty_phone
MASH_PHONE, TRIAGE_PHONE, EDT_PHONE = "020 7946 0001", "020 7946 0002", "020 7946 0003"

# What a hurried professional might type although SMS must not carry it: no SMS out and no log
# line may ever repeat any of it.
CHILD_NAME = "Sam Testchild"
CHILD_DETAILS = "Zebra-crossing-unique-detail"
CHILD_NHS = "9990000018"
CHILD_POSTCODE = "W1A 1AA"
IMMEDIATE_TEXT = f"REF {CHILD_POSTCODE} immediate {CHILD_NAME} NHS {CHILD_NHS} {CHILD_DETAILS} at the gate now"

SMS_CONFIG = """
[[partners]]
name = "Demo Primary School"
addresses = ["@primary-school.example"]
[[partners.professionals]]
name = "Sol Teacher"
mobile = "07700 900202"

[sms]
provider = "twilio"
account_sid = "{account_sid}"
from_number = "{from_number}"
api_base_url = "{api}"
timeout = "1s"
status_timeout = "15m"
inbound_limit = {limit}
inbound_window = "1h"
"""


def sms_config(api: str, *, limit: int = 20) -> str:
    return SMS_CONFIG.format(account_sid=ACCOUNT_SID, from_number=GATEWAY_NUMBER, api=api, limit=limit)


def put_token(home: Path, token: str = AUTH_TOKEN, mode: int = 0o600) -> Path:
    keys = home / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = keys / "twilio-auth-token"
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return path


@dataclass(frozen=True)
class Reply:
    status: int
    texts: list[str]  # the <Message> texts of the TwiML reply: what the phone receives
    body: str

    @property
    def text(self) -> str:
        assert len(self.texts) == 1, self.body
        return self.texts[0]


def twiml_texts(body: str) -> list[str]:
    root = ET.fromstring(body)  # noqa: S314 - our own server's answer
    assert root.tag == "Response", body
    return [message.text or "" for message in root.iter("Message")]


def inbound_form(sender: str, body: str, sid: str) -> dict[str, str]:
    """The fields Twilio posts for an incoming SMS (a UK long number)."""
    return {
        "ToCountry": "GB",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "FromCountry": "GB",
        "To": GATEWAY_NUMBER,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": sender,
        "ApiVersion": "2010-04-01",
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def new_sid() -> str:
    return "SM" + uuid.uuid4().hex


@dataclass
class SmsWorld:
    """The gateway with Twilio on: the fake Twilio API it sends through, and the phones that text it."""

    gw: Gateway
    api: FakeTwilio
    home: Path
    clock: FakeClock
    replies: list[str] = field(default_factory=list)  # every SMS reply the gateway gave, for the scans

    @property
    def port_url(self) -> str:
        return f"http://127.0.0.1:{self.gw.http_port}"

    async def post(
        self, path: str, form: dict[str, str], *, signature: str | None = None, sign_url: str | None = None
    ) -> tuple[int, str]:
        """POST to the real port. Signed by default as Twilio signs: over the public URL it called."""
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if signature is None:
            signature = RequestValidator(AUTH_TOKEN).compute_signature(sign_url or PUBLIC_URL + path, form)
        if signature:
            headers["X-Twilio-Signature"] = signature
        async with (
            aiohttp.ClientSession(trust_env=False) as http,
            http.post(self.port_url + path, data=form, headers=headers) as response,
        ):
            return response.status, await response.text()

    async def text(self, sender: str, body: str, *, sid: str | None = None) -> Reply:
        """A phone texts the gateway's number; Twilio posts it to /sms/inbound."""
        status, answer = await self.post("/sms/inbound", inbound_form(sender, body, sid or new_sid()))
        assert status == 200, (status, answer)
        texts = twiml_texts(answer)
        self.replies += texts
        return Reply(status, texts, answer)

    async def status_callback(self, sid: str) -> int:
        """Twilio reports the message's current status, through the proxy (the gateway's real port)."""
        delivery = await self.api.send_status_callback(sid, via=self.port_url)
        return delivery.answered

    def sent(self) -> list[RecordedRequest]:
        """Every message the gateway asked Twilio to send (answered or not)."""
        return [r for r in self.api.requests if r.method == "POST" and r.path.endswith("/Messages.json")]

    def texts_to(self, number: str) -> list[str]:
        """The bodies of the messages Twilio accepted for a number, oldest first."""
        return [m.body for m in self.api.messages.values() if m.to == number]

    def sid_to(self, number: str) -> str:
        (sid,) = [m.sid for m in self.api.messages.values() if m.to == number]
        return sid


# Every SMS referral is incomplete (no child's name or date of birth by SMS), so it goes to the
# default route, triage, whose chain in the demo config follows the urgency: an immediate SMS
# referral texts Erin (triage, on duty in office hours) at step 1.


@asynccontextmanager
async def twilio_gateway(
    home: Path, clock: FakeClock, api: FakeTwilio, *, limit: int = 20, database_url: str = ""
) -> AsyncIterator[Gateway]:
    path = write_config(home, sms_config(api.base_url, limit=limit), database_url=database_url)
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def twilio_api(clock: FakeClock) -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(now=clock.now) as api:
        yield api


@pytest.fixture
async def sms(
    home: Path, clock: FakeClock, twilio_api: FakeTwilio, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SmsWorld]:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    put_token(home)
    async with twilio_gateway(home, clock, twilio_api, database_url=database_url) as gw:
        yield SmsWorld(gw, twilio_api, home, clock)


def reference_in(text: str) -> str:
    found = re.findall(r"\b[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}\b", text)
    assert len(set(found)) == 1, text
    return found[0]


async def count(gw: Gateway, table: Any) -> int:
    async with gw.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def event_kinds(gw: Gateway, referral_id: str) -> list[str]:
    async with gw.engine.connect() as conn:
        rows = await conn.execute(
            select(events.c.kind).where(events.c.referral_id == referral_id).order_by(events.c.id)
        )
        return [row.kind for row in rows]


# ---------------------------------------------------------------------------------------------
# (1) Quick referrals from registered professionals; strangers are held, never dropped


async def test_immediate_quick_referral_gets_reference_999_and_the_teams_duty_phone(sms: SmsWorld) -> None:
    reply = await sms.text(PAT, IMMEDIATE_TEXT)

    reference = reference_in(reply.text)
    assert reply.text.startswith("If a child is in immediate danger call 999")  # first, not after the details
    # Stored before the answer: the referral exists with that reference, waiting to be processed.
    row = await referral_row(sms.gw, reference)
    assert (row.channel, row.state) == ("sms", "received")

    assert await sms.gw.process_all() == 1
    row = await referral_row(sms.gw, reference)
    assert (row.state, row.urgency, row.incomplete) == ("routed", "immediate", True)
    # Incomplete (an SMS carries no name or date of birth): triage, in office hours. The reply gave
    # that team's own duty line, not the switchboard.
    assert (row.team_id, row.route_name) == ("triage", "default-triage")
    assert TRIAGE_PHONE in reply.text and "Front door triage team" in reply.text
    assert DUTY_PHONE not in reply.text


async def test_a_missed_deadline_texts_the_referrer_once_with_the_teams_phone(sms: SmsWorld) -> None:
    reference = reference_in((await sms.text(PAT, IMMEDIATE_TEXT)).text)
    await sms.gw.process_all()
    await sms.gw.deliver_all()
    assert sms.texts_to(PAT) == []  # the webhook's reply was the receipt

    sms.clock.set(START + timedelta(minutes=15))  # triage's immediate deadline (the gateway-wide 15m)
    await sms.gw.fire_deadlines()
    await sms.gw.deliver_all()
    (follow_up,) = sms.texts_to(PAT)
    assert f"your referral {reference} has not yet been picked up by a named worker" in follow_up
    assert f"call {TRIAGE_PHONE} now" in follow_up
    assert not [d for d in (CHILD_NAME, CHILD_DETAILS, CHILD_NHS, CHILD_POSTCODE) if d in follow_up]
    sms.clock.set(START + timedelta(hours=3))  # more escalation steps: still one text
    await sms.gw.fire_deadlines()
    await sms.gw.deliver_all()
    assert len(sms.texts_to(PAT)) == 1
    row = await referral_row(sms.gw, reference)
    assert (await event_kinds(sms.gw, row.id)).count("referrer_followed_up") == 1


async def test_out_of_hours_the_reply_gives_the_emergency_duty_teams_phone(sms: SmsWorld) -> None:
    sms.clock.set(START.replace(hour=22))  # Wednesday 22:00 (GMT): triage is closed
    reply = await sms.text(PAT, "REF NW1 4NP imm child alone at home")
    assert "999" in reply.text and EDT_PHONE in reply.text and "Emergency Duty Team" in reply.text
    await sms.gw.process_all()
    assert (await referral_row(sms.gw, reference_in(reply.text))).team_id == "edt"


async def test_free_text_becomes_an_incomplete_referral_for_triage(sms: SmsWorld) -> None:
    reply = await sms.text(SOL, "Worried about a pupil who came in with bruises, please call me back")

    reference = reference_in(reply.text)
    assert TRIAGE_PHONE in reply.text and "Front door triage team" in reply.text
    assert "999" in reply.text
    assert await sms.gw.process_all() == 1
    row = await referral_row(sms.gw, reference)
    assert (row.state, row.team_id, row.urgency, row.incomplete) == ("routed", "triage", None, True)
    assert row.route_name == "default-triage"
    assert "parsed" in await event_kinds(sms.gw, row.id)


async def test_a_message_from_an_unknown_number_is_stored_quarantined_and_told_the_duty_phone(
    sms: SmsWorld,
) -> None:
    reply = await sms.text(STRANGER, IMMEDIATE_TEXT)

    reference = reference_in(reply.text)
    assert DUTY_PHONE in reply.text and "999" in reply.text
    assert "not registered" in reply.text
    assert MASH_PHONE not in reply.text  # a stranger learns no team's direct line

    assert await sms.gw.process_all() == 1
    row = await referral_row(sms.gw, reference)
    assert row.state == "quarantined"
    await sms.gw.deliver_all()
    assert sms.sent() == []  # nobody was alerted about an unverified sender
    (held,) = [
        r for r in await report.undelivered(sms.gw.engine, sms.gw.config.settings, START) if r.reference == reference
    ]
    assert "quarantined" in str(held) and "not registered to a partner organisation" in str(held)


async def test_help_and_stop_get_the_replies_carriers_expect_and_make_no_referral(sms: SmsWorld) -> None:
    for word in ("HELP", "help", "Info."):
        text = (await sms.text(PAT, word)).text
        assert "Demo Borough Council" in text
        assert "REF" in text and "ACK" in text  # how to use the service
        assert DUTY_PHONE in text and "999" in text  # who to call
        assert "STOP" in text  # how to opt out
    for word in ("STOP", "stop", "Unsubscribe"):
        text = (await sms.text(STRANGER, word)).text
        assert "unsubscribed" in text and "Demo Borough Council" in text
        assert "START" in text  # how to opt back in
    text = (await sms.text(STRANGER, "START")).text
    assert "subscribed" in text and "HELP" in text

    assert await count(sms.gw, referrals) == 0
    assert await count(sms.gw, sms_webhooks) == 7  # each stored all the same


# ---------------------------------------------------------------------------------------------
# (4) Only Twilio may call the webhooks, as signed over the public URL


def _inbound(sid: str) -> dict[str, str]:
    return inbound_form(PAT, IMMEDIATE_TEXT, sid)


def _status(sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID, "To": ASHA}


FORGERIES = {
    "no signature": lambda url, form: ("", None, form),
    "wrong token": lambda url, form: (RequestValidator("0" * 32).compute_signature(url, form), None, form),
    "over the proxied url": lambda url, form: (None, "real port", form),
    "body changed after signing": lambda url, form: (
        RequestValidator(AUTH_TOKEN).compute_signature(url, form),
        None,
        form | {"Body": form.get("Body", "") + "!", "MessageStatus": "failed"},
    ),
}


@pytest.mark.parametrize("path", ["/sms/inbound", "/sms/status"])
@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_an_unsigned_or_wrongly_signed_request_is_refused_and_nothing_is_stored(
    sms: SmsWorld, path: str, forgery: str
) -> None:
    form = _inbound(new_sid()) if path == "/sms/inbound" else _status(new_sid())
    signature, sign_over, posted = FORGERIES[forgery](PUBLIC_URL + path, form)
    sign_url = sms.port_url + path if sign_over == "real port" else None
    status, answer = await sms.post(path, posted, signature=signature, sign_url=sign_url)

    assert status == 403
    assert "Body" not in answer and CHILD_NAME not in answer
    for table in (messages, referrals, sms_webhooks):
        assert await count(sms.gw, table) == 0
    # The same request signed as Twilio signs it is accepted: the refusals were for the signature.
    status, _ = await sms.post(path, form)
    assert status in (200, 204)


# ---------------------------------------------------------------------------------------------
# Must hold: stored before answered, idempotent on MessageSid


@both_databases
async def test_twilio_retrying_a_message_makes_no_twin_and_gets_the_same_reply(sms: SmsWorld) -> None:
    sid = new_sid()
    first = await sms.text(PAT, IMMEDIATE_TEXT, sid=sid)
    again = await sms.text(PAT, IMMEDIATE_TEXT, sid=sid)
    assert again.texts == first.texts
    help_sid = new_sid()
    assert (await sms.text(PAT, "HELP", sid=help_sid)).texts == (await sms.text(PAT, "HELP", sid=help_sid)).texts

    assert await count(sms.gw, messages) == 1
    assert await count(sms.gw, referrals) == 1
    assert await count(sms.gw, sms_webhooks) == 2
    assert await sms.gw.process_all() == 1
    await sms.gw.deliver_all()
    alerts = len(sms.sent())
    assert {r.field("To") for r in sms.sent()} == {ERIN}  # triage's duty worker, once
    assert alerts == 1

    # A retry after processing still changes nothing.
    assert (await sms.text(PAT, IMMEDIATE_TEXT, sid=sid)).texts == first.texts
    assert await sms.gw.process_all() == 0
    await sms.gw.deliver_all()
    assert len(sms.sent()) == alerts


@both_databases
async def test_a_crash_between_storing_and_replying_loses_nothing(
    home: Path, clock: FakeClock, twilio_api: FakeTwilio, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    put_token(home)
    sid = new_sid()
    async with twilio_gateway(home, clock, twilio_api, database_url=database_url) as gw:
        first = await SmsWorld(gw, twilio_api, home, clock).text(PAT, IMMEDIATE_TEXT, sid=sid)
        reference = reference_in(first.text)
        # The state a crash leaves when it comes after the referral's commit and before the
        # webhook's own row (and the reply) are written: Twilio got no answer and will retry.
        async with gw.engine.begin() as conn:
            await conn.execute(delete(sms_webhooks))

    async with twilio_gateway(home, clock, twilio_api, database_url=database_url) as gw:
        restarted = SmsWorld(gw, twilio_api, home, clock)
        retry = await restarted.text(PAT, IMMEDIATE_TEXT, sid=sid)
        assert retry.texts == first.texts  # the same reference: the stored referral, not a twin
        assert await count(gw, referrals) == 1
        assert await gw.process_all() == 1
        await gw.deliver_all()
        assert [r.field("To") for r in restarted.sent()] == [ERIN]
        assert (await referral_row(gw, reference)).state == "alerted"


# ---------------------------------------------------------------------------------------------
# The auth token: no SMS without it


async def test_the_gateway_refuses_to_start_with_twilio_and_no_auth_token(
    home: Path, clock: FakeClock, twilio_api: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    port = free_port()
    path = write_config(home, sms_config(twilio_api.base_url), http_port=port)
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    with pytest.raises(KeyFileError) as refused:
        await gw.start()  # refuses before it opens anything: nothing to stop
    message = str(refused.value)
    assert str(home / "keys" / "twilio-auth-token") in message
    assert "TWILIO_AUTH_TOKEN" in message
    with pytest.raises(OSError):  # it never listened for webhooks
        async with aiohttp.ClientSession(trust_env=False) as http:
            await http.post(f"http://127.0.0.1:{port}/sms/inbound")

    put_token(home, mode=0o644)  # a token others can read is no secret
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    with pytest.raises(KeyFileError, match="readable by others"):
        await gw.start()


async def test_the_auth_token_may_come_from_the_environment(
    home: Path, clock: FakeClock, twilio_api: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    assert not (home / "keys" / "twilio-auth-token").exists()
    async with twilio_gateway(home, clock, twilio_api) as gw:
        world = SmsWorld(gw, twilio_api, home, clock)
        assert reference_in((await world.text(PAT, "REF W1A 1AA urgent call me")).text)
        await gw.process_all()
        await gw.deliver_all()
        # Urgent alerts go by email only at step 1; the token also signs the API calls (the fake
        # checks basic auth) once an SMS goes out, tested in test_sms_alerts.py.


# ---------------------------------------------------------------------------------------------
# Rate limit per sending number


async def test_texts_over_the_rate_limit_are_stored_reported_and_not_answered(
    home: Path, clock: FakeClock, twilio_api: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    put_token(home)
    async with twilio_gateway(home, clock, twilio_api, limit=3) as gw:
        world = SmsWorld(gw, twilio_api, home, clock)
        within = [reference_in((await world.text(PAT, f"REF W1A 1AA urgent concern {n}")).text) for n in range(3)]
        assert (await world.text(STRANGER, "HELP")).texts  # another number has its own allowance

        over = await world.text(PAT, "REF W1A 1AA urgent a fourth one within the hour")
        assert over.texts == []  # no reply: a loop between two auto-responders stops here
        assert (await world.text(PAT, "HELP")).texts == []
        assert await count(gw, sms_webhooks) == 6  # every one stored
        assert await count(gw, referrals) == 4

        assert await gw.process_all() == 4
        await gw.deliver_all()
        rows = {r.reference: r for r in await report.undelivered(gw.engine, gw.config.settings, clock.now())}
        async with gw.engine.connect() as conn:
            states = dict((await conn.execute(select(referrals.c.reference, referrals.c.state))).all())
        (held,) = [ref for ref, state in states.items() if state == "quarantined"]
        assert held not in within
        assert "over the SMS rate limit" in str(rows[held])
        assert all(states[ref] == "alerted" for ref in within)
        # The HELP over the limit is not a referral, but it is on the report too: held, not lost.
        (text_held,) = [r for r in rows.values() if r.state == "held"]
        assert text_held.reference.startswith("SMS ") and "over its number's SMS rate limit" in text_held.reason

        # The window moves on: the number is heard again.
        clock.advance(timedelta(hours=1, seconds=1))
        assert reference_in((await world.text(PAT, "REF W1A 1AA urgent next day")).text)


# ---------------------------------------------------------------------------------------------
# Stored copies are sealed: the database holds no readable text or number either


async def test_texts_are_stored_sealed(sms: SmsWorld) -> None:
    await sms.text(PAT, IMMEDIATE_TEXT)
    await sms.text(STRANGER, IMMEDIATE_TEXT)
    await sms.text(PAT, "HELP")
    await sms.gw.process_all()
    stored = []
    async with sms.gw.engine.connect() as conn:
        for table in (sms_webhooks, messages, referrals, events):
            stored += (await conn.execute(select(table))).all()
    blob = b"".join(repr(tuple(row)).encode() for row in stored)
    for secret in (CHILD_NAME, CHILD_DETAILS, CHILD_NHS, CHILD_POSTCODE, PAT, STRANGER, "Pat Visitor"):
        assert secret.encode() not in blob, secret
