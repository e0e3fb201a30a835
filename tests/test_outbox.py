"""The outbox against a real SMTP relay on loopback: STARTTLS, retries with backoff, dead letters."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import deliveries, events, referrals
from gateway.report import undelivered as report
from tests.conftest import Sink, both_databases, make_message, mute_relay, referral_body, smtp_send, write_config
from tests.tls import make_cert, server_context

MASH = "mash-duty@demo-council.example"

pytestmark = both_databases


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return make_cert(tmp_path / "tls")


def relay_config(port: int, ca: Path, starttls: bool = True) -> str:
    return (
        f'[mail.relay]\nhost = "127.0.0.1"\nport = {port}\nstarttls = {str(starttls).lower()}\n'
        f'ca_file = "{ca}"\ntimeout = "5s"\n'
    )


async def start_gateway(home: Path, clock: FakeClock, relay: str, database_url: str) -> Gateway:
    gw = Gateway(
        config_mod.load(write_config(home, relay=relay, database_url=database_url)), clock=clock, workers=False
    )
    await gw.start()
    return gw


@pytest.fixture
async def relay_port() -> AsyncIterator[int]:
    yield free_port()


async def send_one(gw: Gateway, mid: str) -> str:
    code, text = await smtp_send(gw.smtp_port, make_message(referral_body(), message_id=mid))
    assert code == 250
    await gw.process_all()
    return text.split()[-1]


async def rows_for(gw: Gateway, reference: str) -> tuple[str, list[dict[str, object]], list[str]]:
    """The referral's state, its alert to the MASH mailbox (the members on duty get their own), and
    its events' kinds."""
    async with gw.engine.connect() as conn:
        ref = (await conn.execute(select(referrals).where(referrals.c.reference == reference))).one()
        dels = [
            dict(r._mapping)
            for r in (
                await conn.execute(
                    select(deliveries).where(
                        deliveries.c.referral_id == ref.id,
                        deliveries.c.kind == "alert",
                        deliveries.c.recipient_hash == gw.signer.recipient_hash(MASH),
                    )
                )
            )
        ]
        kinds = [
            e.kind
            for e in (
                await conn.execute(select(events.c.kind).where(events.c.referral_id == ref.id).order_by(events.c.id))
            )
        ]
    return ref.state, dels, kinds


async def test_relay_down_then_up_alert_arrives_over_starttls(
    database_url: str, home: Path, clock: FakeClock, relay_port: int, cert: tuple[Path, Path]
) -> None:
    gw = await start_gateway(home, clock, relay_config(relay_port, cert[0]), database_url)
    sink = Sink(relay_port, tls_context=server_context(*cert), require_starttls=True)
    try:
        reference = await send_one(gw, "<down-up@nhs.example>")
        await gw.deliver_all()  # relay is down
        state, (alert,), kinds = await rows_for(gw, reference)
        assert state == "routed" and alert["state"] == "pending" and alert["attempts"] == 1
        assert "relay unreachable" in str(alert["last_error"])
        assert "delivery_failed" in kinds
        assert alert["next_attempt_at"] == clock.now() + timedelta(seconds=30)

        await sink.start()
        await gw.deliver_all()
        assert sink.to(MASH) == []  # not due yet: the backoff is respected
        clock.advance(timedelta(seconds=31))
        await gw.deliver_all()
        (received,) = sink.to(MASH)
        assert received["X-Referral-Reference"] == reference
        state, (alert,), kinds = await rows_for(gw, reference)
        assert state == "alerted" and alert["state"] == "sent" and alert["attempts"] == 2
        assert kinds.count("alerted") == 3  # once for each alert sent: the mailbox, Asha and Ben
    finally:
        await sink.stop()
        await gw.stop()


async def test_relay_without_starttls_gets_nothing_in_plaintext(
    database_url: str, home: Path, clock: FakeClock, relay_port: int, cert: tuple[Path, Path]
) -> None:
    gw = await start_gateway(home, clock, relay_config(relay_port, cert[0]), database_url)
    sink = Sink(relay_port)  # offers no STARTTLS
    await sink.start()
    try:
        reference = await send_one(gw, "<plain@nhs.example>")
        await gw.deliver_all()
        assert sink.messages == []
        _, (alert,), _ = await rows_for(gw, reference)
        assert alert["state"] == "pending"
        assert alert["last_error"] == "relay does not offer STARTTLS, which is required"
    finally:
        await sink.stop()
        await gw.stop()


