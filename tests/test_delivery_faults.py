"""Delivery under faults, end to end through a real Gateway with an injected clock (issue 13, fault 3).

The council's relay is a real aiosmtpd server on 127.0.0.1, stopped (connection refused) and started
again on the same port, answering 451 first, or replaced by one that never answers; Twilio is the
fake API (tests/twilio_fake.py) answering 500, then hanging past the client's timeout, then OK.
Referrals come in by real SMTP. Checked is what a duty manager would ask: did every alert and
receipt arrive, once each; is anything lost or still queued; and when a delivery failed for good,
is it on the report and did the next escalation step go out at once.

tests/test_outbox.py and tests/test_sms_alerts.py prove a single fault once; these hold it through
several referrals, a relay that comes back, every retry and the step brought forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import deadlines, deliveries, referrals
from gateway.report import undelivered as report
from tests.conftest import START, Sink, both_databases, mute_relay, send_referral, write_config
from tests.test_sms import ASHA, BEN, CHLOE, free_port, put_token, sms_config
from tests.twilio_fake import FakeTwilio, Fault

REFERRER = "ann.example@nhs.example"  # conftest's referrer: every receipt goes back to her
MAILBOX, ASHA_EMAIL, BEN_EMAIL, DEV_EMAIL = (
    f"{name}@demo-council.example" for name in ("mash-duty", "asha.okafor", "ben.carter", "dev.malik")
)
# An urgent referral to MASH on Wednesday 10:00: step 1 emails the mailbox and Asha and Ben (on
# duty), and the referrer gets a receipt; step 2 (the manager, Dev) waits for the deadline,
# 4 working hours. Nothing is texted at step 1, so the relay carries it all.
STEP_1 = {MAILBOX, ASHA_EMAIL, BEN_EMAIL, REFERRER}
STEP_2_DUE = START + timedelta(hours=4)
DEV = "+447700900104"  # MASH's manager


class Relay(Sink):
    """The council's relay: records what it accepted; `defer_data` answers 451 after DATA that many
    times (the message crossed the wire but was not taken, so it must come again)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.defer_data = 0
        self.deferred = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.defer_data > 0:
            self.defer_data -= 1
            self.deferred += 1
            return "451 4.3.0 queue full, try again later"
        return await super().handle_DATA(server, session, envelope)

    def received(self) -> Counter[tuple[str, str, str]]:
        """(recipient, reference, Message-ID) -> how many times the relay accepted it."""
        seen: Counter[tuple[str, str, str]] = Counter()
        for _, rcpts, raw in self.messages:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            for rcpt in rcpts:
                seen[(rcpt, str(msg["X-Referral-Reference"]), str(msg["Message-ID"]))] += 1
        return seen


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    server = Relay(free_port())
    await server.start()
    yield server
    await server.stop()


def relay_config(port: int) -> str:
    # Plain SMTP: STARTTLS to the relay is proven in tests/test_outbox.py; here it would only add
    # handshakes on two shared cores.
    return f'[mail.relay]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\ntimeout = "5s"\n'


@pytest.fixture
async def gw(home: Path, clock: FakeClock, database_url: str, relay: Relay) -> AsyncIterator[Gateway]:
    path = write_config(home, relay=relay_config(relay.port), database_url=database_url)
    gateway = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gateway.start()
    yield gateway
    await gateway.stop()


async def outbox(gw: Gateway, **where: object) -> list[Any]:
    query = select(deliveries, referrals.c.reference).join(referrals, referrals.c.id == deliveries.c.referral_id)
    for column, value in where.items():
        query = query.where(deliveries.c[column] == value)
    async with gw.engine.connect() as conn:
        return list((await conn.execute(query.order_by(deliveries.c.created_at, deliveries.c.id))).all())


async def states(gw: Gateway, refs: list[str]) -> list[str]:
    async with gw.engine.connect() as conn:
        rows = await conn.execute(
            select(referrals.c.reference, referrals.c.state).where(referrals.c.reference.in_(refs))
        )
        found = {row.reference: row.state for row in rows}
    return [found[r] for r in refs]


async def step_due(gw: Gateway, reference: str) -> datetime | None:
    """When the referral's next escalation step is due (None: none is waiting)."""
    async with gw.engine.connect() as conn:
        return (
            await conn.execute(
                select(deadlines.c.due_at)
                .join(referrals, referrals.c.id == deadlines.c.referral_id)
                .where(
                    referrals.c.reference == reference,
                    deadlines.c.kind == "step",
                    deadlines.c.fired_at.is_(None),
                    deadlines.c.cancelled_at.is_(None),
                )
            )
        ).scalar_one_or_none()


