"""A message a stage cannot process is retried, then quarantined and shown: never dropped."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.report import undelivered as report
from gateway.track.verify import verify
from tests.conftest import make_message, referral_body, smtp_send


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
    assert kinds == ["received"] + ["processing_failed"] * (attempts - 1) + ["quarantined"]


async def test_a_row_the_database_cannot_return_is_quarantined_not_stuck(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    """One damaged row (here: bytes that are not valid text where the driver expects text) must
    neither block the batch it is in nor be retried for ever."""
    good = make_message(referral_body(), message_id="<q2@nhs.example>")
    bad = make_message(referral_body(), message_id="<q3@nhs.example>")
    assert (await smtp_send(gateway.smtp_port, bad))[0] == 250
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


async def test_a_message_that_kept_killing_its_worker_is_quarantined_unopened(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    """Claims count attempts: a message whose earlier claims never finished (its worker died each
    time) is set aside without being opened again, and the rest of the queue goes on."""
    poison = make_message(referral_body(), message_id="<q4@nhs.example>")
    fine = make_message(referral_body(), message_id="<q5@nhs.example>")
    assert (await smtp_send(gateway.smtp_port, poison))[0] == 250
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
