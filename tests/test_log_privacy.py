"""No request text in any log: aiohttp's error log used to echo the start of an oversized request
line or header (a name and postcode from a query string, part of a session cookie), and aiosmtpd
logs commands and addresses. Real requests over raw sockets to the gateway's own listeners, every
log record captured at DEBUG; the client still gets its 4xx, and the error is still logged, only
without what the client sent."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.app import Gateway
from gateway.core.logs import RateLimitedLog, RedactFilter, safe_traceback
from tests.conftest import make_message, referral_body, smtp_send

# Synthetic personal data and a made-up session cookie: none of it may reach a log.
NAME, POSTCODE, COOKIE = "Sam Testchild", "W1A 1AA", "SeSsIoNcOoKiE0123456789"
# Matched exactly (case and all): the strings are unusual enough that a hit is a leak.
SECRETS = (NAME, "Sam+Testchild", "Testchild", POSTCODE, "W1A+1AA", "W1A", COOKIE, "cOoKiE0123")
PAD = "q" * 9000  # over aiohttp's 8190-byte line limit


def every_log_line(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return caplog.text + "\n".join(formatter.format(r) for r in caplog.records)


def assert_nothing_sent_was_logged(caplog: pytest.LogCaptureFixture) -> None:
    text = every_log_line(caplog)
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} reached the log:\n{text[-3000:]}"


async def http(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    writer.close()
    return head


def capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp", "gateway", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)


BAD_REQUESTS = {
    "request line too long": f"GET /referral?child=Sam+Testchild&postcode=W1A+1AA&p={PAD} HTTP/1.1\r\nHost: a\r\n\r\n",
    "header too long": f"GET / HTTP/1.1\r\nHost: a\r\nCookie: AIOHTTP_SESSION={COOKIE}{PAD}\r\n\r\n",
    "bad header name": f"GET / HTTP/1.1\r\nHost: a\r\nX {NAME} {POSTCODE}: y\r\nCookie: s={COOKIE}\r\n\r\n",
    "header line without a colon": f"GET / HTTP/1.1\r\nHost: a\r\n{NAME} {POSTCODE} {COOKIE}\r\n\r\n",
    "not HTTP at all": f"{NAME} {POSTCODE} {COOKIE}\r\n\r\n",
}


@pytest.mark.parametrize("raw", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_a_bad_request_gets_400_and_the_log_holds_none_of_it(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, raw: str
) -> None:
    capture(caplog)
    head = await http(gateway.http_port, raw.encode())
    assert head.split()[1] == b"400", head
    logged = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert logged, "the bad request was not logged at all"  # the error is still there, for operators
    assert all(r.getMessage().startswith("Error handling request from [withheld]: ") for r in logged)
    assert_nothing_sent_was_logged(caplog)


async def test_a_normal_request_with_a_query_string_is_not_logged(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    capture(caplog)
    raw = f"GET /no-such-page?child=Sam+Testchild&postcode=W1A+1AA HTTP/1.1\r\nHost: a\r\nCookie: s={COOKIE}\r\n"
    head = await http(gateway.http_port, (raw + "Connection: close\r\n\r\n").encode())
    assert head.split()[1] == b"404", head
    assert_nothing_sent_was_logged(caplog)


async def test_smtp_commands_and_addresses_are_not_logged_even_at_debug(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    # Our setup keeps aiosmtpd's logger at ERROR; here it is opened up to DEBUG on purpose, to
    # show that what it writes at every level still carries no command text or address.
    capture(caplog)
    caplog.set_level(logging.DEBUG, logger="mail.log")
    sender = "sam.testchild.w1a@nhs.example"
    code, _ = await smtp_send(gateway.smtp_port, make_message(referral_body(), sender=sender), sender=sender)
    assert code == 250
    assert any(r.name == "mail.log" for r in caplog.records)  # aiosmtpd did log, at debug and info
    text = every_log_line(caplog).lower()
    assert "sam.testchild" not in text and "referrals@demo-council.example" not in text and "ehlo" not in text


async def test_with_our_setup_aiosmtpd_logs_nothing_below_error(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every handler open; the loggers' own levels are ours
    code, _ = await smtp_send(gateway.smtp_port, make_message(referral_body()))
    assert code == 250
    assert not [r for r in caplog.records if r.name.startswith("mail.")]


def test_an_exception_keeps_its_type_and_frames_but_not_its_text() -> None:
    def parse(value: str) -> None:
        raise ValueError(f"{value!r} is not a postcode")

    try:
        try:
            parse(f"{NAME} {POSTCODE}")
        except ValueError as exc:
            raise KeyError(COOKIE) from exc
    except KeyError as exc:
        text = safe_traceback(exc)
        record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "failed for %s", (NAME,), None)
        record.exc_info = (type(exc), exc, exc.__traceback__)
    assert "KeyError: [withheld]" in text and "ValueError: [withheld]" in text and "in parse" in text
    assert not any(s in text for s in SECRETS)
    assert RedactFilter().filter(record)
    assert record.getMessage() == "failed for [withheld]: KeyError"
    assert "in parse" in (record.exc_text or "") and COOKIE not in (record.exc_text or "")


async def test_a_storm_of_one_event_is_one_line_then_one_count_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="test.storm")
    limited = RateLimitedLog(logging.getLogger("test.storm"), interval=0.2)
    for _ in range(5000):
        limited.event("listener: out of descriptors")
    assert [r.getMessage() for r in caplog.records] == ["listener: out of descriptors"]
    while len(caplog.records) < 2:  # the loop's timer reports the count when the interval is up
        await asyncio.sleep(0.05)
    assert caplog.records[1].getMessage().startswith("listener: out of descriptors (repeated 4999 times in the last 0.")
    limited.event("listener: out of descriptors")  # within the next interval: counted, not logged
    assert len(caplog.records) == 2
    limited.close()
