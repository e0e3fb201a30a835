"""[logging] format = "json": `referral-gateway serve` as a real process writes one JSON object per
line to stderr (time in UTC, level, logger, message; an exception's type and frames), and still no
personal data. Referrals go in by SMTP and the web form, one is quarantined, a bad HTTP request and
a refused recipient carry synthetic personal data; every stderr line must parse and hold none of it."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.core.log_format import JsonLines
from tests.conftest import make_message, referral_body, smtp_send, valid_nhs, write_config
from tests.test_crash_recovery import GatewayProcess, free_ports
from tests.test_metrics import bogus_pgp
from tests.test_web_form import GOOD, Browser

# The synthetic child and referrers of the referrals sent here: none of it may reach a log line.
SECRETS = (
    "Sam Testchild",
    "Testchild",
    "Sam Sample",
    "W1A",
    "w1a",
    "Example Street",
    "ann.example",
    "alex.example",
    "sam.testchild",
    valid_nhs(),
    "999 000 0018",
    "03/04/2021",
    "Zebra-crossing",
    "020 7946",
    "home visit",
)


def processed(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM messages WHERE processed_at IS NOT NULL").fetchone()[0])


async def bad_http_request(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX Sam Testchild W1A 1AA: y\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    writer.close()
    return head


@pytest.mark.slow
async def test_json_log_lines_parse_and_hold_no_personal_data(tmp_path: Path) -> None:
    home = tmp_path / "gw"
    smtp_port, http_port = free_ports(2)
    config = write_config(
        home,
        '[logging]\nformat = "json"\n[processing]\nretry = "1s"\n',
        smtp_port=smtp_port,
        http_port=http_port,
        all_hours=True,  # a real process on the wall clock: route the same way at any hour
    )
    process = GatewayProcess(home, config, smtp_port)
    process.start()
    try:
        code, _ = await smtp_send(smtp_port, make_message(referral_body(), message_id="<json1@nhs.example>"))
        assert code == 250
        assert (await smtp_send(smtp_port, bogus_pgp()))[0] == 250  # quarantined: logged at ERROR
        refused = make_message(referral_body(), sender="sam.testchild@home.example")
        assert (await smtp_send(smtp_port, refused, recipients=("sam.testchild@nowhere.example",)))[0] == 550
        browser = Browser(f"http://127.0.0.1:{http_port}")
        try:
            assert "Referral sent" in (await browser.send(GOOD)).text
        finally:
            await browser.close()
        assert (await bad_http_request(http_port)).split()[1] == b"400"
        for _ in range(300):  # the running workers process all three
            if processed(home / "var" / "gateway.db") == 3:
                break
            await asyncio.sleep(0.1)
        assert processed(home / "var" / "gateway.db") == 3
    finally:
        assert process.terminate() == 0
        process.close()

    lines = process.log(1, "err").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records
    for record in records:
        assert set(record) - {"exception"} == {"time", "level", "logger", "message"}
        assert datetime.fromisoformat(record["time"]).utcoffset() == timedelta(0)
    text = "\n".join(lines)
    leaked = [s for s in SECRETS if s.lower() in text.lower()]
    assert not leaked, f"{leaked} reached the log:\n{text[-3000:]}"
    messages = [r["message"] for r in records]
    assert any(m.startswith("gateway started") for m in messages)
    assert any("quarantined" in m for m in messages)  # the error lines are there, as JSON
    assert any(r["logger"] == "aiohttp.server" and r["level"] == "ERROR" for r in records)


def test_an_exception_is_written_as_its_type_and_frames_without_its_text() -> None:
    def fail() -> None:
        raise ValueError("Sam Testchild, W1A 1AA")

    try:
        fail()
    except ValueError:
        record = logging.LogRecord("gateway.x", logging.ERROR, __file__, 1, "step failed for %s", ("ABCD-EFGH",), None)
        record.exc_info = sys.exc_info()
    line = JsonLines().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "step failed for ABCD-EFGH"
    assert parsed["exception"]["type"] == "ValueError"
    assert [f["function"] for f in parsed["exception"]["frames"]][-1] == "fail"
    assert "Testchild" not in line and "W1A" not in line
