"""A local stand-in for the Twilio REST API (Programmable Messaging), for tests that drive the *real*
``twilio.rest.Client`` over loopback HTTP instead of mocking it.

It serves what twilio-python 9.x calls for SMS, with the paths, form fields and JSON it uses:

* ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (To, From or MessagingServiceSid, Body,
  StatusCallback, ...): HTTP basic auth as account SID + auth token, 201 with a Twilio-shaped message;
* ``GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json``: the message with its current status.

Tests can set a message's status (:meth:`FakeTwilio.set_status`), make the next requests fail
(:meth:`FakeTwilio.fail_next`: 500, 429 with Twilio's error JSON, or a hang until the fake stops), and fire
a status callback signed exactly as Twilio signs it (:meth:`FakeTwilio.send_status_callback`).

The twilio client blocks (requests): call it through ``asyncio.to_thread`` from async tests, or the fake,
which runs on the test's event loop, can never answer.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from yarl import URL

API_VERSION = "2010-04-01"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "fedcba9876543210" * 2

# The statuses a test may move an outbound message to (Twilio's outbound lifecycle).
OUTBOUND_STATUSES = frozenset(
    {"accepted", "scheduled", "queued", "sending", "sent", "delivered", "undelivered", "failed"}
)
_FAILED = frozenset({"undelivered", "failed"})
_UNKNOWN_DELIVERY_ERROR = 30008  # Twilio's "Unknown error" for a message that failed without a reason

# GSM 03.38: the basic set costs one septet per character, the extension set two (escape + character).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


class Fault(enum.Enum):
    """What the fake does instead of answering a request."""

    SERVER_ERROR = 500
    RATE_LIMITED = 429
    HANG = "hang"  # never answers until the fake stops, so the client's timeout fires


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it, for assertions."""

    method: str
    path: str
    form: tuple[tuple[str, str], ...]
    auth: tuple[str, str] | None  # (username, password) from HTTP basic auth, None if absent or malformed
    answered: int | None  # the HTTP status answered; None for a request left hanging

    def field(self, name: str) -> str | None:
        values = [value for key, value in self.form if key == name]
        return values[-1] if values else None


@dataclass
class FakeMessage:
    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status: str
    status_callback: str | None
    date_created: datetime
    date_updated: datetime
    date_sent: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None

    def resource(self) -> dict[str, Any]:
        """The JSON Twilio returns for a message (the fields twilio-python's MessageInstance reads)."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": format_datetime(self.date_created),
            "date_sent": format_datetime(self.date_sent) if self.date_sent else None,
            "date_updated": format_datetime(self.date_updated),
            "direction": "outbound-api",
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(num_segments(self.body)),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
            "to": self.to,
            "uri": f"{uri}.json",
        }


@dataclass(frozen=True)
class CallbackDelivery:
    """A status callback the fake POSTed, and what the receiver answered."""

    url: str  # the StatusCallback URL, which is what the signature covers
    delivered_to: str  # where the POST physically went (differs when sent `via` a stand-in proxy)
    fields: tuple[tuple[str, str], ...]
    signature: str
    answered: int


def num_segments(body: str) -> int:
    """SMS segments for ``body``: GSM-7 fits 160 septets in one, 153 per part when split; anything else is
    UCS-2, 70 UTF-16 units in one, 67 per part (an emoji is two units)."""
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENSION for char in body):
        units = sum(2 if char in _GSM7_EXTENSION else 1 for char in body)
        single, part = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, part = 70, 67
    return 1 if units <= single else math.ceil(units / part)


def twilio_error(status: int, code: int, message: str) -> web.Response:
    """Twilio's legacy error body, which twilio-python turns into TwilioRestException(status, code=...)."""
    payload = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(payload, status=status)