async def test_after_the_last_try_the_referral_is_undeliverable_and_reported(
    database_url: str, home: Path, clock: FakeClock, relay_port: int, cert: tuple[Path, Path]
) -> None:
    gw = await start_gateway(home, clock, relay_config(relay_port, cert[0]), database_url)
    sink = Sink(relay_port, tls_context=server_context(*cert), require_starttls=True)
    sink.refuse_with = "451 4.3.0 try later"
    await sink.start()
    try:
        reference = await send_one(gw, "<dead@nhs.example>")
        max_attempts = gw.config.settings.outbox.max_attempts
        waits = []
        for _ in range(max_attempts):
            await gw.deliver_all()
            _, (alert,), _ = await rows_for(gw, reference)
            if alert["state"] == "dead":
                break
            waits.append(alert["next_attempt_at"] - clock.now())  # type: ignore[operator]
            clock.advance(timedelta(hours=1))
        state, (alert,), kinds = await rows_for(gw, reference)
        assert alert["state"] == "dead" and alert["attempts"] == max_attempts
        assert state == "undeliverable" and "undeliverable" in kinds
        # Capped exponential backoff: 30s, 60s, 120s, ... never more than 30 minutes.
        assert waits[:3] == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
        assert max(waits) == timedelta(minutes=30)

        rows = await report.undelivered(gw.engine, gw.config.settings, clock.now())
        (row,) = [r for r in rows if r.reference == reference]
        assert row.state == "undeliverable" and row.team == "MASH duty team"
        assert "alert to MASH duty team failed for good after 8 attempts" in row.reason
        assert "relay deferred the recipient (451)" in row.reason
        listed = json.loads(report.render(rows, "json"))
        assert listed[0]["reference"] == reference
    finally:
        await sink.stop()
        await gw.stop()


async def test_permanent_refusal_is_dead_at_once(
    database_url: str, home: Path, clock: FakeClock, relay_port: int, cert: tuple[Path, Path]
) -> None:
    gw = await start_gateway(home, clock, relay_config(relay_port, cert[0]), database_url)
    sink = Sink(relay_port, tls_context=server_context(*cert), require_starttls=True)
    sink.refuse_with = "550 5.1.1 no such mailbox"
    await sink.start()
    try:
        reference = await send_one(gw, "<perm@nhs.example>")
        await gw.deliver_all()
        state, (alert,), _ = await rows_for(gw, reference)
        assert alert["state"] == "dead" and alert["attempts"] == 1
        assert alert["last_error"] == "relay refused the recipient (550)"
        assert state == "undeliverable"
    finally:
        await sink.stop()
        await gw.stop()


async def test_a_send_ends_within_half_the_lease_so_no_other_instance_sends_it_again(
    home: Path, clock: FakeClock, database_url: str
) -> None:
    """A relay that greets and then says nothing keeps each aiosmtplib step waiting its full
    timeout (30 s here, several steps a send); the worker gives up at half the lease (1 s of 2 s)
    and records the try while the lease is still its own."""
    port = free_port()
    relay = f'[mail.relay]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\ntimeout = "30s"\n'
    path = write_config(home, relay=relay, database_url=database_url)
    path.write_text(path.read_text().replace('lease = "2m"', 'lease = "2s"', 1))
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    try:
        async with mute_relay(port, b"220 relay.test ESMTP\r\n"):
            reference = await send_one(gw, "<half-the-lease@nhs.example>")
            await gw.deliver_all()
        _, dels, _ = await rows_for(gw, reference)
        assert [(d["state"], d["attempts"], d["lease_owner"]) for d in dels] == [("pending", 1, None)]
        assert dels[0]["last_error"] == "sending took longer than half the outbox lease (1s)"
    finally:
        await gw.stop()