async def referrals_in(gw: Gateway, count: int, tag: str) -> list[str]:
    refs = [await send_referral(gw, f"{tag}-{n}", urgency="urgent") for n in range(count)]
    assert await gw.process_all() == count
    return refs


def wire(relay: Relay, refs: list[str]) -> Counter[tuple[str, str]]:
    """(recipient, reference) -> messages the relay accepted; no Message-ID may have come twice."""
    by_id = relay.received()
    assert all(n == 1 for n in by_id.values()), [k for k, n in by_id.items() if n > 1]
    return Counter((rcpt, ref) for (rcpt, ref, _), n in by_id.items() if ref in refs for _ in range(n))


async def until_settled(gw: Gateway, clock: FakeClock, limit: int = 20) -> int:
    """Send what is due; then move the clock to the next retry and again, until nothing is pending.
    Returns how many passes it took (each a retry round)."""
    for passes in range(1, limit + 1):
        await gw.deliver_all()
        waiting = [row.next_attempt_at for row in await outbox(gw, state="pending")]
        if not waiting:
            return passes
        clock.set(min(waiting))
    raise AssertionError("the outbox never settled: a retry that never ends")


@both_databases
async def test_relay_down_then_up_every_alert_and_receipt_arrives_exactly_once(
    gw: Gateway, clock: FakeClock, relay: Relay
) -> None:
    before = await referrals_in(gw, 1, "up")
    await gw.deliver_all()
    assert wire(relay, before) == Counter({(to, before[0]): 1 for to in STEP_1})

    await relay.stop()  # down: connection refused on its port
    refs = await referrals_in(gw, 3, "down")
    queued = len(await outbox(gw, state="pending"))
    assert queued == 3 * len(STEP_1)
    for attempt, wait in enumerate((30, 60, 120), start=1):
        await gw.deliver_all()
        rows = await outbox(gw, state="pending")
        # Nothing delivered, nothing lost: every row still queued, with its tries counted.
        assert len(rows) == queued and {row.attempts for row in rows} == {attempt}
        assert {row.last_error for row in rows} == {"relay unreachable (SMTPConnectError)"}
        assert {row.next_attempt_at for row in rows} == {clock.now() + timedelta(seconds=wait)}
        clock.advance(timedelta(seconds=wait))
    assert await states(gw, refs) == ["routed"] * 3

    await relay.start()  # up again, on the same port
    await gw.deliver_all()
    sent = await outbox(gw, state="sent")
    assert len(sent) == queued + len(STEP_1) and {r.attempts for r in sent if r.reference in refs} == {4}
    assert wire(relay, refs) == Counter({(to, ref): 1 for to in STEP_1 for ref in refs})
    assert await states(gw, refs) == ["alerted"] * 3

    accepted = len(relay.messages)
    clock.advance(timedelta(hours=1))  # long past every backoff: nothing is sent again
    await gw.deliver_all()
    assert len(relay.messages) == accepted and await outbox(gw, state="pending") == []


async def test_a_relay_answering_451_then_250_takes_each_message_once(
    gw: Gateway, clock: FakeClock, relay: Relay
) -> None:
    relay.refuse_with = "451 4.7.1 greylisted, try again later"  # at RCPT: nothing crosses the wire
    refs = await referrals_in(gw, 2, "grey")
    await gw.deliver_all()
    rows = await outbox(gw, state="pending")
    assert len(rows) == 2 * len(STEP_1) and relay.messages == []
    assert {row.last_error for row in rows} == {"relay deferred the recipient (451)"}

    relay.refuse_with = None
    relay.defer_data = len(rows)  # at DATA: the whole message went over, and was not taken
    clock.advance(timedelta(seconds=30))
    await gw.deliver_all()
    rows = await outbox(gw, state="pending")
    assert relay.deferred == len(rows) == 2 * len(STEP_1) and relay.messages == []
    assert {row.last_error for row in rows} == {"relay deferred the message (451)"}
    assert {row.attempts for row in rows} == {2}

    clock.advance(timedelta(seconds=60))
    assert await until_settled(gw, clock) == 1
    assert wire(relay, refs) == Counter({(to, ref): 1 for to in STEP_1 for ref in refs})
    assert {row.attempts for row in await outbox(gw, state="sent")} == {3}
    assert await states(gw, refs) == ["alerted"] * 2


