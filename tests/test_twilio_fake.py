"""The fake Twilio API, proved with the real twilio-python client (blocking, so through asyncio.to_thread)
and a real aiohttp receiver that checks status callbacks with gateway.twilio_signature."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import requests
from aiohttp import web
from twilio.base.exceptions import TwilioRestException

from gateway.intake.twilio_signature import is_valid, request_url
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, Fault, num_segments

TEAM_PHONE = "+447700900456"
GATEWAY_NUMBER = "+447700900123"
PUBLIC_BASE = "https://referrals.council.example"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@pytest.fixture
async def twilio_api() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(now=lambda: NOW) as fake:
        yield fake


@dataclass
class Received:
    path_qs: str
    fields: list[tuple[str, str]]
    valid: bool
    valid_by_request_url: bool  # what a handler that (wrongly) trusted request.url would have decided


@dataclass
class Receiver:
    """A minimal stand-in for the gateway's status-callback endpoint behind a reverse proxy."""

    public_base: str
    base_url: str = ""
    received: list[Received] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        form = [(key, str(value)) for key, value in (await request.post()).items()]
        signature = request.headers.get("X-Twilio-Signature")
        valid = is_valid(AUTH_TOKEN, request_url(self.public_base, request.path_qs), form, signature)
        by_request_url = is_valid(AUTH_TOKEN, str(request.url), form, signature)
        self.received.append(Received(request.path_qs, form, valid, by_request_url))
        return web.Response(status=204 if valid else 403)


@asynccontextmanager
async def receiver(public_base: str | None = None) -> AsyncIterator[Receiver]:
    app = web.Application()
    recv = Receiver(public_base or "")
    app.router.add_post("/twilio/status", recv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    recv.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    recv.public_base = public_base or recv.base_url
    try:
        yield recv
    finally:
        await runner.cleanup()


async def test_create_records_the_form_and_answers_like_twilio(twilio_api: FakeTwilio) -> None:
    client = twilio_api.client()
    callback = PUBLIC_BASE + "/twilio/status?ref=R-2026-0001"
    message = await asyncio.to_thread(
        client.messages.create,
        to=TEAM_PHONE,
        from_=GATEWAY_NUMBER,
        body="New referral R-2026-0001",
        status_callback=callback,
    )
    assert message.sid is not None and message.sid.startswith("SM") and len(message.sid) == 34
    int(message.sid[2:], 16)
    assert (message.status, message.to, message.from_) == ("queued", TEAM_PHONE, GATEWAY_NUMBER)
    assert (message.body, message.num_segments, message.account_sid) == ("New referral R-2026-0001", "1", ACCOUNT_SID)
    assert message.date_created == NOW and message.date_sent is None and message.error_code is None

    (recorded,) = twilio_api.requests
    assert (recorded.method, recorded.path, recorded.answered) == (
        "POST",
        f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        201,
    )
    assert recorded.auth == (ACCOUNT_SID, AUTH_TOKEN)
    assert dict(recorded.form) == {
        "To": TEAM_PHONE,
        "From": GATEWAY_NUMBER,
        "Body": "New referral R-2026-0001",
        "StatusCallback": callback,
    }
    assert twilio_api.messages[message.sid].status_callback == callback


async def test_a_messaging_service_message_is_accepted_without_a_sender(twilio_api: FakeTwilio) -> None:
    client = twilio_api.client()
    service = "MG" + "0" * 32
    message = await asyncio.to_thread(client.messages.create, to=TEAM_PHONE, messaging_service_sid=service, body="x")
    assert (message.status, message.from_, message.messaging_service_sid) == ("accepted", None, service)
    assert twilio_api.requests[0].field("MessagingServiceSid") == service


async def test_a_wrong_token_is_refused_with_401(twilio_api: FakeTwilio) -> None:
    client = twilio_api.client(auth_token="0" * 32)
    with pytest.raises(TwilioRestException) as raised:
        await asyncio.to_thread(client.messages.create, to=TEAM_PHONE, from_=GATEWAY_NUMBER, body="x")
    assert (raised.value.status, raised.value.code) == (401, 20003)
    assert twilio_api.requests[0].auth == (ACCOUNT_SID, "0" * 32)
    assert twilio_api.requests[0].answered == 401
    assert twilio_api.messages == {}


async def test_missing_fields_are_refused_as_twilio_does(twilio_api: FakeTwilio) -> None:
    client = twilio_api.client()
    with pytest.raises(TwilioRestException) as raised:
        await asyncio.to_thread(client.messages.create, to=TEAM_PHONE, body="x")
    assert (raised.value.status, raised.value.code) == (400, 21603)


async def test_fetch_sees_the_status_the_test_set(twilio_api: FakeTwilio) -> None:
    client = twilio_api.client()
    sent = await asyncio.to_thread(client.messages.create, to=TEAM_PHONE, from_=GATEWAY_NUMBER, body="x")
    assert sent.sid is not None

    twilio_api.set_status(sent.sid, "delivered")
    fetched = await asyncio.to_thread(client.messages(sent.sid).fetch)
    assert (fetched.sid, fetched.status, fetched.error_code, fetched.date_sent) == (sent.sid, "delivered", None, NOW)

    twilio_api.set_status(sent.sid, "undelivered", error_code=30003, error_message="Unreachable destination handset")
    fetched = await asyncio.to_thread(client.messages(sent.sid).fetch)
    assert (fetched.status, fetched.error_code, fetched.error_message) == (
        "undelivered",
        30003,
        "Unreachable destination handset",
    )
    assert twilio_api.requests[-1].method == "GET"
    assert twilio_api.requests[-1].path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sent.sid}.json"

    with pytest.raises(ValueError, match="not an outbound message status"):
        twilio_api.set_status(sent.sid, "lost")


