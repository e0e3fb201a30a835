"""SMTP behind a TCP load balancer: with smtp.proxy_protocol on, every connection starts with a
PROXY protocol header and the stored envelope names the client it gives, not the balancer; a
connection without one is closed unanswered. Off (the default), the gateway greets at once and a
PROXY line is just a bad command. Real aiosmtpd on loopback, real raw clients."""

from __future__ import annotations

import asyncio
import json
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
from tests.test_smtp_limits import closed_by_server, command, send_referral, smtp_config

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


def test_check_config_says_when_a_proxy_header_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    required = "PROXY protocol header required on every connection"
    assert main(["check-config", "--config", str(smtp_config(tmp_path / "on", proxy_protocol="true"))]) == 0
    assert required in capsys.readouterr().out
    assert main(["check-config", "--config", str(smtp_config(tmp_path / "off"))]) == 0
    assert required not in capsys.readouterr().out
