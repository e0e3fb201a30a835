"""SMTP behind a TCP load balancer: with smtp.proxy_protocol on, every connection starts with a
PROXY protocol header and the stored envelope names the client it gives, not the balancer; a
connection without one is closed unanswered. Off (the default), the gateway greets at once and a
PROXY line is just a bad command. Real aiosmtpd on loopback, real raw clients."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core.clock import FakeClock
from gateway.core.schema import messages
from gateway.core.sealing import sealed_context
from tests.test_smtp_limits import REFUSAL, closed_by_server, command, send_referral, smtp_config

# Documentation addresses (RFC 5737): the client the balancer saw, and the balancer's own.
CLIENT = "198.51.100.7"
BALANCER = "203.0.113.10"
PROXY_V1 = f"PROXY TCP4 {CLIENT} {BALANCER} 40000 25\r\n".encode()
# v2 (binary): signature, version 2 + PROXY command, TCP over IPv4, length, the two addresses and ports.
_V2_ADDRESSES = socket.inet_aton(CLIENT) + socket.inet_aton(BALANCER) + struct.pack("!HH", 40000, 25)
PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(_V2_ADDRESSES)) + _V2_ADDRESSES


@pytest.fixture
async def gateway_with(home: Path, clock: FakeClock, request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    settings: dict[str, str] = request.param
    gw = Gateway(config_mod.load(smtp_config(home, **settings)), clock=clock, workers=False)
    await gw.start()
    yield gw
    await gw.stop()


async def stored_peers(gw: Gateway) -> list[str]:
    async with gw.engine.connect() as conn:
        rows = (await conn.execute(select(messages.c.id, messages.c.envelope))).all()
    return [json.loads(gw.sealer.open(row.envelope, sealed_context("envelope", row.id)))["peer"] for row in rows]


@pytest.mark.parametrize(
    ("header", "peer"),
    # UNKNOWN: what a balancer sends for its own connections (health checks); it names no client.
    [(PROXY_V1, CLIENT), (PROXY_V2, CLIENT), (b"PROXY UNKNOWN\r\n", "127.0.0.1")],
    ids=["v1", "v2", "v1-unknown"],
)
@pytest.mark.parametrize("gateway_with", [{"proxy_protocol": "true"}], indirect=True)
async def test_the_proxy_header_names_the_stored_client(gateway_with: Gateway, header: bytes, peer: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_with.smtp_port)
    try:
        writer.write(header)
        await writer.drain()
        greeting = await asyncio.wait_for(reader.readline(), 10)
        assert greeting.startswith(b"220 ")
        assert (await send_referral(reader, writer, "proxied-1")).startswith(b"250 ")
    finally:
        writer.close()
    assert await stored_peers(gateway_with) == [peer]


@pytest.mark.parametrize("gateway_with", [{"proxy_protocol": "true"}], indirect=True)
async def test_without_a_proxy_header_the_connection_is_closed_unanswered(gateway_with: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_with.smtp_port)
    try:
        writer.write(b"EHLO sender.nhs.example\r\n")
        await writer.drain()
        assert await closed_by_server(reader)  # no greeting, no reply: nothing was read as SMTP
    finally:
        writer.close()
    assert await stored_peers(gateway_with) == []


@pytest.mark.parametrize("gateway_with", [{}], indirect=True)
async def test_off_by_default_a_proxy_line_is_not_believed(gateway_with: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_with.smtp_port)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 10)  # at once, no header awaited
        assert greeting.startswith(b"220 ")
        reply = await command(reader, writer, PROXY_V1.decode().strip())
        assert reply.startswith(b"5")
        assert (await send_referral(reader, writer, "direct-1")).startswith(b"250 ")
    finally:
        writer.close()
    assert await stored_peers(gateway_with) == ["127.0.0.1"]


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]


async def proxied(port: int, client: str, opened: list[asyncio.StreamWriter]) -> Connection:
    """A connection from the balancer (127.0.0.1) for `client`: its PROXY header, then the first line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened.append(writer)
    writer.write(f"PROXY TCP4 {client} {BALANCER} 40000 25\r\n".encode())
    await writer.drain()
    return reader, writer, await asyncio.wait_for(reader.readline(), 10)


@pytest.mark.parametrize(
    "gateway_with", [{"proxy_protocol": "true", "max_sessions": "8", "max_sessions_per_client": "2"}], indirect=True
)
async def test_the_per_client_cap_counts_the_client_the_header_names(
    gateway_with: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = gateway_with.smtp_port
    opened: list[asyncio.StreamWriter] = []
    try:
        held = [await proxied(port, CLIENT, opened) for _ in range(2)]
        assert all(first.startswith(b"220 ") for _, _, first in held)
        reader, _, first = await proxied(port, CLIENT, opened)  # a third from the same client
        assert first.decode() == REFUSAL
        assert await closed_by_server(reader)
        # Every connection comes from the balancer's one address, yet other clients are not capped
        # at two: only the total (8) counts the balancer.
        others = [await proxied(port, f"198.51.100.{20 + n}", opened) for n in range(6)]
        assert all(first.startswith(b"220 ") for _, _, first in others)
        assert (await proxied(port, "198.51.100.99", opened))[2].decode() == REFUSAL  # the ninth: the total
        for _, w, _ in others:
            w.close()
        reply = await send_referral(held[0][0], held[0][1], "capped-1")
        assert reply.startswith(b"250 2.0.0 Accepted: referral "), reply
        await command(held[0][0], held[0][1], "QUIT")
        held[0][1].close()
        # Its slot is given back: the client may open another (once the server has seen the close).
        for _ in range(50):
            first = (await proxied(port, CLIENT, opened))[2]
            if first.startswith(b"220 "):
                break
            await asyncio.sleep(0.1)
        assert first.startswith(b"220 ")
    finally:
        for writer in opened:
            writer.close()
    assert not any(CLIENT in r.getMessage() or "198.51.100" in r.getMessage() for r in caplog.records)


def test_check_config_says_when_a_proxy_header_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    required = "PROXY protocol header required on every connection"
    assert main(["check-config", "--config", str(smtp_config(tmp_path / "on", proxy_protocol="true"))]) == 0
    assert required in capsys.readouterr().out
    assert main(["check-config", "--config", str(smtp_config(tmp_path / "off"))]) == 0
    assert required not in capsys.readouterr().out