async def test_fetching_an_unknown_message_is_404(twilio_api: FakeTwilio) -> None:
    client = twilio_api.client()
    with pytest.raises(TwilioRestException) as raised:
        await asyncio.to_thread(client.messages("SM" + "0" * 32).fetch)
    assert (raised.value.status, raised.value.code) == (404, 20404)


async def test_injected_500s_then_success(twilio_api: FakeTwilio) -> None:
    client = twilio_api.client()
    twilio_api.fail_next(Fault.SERVER_ERROR, times=2)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as raised:
            await asyncio.to_thread(client.messages.create, to=TEAM_PHONE, from_=GATEWAY_NUMBER, body="x")
        assert (raised.value.status, raised.value.code) == (500, 20500)
    message = await asyncio.to_thread(client.messages.create, to=TEAM_PHONE, from_=GATEWAY_NUMBER, body="x")
    assert message.status == "queued"
    assert [r.answered for r in twilio_api.requests] == [500, 500, 201]
    assert len(twilio_api.messages) == 1


async def test_injected_429_carries_twilios_error(twilio_api: FakeTwilio) -> None:
    client = twilio_api.client()
    twilio_api.fail_next(Fault.RATE_LIMITED)
    with pytest.raises(TwilioRestException) as raised:
        await asyncio.to_thread(client.messages.create, to=TEAM_PHONE, from_=GATEWAY_NUMBER, body="x")
    assert (raised.value.status, raised.value.code) == (429, 20429)
    assert "Too Many Requests" in raised.value.msg
    assert twilio_api.requests[0].field("To") == TEAM_PHONE  # a refused request is recorded too


async def test_a_hang_hits_the_clients_timeout() -> None:
    fake = FakeTwilio()
    await fake.start()
    try:
        client = fake.client(timeout=0.3)
        fake.fail_next(Fault.HANG)
        started = time.monotonic()
        with pytest.raises(requests.exceptions.Timeout):
            await asyncio.to_thread(client.messages.create, to=TEAM_PHONE, from_=GATEWAY_NUMBER, body="x")
        assert time.monotonic() - started < 3
        assert fake.requests[0].answered is None
    finally:
        started = time.monotonic()
        await fake.stop()
        # stop() releases the hung handler instead of waiting out a shutdown timeout.
        assert time.monotonic() - started < 1


