"""Store first, then say yes: 250 only after the commit, 451 (never 5xx, never the exception
text) when the commit fails, and the sender's retry makes no twin."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import events, messages, referrals
from tests.conftest import make_message, referral_body, smtp_send, write_config


@pytest.fixture
async def impatient_gateway(home: Path, clock: FakeClock) -> AsyncIterator[Gateway]:
    """A gateway that waits only 200 ms for SQLite's write lock."""
    path = write_config(home)
    path.write_text(path.read_text().replace('url = ""', 'url = ""\nbusy_timeout = "200ms"'))
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    yield gw
    await gw.stop()


def db_rows(home: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the store as another process would: a separate connection to the file."""
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        return conn.execute(sql).fetchall()


async def test_250_means_raw_message_and_received_event_are_committed(gateway: Gateway, home: Path) -> None:
    code, text = await smtp_send(gateway.smtp_port, make_message(referral_body(), message_id="<c1@nhs.example>"))
    assert code == 250
    reference = text.split()[-1]
    # Read through a separate connection at once: visible there means committed.
    rows = db_rows(home, "SELECT r.reference, r.state, m.size FROM referrals r JOIN messages m ON m.id = r.message_id")
    assert [(r[0], r[1]) for r in rows] == [(reference, "received")]
    kinds = db_rows(home, "SELECT kind FROM events")
    assert kinds == [("received",)]


async def test_commit_failure_answers_451_without_detail_then_retry_succeeds(
    impatient_gateway: Gateway, home: Path
) -> None:
    msg = make_message(referral_body(), message_id="<locked@nhs.example>")
    blocker = sqlite3.connect(home / "var" / "gateway.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the lock past our busy timeout
    try:
        code, text = await smtp_send(impatient_gateway.smtp_port, msg)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert code == 451
    assert text.startswith("4.3.0 Temporary failure")
    for leak in ("locked", "OperationalError", "sqlite", "Traceback"):
        assert leak not in text
    assert db_rows(home, "SELECT count(*) FROM messages") == [(0,)]  # nothing half-stored

    # The sender's server retries the same message: it is accepted once.
    code, _ = await smtp_send(impatient_gateway.smtp_port, msg)
    assert code == 250
    assert db_rows(home, "SELECT count(*) FROM messages") == [(1,)]


async def test_client_hanging_up_during_commit_loses_nothing_and_retry_is_no_twin(
    impatient_gateway: Gateway, home: Path
) -> None:
    """aiosmtpd cancels the handler when the client goes; the commit must still complete."""
    msg = make_message(referral_body(), message_id="<hangup@nhs.example>")
    blocker = sqlite3.connect(home / "var" / "gateway.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=impatient_gateway.smtp_port, timeout=10)
    await client.connect()
    await client.mail("ann.example@nhs.example")
    await client.rcpt("referrals@demo-council.example")
    data = asyncio.create_task(client.data(msg.as_bytes()))
    await asyncio.sleep(0.05)  # DATA is in, the commit waits for the lock
    client.close()  # the client hangs up before any reply
    data.cancel()
    await asyncio.gather(data, return_exceptions=True)
    blocker.execute("ROLLBACK")
    blocker.close()
    # The commit either completed after the lock was released, or failed as a whole; the
    # sender saw no 250 and retries. Either way the retry yields exactly one referral.
    code, _ = await smtp_send(impatient_gateway.smtp_port, msg)
    assert code == 250
    assert db_rows(home, "SELECT count(*) FROM messages") == [(1,)]
    assert db_rows(home, "SELECT count(*) FROM referrals") == [(1,)]


async def test_internal_error_in_the_session_answers_451_not_500(gateway: Gateway) -> None:
    """A protocol-level surprise goes through handle_exception: it must be a temporary failure."""
    handler_reply = await gateway_handler_exception_reply(gateway)
    assert handler_reply.startswith("451 ")
    assert "boom" not in handler_reply


async def gateway_handler_exception_reply(gateway: Gateway) -> str:
    from gateway.core.logs import RateLimitedLog
    from gateway.intake.smtp import ReferralHandler

    refusals = RateLimitedLog(logging.getLogger("gateway.intake.smtp"))
    handler = ReferralHandler(gateway.config.settings.smtp, gateway.writer, refusals)
    return await handler.handle_exception(RuntimeError("boom with personal data"))


async def test_many_concurrent_sessions_share_commits_and_each_gets_its_own_reference(gateway: Gateway) -> None:
    results = await asyncio.gather(
        *(
            smtp_send(gateway.smtp_port, make_message(referral_body(), message_id=f"<par{i}@nhs.example>"))
            for i in range(40)
        )
    )
    assert all(code == 250 for code, _ in results)
    references = {text.split()[-1] for _, text in results}
    assert len(references) == 40
    async with gateway.engine.connect() as conn:
        stored = {r.reference for r in await conn.execute(select(referrals.c.reference))}
        received = (await conn.execute(select(events.c.id).where(events.c.kind == "received"))).all()
        count = len((await conn.execute(select(messages.c.id))).all())
    assert stored == references and len(received) == 40 and count == 40


def test_dedupe_key_is_sender_message_id_and_body_or_else_the_bytes() -> None:
    from gateway.intake.smtp import dedupe_key

    folded = b"Subject: x\r\nMessage-ID:\r\n <abc@nhs.example>\r\n\r\nbody one\r\n"
    plain = b"message-id: <abc@nhs.example>\n\nbody one\n"  # the same message, other line endings
    assert dedupe_key("Ann@NHS.example", folded) == dedupe_key("ann@nhs.example", plain)
    assert dedupe_key("ann@nhs.example", folded) != dedupe_key("other@nhs.example", folded)
    assert dedupe_key("ann@nhs.example", folded) != dedupe_key("ann@nhs.example", folded.replace(b"one", b"two"))
    in_body = b"Subject: x\r\n\r\nMessage-ID: <abc@nhs.example>\r\n"  # not a header: no id
    assert dedupe_key("ann@nhs.example", in_body) == dedupe_key("ann@nhs.example", in_body)
    assert dedupe_key("ann@nhs.example", in_body) != dedupe_key("ann@nhs.example", in_body + b" ")


async def test_a_reused_message_id_with_a_different_body_is_a_new_referral(gateway: Gateway) -> None:
    """Scanners and some clients reuse Message-IDs: a different message must not be swallowed."""
    first = make_message(referral_body(category="neglect"), message_id="<reused@nhs.example>")
    second = make_message(referral_body(category="physical"), message_id="<reused@nhs.example>")
    code1, text1 = await smtp_send(gateway.smtp_port, first)
    code2, text2 = await smtp_send(gateway.smtp_port, second)
    assert code1 == code2 == 250
    assert text1.split()[-1] != text2.split()[-1]
    async with gateway.engine.connect() as conn:
        assert len((await conn.execute(select(referrals.c.id))).all()) == 2
