"""The daily heartbeat digest to coordinators, against the running gateway: at the configured London
time and not before, exactly once a day (two instances on one database, a restart, both clock-change
days of 2027), sent with nothing to report, what it says (references and counts only), and encrypted
to a coordinator's own OpenPGP key. Delivered into the maildir or a real SMTP sink; nothing mocked."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from holidays.countries.united_kingdom import UnitedKingdom
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.config import ConfigError
from gateway.core.clock import FakeClock
from gateway.core.schema import deliveries, digests, events
from gateway.report import undelivered as report
from gateway.track.verify import verify
from tests.conftest import (
    Sink,
    both_databases,
    maildir_messages,
    make_message,
    referral_body,
    send_referral,
    smtp_send,
    valid_nhs,
    write_config,
)
from tests.test_secure_intake import Setup, decrypt_alert, recipient_key, start_with_team_key
from tests.test_secure_intake import setup as setup  # the fixture, with its GnuPG homes
from tests.test_smime import issue, openssl

IRIS = "iris.novak@demo-council.example"  # the coordinator in config/gateway.toml
SUBJECT = "Referral gateway daily digest for {day}: {late} late, {undelivered} undelivered, {quarantined} quarantined"
# What a referral in these tests holds that must never reach a digest.
PERSONAL = ("Sam Testchild", valid_nhs(), "W1A 1AA", "Zebra-crossing-unique-detail", "Ann Example", "ann.example@")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def start(home: Path, clock: FakeClock, extra: str = "", database_url: str = "") -> Gateway:
    gw = Gateway(config_mod.load(write_config(home, extra, database_url=database_url)), clock=clock, workers=False)
    await gw.start()
    return gw


@pytest.fixture
async def gw(home: Path) -> AsyncIterator[Gateway]:
    gateway = await start(home, FakeClock(at("2026-11-25T07:00")))  # a Wednesday, GMT: London = UTC
    yield gateway
    await gateway.stop()


def clock_of(gw: Gateway) -> FakeClock:
    assert isinstance(gw.clock, FakeClock)
    return gw.clock


async def made_days(gw: Gateway) -> list[tuple[str, datetime]]:
    async with gw.engine.connect() as conn:
        return [(r.day, r.due_at) for r in (await conn.execute(select(digests).order_by(digests.c.day))).all()]


async def test_goes_at_the_configured_time_not_before_and_once_a_day_with_nothing_to_report(
    gw: Gateway, home: Path
) -> None:
    clock = clock_of(gw)
    clock.set(at("2026-11-25T07:29"))
    assert await gw.make_digest() == 0  # 07:29 in London: not yet
    clock.set(at("2026-11-25T07:30"))
    assert await gw.make_digest() == 1  # one coordinator with an email address
    assert await gw.deliver_all() == 1
    (digest,) = maildir_messages(home, IRIS)
    assert digest["Subject"] == SUBJECT.format(day="Wednesday 25 November 2026", late=0, undelivered=0, quarantined=0)
    assert digest["X-Referral-Reference"] == "digest-2026-11-25"
    text = digest.get_content()
    assert "is running" in text and "if one does not arrive, the gateway is down" in text
    assert "Not acknowledged in time (0): none" in text and "Quarantined (0): none" in text
    assert "Outbox waiting to be sent: nothing" in text and "Messages waiting to be processed: 0" in text
    assert "is late" not in text
    # The rest of the day, and polls after it: nothing more.
    for later in ("2026-11-25T07:31", "2026-11-25T12:00", "2026-11-25T23:59"):
        clock.set(at(later))
        assert await gw.make_digest() == 0
    clock.set(at("2026-11-26T07:29"))
    assert await gw.make_digest() == 0
    clock.set(at("2026-11-26T07:30"))
    assert await gw.make_digest() == 1
    await gw.deliver_all()
    assert sorted(m["X-Referral-Reference"] for m in maildir_messages(home, IRIS)) == [
        "digest-2026-11-25",
        "digest-2026-11-26",
    ]
    # A digest is about no referral: it is sent and on the audit chain, and every invariant holds.
    assert await verify(gw.engine, clock.now()) == []
    async with gw.engine.connect() as conn:
        sent = (await conn.execute(select(deliveries.c.state).where(deliveries.c.kind == "digest"))).scalars().all()
        made = (await conn.execute(select(events.c.referral_id).where(events.c.kind == "digest_made"))).all()
    assert sent == ["sent", "sent"] and made == [(None,), (None,)]


@both_databases
async def test_exactly_once_with_two_instances_on_one_database_and_across_a_restart(
    home: Path, database_url: str
) -> None:
    clock = FakeClock(at("2026-11-25T09:00"))
    first, second = (
        await start(home, clock, database_url=database_url),
        await start(home, clock, database_url=database_url),
    )
    try:
        made = await asyncio.gather(first.make_digest(), second.make_digest(), first.make_digest())
        assert sorted(made) == [0, 0, 1]
    finally:
        await second.stop()
        await first.stop()
    again = await start(home, clock, database_url=database_url)  # a restart the same day
    try:
        assert await again.make_digest() == 0
        assert await again.deliver_all() == 1
    finally:
        await again.stop()
    assert len(maildir_messages(home, IRIS)) == 1


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Until the running loops have done something (bounded, so a broken loop fails, not hangs)."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


async def test_the_background_task_of_two_running_instances_sends_one(home: Path) -> None:
    # Due as they start: each loop's first step comes at once (later ones every 30 s of real time).
    clock = FakeClock(at("2026-11-25T07:30"))
    first = Gateway(config_mod.load(write_config(home)), clock=clock)  # every worker loop running
    await first.start()
    second = Gateway(config_mod.load(write_config(home)), clock=clock)
    await second.start()
    try:
        day = datetime(2026, 11, 25).date()
        await wait_for(lambda: first.digest.done_day == day and second.digest.done_day == day, "both loops")
        await wait_for(lambda: len(maildir_messages(home, IRIS)) >= 1, "the digest in the coordinator's mailbox")
    finally:
        await second.stop()
        await first.stop()
    assert len(maildir_messages(home, IRIS)) == 1


async def test_a_gateway_down_at_the_time_sends_it_late_that_day_and_skips_a_day_it_missed(home: Path) -> None:
    clock = FakeClock(at("2026-11-25T07:30"))
    gw = await start(home, clock)
    try:
        assert await gw.make_digest() == 1
    finally:
        await gw.stop()
    clock.set(at("2026-11-27T10:05"))  # down all of Thursday 26th and at 07:30 on Friday
    gw = await start(home, clock)
    try:
        assert await gw.make_digest() == 1
        await gw.deliver_all()
        assert [day for day, _ in await made_days(gw)] == ["2026-11-25", "2026-11-27"]
    finally:
        await gw.stop()
    (late,) = [m for m in maildir_messages(home, IRIS) if m["X-Referral-Reference"] == "digest-2026-11-27"]
    assert "Friday 27 November 2026" in late["Subject"]
    text = late.get_content()
    assert "It was due at Friday 27 November 2026, 07:30 GMT and is late" in text
    assert "No digest was made since Wednesday 25 November 2026" in text


async def test_spring_forward_a_time_that_does_not_exist_goes_at_the_jump(home: Path) -> None:
    # 28 March 2027: at 01:00 GMT the clocks go to 02:00 BST, so 01:30 never happens in London.
    clock = FakeClock(at("2027-03-28T00:59"))  # 00:59 GMT
    gw = await start(home, clock, '[digest]\ntime = "01:30"\n')
    try:
        assert await gw.make_digest() == 0
        clock.set(at("2027-03-28T01:00"))  # 02:00 BST: the wall clock is past 01:30
        assert await gw.make_digest() == 1
        clock.set(at("2027-03-28T22:00"))
        assert await gw.make_digest() == 0
        assert await made_days(gw) == [("2027-03-28", at("2027-03-28T01:00"))]
    finally:
        await gw.stop()


async def test_fall_back_a_time_that_happens_twice_gets_one_digest(home: Path) -> None:
    # 31 October 2027: 01:30 BST (00:30 UTC), then at 02:00 BST back to 01:00 GMT, and 01:30 GMT again.
    clock = FakeClock(at("2027-10-31T00:29"))  # 01:29 BST
    gw = await start(home, clock, '[digest]\ntime = "01:30"\n')
    try:
        assert await gw.make_digest() == 0
        clock.set(at("2027-10-31T00:30"))  # 01:30 BST, the first time
        assert await gw.make_digest() == 1
        for again in ("2027-10-31T01:00", "2027-10-31T01:30", "2027-10-31T01:45"):  # 01:00-01:45 GMT
            clock.set(at(again))
            assert await gw.make_digest() == 0
        assert await made_days(gw) == [("2027-10-31", at("2027-10-31T00:30"))]
    finally:
        await gw.stop()


async def test_a_referral_not_processed_in_time_is_on_the_report_and_in_the_digest(gw: Gateway) -> None:
    clock = clock_of(gw)
    reference = await send_referral(gw, "p1", urgency="urgent")  # accepted, never processed here
    assert await report.undelivered(gw.engine, gw.config.settings, clock.now()) == []  # within its grace
    clock.advance(timedelta(minutes=40))  # 07:40: past the 15 minutes, and the digest is due
    (row,) = await report.undelivered(gw.engine, gw.config.settings, clock.now())
    assert row.reference == reference and row.kinds == ("unprocessed",) and row.reason == "not yet processed"
    assert await gw.make_digest() == 1


def relay(sink: Sink) -> str:
    """The council's mail server is the test's SMTP sink (on loopback, so no STARTTLS)."""
    return f'[mail.relay]\nhost = "127.0.0.1"\nport = {sink.port}\nstarttls = false\ntimeout = "5s"\n'


def with_max_attempts_one(path: Path) -> None:
    text = path.read_text().replace("max_attempts = 8 ", "max_attempts = 1 ", 1)
    path.write_text(text)


async def test_content_counts_references_and_health_and_no_personal_data(home: Path, tmp_path: Path) -> None:
    clock = FakeClock(at("2026-11-25T10:00"))
    sink = Sink()
    await sink.start()
    # A partner's CA certificate that expires in 10 days, and nobody on call for the EDT one night.
    ca = issue(
        tmp_path,
        "school-ca",
        ca=True,
        not_before=clock.now() - timedelta(days=300),
        not_after=clock.now() + timedelta(days=10),
    )
    (home / "keys" / "partners").mkdir(parents=True)
    shutil.copy(ca.cert_path, home / "keys" / "partners" / "school-ca.pem")
    extra = (
        '[digest]\ntime = "11:00"\n\n'
        '[[partners]]\nname = "Demo School"\naddresses = ["@school.example"]\n'
        'smime_anchors = ["keys/partners/school-ca.pem"]\n'
    )
    path = write_config(home, extra, relay=relay(sink))
    with_max_attempts_one(path)
    text = path.read_text()
    gap = (
        '[[teams.rota.overrides]]\nfrom = "2026-11-26T02:00"\nto = "2026-11-26T03:00"\nmembers = []\nnote = "nobody"\n'
    )
    path.write_text(text.replace("[[coordinators]]", gap + "\n[[coordinators]]", 1))
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    try:
        # Quarantined: its stored copy damaged, as a disk fault would.
        code, reply = await smtp_send(gw.smtp_port, make_message(referral_body(), message_id="<d1@nhs.example>"))
        assert code == 250
        quarantined = reply.split()[-1]
        with sqlite3.connect(home / "var" / "gateway.db") as conn:
            conn.execute("UPDATE messages SET raw = CAST(substr(raw, 1, length(raw) - 1) || x'00' AS BLOB)")
        for _ in range(gw.config.settings.processing.max_attempts):
            await gw.process_all()
            clock.advance(timedelta(seconds=11))
        await gw.deliver_all()
        # Undelivered: every alert refused for good by the council's mail server.
        sink.refuse_with = "550 5.1.1 no such mailbox"
        undelivered = await send_referral(gw, "d2", urgency="immediate")
        await gw.process_all()
        await gw.deliver_all()
        sink.refuse_with = None
        # Late: delivered, never acknowledged, past its 15 minutes.
        late = await send_referral(gw, "d3", urgency="immediate")
        await gw.process_all()
        await gw.deliver_all()
        clock.set(at("2026-11-25T11:00"))
        await gw.fire_deadlines()
        await gw.deliver_all()
        # Waiting: one routed but its alerts not sent yet, one not processed yet.
        await send_referral(gw, "d4", urgency="standard")
        await gw.process_all()
        await send_referral(gw, "d5", urgency="standard")
        before = len(sink.messages)
        assert await gw.make_digest() == 1
        await gw.deliver_all()
        (raw,) = [m for _, rcpts, m in sink.messages[before:] if IRIS in rcpts]
        (digest,) = [m for m in sink.to(IRIS) if m["X-Referral-Reference"] == "digest-2026-11-25"]
    finally:
        await gw.stop()
        await sink.stop()
    assert digest["Subject"] == SUBJECT.format(day="Wednesday 25 November 2026", late=2, undelivered=1, quarantined=1)
    body = digest.get_content()
    assert f"Not acknowledged in time (2): {undelivered}, {late}" in body
    assert f"Delivery failed for good (1): {undelivered}" in body
    assert f"Quarantined (1): {quarantined}" in body
    assert "(not routed): quarantined 1, received 1 (total 2)" in body
    assert "Received in the last 24 hours: 5" in body
    (queued,) = [line for line in body.splitlines() if line.startswith("Outbox waiting to be sent: ")]
    assert "alert " in queued and "receipt 1 (oldest queued Wednesday 25 November 2026, 11:00 GMT)" in queued
    assert "Messages waiting to be processed: 1 (oldest received Wednesday 25 November 2026, 11:00 GMT)" in body
    assert "Last message delivered: Wednesday 25 November 2026" in body
    assert (
        "partner Demo School's certificate keys/partners/school-ca.pem expires on 2026-12-05 (in 9 days): renew it"
        in body
    )
    (gap,) = [line for line in body.splitlines() if "nobody reachable" in line]
    assert gap.startswith("- nobody reachable on duty in team 'edt' on Thu 26 Nov 2026, 02:00-03:00 (routes: ")
    assert "default-triage" in gap
    for secret in PERSONAL:
        assert secret not in raw.decode(errors="replace"), secret


async def test_a_digest_that_fails_for_good_is_on_the_chain_and_in_the_next_one(home: Path) -> None:
    clock = FakeClock(at("2026-11-25T07:30"))
    sink = Sink()
    await sink.start()
    path = write_config(home, relay=relay(sink))
    with_max_attempts_one(path)
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    try:
        sink.refuse_with = "550 5.1.1 no such mailbox"
        assert await gw.make_digest() == 1
        assert await gw.deliver_all() == 1
        sink.refuse_with = None
        clock.set(at("2026-11-26T07:30"))
        assert await gw.make_digest() == 1
        await gw.deliver_all()
        assert await verify(gw.engine, clock.now()) == []
        async with gw.engine.connect() as conn:
            kinds = (await conn.execute(select(events.c.kind).where(events.c.referral_id.is_(None)))).scalars().all()
    finally:
        await gw.stop()
        await sink.stop()
    assert kinds == ["digest_made", "delivery_dead", "digest_made", "delivery_sent"]
    (digest,) = sink.to(IRIS)
    assert digest["X-Referral-Reference"] == "digest-2026-11-26"
    assert "Daily digests that failed for good in the last 7 days: 1" in digest.get_content()


async def test_warns_when_bank_holiday_data_ends_within_60_days(home: Path) -> None:
    end = date(UnitedKingdom.end_year, 12, 31)  # the installed holidays package's last year
    gw = await start(home, FakeClock(datetime.combine(end - timedelta(days=45), time(9, 0), UTC)))
    try:
        assert await gw.make_digest() == 1
        await gw.deliver_all()
    finally:
        await gw.stop()
    (digest,) = maildir_messages(home, IRIS)
    expected = (
        f"- bank holiday data for england ends on {end.isoformat()}, within 60 days; upgrade the holidays package"
    )
    assert expected in digest.get_content().splitlines()


async def test_encrypted_to_a_coordinator_with_an_openpgp_key(setup: Setup, clock: FakeClock) -> None:
    iris_home = Path(tempfile.mkdtemp(prefix="gpg"))
    try:
        fpr = recipient_key(setup, iris_home, f"Iris Novak <{IRIS}>")
        clock.set(at("2026-11-25T08:00"))
        gw = await start_with_team_key(setup, clock, f'openpgp = "{fpr}"', after=f'email = "{IRIS}"')
        try:
            assert await gw.make_digest() == 1
            await gw.deliver_all()
        finally:
            await gw.stop()
        (digest,) = maildir_messages(setup.home, IRIS)
        assert digest["Subject"].startswith("Referral gateway daily digest for Wednesday 25 November 2026")
        assert b"NEEDS A PERSON" not in digest.as_bytes()  # nothing readable on the wire
        inner = email.message_from_bytes(decrypt_alert(setup, iris_home, digest), policy=email.policy.default)
        assert isinstance(inner, EmailMessage)
        text = inner.get_content()
        assert "NEEDS A PERSON" in text and "is running" in text and "Quarantined (0): none" in text
    finally:
        subprocess.run(["gpgconf", "--homedir", str(iris_home), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(iris_home, ignore_errors=True)


async def test_encrypted_to_a_coordinator_with_an_smime_certificate(setup: Setup, clock: FakeClock) -> None:
    iris = issue(setup.home / "keys", "iris", issuer=setup.ca, email_address=IRIS)
    clock.set(at("2026-11-25T08:00"))
    gw = await start_with_team_key(setup, clock, f'smime_cert = "{iris.cert_path}"', after=f'email = "{IRIS}"')
    try:
        assert await gw.make_digest() == 1
        await gw.deliver_all()
    finally:
        await gw.stop()
    (digest,) = maildir_messages(setup.home, IRIS)
    raw = digest.as_bytes()
    assert b"NEEDS A PERSON" not in raw
    decrypted = openssl("smime", "-decrypt", "-inkey", str(iris.key_path), "-recip", str(iris.cert_path), stdin=raw)
    assert decrypted.returncode == 0, decrypted.stderr
    verified = openssl("smime", "-verify", "-CAfile", str(setup.ca.cert_path), stdin=decrypted.stdout)
    assert verified.returncode == 0 and b"Verification successful" in verified.stderr, verified.stderr
    inner = email.message_from_bytes(verified.stdout, policy=email.policy.default)
    assert isinstance(inner, EmailMessage)
    assert "NEEDS A PERSON" in inner.get_content()


def test_config_refuses_a_bad_time_and_a_digest_with_nobody_to_send_it_to(home: Path) -> None:
    with pytest.raises(ConfigError) as bad_time:
        config_mod.load(write_config(home, '[digest]\ntime = "7.30am"\n'))
    assert "digest.time" in str(bad_time.value) and "HH:MM" in str(bad_time.value)
    path = write_config(home, "[digest]\nenabled = true\n")
    text = path.read_text()
    start_at = text.index("[[coordinators]]")
    path.write_text(text[:start_at] + text[text.index("\n\n", start_at) :])
    with pytest.raises(ConfigError) as nobody:
        config_mod.load(path)
    assert "no [[coordinators]] has an email address" in str(nobody.value)
    # Without enabled, no coordinator simply means no digest.
    path.write_text(path.read_text().replace("[digest]\nenabled = true\n", ""))
    assert config_mod.load(path).settings.digest_recipients == ()