@dataclass
class FakeTwilio:
    """The fake API on 127.0.0.1 (an ephemeral port). Use ``async with FakeTwilio() as twilio:``."""

    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))  # inject a clock to pin dates
    requests: list[RecordedRequest] = field(default_factory=list, init=False)
    messages: dict[str, FakeMessage] = field(default_factory=dict, init=False)
    callbacks: list[CallbackDelivery] = field(default_factory=list, init=False)
    _faults: deque[Fault] = field(default_factory=deque, init=False)
    _release: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _runner: web.AppRunner | None = field(default=None, init=False)
    _port: int | None = field(default=None, init=False)
    _http_clients: list[TwilioHttpClient] = field(default_factory=list, init=False)

    @property
    def base_url(self) -> str:
        """Set the real client's ``client.api.base_url`` to this (or use :meth:`client`)."""
        if self._port is None:
            raise RuntimeError("the fake Twilio API is not running")
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record_and_inject])
        app.router.add_post(f"/{API_VERSION}/Accounts/{{account_sid}}/Messages.json", self._create_message)
        app.router.add_get(f"/{API_VERSION}/Accounts/{{account_sid}}/Messages/{{sid}}.json", self._fetch_message)
        # A short shutdown: a hanging handler is released by stop(), nothing else should be in flight.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        # Release hung handlers first, or cleanup would wait for them until its timeout.
        self._release.set()
        for http_client in self._http_clients:
            if http_client.session is not None:
                http_client.session.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._port = None

    async def __aenter__(self) -> FakeTwilio:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def client(self, *, timeout: float = 5.0, auth_token: str | None = None) -> Client:
        """A real ``twilio.rest.Client`` pointed at this fake; its HTTP session is closed by :meth:`stop`."""
        http_client = TwilioHttpClient(timeout=timeout)
        if http_client.session is not None:
            # Loopback must never be routed through an HTTP(S)_PROXY from the environment.
            http_client.session.trust_env = False
        self._http_clients.append(http_client)
        client = Client(
            self.account_sid, self.auth_token if auth_token is None else auth_token, http_client=http_client
        )
        # TWILIO_EDGE / TWILIO_REGION from the environment would rewrite the host away from the fake.
        client.edge = None
        client.region = None
        client.api.base_url = self.base_url
        return client

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        """The next ``times`` requests (any endpoint) get ``fault`` instead of an answer."""
        self._faults.extend([fault] * times)

    def set_status(
        self, sid: str, status: str, *, error_code: int | None = None, error_message: str | None = None
    ) -> FakeMessage:
        """Move a message on, as the carrier would; a failed or undelivered message always has an error code."""
        if status not in OUTBOUND_STATUSES:
            raise ValueError(f"not an outbound message status: {status}")
        message = self.messages[sid]
        message.status = status
        message.date_updated = self.now()
        if status in {"sent", "delivered"} and message.date_sent is None:
            message.date_sent = message.date_updated
        if status in _FAILED:
            message.error_code = error_code if error_code is not None else _UNKNOWN_DELIVERY_ERROR
            message.error_message = error_message
        else:
            message.error_code, message.error_message = error_code, error_message
        return message

    async def send_status_callback(self, sid: str, *, via: str | None = None) -> CallbackDelivery:
        """POST the message's current status to its StatusCallback as Twilio does: the form fields Twilio
        sends and X-Twilio-Signature over the StatusCallback URL. ``via`` (``http://host:port``) sends the
        request there instead, keeping the path and query, as a reverse proxy in front of the gateway would;
        the signature still covers the StatusCallback URL, so the receiver must rebuild the public URL."""
        message = self.messages[sid]
        if not message.status_callback:
            raise ValueError(f"message {sid} was created without a StatusCallback")
        url = message.status_callback
        fields = self._callback_fields(message)
        signature = RequestValidator(self.auth_token).compute_signature(url, dict(fields))
        target = url if via is None else via.rstrip("/") + _path_qs(url)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "User-Agent": "TwilioProxy/1.1",
            "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        }
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            # encoded=True: send the path and query byte for byte as given, as the signature covers them.
            session.post(URL(target, encoded=True), data=urlencode(fields).encode(), headers=headers) as response,
        ):
            await response.read()
            delivery = CallbackDelivery(url, target, tuple(fields), signature, response.status)
        self.callbacks.append(delivery)
        return delivery

    def _callback_fields(self, message: FakeMessage) -> list[tuple[str, str]]:
        fields = [
            ("SmsSid", message.sid),
            ("SmsStatus", message.status),
            ("MessageStatus", message.status),
            ("To", message.to),
        ]
        if message.messaging_service_sid:
            fields.append(("MessagingServiceSid", message.messaging_service_sid))
        fields += [("MessageSid", message.sid), ("AccountSid", message.account_sid)]
        if message.from_:
            fields.append(("From", message.from_))
        fields.append(("ApiVersion", API_VERSION))
        if message.error_code is not None:
            fields.append(("ErrorCode", str(message.error_code)))
        return fields

    @web.middleware
    async def _record_and_inject(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        form = tuple((key, str(value)) for key, value in (await request.post()).items())
        auth = _basic_auth(request)

        def record(answered: int | None) -> None:
            self.requests.append(RecordedRequest(request.method, request.path, form, auth, answered))

        fault = self._faults.popleft() if self._faults else None
        if fault is Fault.HANG:
            record(None)
            await self._release.wait()
            return web.Response(status=503)  # nobody is listening by now; this only ends the handler
        if fault is Fault.SERVER_ERROR:
            record(500)
            return twilio_error(500, 20500, "An internal server error has occurred")
        if fault is Fault.RATE_LIMITED:
            record(429)
            return twilio_error(429, 20429, "Too Many Requests")
        if auth is None or not (
            secrets.compare_digest(auth[0], self.account_sid) and secrets.compare_digest(auth[1], self.auth_token)
        ):
            record(401)
            response = twilio_error(401, 20003, "Authenticate")
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response
        if request.match_info.get("account_sid") != self.account_sid:
            record(404)
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        result = await handler(request)
        record(result.status)
        return result

    async def _create_message(self, request: web.Request) -> web.Response:
        form = await request.post()
        values: Mapping[str, str] = {key: str(value) for key, value in form.items()}
        to = values.get("To")
        from_ = values.get("From")
        service = values.get("MessagingServiceSid")
        body = values.get("Body")
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not from_ and not service:
            return twilio_error(400, 21603, "A 'From' phone number is required.")
        if not body:
            return twilio_error(400, 21602, "Message body is required.")
        created = self.now()
        message = FakeMessage(
            sid="SM" + secrets.token_hex(16),
            account_sid=self.account_sid,
            to=to,
            from_=from_,
            messaging_service_sid=service,
            body=body,
            # Through a Messaging Service alone Twilio first answers "accepted" (the sender is chosen later).
            status="queued" if from_ else "accepted",
            status_callback=values.get("StatusCallback"),
            date_created=created,
            date_updated=created,
        )
        self.messages[message.sid] = message
        return _json(message.resource(), status=201)

    async def _fetch_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["sid"])
        if message is None:
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        return _json(message.resource(), status=200)


def _json(payload: dict[str, Any], *, status: int) -> web.Response:
    return web.Response(text=json.dumps(payload), status=status, content_type="application/json", charset="utf-8")


def _basic_auth(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    try:
        decoded = aiohttp.BasicAuth.decode(header)
    except ValueError:
        return None
    return decoded.login, decoded.password


def _path_qs(url: str) -> str:
    """The path and query of ``url`` exactly as written (no re-encoding)."""
    parts = urlsplit(url)
    tail = url.split("://", 1)[1][len(parts.netloc) :]
    tail = tail.split("#", 1)[0]
    return tail if tail.startswith("/") else "/" + tail
