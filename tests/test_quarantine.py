"""A message a stage cannot process is retried, then quarantined and shown: never dropped. And
every quarantine tells someone: the sender gets a notice (when there is a sender to tell) and the
triage team an alert, queued in the quarantine's own transaction, so exactly once."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.report import undelivered as report
from gateway.report.timeline import timeline
from gateway.track.verify import verify
from tests.conftest import maildir_messages, make_message, referral_body, referral_row, smtp_send

SENDER = "ann.example@nhs.example"
TRIAGE = "triage@demo-council.example"  # the default route's team: config/gateway.toml
SECRETS = ("Sam Testchild", "Zebra-crossing", "W1A", "Example Street", "999000001")


@dataclass
class Told:
    notices: list[EmailMessage]  # what the sender got about the referral
    alerts: list[EmailMessage]  # what the triage team's mailbox got about it
    page: list[str]  # the referral page's timeline, in words


async def told(gateway: Gateway, home: Path, reference: str, sender: str = SENDER) -> Told:
    """Send what the outbox holds, then read both mailboxes and the referral's timeline."""
    await gateway.deliver_all()
    row = await referral_row(gateway, reference)
    notices = [m for m in maildir_messages(home, sender) if m["X-Referral-Reference"] == reference]
    alerts = [m for m in maildir_messages(home, TRIAGE) if m["X-Referral-Reference"] == reference]
    for message in notices + alerts:
        text = str(message["Subject"]) + message.get_content()  # decoded: the bodies are base64
        assert not [secret for secret in SECRETS if secret in text]  # unencrypted mail: nothing of the referral
    page = [entry.what for entry in await timeline(gateway.db, gateway.config.settings, row.id, {})]
    return Told(notices, alerts, page)


def assert_told_of_fault(result: Told, reference: str, reason: str) -> None:
    """A fault of ours after the retries: the sender told it is held and that it is not their fault,
    without the technical reason; triage given that reason, the link, and that the sender knows."""
    ((notice),) = result.notices
    assert "NOT passed on" in notice["Subject"] and reference in notice["Subject"]
    text = notice.get_content()
    assert "fault on our side" in text and "you need not send it again" in text and reason not in text
    ((alert),) = result.alerts
    assert "QUARANTINED" in alert["Subject"] and reference in alert["Subject"]
    body = alert.get_content()
    assert reason in body and "has been sent a notice" in body and "/referrals/" in body
    assert any(line.startswith("Quarantined at stage") and "the sender was told" in line for line in result.page)


async def test_unreadable_stored_message_is_retried_then_quarantined_and_reported(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    code, text = await smtp_send(gateway.smtp_port, make_message(referral_body(), message_id="<q1@nhs.example>"))
    assert code == 250
    reference = text.split()[-1]
    # Damage the stored copy (as a disk fault or a lost key would): no stage can read it now.
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        conn.execute("UPDATE messages SET raw = CAST(substr(raw, 1, length(raw) - 1) || x'00' AS BLOB)")

    attempts = gateway.config.settings.processing.max_attempts
    for _ in range(attempts):
        assert await gateway.process_all() == 1
        clock.advance(timedelta(seconds=11))
    assert await gateway.process_all() == 0  # quarantined: no longer claimed

    (row,) = await report.undelivered(gateway.engine, gateway.config.settings, clock.now())
    assert row.reference == reference and row.state == "quarantined"
    assert row.reason.startswith("quarantined at stage open: SealError")
    assert await verify(gateway.engine, datetime.now(UTC)) == []
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM events ORDER BY id")]
    # Told nobody during the retries; at the quarantine, the notice and the alert with it.
    assert kinds == ["received"] + ["processing_failed"] * (attempts - 1) + ["quarantined"] + ["delivery_queued"] * 2
    assert_told_of_fault(await told(gateway, home, reference), reference, "SealError")


async def test_a_row_the_database_cannot_return_is_quarantined_not_stuck(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    """One damaged row (here: bytes that are not valid text where the driver expects text) must
    neither block the batch it is in nor be retried for ever."""
    good = make_message(referral_body(), message_id="<q2@nhs.example>")
    bad = make_message(referral_body(), message_id="<q3@nhs.example>")
    reference = (await smtp_send(gateway.smtp_port, bad))[1].split()[-1]
    assert (await smtp_send(gateway.smtp_port, good))[0] == 250
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        (first,) = conn.execute("SELECT id FROM messages ORDER BY received_at, rowid LIMIT 1").fetchone()
        conn.execute("UPDATE messages SET raw = CAST(x'ff00fe' AS TEXT) WHERE id = ?", (first,))
    for _ in range(gateway.config.settings.processing.max_attempts):
        await gateway.process_all()
        clock.advance(timedelta(seconds=11))
    rows = await report.undelivered(gateway.engine, gateway.config.settings, clock.now())
    assert [(r.state, r.reason) for r in rows] == [
        ("quarantined", "quarantined at stage load: the stored message cannot be read from the database")
    ]
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        states = sorted(s for (s,) in conn.execute("SELECT state FROM referrals"))
    assert states == ["quarantined", "routed"]
    # Its raw bytes cannot be read, but its envelope can: the sender is still told.
    assert_told_of_fault(await told(gateway, home, reference), reference, "cannot be read from the database")


async def test_a_message_that_kept_killing_its_worker_is_quarantined_unopened(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    """Claims count attempts: a message whose earlier claims never finished (its worker died each
    time) is set aside without being opened again, and the rest of the queue goes on."""
    poison = make_message(referral_body(), message_id="<q4@nhs.example>")
    fine = make_message(referral_body(), message_id="<q5@nhs.example>")
    reference = (await smtp_send(gateway.smtp_port, poison))[1].split()[-1]
    assert (await smtp_send(gateway.smtp_port, fine))[0] == 250
    limit = gateway.config.settings.processing.max_attempts
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        (first,) = conn.execute("SELECT id FROM messages ORDER BY received_at, rowid LIMIT 1").fetchone()
        conn.execute("UPDATE messages SET attempts = ? WHERE id = ?", (limit, first))  # 5 claims, none finished
    await gateway.process_all()
    rows = await report.undelivered(gateway.engine, gateway.config.settings, clock.now())
    assert [(r.state, r.reason) for r in rows] == [
        ("quarantined", f"quarantined at stage process: gave up after {limit} attempts that did not finish")
    ]
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        assert sorted(s for (s,) in conn.execute("SELECT state FROM referrals")) == ["quarantined", "routed"]
    assert_told_of_fault(await told(gateway, home, reference), reference, f"gave up after {limit} attempts")
