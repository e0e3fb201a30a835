"""The background re-seal survives a crash: a real `serve` process, killed with SIGKILL while it
re-seals after `keys rotate sealing`, restarted, finishes the work and loses nothing.

Referrals arrive by real SMTP before the rotation and while the re-seal runs. The re-seal is slowed
down by config (one blob a transaction, a pause between), so that the test can see it half done
before it kills the process: it watches the store, it does not time anything.
"""

from __future__ import annotations

import smtplib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.core.reseal import SEALED_COLUMNS
from gateway.core.sealed import Sealed
from gateway.core.sealing import KEY_FILE, Sealer, key_id
from tests.conftest import REFERRAL_ADDRESS, make_message, referral_body
from tests.test_crash_recovery import GatewayProcess, crash_config, read_db

pytestmark = pytest.mark.slow

BEFORE, DURING = 8, 3
WAIT = 60.0  # seconds: a safety net for a hung process, never an assertion about speed


@pytest.fixture
def process(tmp_path: Path) -> Iterator[GatewayProcess]:
    home = tmp_path / "gw"
    config, smtp_port = crash_config(home)
    config.write_text(config.read_text() + '\n[rotation]\nreseal_batch = 1\nreseal_pause = 0.1\nkey_check = "1s"\n')
    gateway = GatewayProcess(home, config, smtp_port)
    try:
        yield gateway
    finally:
        gateway.close()


def send(port: int, mid: str) -> None:
    msg = make_message(referral_body(), message_id=f"<{mid}@nhs.example>")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(msg, to_addrs=[REFERRAL_ADDRESS])


def under_key(db: sqlite3.Connection, kid: bytes) -> int:
    """Stored blobs (not empty, not NULL) sealed with key id `kid`, in every sealed column."""
    total = 0
    for col in SEALED_COLUMNS:
        name, table = col.column, col.table.name
        # Table and column names come from our schema, never from input.
        query = f"SELECT count(*) FROM {table} WHERE length({name}) > 0 AND substr({name}, 2, 8) = ?"  # noqa: S608
        total += db.execute(query, (kid,)).fetchone()[0]
    return total


def wait_for(what: str, check: object, process: GatewayProcess) -> None:
    deadline = time.monotonic() + WAIT
    while not check():  # type: ignore[operator]
        assert process.proc is not None and process.proc.poll() is None, process.tail(process.generation)
        assert time.monotonic() < deadline, f"gave up waiting for {what}:\n{process.tail(process.generation)}"
        time.sleep(0.02)


def processed(process: GatewayProcess, count: int) -> bool:
    with read_db(process.db_path) as db:
        done = db.execute("SELECT count(*) FROM messages WHERE processed_at IS NOT NULL").fetchone()[0]
        return int(done) >= count


def test_killed_during_reseal_resumes_and_loses_nothing(process: GatewayProcess) -> None:
    process.start()
    for i in range(BEFORE):
        send(process.smtp_port, f"crash-before-{i}")
    wait_for("the referrals to be processed", lambda: processed(process, BEFORE), process)

    keys = process.home / "keys"
    old = key_id((keys / KEY_FILE).read_bytes())
    assert main(["keys", "rotate", "sealing", "--config", str(process.config)]) == 0
    new = key_id((keys / KEY_FILE).read_bytes())
    for i in range(DURING):
        send(process.smtp_port, f"crash-during-{i}")

    def half_done() -> bool:
        with read_db(process.db_path) as db:
            return 0 < under_key(db, new) and under_key(db, old) > 0

    wait_for("the re-seal to be under way", half_done, process)
    process.sigkill()
    process.reap_killed()
    with read_db(process.db_path) as db:
        left, done = under_key(db, old), under_key(db, new)
    assert left > 0 and done > 0  # killed in the middle: some blobs re-sealed, some not

    process.start()
    wait_for("the remaining messages to be processed", lambda: processed(process, BEFORE + DURING), process)

    def finished() -> bool:
        with read_db(process.db_path) as db:
            return under_key(db, old) == 0

    wait_for("the re-seal to finish", finished, process)
    assert process.terminate() == 0

    # Every referral opens with the new key alone, and every blob of every column is under it.
    sealed = Sealed(Sealer((keys / KEY_FILE).read_bytes()))
    with read_db(process.db_path) as db:
        rows = db.execute(
            "SELECT r.id, r.content, m.id, m.raw, m.envelope, m.channel FROM referrals r "
            "JOIN messages m ON m.id = r.message_id"
        ).fetchall()
        assert len(rows) == BEFORE + DURING
        for rid, content, mid, raw, envelope, channel in rows:
            assert "Zebra-crossing-unique-detail" in (sealed.content(rid, content).referral.details or "")
            assert b"Zebra-crossing-unique-detail" in sealed.raw(mid, raw)
            sealed.envelope(mid, channel, envelope)
        for did, payload in db.execute("SELECT id, payload FROM deliveries WHERE payload IS NOT NULL"):
            sealed.payload(did, payload)
        assert under_key(db, old) == 0 and under_key(db, new) >= left + done
    assert main(["verify", "--config", str(process.config)]) == 0
    assert main(["keys", "retire-unused", "--config", str(process.config)]) == 0
    assert not (keys / "retired" / f"{old.hex()}.key").exists()
    assert not process.error_lines()
