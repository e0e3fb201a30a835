"""`referral-gateway verify`: OK on a healthy store; names what is wrong when the SQLite file was
tampered with behind the gateway's back (edited or deleted events, a forged state, a lost alert).

Every test builds a fresh store with an in-process gateway (real SMTP in, maildir out), stops it,
edits the database with the sqlite3 standard library, then runs the command as a user would.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import aiohttp
import pytest

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core.clock import FakeClock
from tests.conftest import make_message, referral_body, smtp_send, write_config

MASH = "mash-duty@demo-council.example"
QUIET_EVENING = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
OK_LINE = "verify: OK: every accepted referral is tracked and the audit chain is intact"


async def _acknowledge(gw: Gateway, home: Path, reference: str) -> None:
    box = home / "var" / "mail" / MASH / "new"
    (alert,) = [
        m
        for m in (message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(box.iterdir()))
        if m["X-Referral-Reference"] == reference
    ]
    match = re.search(r"(http://\S+/ack/\S+)", alert.get_body(preferencelist=("plain",)).get_content())
    assert match
    link = match.group(1).replace("127.0.0.1:8080", f"127.0.0.1:{gw.http_port}")
    async with aiohttp.ClientSession() as http, http.post(link, data={"name": "Dee Worker"}) as response:
        assert response.status == 200


async def _build(home: Path, *, process: bool, deliver: bool, acknowledge: bool) -> tuple[Path, list[str]]:
    """Two referrals to MASH; the first acknowledged if asked. Returns (config path, references)."""
    path = write_config(home, all_hours=True)
    # A fixed instant, not the wall clock: at 20:00 on a Wednesday nobody is on MASH's rota, so
    # each referral has exactly one alert (the mailbox's). On the wall clock, in office hours the
    # two people on duty were alerted too and "its alert was deleted" deleted three rows.
    gw = Gateway(config_mod.load(path), clock=FakeClock(QUIET_EVENING), workers=False)
    await gw.start()
    try:
        refs = []
        for n in (1, 2):
            code, text = await smtp_send(gw.smtp_port, make_message(referral_body(), message_id=f"<v{n}@nhs.example>"))
            assert code == 250
            refs.append(text.split()[-1])
        if process:
            assert await gw.process_all() == 2
        if deliver:
            await gw.deliver_all()
        if acknowledge:
            await _acknowledge(gw, home, refs[0])
            await gw.deliver_all()
    finally:
        await gw.stop()
    return path, refs


def build(
    home: Path, *, process: bool = True, deliver: bool = True, acknowledge: bool = True
) -> tuple[Path, list[str]]:
    return asyncio.run(_build(home, process=process, deliver=deliver, acknowledge=acknowledge))


def database(path: Path) -> Path:
    db = path.parent.parent / "var" / "gateway.db"
    assert db.is_file()
    return db


def tamper(path: Path, sql: str, *params: object) -> int:
    """Run one statement against the gateway's SQLite file, as someone with file access could."""
    with closing(sqlite3.connect(database(path))) as conn:
        changed = conn.execute(sql, params).rowcount
        conn.commit()
    assert changed == 1, f"{sql} changed {changed} rows"
    return changed


def query(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(database(path))) as conn:
        return conn.execute(sql, params).fetchall()


def verify(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, list[str]]:
    code = main(["verify", "--config", str(path)])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out.splitlines()


def test_healthy_store_after_a_full_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = build(tmp_path / "gw")
    states = dict(query(path, "SELECT reference, state FROM referrals"))
    assert states == {refs[0]: "acknowledged", refs[1]: "alerted"}  # the flow really happened
    code, lines = verify(capsys, path)
    assert code == 0
    assert lines == [OK_LINE]


def test_accepted_but_not_yet_processed_is_still_tracked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = build(tmp_path / "gw", process=False, deliver=False, acknowledge=False)
    assert verify(capsys, path) == (0, [OK_LINE])


def test_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "gw")
    assert verify(capsys, path) == (0, [OK_LINE])


def test_edited_event_detail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = build(tmp_path / "gw")
    ((event_id,),) = query(
        path,
        "SELECT e.id FROM events e JOIN referrals r ON r.id = e.referral_id "
        "WHERE r.reference = ? AND e.kind = 'routed'",
        refs[1],
    )
    tamper(path, "UPDATE events SET detail = ? WHERE id = ?", '{"team":"edt"}', event_id)
    code, lines = verify(capsys, path)
    assert code == 1
    assert f"event {event_id}: its content does not match its hash (the row was edited)" in lines
    assert lines[-1] == f"verify: {len(lines) - 1} problem(s) found"
    assert OK_LINE not in lines


