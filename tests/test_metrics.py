"""/metrics against the running gateway: referrals sent by SMTP and the web form, one quarantined,
deliveries a relay refuses, an escalation fired with the injected clock; the exposition scraped
over real HTTP and read with prometheus_client's own parser. And where it is served: its own
listener, or the main port behind a bearer token, or nowhere."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core.clock import FakeClock
from gateway.core.schema import deliveries
from tests.conftest import (
    REFERRAL_ADDRESS,
    ROOT,
    START,
    Sink,
    both_databases,
    make_message,
    referral_body,
    send_referral,
    smtp_send,
    write_config,
)
from tests.test_sms import SmsWorld, put_token, sms_config
from tests.test_web_form import GOOD, Browser
from tests.twilio_fake import FakeTwilio

TOKEN = "metrics-token-for-tests-0123456789"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.text()


def bogus_pgp() -> bytes:
    """PGP/MIME whose encrypted part is not OpenPGP at all: the gateway cannot open it."""
    return (
        f"From: Ann Example <ann.example@nhs.example>\r\nTo: {REFERRAL_ADDRESS}\r\nSubject: Referral\r\n"
        "Message-ID: <bogus@nhs.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        "--b1\r\nContent-Type: application/octet-stream\r\n\r\n"
        "-----BEGIN PGP MESSAGE-----\r\n\r\nbm90IGFuIG9wZW5wZ3AgbWVzc2FnZQ==\r\n-----END PGP MESSAGE-----\r\n"
        "--b1--\r\n"
    ).encode()


@pytest.fixture
async def relay() -> AsyncIterator[Sink]:
    sink = Sink()
    sink.refuse_with = "550 5.1.1 no such mailbox"  # every delivery by email fails for good
    await sink.start()
    yield sink
    await sink.stop()


async def start(home: Path, clock: FakeClock, extra: str, relay: str = "", database_url: str = "") -> Gateway:
    path = write_config(home, extra, relay=relay, database_url=database_url)
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    return gw


@both_databases
async def test_metrics_count_what_happened_to_referrals_from_every_channel(
    home: Path, clock: FakeClock, relay: Sink, database_url: str
) -> None:
    relay_config = f'[mail.relay]\nhost = "127.0.0.1"\nport = {relay.port}\nstarttls = false\ntimeout = "5s"\n'
    gw = await start(home, clock, '[metrics]\nlisten = "127.0.0.1:0"\n', relay_config, database_url)
    url = f"http://127.0.0.1:{gw.metrics_port}/metrics"
    browser = Browser(f"http://127.0.0.1:{gw.http_port}")
    try:
        immediate = await send_referral(gw, "m1", urgency="immediate")
        assert immediate
        assert (await smtp_send(gw.smtp_port, bogus_pgp()))[0] == 250
        assert (await smtp_send(gw.smtp_port, make_message(referral_body()), recipients=("nobody@x.example",)))[
            0
        ] == 550
        page = await browser.send({**GOOD, "urgency": "urgent"})
        assert "Referral sent" in page.text

        # Stored, not yet processed: a minute later, processing lags by that minute.
        clock.advance(timedelta(minutes=1))
        status, text = await scrape(url)
        assert status == 200
        before = parse(text)
        assert value(before, "gateway_ready") == 1  # a minute's lag is under health.max_processing_lag
        assert value(before, "gateway_processing_queue") == 3
        assert value(before, "gateway_processing_lag_seconds") == 60
        assert value(before, "gateway_referrals", state="received", channel="email") == 2
        assert value(before, "gateway_referrals", state="received", channel="web") == 1

        assert await gw.process_all() == 3
        await gw.deliver_all()
        after = parse((await scrape(url))[1])
        assert value(after, "gateway_processing_queue") == 0
        assert value(after, "gateway_processing_lag_seconds") == 0
        assert value(after, "gateway_referrals_accepted_total", channel="email") == 2
        assert value(after, "gateway_referrals_accepted_total", channel="web") == 1
        assert value(after, "gateway_referrals_quarantined_total", channel="email") == 1
        assert value(after, "gateway_referrals_quarantined_total", channel="web") == 0
        assert value(after, "gateway_referrals", state="quarantined", channel="email") == 1
        assert value(after, "gateway_unacknowledged", team="mash") == 2
        assert value(after, "gateway_unacknowledged", team="edt") == 0
        # Every email the relay refused is dead; texts (the SMS spool) went.
        async with gw.engine.connect() as conn:
            dead_alerts = await conn.scalar(
                select(func.count()).where(deliveries.c.state == "dead", deliveries.c.kind == "alert")
            )
        assert dead_alerts and value(after, "gateway_deliveries_failed", kind="alert") == dead_alerts
        assert value(after, "gateway_outbox_depth", kind="alert") == 0
        assert (
            value(after, "gateway_last_delivery_sent_timestamp_seconds") == (START + timedelta(minutes=1)).timestamp()
        )
        # SMTP replies by code: 2 accepted sessions and one refused recipient.
        assert value(after, "gateway_smtp_replies_total", code="354") == 2
        assert value(after, "gateway_smtp_replies_total", code="550") == 1
        assert value(after, "gateway_smtp_replies_total", code="220") == 3

        # +10m: both referrals' next escalation step fires (the alerts by email all failed); the
        # reminders wait in the outbox.
        assert ("gateway_escalations_fired_total", (("team", "mash"),)) not in after
        clock.set(START + timedelta(minutes=10))
        assert await gw.fire_deadlines() == 2
        escalated = parse((await scrape(url))[1])
        assert value(escalated, "gateway_escalations_fired_total", team="mash") == 2
        clock.set(START + timedelta(minutes=16))
        await gw.fire_deadlines()  # the immediate referral's acknowledgement deadline (15m) is missed
        late = parse((await scrape(url))[1])
        assert value(late, "gateway_unacknowledged_overdue", team="mash") == 1  # the immediate one, not the urgent
        assert value(late, "gateway_oldest_unacknowledged_age_seconds", team="mash") == 16 * 60
        assert value(late, "gateway_outbox_depth", kind="reminder") > 0
        assert value(late, "gateway_outbox_oldest_age_seconds", kind="reminder") == 6 * 60
        # No personal data in any label or help text: not the child, the referrer or an address.
        for secret in ("Sam", "Testchild", "W1A", "ann.example", "alex.example", "Example Street", "nobody@"):
            assert secret not in text and secret not in (await scrape(url))[1]
        # /metrics is not on the main port when only its own listener is configured; the probes
        # are on both.
        assert (await scrape(f"http://127.0.0.1:{gw.http_port}/metrics"))[0] == 404
        for port in (gw.http_port, gw.metrics_port):
            assert (await scrape(f"http://127.0.0.1:{port}/livez")) == (200, '{"status": "ok"}')
            assert (await scrape(f"http://127.0.0.1:{port}/readyz"))[0] == 200
    finally:
        await browser.close()
        await gw.stop()


async def test_metrics_on_the_main_port_want_the_bearer_token(home: Path, clock: FakeClock) -> None:
    keys = home / "keys"
    keys.mkdir(parents=True, mode=0o700)
    (keys / "metrics.token").write_text(TOKEN + "\n")
    os.chmod(keys / "metrics.token", 0o600)
    gw = await start(home, clock, '[metrics]\ntoken_file = "metrics.token"\n')
    url = f"http://127.0.0.1:{gw.http_port}/metrics"
    try:
        await send_referral(gw, "t1", urgency="urgent")
        status, text = await scrape(url)
        assert status == 401 and "Authorization: Bearer" in text
        assert (await scrape(url, "wrong-token"))[0] == 401
        assert (await scrape(url, TOKEN[:-1]))[0] == 401
        status, text = await scrape(url, TOKEN)
        assert status == 200
        assert value(parse(text), "gateway_referrals", state="received", channel="email") == 1
    finally:
        await gw.stop()


async def test_a_world_readable_token_file_stops_the_start(home: Path, clock: FakeClock) -> None:
    keys = home / "keys"
    keys.mkdir(parents=True, mode=0o700)
    (keys / "metrics.token").write_text(TOKEN)
    os.chmod(keys / "metrics.token", 0o644)
    gw = Gateway(config_mod.load(write_config(home, '[metrics]\ntoken_file = "metrics.token"\n')), clock=clock)
    with pytest.raises(Exception, match="readable by others; run: chmod 600"):
        await gw.start()  # before anything is opened: nothing to stop


async def test_without_metrics_config_there_is_no_metrics_page(gateway: Gateway) -> None:
    assert (await scrape(f"http://127.0.0.1:{gateway.http_port}/metrics"))[0] == 404
    assert (await scrape(f"http://127.0.0.1:{gateway.http_port}/metrics", TOKEN))[0] == 404


async def test_refused_webhooks_are_counted_by_webhook_and_reason(
    home: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    put_token(home)
    async with FakeTwilio(now=clock.now) as api:
        path = write_config(home, sms_config(api.base_url) + '\n[metrics]\nlisten = "127.0.0.1:0"\n')
        gw = Gateway(config_mod.load(path), clock=clock, workers=False)
        await gw.start()
        try:
            world = SmsWorld(gw, api, home, clock)
            assert (await world.post("/sms/inbound", {"Body": "hello"}, signature=""))[0] == 403
            assert (await world.post("/sms/status", {"MessageSid": "SM1"}, signature="bad"))[0] == 403
            assert (await world.post("/sms/status", {"MessageSid": "SM1"}))[0] == 400  # signed, no status
            samples = parse((await scrape(f"http://127.0.0.1:{gw.metrics_port}/metrics"))[1])
            assert value(samples, "gateway_webhooks_refused_total", webhook="inbound", reason="signature") == 1
            assert value(samples, "gateway_webhooks_refused_total", webhook="status", reason="signature") == 1
            assert value(samples, "gateway_webhooks_refused_total", webhook="status", reason="malformed") == 1
        finally:
            await gw.stop()


@pytest.mark.parametrize(
    ("section", "said"),
    [
        ("", 'metrics: /metrics is off; to serve it set [metrics] listen = "127.0.0.1:9464" or token_file'),
        (
            '[metrics]\nlisten = "127.0.0.1:9464"\n',
            "metrics: /metrics on its own listener 127.0.0.1:9464 (no token: keep it on loopback)",
        ),
        (
            '[metrics]\ntoken_file = "metrics.token"\n',
            "metrics: /metrics on the HTTP port behind the bearer token in keys/metrics.token",
        ),
    ],
)
def test_check_config_says_where_metrics_are_served(
    home: Path, capsys: pytest.CaptureFixture[str], section: str, said: str
) -> None:
    keys = home / "keys"
    keys.mkdir(parents=True, mode=0o700)
    (keys / "metrics.token").write_text(TOKEN)
    os.chmod(keys / "metrics.token", 0o600)
    main(["check-config", "--config", str(write_config(home, section, all_hours=True))])
    assert said in capsys.readouterr().out.splitlines()


def test_check_config_refuses_a_bad_listen_address_and_a_short_token(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--config", str(write_config(home, '[metrics]\nlisten = "9464"\n'))]) == 2
    assert "metrics.listen: '9464' is not host:port. Fix: use one like '127.0.0.1:9464'" in capsys.readouterr().err
    keys = home / "keys"
    keys.mkdir(parents=True, mode=0o700)
    (keys / "metrics.token").write_text("short")
    os.chmod(keys / "metrics.token", 0o600)
    path = write_config(home, '[metrics]\ntoken_file = "metrics.token"\n')
    assert main(["check-config", "--config", str(path)]) == 2
    assert "the metrics token is shorter than 16 characters" in capsys.readouterr().err


async def test_every_metric_the_readme_names_and_alerts_on_is_served(home: Path, clock: FakeClock) -> None:
    """The README's metrics table and its alert rules to copy name only series a scrape has: a
    renamed metric would otherwise leave an alert that never fires."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Operations: monitoring", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\bgateway_[a-z_]+[a-z]", section))
    rules = re.findall(r"^\s+- alert: (\w+)$", section, re.MULTILINE)
    assert len(rules) >= 10 and len(set(rules)) == len(rules)
    assert len(re.findall(r"^\s+expr: \S", section, re.MULTILINE)) == len(rules)

    gw = await start(home, clock, '[metrics]\nlisten = "127.0.0.1:0"\n')
    try:
        text = (await scrape(f"http://127.0.0.1:{gw.metrics_port}/metrics"))[1]
    finally:
        await gw.stop()
    served = set()
    for family in text_string_to_metric_families(text):
        served |= {family.name, *(s.name for s in family.samples)}
        if family.type == "counter":
            served.add(family.name + "_total")
    assert named and named <= served, f"named in the README but not served: {sorted(named - served)}"