async def test_a_relay_that_accepts_and_never_answers_is_given_up_on_and_tried_again(
    gw: Gateway, clock: FakeClock, relay: Relay
) -> None:
    await relay.stop()
    async with mute_relay(relay.port):  # not even a greeting
        refs = await referrals_in(gw, 1, "mute")
        # A guard against a hang, not a timing: [mail.relay] timeout (5s) must end each try.
        await asyncio.wait_for(gw.deliver_all(), timeout=120)
        rows = await outbox(gw, state="pending")
        assert len(rows) == len(STEP_1) and {row.attempts for row in rows} == {1}
        assert {row.last_error for row in rows} == {"relay unreachable (SMTPConnectTimeoutError)"}
    await relay.start()
    clock.advance(timedelta(seconds=30))
    await gw.deliver_all()
    assert wire(relay, refs) == Counter({(to, refs[0]): 1 for to in STEP_1})


async def report_json(gw: Gateway) -> list[dict[str, Any]]:
    """`referral-gateway report undelivered --format json`, as a coordinator runs it: its own process."""
    args = ["-m", "gateway", "report", "undelivered", "--format", "json", "--config", str(gw.config.file)]
    pipe = asyncio.subprocess.PIPE
    cli = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=pipe, stderr=pipe)
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    return list(json.loads(out))


async def test_relay_down_past_the_retry_limit_dead_on_the_report_and_the_next_step_at_once(
    gw: Gateway, clock: FakeClock, relay: Relay, home: Path
) -> None:
    await relay.stop()
    refs = await referrals_in(gw, 2, "dead")
    assert [await step_due(gw, ref) for ref in refs] == [STEP_2_DUE] * 2
    max_attempts = gw.config.settings.outbox.max_attempts
    await until_settled(gw, clock)
    died_at = clock.now()
    assert died_at < STEP_2_DUE  # 30s doubling to the 30m cap: all tries spent in about an hour
    dead = await outbox(gw, state="dead")
    assert len(dead) == 2 * len(STEP_1) and {row.attempts for row in dead} == {max_attempts}
    assert await states(gw, refs) == ["undeliverable"] * 2
    # Nobody saw step 1, so step 2 is due now rather than at the deadline.
    assert [await step_due(gw, ref) for ref in refs] == [died_at] * 2

    listed = {row["reference"]: row for row in await report_json(gw)}
    for ref in refs:
        assert listed[ref]["state"] == "undeliverable"
        assert f"failed for good after {max_attempts} attempts" in listed[ref]["reason"]
        assert "relay unreachable" in listed[ref]["reason"]

    assert await gw.fire_deadlines() == 2
    step_2 = await outbox(gw, kind="reminder")
    # The manager's reminders, by email and by SMS, queued at once and due at once.
    assert sorted((row.reference, row.channel) for row in step_2) == sorted(
        (ref, channel) for ref in refs for channel in ("email", "sms")
    )
    assert {row.created_at for row in step_2} == {row.next_attempt_at for row in step_2} == {died_at}
    await gw.deliver_all()
    texts = home / "var" / "sms" / DEV / "new"  # no Twilio here: the SMS spool
    assert texts.is_dir() and len(list(texts.iterdir())) == 2

    await relay.start()  # the relay back: the manager's emails go; the dead alerts stay dead
    await until_settled(gw, clock)
    assert wire(relay, refs) == Counter({(DEV_EMAIL, ref): 1 for ref in refs})
    assert len(await outbox(gw, state="dead")) == 2 * len(STEP_1)
    assert {row["reference"] for row in await report_json(gw)} >= set(refs)  # nothing left it by itself


@contextlib.asynccontextmanager
async def twilio_gateway(
    home: Path, clock: FakeClock, database_url: str, api: FakeTwilio, max_attempts: int | None = None
) -> AsyncIterator[Gateway]:
    """Twilio on (the fake, [sms] timeout = 1s), mail to the maildir; fewer tries if asked."""
    put_token(home)
    path = write_config(home, sms_config(api.base_url), database_url=database_url)
    if max_attempts is not None:
        text = path.read_text()
        assert text.count("max_attempts = 8") == 1, "config template changed"
        path.write_text(text.replace("max_attempts = 8", f"max_attempts = {max_attempts}"))
    gateway = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


