"""SMTP sessions are bounded: a cap in total and per client address (over it: 421 and closed at
once, the sessions already open unharmed), and a short idle timeout before DATA while DATA itself
keeps the long one. Real aiosmtpd on 127.0.0.x, real clients; loopback source addresses 127.0.0.2
and 127.0.0.3 stand in for other sending servers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core.clock import FakeClock
from gateway.intake.smtp_sessions import SessionLimits, client_key
from tests.conftest import REFERRAL_ADDRESS, make_message, referral_body, write_config

HOSTNAME = "referrals.demo-council.example"
REFUSAL = f"421 4.7.0 {HOSTNAME} Too many connections, try again later\r\n"
MAX_MESSAGE_SIZE = 'max_message_size = "25MB"'


def smtp_config(home: Path, **settings: str) -> Path:
    """The test config with extra [smtp] keys (given as TOML values)."""
    path = write_config(home)
    text = path.read_text()
    assert text.count(MAX_MESSAGE_SIZE) == 1, "the config template changed"
    lines = "".join(f"\n{key} = {value}" for key, value in settings.items())
    path.write_text(text.replace(MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE + lines))
    return path


@pytest.fixture
async def limited(home: Path, clock: FakeClock, request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    settings: dict[str, str] = request.param
    gw = Gateway(config_mod.load(smtp_config(home, **settings)), clock=clock, workers=False)
    await gw.start()
    yield gw
    await gw.stop()


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw connection from `source`; returns it with the server's first line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    first = await asyncio.wait_for(reader.readline(), 10)
    return reader, writer, first


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> bytes:
    writer.write(line.encode() + b"\r\n")
    await writer.drain()
    reply = b""
    while True:  # a multi-line reply ends with "NNN " (a space after the code)
        part = await asyncio.wait_for(reader.readline(), 10)
        reply += part
        if len(part) < 4 or part[3:4] != b"-":
            return reply


async def send_referral(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mid: str) -> bytes:
    assert (await command(reader, writer, "EHLO sender.nhs.example")).startswith(b"250")
    assert (await command(reader, writer, "MAIL FROM:<ann.example@nhs.example>")).startswith(b"250")
    assert (await command(reader, writer, f"RCPT TO:<{REFERRAL_ADDRESS}>")).startswith(b"250")
    assert (await command(reader, writer, "DATA")).startswith(b"354")
    body = make_message(referral_body(), message_id=f"<{mid}@nhs.example>").as_bytes().replace(b"\n", b"\r\n")
    writer.write(body + b"\r\n.\r\n")
    await writer.drain()
    return await asyncio.wait_for(reader.readline(), 30)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 30) == b""


@pytest.mark.parametrize("limited", [{"max_sessions": "10", "max_sessions_per_client": "3"}], indirect=True)
async def test_one_address_over_its_cap_gets_421_and_the_open_sessions_still_work(
    limited: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = limited.smtp_port
    held = [await connect(port) for _ in range(3)]
    assert all(first.startswith(b"220 ") for _, _, first in held)

    reader, writer, first = await connect(port)
    assert first.decode() == REFUSAL
    assert await closed_by_server(reader)  # closed at once, not left to time out
    writer.close()

    _, other_writer, other_first = await connect(port, "127.0.0.2")
    assert other_first.startswith(b"220 ")  # the cap is per address: another sender gets in
    other_writer.close()

    for index, (r, w, _) in enumerate(held):
        reply = await send_referral(r, w, f"held{index}")
        assert reply.startswith(b"250 2.0.0 Accepted: referral "), reply
    r, w, _ = held.pop()
    await command(r, w, "QUIT")
    w.close()
    again = await connect(port)  # a freed slot is given back
    assert again[2].startswith(b"220 ")
    for _, w, _ in [*held, again]:
        w.close()
    refusals = [r for r in caplog.records if "Too many" in r.getMessage() or "refused" in r.getMessage()]
    assert [r.getMessage() for r in refusals] == [
        "smtp: refused a connection over the per client address cap (3 sessions open)"
    ]
    assert not any("127.0.0" in r.getMessage() for r in caplog.records)  # no sender's address


@pytest.mark.parametrize("limited", [{"max_sessions": "4", "max_sessions_per_client": "2"}], indirect=True)
async def test_over_the_total_cap_any_address_gets_421(limited: Gateway) -> None:
    port = limited.smtp_port
    held = [await connect(limited.smtp_port, source) for source in ("127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2")]
    assert all(first.startswith(b"220 ") for _, _, first in held)
    reader, writer, first = await connect(port, "127.0.0.3")  # its first session, but five in all
    assert first.decode() == REFUSAL
    assert await closed_by_server(reader)
    writer.close()
    reply = await send_referral(held[3][0], held[3][1], "total-cap")
    assert reply.startswith(b"250 2.0.0 Accepted: referral "), reply
    # A real client sees a temporary failure (its server queues the referral and retries).
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False, timeout=10)
    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
        await client.connect()
    assert refused.value.code == 421
    for _, w, _ in held:
        w.close()


@pytest.mark.parametrize("limited", [{"idle_timeout": '"300ms"', "timeout": '"5m"'}], indirect=True)
async def test_an_idle_session_before_data_is_closed_after_the_idle_timeout(limited: Gateway) -> None:
    reader, writer, first = await connect(limited.smtp_port)
    assert first.startswith(b"220 ")
    assert (await command(reader, writer, "EHLO sender.nhs.example")).startswith(b"250")
    # Then nothing: the server hangs up (5m would be the DATA timeout; the read allows 30s).
    assert await closed_by_server(reader)
    writer.close()


@pytest.mark.parametrize("limited", [{"idle_timeout": '"300ms"', "timeout": '"5m"'}], indirect=True)
async def test_data_keeps_the_long_timeout_and_the_idle_one_returns_after_it(limited: Gateway) -> None:
    reader, writer, _ = await connect(limited.smtp_port)
    assert (await command(reader, writer, "EHLO sender.nhs.example")).startswith(b"250")
    assert (await command(reader, writer, "MAIL FROM:<ann.example@nhs.example>")).startswith(b"250")
    assert (await command(reader, writer, f"RCPT TO:<{REFERRAL_ADDRESS}>")).startswith(b"250")
    assert (await command(reader, writer, "DATA")).startswith(b"354")
    body = make_message(referral_body(), message_id="<slow-data@nhs.example>").as_bytes().replace(b"\n", b"\r\n")
    half = len(body) // 2
    writer.write(body[:half])
    await writer.drain()
    await asyncio.sleep(1.0)  # a slow link: more than three idle timeouts in the middle of DATA
    writer.write(body[half:] + b"\r\n.\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), 30)
    assert reply.startswith(b"250 2.0.0 Accepted: referral "), reply
    assert await closed_by_server(reader)  # after DATA, idle again: the short timeout is back
    writer.close()


def test_client_key_counts_an_ipv6_host_by_its_64() -> None:
    assert client_key(("192.0.2.7", 25)) == "192.0.2.7"
    assert client_key(("2001:db8:1:2::7", 25, 0, 0)) == client_key(("2001:db8:1:2:ffff::1", 25, 0, 0))
    assert client_key(("2001:db8:1:2::7", 25, 0, 0)) != client_key(("2001:db8:1:3::7", 25, 0, 0))
    assert client_key(("::ffff:192.0.2.7", 25, 0, 0)) == "192.0.2.7"


def test_session_limits_take_nothing_when_refusing() -> None:
    limits = SessionLimits(total=3, per_client=2)
    assert [limits.admit("a"), limits.admit("a"), limits.admit("a")] == [None, None, "per client address"]
    assert limits.admit("b") is None
    assert limits.admit("c") == "total"
    assert limits.open == 3
    limits.release("a")
    assert limits.admit("c") is None and limits.open == 3


@pytest.mark.parametrize(
    ("settings", "wanted"),
    [
        (
            {"max_sessions": "5", "max_sessions_per_client": "8"},
            "max_sessions_per_client (8) is above max_sessions (5)",
        ),
        ({"max_sessions": "0"}, "smtp.max_sessions"),
        ({"idle_timeout": '"0s"'}, "idle_timeout must be longer than 0s"),
        ({"idle_timeout": '"soon"'}, "smtp.idle_timeout"),
    ],
)
def test_check_config_names_a_bad_limit_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: dict[str, str], wanted: str
) -> None:
    path = smtp_config(tmp_path / "gw", **settings)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert wanted in err and "Fix: " in err, err


def test_check_config_shows_the_smtp_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = smtp_config(tmp_path / "gw", max_sessions="120", max_sessions_per_client="20", idle_timeout='"45s"')
    main(["check-config", "--config", str(path)])
    out = capsys.readouterr().out
    assert "smtp: at most 120 sessions, 20 per client address; idle timeout 45s before DATA, 5m for DATA" in out