async def test_a_status_callback_arrives_signed_through_the_proxy(twilio_api: FakeTwilio) -> None:
    async with receiver(public_base=PUBLIC_BASE) as gateway:
        client = twilio_api.client()
        callback = PUBLIC_BASE + "/twilio/status?ref=R-2026-0001"
        sent = await asyncio.to_thread(
            client.messages.create, to=TEAM_PHONE, from_=GATEWAY_NUMBER, body="x", status_callback=callback
        )
        assert sent.sid is not None

        twilio_api.set_status(sent.sid, "delivered")
        delivered = await twilio_api.send_status_callback(sent.sid, via=gateway.base_url)
        twilio_api.set_status(sent.sid, "failed", error_code=30008)
        failed = await twilio_api.send_status_callback(sent.sid, via=gateway.base_url)

    assert (delivered.answered, failed.answered) == (204, 204)
    assert delivered.url == callback and delivered.delivered_to == gateway.base_url + "/twilio/status?ref=R-2026-0001"
    first, second = gateway.received
    assert first.valid and second.valid
    # Behind the proxy request.url is the proxy's upstream URL, which Twilio never signed.
    assert not first.valid_by_request_url and not second.valid_by_request_url
    assert dict(first.fields) == {
        "SmsSid": sent.sid,
        "SmsStatus": "delivered",
        "MessageStatus": "delivered",
        "To": TEAM_PHONE,
        "MessageSid": sent.sid,
        "AccountSid": ACCOUNT_SID,
        "From": GATEWAY_NUMBER,
        "ApiVersion": "2010-04-01",
    }
    assert dict(second.fields)["MessageStatus"] == "failed" and dict(second.fields)["ErrorCode"] == "30008"


async def test_a_status_callback_url_is_signed_as_written(twilio_api: FakeTwilio) -> None:
    # No proxy, and a query the client must not re-encode: the receiver sees it exactly as signed.
    async with receiver() as gateway:
        client = twilio_api.client()
        callback = gateway.base_url + "/twilio/status?team=O'Brien&ref=R%2F1"
        sent = await asyncio.to_thread(
            client.messages.create, to=TEAM_PHONE, from_=GATEWAY_NUMBER, body="x", status_callback=callback
        )
        assert sent.sid is not None
        delivery = await twilio_api.send_status_callback(sent.sid)
    assert delivery.answered == 204
    assert gateway.received[0].path_qs == "/twilio/status?team=O'Brien&ref=R%2F1"
    assert gateway.received[0].valid


async def test_a_tampered_callback_is_refused(twilio_api: FakeTwilio) -> None:
    async with receiver(public_base=PUBLIC_BASE) as gateway:
        client = twilio_api.client()
        sent = await asyncio.to_thread(
            client.messages.create,
            to=TEAM_PHONE,
            from_=GATEWAY_NUMBER,
            body="x",
            status_callback=PUBLIC_BASE + "/twilio/status",
        )
        assert sent.sid is not None
        # The fake signs with its own token; a gateway configured for another account must refuse it.
        twilio_api.auth_token = "1" * 32
        delivery = await twilio_api.send_status_callback(sent.sid, via=gateway.base_url)
    assert delivery.answered == 403
    assert not gateway.received[0].valid


def test_segments_are_counted_as_twilio_does() -> None:
    assert [num_segments("a" * n) for n in (1, 160, 161, 306, 307)] == [1, 1, 2, 2, 3]
    assert num_segments("€" * 80) == 1 and num_segments("€" * 81) == 2  # extension characters cost two septets
    assert num_segments("\u2013" * 70) == 1 and num_segments("\u2013" * 71) == 2  # UCS-2
    assert num_segments("\U0001f691" * 35) == 1 and num_segments("\U0001f691" * 36) == 2  # surrogate pairs