@pytest.fixture
async def api(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTwilio]:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    async with FakeTwilio(now=clock.now) as fake:
        yield fake


def posts(api: FakeTwilio) -> list[int | None]:
    """What the fake answered each message the gateway posted (None: left hanging)."""
    return [r.answered for r in api.requests if r.method == "POST" and r.path.endswith("/Messages.json")]


async def sms_alerts(gw: Gateway, reference: str) -> dict[str, Any]:
    """The referral's first SMS alerts (step 1: Asha and Ben, on duty), by number."""
    rows = [row for row in await outbox(gw, channel="sms", kind="alert") if row.reference == reference]
    by_number = {n: r for r in rows for n in (ASHA, BEN) if r.recipient_hash == gw.signer.recipient_hash(n)}
    assert len(by_number) == len(rows) == 2
    return by_number


async def test_twilio_failing_then_hanging_then_answering_sends_each_sms_alert_once(
    home: Path, clock: FakeClock, database_url: str, api: FakeTwilio
) -> None:
    async with twilio_gateway(home, clock, database_url, api) as gw:
        reference = await send_referral(gw, "tw-1", urgency="immediate")  # texts Asha and Ben at step 1
        assert await gw.process_all() == 1
        api.fail_next(Fault.SERVER_ERROR, times=4)  # two tries each
        for wait in (30, 60):
            await gw.deliver_all()
            assert {row.last_error for row in (await sms_alerts(gw, reference)).values()} == {
                "Twilio refused to send the message (HTTP 500, error 20500)"
            }
            clock.advance(timedelta(seconds=wait))
        api.fail_next(Fault.HANG, times=2)  # longer than the client's timeout: it gives up
        await gw.deliver_all()
        rows = await sms_alerts(gw, reference)
        assert {row.state for row in rows.values()} == {"pending"} and {row.attempts for row in rows.values()} == {3}
        assert all("Twilio unreachable" in (row.last_error or "") for row in rows.values())
        assert api.messages == {}  # nothing has reached anyone yet, nor been lost

        clock.advance(timedelta(seconds=120))
        await gw.deliver_all()
        rows = await sms_alerts(gw, reference)
        # Each texted once: one message per number at the fake, the one SID on the row.
        assert sorted(m.to for m in api.messages.values()) == [ASHA, BEN]
        assert {number: row.provider_id for number, row in rows.items()} == {m.to: m.sid for m in api.messages.values()}
        assert {(row.state, row.attempts) for row in rows.values()} == {("sent", 4)}
        assert sorted(posts(api), key=str) == sorted([500] * 4 + [None] * 2 + [201] * 2, key=str)

        clock.advance(timedelta(minutes=5))  # no retry is left over to send a twin
        await gw.deliver_all()
        assert len(api.messages) == 2 and len(posts(api)) == 8


async def test_an_sms_alert_failing_for_good_brings_the_next_step_forward(
    home: Path, clock: FakeClock, database_url: str, api: FakeTwilio
) -> None:
    async with twilio_gateway(home, clock, database_url, api, max_attempts=3) as gw:
        reference = await send_referral(gw, "tw-2", urgency="immediate")
        assert await gw.process_all() == 1
        assert await step_due(gw, reference) == START + timedelta(minutes=10)  # step 2: team and manager
        api.fail_next(Fault.SERVER_ERROR, times=4)
        api.fail_next(Fault.HANG, times=2)  # the third and last try each
        await until_settled(gw, clock)
        died_at = clock.now()
        rows = await sms_alerts(gw, reference)
        assert {(row.state, row.attempts) for row in rows.values()} == {("dead", 3)}
        assert api.messages == {}
        # Asha and Ben will not see their texts: step 2 is due now, not at +10m.
        assert died_at < START + timedelta(minutes=10)
        assert await step_due(gw, reference) == died_at

        assert await gw.fire_deadlines() == 1
        await gw.deliver_all()
        # Step 2 texts the whole team and the manager at once (the email alerts went: the
        # referral is alerted, not undeliverable, and the dead texts are on the report).
        assert sorted(m.to for m in api.messages.values()) == sorted([ASHA, BEN, CHLOE, DEV])
        listed = await report.undelivered(gw.engine, gw.config.settings, clock.now())
        (row,) = [r for r in listed if r.reference == reference]
        assert "failed for good after 3 attempts" in row.reason
        assert await states(gw, [reference]) == ["alerted"]