def test_edited_event_actor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = build(tmp_path / "gw")
    ((event_id,),) = query(path, "SELECT id FROM events WHERE kind = 'acknowledged'")
    tamper(path, "UPDATE events SET actor = 'person:Someone Else' WHERE id = ?", event_id)
    code, lines = verify(capsys, path)
    assert code == 1
    assert any(line.startswith(f"event {event_id}:") and "edited" in line for line in lines), lines


def test_deleted_event_in_the_middle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = build(tmp_path / "gw")
    ids = [row[0] for row in query(path, "SELECT id FROM events ORDER BY id")]
    victim = ids[len(ids) // 2]
    following = ids[ids.index(victim) + 1]
    tamper(path, "DELETE FROM events WHERE id = ?", victim)
    code, lines = verify(capsys, path)
    assert code == 1
    assert f"event {following}: does not follow the event before it (a row was removed or reordered)" in lines
    assert any("events were removed" in line and f"records {len(ids)} events" in line for line in lines), lines


def test_deleted_last_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Removing the newest event leaves a chain that is intact on its own: only the head catches it.
    path, _ = build(tmp_path / "gw")
    ((last, count),) = query(path, "SELECT max(id), count(*) FROM events")
    tamper(path, "DELETE FROM events WHERE id = ?", last)
    code, lines = verify(capsys, path)
    assert code == 1
    assert any(
        f"the chain head records {count} events" in line and f"the table holds {count - 1}" in line for line in lines
    ), lines


def test_state_column_not_derived_from_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = build(tmp_path / "gw")
    tamper(path, "UPDATE referrals SET state = 'closed' WHERE reference = ?", refs[1])
    code, lines = verify(capsys, path)
    assert code == 1
    assert f"referral {refs[1]}: state column says closed but its events say alerted" in lines
    assert not any(refs[0] in line for line in lines)  # the untouched referral is not blamed


def test_routed_but_its_alert_was_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = build(tmp_path / "gw", deliver=False, acknowledge=False)
    assert dict(query(path, "SELECT reference, state FROM referrals")) == {refs[0]: "routed", refs[1]: "routed"}
    assert verify(capsys, path) == (0, [OK_LINE])  # a queued alert is fine
    tamper(
        path,
        "DELETE FROM deliveries WHERE kind = 'alert' AND referral_id = (SELECT id FROM referrals WHERE reference = ?)",
        refs[0],
    )
    code, lines = verify(capsys, path)
    assert code == 1
    assert lines == [f"referral {refs[0]}: routed but no alert is queued or sent", "verify: 1 problem(s) found"]


def test_waiting_for_acknowledgement_without_a_deadline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = build(tmp_path / "gw", acknowledge=False)
    tamper(
        path,
        "DELETE FROM deadlines WHERE kind = 'ack' AND referral_id = (SELECT id FROM referrals WHERE reference = ?)",
        refs[1],
    )
    code, lines = verify(capsys, path)
    assert code == 1
    assert f"referral {refs[1]}: waiting for acknowledgement but has no deadline" in lines


def test_acknowledged_without_recording_who(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = build(tmp_path / "gw")
    tamper(path, "UPDATE referrals SET acknowledged_at = NULL WHERE reference = ?", refs[0])
    code, lines = verify(capsys, path)
    assert code == 1
    assert f"referral {refs[0]}: acknowledged but records no one" in lines


def test_state_column_set_to_a_value_that_is_no_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A state the gateway does not know takes the referral off every list that filters by state;
    # verify must say so (not crash).
    path, refs = build(tmp_path / "gw")
    tamper(path, "UPDATE referrals SET state = 'gone' WHERE reference = ?", refs[1])
    code, lines = verify(capsys, path)
    assert code == 1
    assert f"referral {refs[1]}: state column says gone but its events say alerted" in lines


@pytest.mark.parametrize("processed", [True, False], ids=["alerted", "received"])
def test_referral_whose_stored_message_was_deleted(
    processed: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The raw message is the only copy of exactly what the referrer sent; a referral without it
    # must be named (and verify must not crash with a traceback).
    path, refs = build(tmp_path / "gw", process=processed, deliver=processed, acknowledge=False)
    tamper(
        path,
        "DELETE FROM messages WHERE id = (SELECT message_id FROM referrals WHERE reference = ?)",
        refs[1],
    )
    code, lines = verify(capsys, path)
    assert code == 1
    assert any(line.startswith(f"referral {refs[1]}:") for line in lines), lines
