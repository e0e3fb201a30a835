"""Shared fixtures: a gateway on loopback with an injected clock, a real SMTP sink as the team's
mail server, and helpers that send real SMTP. Nothing of ours is mocked."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import SHARED_KEYS, Gateway
from gateway.core import keyfiles
from gateway.core.clock import FakeClock
from gateway.core.schema import referrals
from tests.postgres import Server, create_database, own_server, postgres_server

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
REFERRAL_ADDRESS = "referrals@demo-council.example"

COMPLETE_BODY = """\
Referrer name: Ann Example
Referrer role: Community midwife
Referrer organisation: Demo NHS Foundation Trust
Referrer email: ann.example@nhs.example
Referrer phone: 020 7946 0999
Child name: Sam Testchild
Child's date of birth: 03/04/2021
NHS number: {nhs}
Child address: 1 Example Street, London
Child postcode: {postcode}
Concern category: {category}
Urgency: {urgency}
Parents/carers aware: yes
Consent basis: consent given by mother
Details:
Zebra-crossing-unique-detail: synthetic test concern text.
"""


def valid_nhs() -> str:
    """A valid NHS number from the 999 test range (check digit computed, not guessed)."""
    body = "999000001"
    total = sum(int(d) * w for d, w in zip(body, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    assert check != 10
    return body + str(check)


def referral_body(*, postcode: str = "W1A 1AA", category: str = "neglect", urgency: str = "urgent") -> str:
    return COMPLETE_BODY.format(nhs=valid_nhs(), postcode=postcode, category=category, urgency=urgency)


def make_message(
    body: str,
    *,
    sender: str = "ann.example@nhs.example",
    message_id: str | None = None,
    subject: str = "Safeguarding referral",
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Ann Example <{sender}>"
    msg["To"] = REFERRAL_ADDRESS
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    return msg


def write_config(
    home: Path,
    extra: str = "",
    *,
    smtp_port: int = 0,
    http_port: int = 0,
    relay: str = "",
    database_url: str = "",
    all_hours: bool = False,
    shared_keys: bool = True,
) -> Path:
    """A config like the embedded default, in a temp home, listening on free loopback ports.
    `all_hours`: the office schedule is open around the clock, for tests that run on the wall
    clock (the report's ages) and must route the same way at 3 a.m. as at noon."""
    text = (ROOT / "config" / "gateway.toml").read_text()
    if all_hours:
        text = text.replace("[schedules.hours]\n", "always_open = true\n[schedules.hours]\n", 1)
    text = text.replace("port = 8025", f"port = {smtp_port}").replace("port = 8080", f"port = {http_port}")
    text = text.replace('templates_dir = "templates"', f'templates_dir = "{ROOT / "templates"}"')
    text = text.replace('first_retry = "30s"', 'first_retry = "30s"\npoll = "1s"')
    text = text.replace('url = ""', f'url = "{database_url}"', 1)
    # Tests name their keys themselves (making development keys would cost every test a second).
    text = text.replace("[keys]\ndevelopment = true\n", "")
    text += "\n" + extra
    if relay:
        text = text.replace(
            'from_address = "referrals@demo-council.example"',
            'from_address = "referrals@demo-council.example"\n' + relay,
        )
    (home / "config").mkdir(parents=True, exist_ok=True)
    path = home / "config" / "gateway.toml"
    path.write_text(text)
    if database_url.startswith("postgresql") and shared_keys:  # False: keys/ left empty, for a restore
        make_shared_keys(path)
    return path


def make_shared_keys(config: Path) -> None:
    """What `referral-gateway keys init` makes of the keys every instance shares: on PostgreSQL the
    gateway refuses to start without them (it never makes them itself; tests/test_shared_state.py
    proves the refusal and the command)."""
    keys_dir = config_mod.load(config).keys_dir
    for name in SHARED_KEYS:
        keyfiles.load_or_create(keys_dir / name)


@asynccontextmanager
async def mute_relay(port: int, greeting: bytes = b"") -> AsyncIterator[None]:
    """A relay on 127.0.0.1:`port` that keeps every connection open and, after `greeting` (none:
    not even the 220), says nothing: each of the client's reads waits out its timeout."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        writer.write(greeting)

    server = await asyncio.start_server(silent, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for writer in held:
            writer.close()


class Sink:
    """A real SMTP server standing in for the team's mail server (or a relay)."""

    def __init__(self, port: int = 0, tls_context: Any = None, require_starttls: bool = False) -> None:
        self.port = port
        self.messages: list[tuple[str, list[str], bytes]] = []
        self._tls = tls_context
        self._require = require_starttls
        self._server: asyncio.Server | None = None
        self.refuse_with: str | None = None  # e.g. "550 5.1.1 no such user"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.refuse_with:
            return self.refuse_with
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append((envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 OK"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(
                self, hostname="sink.localhost", tls_context=self._tls, require_starttls=self._require, loop=loop
            ),
            "127.0.0.1",
            self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def to(self, address: str) -> list[EmailMessage]:
        return [
            email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.default)
            for _, rcpts, raw in self.messages
            if address in rcpts
        ]


def maildir_messages(home: Path, address: str) -> list[EmailMessage]:
    box = home / "var" / "mail" / address / "new"
    if not box.is_dir():
        return []
    return [
        email.message_from_bytes(p.read_bytes(), _class=EmailMessage, policy=email.policy.default)
        for p in sorted(box.iterdir())
    ]


async def smtp_send(
    port: int,
    msg: EmailMessage | bytes,
    *,
    sender: str = "ann.example@nhs.example",
    recipients: tuple[str, ...] = (REFERRAL_ADDRESS,),
) -> tuple[int, str]:
    """Send over real SMTP; returns the final reply (code, text) to DATA."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False, timeout=30)
    await client.connect()
    try:
        await client.ehlo()
        await client.mail(sender)
        for rcpt in recipients:
            await client.rcpt(rcpt)
        raw = msg if isinstance(msg, bytes) else msg.as_bytes()
        response = await client.data(raw)
        return response.code, response.message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        client.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "gw"


@pytest.fixture(scope="session")
def postgres_base_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def own_postgres() -> Iterator[Server]:
    """A server of this test's own: stopping or pausing it must not take the database from other tests."""
    with own_server() as server:
        yield server


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Empty: SQLite under the home (the embedded default). Modules that must also hold on
    PostgreSQL parametrize this with "postgres" (see `both_databases`)."""
    if request.param == "sqlite":
        return ""
    base = request.getfixturevalue("postgres_base_url")
    return create_database(base, f"t{uuid.uuid4().hex[:16]}")


both_databases = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def gateway(home: Path, clock: FakeClock, database_url: str) -> AsyncIterator[Gateway]:
    gw = Gateway(config_mod.load(write_config(home, database_url=database_url)), clock=clock, workers=False)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def send_referral(gw: Any, mid: str, *, urgency: str, postcode: str = "W1A 1AA") -> str:
    """Send the filled referral form by SMTP; returns the reference from the 250 reply."""
    body = referral_body(urgency=urgency, postcode=postcode)
    code, text = await smtp_send(gw.smtp_port, make_message(body, message_id=f"<{mid}@nhs.example>"))
    assert code == 250, text
    return text.split()[-1]


async def referral_row(gw: Any, reference: str) -> Any:
    async with gw.engine.connect() as conn:
        return (await conn.execute(select(referrals).where(referrals.c.reference == reference))).one()
