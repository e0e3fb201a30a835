"""While the database cannot take a commit, no channel says yes: SMTP answers 451 (the sender's
server keeps the message and retries), the web form 503 with Retry-After and the duty phone, the
Twilio webhook a 5xx; nothing is stored. When the database is back, the sender's retry gets 250,
the referral is processed and the gateway is ready again.

PostgreSQL: a real server of the test's own, stopped under a running gateway. SQLite: another
process's connection holds the write lock (BEGIN IMMEDIATE) past busy_timeout.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import messages, referrals
from tests.conftest import make_message, referral_body, smtp_send, write_config
from tests.postgres import Server, create_database
from tests.test_readiness import get, until_ready
from tests.test_sms import IMMEDIATE_TEXT, PAT, SmsWorld, inbound_form, new_sid, put_token, sms_config
from tests.test_web_form import GOOD, Browser
from tests.twilio_fake import FakeTwilio


@pytest.fixture
async def twilio_api(clock: FakeClock) -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(now=clock.now) as api:
        yield api


async def count(gw: Gateway, table: object = referrals) -> int:
    async with gw.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def until_processed(gw: Gateway, reference: str, attempts: int = 200) -> None:
    """Wait for the running processing loop (nothing here processes it) to finish the referral."""
    query = (
        select(messages.c.processed_at)
        .join(referrals, referrals.c.message_id == messages.c.id)
        .where(referrals.c.reference == reference)
    )
    for _ in range(attempts):
        async with gw.engine.connect() as conn:
            if (await conn.execute(query)).scalar_one() is not None:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{reference} never processed")


def no_personal_data(text: str) -> None:
    for value in ("Sam", "Alex", "W1A", "9990000018", "127.0.0.1", "postgres", "OperationalError", "Refused"):
        assert value not in text, (value, text)


async def test_postgres_stopped_every_channel_says_try_again_and_all_resumes_when_it_returns(
    home: Path, clock: FakeClock, own_postgres: Server, twilio_api: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    put_token(home)
    url = create_database(own_postgres.url, f"t{uuid.uuid4().hex[:16]}")
    path = write_config(home, sms_config(twilio_api.base_url), database_url=url)
    gw = Gateway(config_mod.load(path), clock=clock, workers=True)
    await gw.start()
    browser = Browser(f"http://127.0.0.1:{gw.http_port}")
    sms = SmsWorld(gw, twilio_api, home, clock)
    try:
        await until_ready(gw)
        _, hidden = await browser.form()  # the form was opened while all was well
        own_postgres.stop()

        message = make_message(referral_body(urgency="urgent"), message_id="<down1@nhs.example>")
        code, text = await smtp_send(gw.smtp_port, message)
        assert code == 451 and text.startswith("4.3.0"), (code, text)
        no_personal_data(text)

        page = await browser.post({**hidden, **GOOD})
        assert page.status == 503 and page.headers["Retry-After"].isdigit(), page.status
        assert "has not been sent" in page.text and "020 7946 0000" in page.text  # the duty phone
        assert 'value="Alex Example"' in page.text  # every answer kept, to send again
        assert "OperationalError" not in page.text and "127.0.0.1" not in page.text

        status, answer = await sms.post("/sms/inbound", inbound_form(PAT, IMMEDIATE_TEXT, sid := new_sid()))
        assert 500 <= status < 600, status  # Twilio records the failure; nothing was said yes to
        no_personal_data(answer)

        assert (await get(gw, "/readyz"))[0] == 503
        own_postgres.start()
        await until_ready(gw)

        # Nothing was stored while it was down: each retry is the first copy.
        assert await count(gw) == 0
        code, text = await smtp_send(gw.smtp_port, message)  # the sender's server retries
        assert code == 250, text
        reference = text.split()[-1]
        await until_processed(gw, reference)
        resent = await browser.post({**hidden, **GOOD})
        assert "Referral sent" in resent.text
        status, answer = await sms.post("/sms/inbound", inbound_form(PAT, IMMEDIATE_TEXT, sid))
        assert status == 200, answer
        assert await count(gw) == 3 and await count(gw, messages) == 3
        await until_ready(gw)  # the loops kept going through it
    finally:
        await browser.close()
        await gw.stop()


async def test_postgres_hung_answers_451_in_bounded_time_and_the_retry_makes_no_twin(
    home: Path, clock: FakeClock, own_postgres: Server
) -> None:
    url = create_database(own_postgres.url, f"t{uuid.uuid4().hex[:16]}")
    path = write_config(home, database_url=url)
    path.write_text(path.read_text().replace(f'url = "{url}"', f'url = "{url}"\nbusy_timeout = "1s"', 1))
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    message = make_message(referral_body(urgency="urgent"), message_id="<hung1@nhs.example>")
    try:
        await until_ready(gw)  # a pooled connection is open: the hang is on it, not on connecting
        own_postgres.pause()
        try:
            # No reply at all would leave the sender's server waiting its 10 minutes, then
            # retrying; the gateway answers 451 itself, after busy_timeout and the commit's grace.
            code, text = await smtp_send(gw.smtp_port, message)
        finally:
            own_postgres.resume()
        assert code == 451 and text.startswith("4.3.0"), (code, text)
        # The stalled commit may land after the 451: the retry is the same referral, not a twin.
        code, text = await smtp_send(gw.smtp_port, message)
        assert code == 250, text
        assert await count(gw) == 1
    finally:
        await gw.stop()


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


async def test_sqlite_locked_by_another_process_answers_451_then_250_once_released(
    home: Path, clock: FakeClock
) -> None:
    path = write_config(home)
    path.write_text(path.read_text().replace('url = ""', 'url = ""\nbusy_timeout = "1s"', 1))
    # With the loops running: a worker's transaction waiting for the same lock (holding the
    # gate) used to add its own busy_timeout, or two, to the sender's wait for the 451.
    gw = Gateway(config_mod.load(path), clock=clock, workers=True)
    await gw.start()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(home / "var" / "gateway.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        message = make_message(referral_body(urgency="urgent"), message_id="<locked1@nhs.example>")
        code, text = await smtp_send(gw.smtp_port, message)
        assert code == 451 and re.match(r"4\.3\.0 ", text), (code, text)
        no_personal_data(text)
        assert holder.stdin is not None
        holder.communicate("\n", timeout=10)  # it rolls back and ends
        assert holder.returncode == 0
        with sqlite3.connect(home / "var" / "gateway.db") as conn:
            assert conn.execute("SELECT count(*) FROM referrals").fetchone()[0] == 0
        code, text = await smtp_send(gw.smtp_port, message)  # the sender's retry
        assert code == 250, text
        assert await count(gw) == 1
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()  # waits, and closes its pipes
        await gw.stop()
