"""Issue 11, defect 1, end to end: MIME that used to crash the open stage, sent over real SMTP to
the gateway's own aiosmtpd server, processed and delivered to maildirs. A raw UTF-8 filename
(RFC 6532, sent with SMTPUTF8) is read; 2,000 levels of nesting are quarantined with a reason and
told; and mutated header bytes of a real referral never crash processing: every message ends
routed or quarantined, and every quarantine has its notice and its triage alert."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import aiosmtplib
from hypothesis import HealthCheck, event, given, settings
from sqlalchemy import select

from gateway.app import Gateway
from gateway.core.schema import deliveries, events
from gateway.open.attachments import read_attachments
from gateway.open.mimeread import TOO_DEEP
from tests.conftest import REFERRAL_ADDRESS, referral_body, referral_row, smtp_send
from tests.test_mime_reading import PDF, mutated, nested
from tests.test_quarantine import SENDER, told

NAME = "Überweisung – Zoë Ångström.pdf"


def utf8_referral(message_id: str) -> bytes:
    """As an SMTPUTF8 client sends it: raw UTF-8 in Subject, From's name and the filename."""
    return (
        (
            "From: Zoë Example <ann.example@nhs.example>\r\n"
            f"To: {REFERRAL_ADDRESS}\r\nSubject: Überweisung: safeguarding referral\r\n"
            f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="mix1"\r\n\r\n'
            "--mix1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{referral_body()}\r\n"
            f'--mix1\r\nContent-Type: application/pdf; name="{NAME}"\r\nContent-Transfer-Encoding: base64\r\n'
            f'Content-Disposition: attachment; filename="{NAME}"\r\n\r\n'
        ).encode()
        + base64.encodebytes(PDF).replace(b"\n", b"\r\n")
        + b"\r\n--mix1--\r\n"
    )


async def send_smtputf8(port: int, raw: bytes) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False, timeout=30)
    await client.connect()
    try:
        await client.ehlo()
        assert client.supports_extension("smtputf8")  # the server invites RFC 6532 mail
        await client.mail(SENDER, options=["SMTPUTF8", "BODY=8BITMIME"])
        await client.rcpt(REFERRAL_ADDRESS)
        response = await client.data(raw)
        return response.code, response.message
    finally:
        client.close()


async def kinds_of(gateway: Gateway, referral_id: str) -> list[str]:
    async with gateway.engine.connect() as conn:
        query = select(events.c.kind).where(events.c.referral_id == referral_id).order_by(events.c.id)
        return list((await conn.execute(query)).scalars())


async def test_a_raw_utf8_filename_sent_with_smtputf8_is_a_readable_referral_with_the_file_named(
    gateway: Gateway, home: Path
) -> None:
    code, text = await send_smtputf8(gateway.smtp_port, utf8_referral("<utf8-1@nhs.example>"))
    assert code == 250
    reference = text.split()[-1]
    await gateway.process_all()
    await gateway.deliver_all()
    row = await referral_row(gateway, reference)
    assert row.state == "alerted" and row.team_id is not None  # routed and alerted, not quarantined
    assert "processing_failed" not in await kinds_of(gateway, row.id)
    referral = gateway.sealed.content(row.id, row.content).referral
    assert referral.child.name == "Sam Testchild" and not referral.incomplete
    # The referral page lists the attachment from the stored message, under its own name.
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        (stored,) = conn.execute("SELECT raw FROM messages WHERE id = ?", (row.message_id,)).fetchone()
    files, note = await read_attachments(gateway.identity, gateway.sealed.raw(row.message_id, stored))
    assert note is None and [(f.filename, f.content_type, f.data) for f in files] == [(NAME, "application/pdf", PDF)]


async def test_2000_levels_of_nesting_are_quarantined_with_the_reason_and_both_told(
    gateway: Gateway, home: Path
) -> None:
    raw = (
        nested(2000)
        .replace(b"hello", referral_body().encode())
        .replace(b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nMessage-ID: <deep@nhs.example>\r\n", 1)
    )
    code, text = await smtp_send(gateway.smtp_port, raw)
    assert code == 250
    reference = text.split()[-1]
    await gateway.process_all()
    row = await referral_row(gateway, reference)
    assert row.state == "quarantined"
    assert await kinds_of(gateway, row.id) == ["received", "quarantined", "delivery_queued", "delivery_queued"]
    result = await told(gateway, home, reference)
    ((notice),) = result.notices
    assert TOO_DEEP in notice.get_content() and notice["In-Reply-To"] == "<deep@nhs.example>"
    ((alert),) = result.alerts
    assert TOO_DEEP in alert.get_content() and "has been sent a notice" in alert.get_content()
    assert f"Quarantined at stage open: {TOO_DEEP}; the sender was told it was not passed on" in result.page


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=mutated())
async def test_mutated_headers_never_crash_processing_and_every_quarantine_is_told(
    gateway: Gateway, home: Path, raw: bytes
) -> None:
    code, text = await smtp_send(gateway.smtp_port, raw)
    assert code == 250
    reference = text.split()[-1]
    await gateway.process_all()
    row = await referral_row(gateway, reference)
    kinds = await kinds_of(gateway, row.id)
    assert "processing_failed" not in kinds  # no crash: nothing was left to retry
    assert row.state in ("routed", "alerted", "quarantined")
    event(row.state)  # --hypothesis-show-statistics: how many of each
    if row.state != "quarantined":
        assert "parsed" in kinds and row.team_id is not None
        return
    async with gateway.engine.connect() as conn:
        queued = list(
            (await conn.execute(select(deliveries.c.kind).where(deliveries.c.referral_id == row.id))).scalars()
        )
    # The envelope sender is a person's address, and a mutated header cannot make it a bounce;
    # whether the mail claims to be automatic depends on the headers that survived.
    assert sorted(queued) in (["notice", "quarantine"], ["quarantine"])
    result = await told(gateway, home, reference)
    assert len(result.alerts) == 1 and len(result.notices) == queued.count("notice")
