"""Issue 13, fault test 1: three `serve` processes on one PostgreSQL, referrals arriving by SMTP,
the web form and SMS from concurrent clients, and a random instance killed with SIGKILL again and
again (restarted each time with the same config) while they arrive.

Laid out as INSTALL.txt says: one home, the shared keys made once by `referral-gateway keys init`,
one config per instance differing only in its ports, one database. Clients pick an instance at
random per attempt (a balancer, an MX list) and retry as their real counterparts do (tests/
scale_clients.py). The immediate chain's waits are cut to seconds, so its later steps fall due
(and race between the instances) during the kills.

What must hold, read from the store (ids, references, states, hashes; content is sealed): every
message that got a yes (a 250, a receipt page, an SMS reply) is stored exactly once and with the
reference the yes named, nothing else is stored, every referral is processed and `alerted`; no
escalation step fires twice and no alert row is queued twice for one step; `referral-gateway
verify` exits 0. The figures are printed past pytest's capture (they show in `pytest -q` output)
and kept with record_property (in a --junitxml report). Set SCALE_SEED to replay the random choices.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.intake.smtp import dedupe_key
from tests.conftest import make_message, referral_body, write_config
from tests.postgres import create_database
from tests.scale_clients import Ledger, browser, guarded, smtp_client, twilio_client, twilio_in_thread
from tests.test_crash_recovery import REFERRERS, SHAPES, GatewayProcess, Item, free_ports, wait_for
from tests.test_sms import PAT, SOL, new_sid, put_token, sms_config

pytestmark = pytest.mark.fault

INSTANCES = 3
SMTP_REFERRALS, WEB_REFERRALS, SMS_REFERRALS = 300, 100, 50
SMTP_SENDERS, BROWSERS_AT_ONCE, TWILIO_SENDERS = 6, 4, 2
KILLS = 10
LOAD_SECONDS = 100  # about how long the clients take to send everything: the kills go on meanwhile
RUN_DEADLINE = 360.0  # seconds for every client to get its yes
SETTLE = 120.0  # seconds more for the last instances to process, send and escalate everything


def instance_configs(home: Path, url: str, twilio_api: str) -> list[tuple[Path, int]]:
    """config/gateway.toml (for keys init and verify) and config/instN.toml, each on its own
    fixed ports (a restarted process listens where the dead one did). Short leases and retries:
    a survivor takes over a dead instance's claimed work within seconds."""
    extra = '[processing]\nlease = "3s"\nretry = "1s"\n' + sms_config(twilio_api, limit=10 * SMS_REFERRALS)
    base = write_config(home, extra, database_url=url, all_hours=True, shared_keys=False).read_text()
    for old, new in (
        ('lease = "2m"', 'lease = "3s"'),
        ('first_retry = "30s"', 'first_retry = "1s"'),
        ("[http]\n", '[http]\ntrusted_proxies = ["127.0.0.1/32"]\n'),  # the balancer the browsers come through
    ):
        assert base.count(old) == 1, f"config template changed: {old!r} not found once"
        base = base.replace(old, new)
    # The immediate chain cut to two steps a minute apart (the shortest wait config allows), and no
    # repeat: step 2 falls due, and races between the instances, while the kills go on, and the
    # chain ends, so the run can settle.
    start = base.index('[[escalations]]\nid = "immediate"\n')
    end = base.index("[[escalations]]", start + 1)
    steps = base[start:end].split("[[escalations.steps]]\n")
    assert len(steps) == 4 and 'wait = "10m"' in steps[1], "config template changed: the immediate chain"
    chain = "[[escalations.steps]]\n".join([steps[0], steps[1].replace('"10m"', '"1m"'), steps[2]])
    base = base[:start] + chain + "\n" + base[end:]
    (home / "config" / "gateway.toml").write_text(base)
    ports = free_ports(2 * INSTANCES)
    configs = []
    for n in range(INSTANCES):
        smtp_port, http_port = ports[2 * n], ports[2 * n + 1]
        assert base.count("port = 0\n") == 2
        own = base.replace("port = 0\n", f"port = {smtp_port}\n", 1).replace("port = 0\n", f"port = {http_port}\n", 1)
        path = home / "config" / f"inst{n}.toml"
        path.write_text(own)
        configs.append((path, smtp_port))
    return configs


def pause(per_client: int) -> float:
    """The longest wait between one client's sends, so that its sends last about LOAD_SECONDS."""
    return 2 * LOAD_SECONDS / per_client


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = str(home / "config" / "gateway.toml")
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", config],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cluster(
    tmp_path: Path, postgres_base_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[list[GatewayProcess], str, Path]]:
    """Three instances serving (not started yet); yields them, the database URL and the home."""
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)  # the token comes from keys/, as installed
    home = tmp_path / "opt"
    url = create_database(postgres_base_url, f"t{uuid.uuid4().hex[:16]}")
    with twilio_in_thread() as api:
        configs = instance_configs(home, url, api.base_url)
        made = cli(home, "keys", "init")
        assert made.returncode == 0, made.stdout + made.stderr
        put_token(home)
        # Each process logs under its own folder (GatewayProcess names logs by generation only).
        gateways = [GatewayProcess(home / "run" / f"inst{n}", path, port) for n, (path, port) in enumerate(configs)]
        try:
            yield gateways, url, home
        finally:
            for gw in gateways:
                gw.close()


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in (await conn.execute(text(sql))).all()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def settled(url: str) -> bool:
    """Everything processed, every delivery sent, and every immediate chain run to its end."""
    ((unprocessed, unsent, steps_due, stored),) = rows(
        url,
        "SELECT (SELECT count(*) FROM messages WHERE processed_at IS NULL),"
        " (SELECT count(*) FROM deliveries WHERE state != 'sent'),"
        " (SELECT count(*) FROM deadlines WHERE kind = 'step' AND chain = 'immediate'"
        "   AND fired_at IS NULL AND cancelled_at IS NULL),"
        " (SELECT count(*) FROM messages)",
    )
    return bool(unprocessed == 0 and unsent == 0 and steps_due == 0 and stored > 0)


def smtp_items(run: str) -> list[Item]:
    items = []
    for n in range(SMTP_REFERRALS):
        (postcode, urgency, category), team = SHAPES[n % len(SHAPES)]  # a third immediate (to the EDT)
        referrer = REFERRERS[n % len(REFERRERS)]
        message_id = f"<scale-{run}-{n:04d}@{referrer.split('@')[1]}>"
        body = referral_body(postcode=postcode, urgency=urgency, category=category)
        raw = make_message(body, sender=referrer, message_id=message_id, subject=f"Safeguarding referral {n}")
        items.append(Item(message_id, referrer, raw.as_bytes(), team))
    return items


def sms_texts() -> list[tuple[str, str, str]]:
    """(sender, body, MessageSid): quick referrals from the two registered professionals, half immediate."""
    return [
        ((PAT, SOL)[n % 2], f"REF W1A 1AA {'imm' if n % 2 else 'urgent'} synthetic concern {n}", new_sid())
        for n in range(SMS_REFERRALS)
    ]


def reached(ledger: Ledger, yeses: int) -> bool:
    return ledger.accepted >= yeses


def kill_and_restart(gateways: list[GatewayProcess], ledger: Ledger, rng: random.Random, log: list[str]) -> None:
    """KILLS times, spread over the yeses: SIGKILL a random instance, then start it again."""
    total = SMTP_REFERRALS + WEB_REFERRALS + SMS_REFERRALS
    step = total // (KILLS + 1)
    for i in range(KILLS):
        threshold = step * (i + 1) + rng.randint(-step // 4, step // 4)
        wait_for(functools.partial(reached, ledger, threshold), RUN_DEADLINE, f"{threshold} yeses")
        time.sleep(rng.uniform(0, 0.3))
        victim = rng.randrange(INSTANCES)
        gateways[victim].sigkill()
        log.append(f"inst{victim} at {ledger.accepted} yeses")
        gateways[victim].reap_killed()
        time.sleep(rng.uniform(0, 0.5))  # clients meet a closed port for a moment
        gateways[victim].start(timeout=60)


def test_three_instances_lose_and_twin_nothing_across_sigkills(
    cluster: tuple[list[GatewayProcess], str, Path],
    capsys: pytest.CaptureFixture[str],
    record_property: Any,
) -> None:
    gateways, url, home = cluster
    seed = int(os.environ.get("SCALE_SEED", str(random.SystemRandom().randrange(2**32))))
    rng = random.Random(seed)
    started = time.monotonic()
    items = smtp_items(f"{seed:08x}")
    texts = sms_texts()
    ledger = Ledger(started + RUN_DEADLINE)
    smtp_ports = [gw.smtp_port for gw in gateways]
    http_ports = [int(re.findall(r"^port = (\d+)$", gw.config.read_text(), re.M)[1]) for gw in gateways]
    kills: list[str] = []

    def browsers(first: int) -> None:
        for n in range(first, WEB_REFERRALS, BROWSERS_AT_ONCE):
            time.sleep(rng.uniform(0, pause(WEB_REFERRALS // BROWSERS_AT_ONCE)))
            browser(ledger, http_ports, n, seed + 1000 + n)

    smtp_pause, sms_pause = pause(SMTP_REFERRALS // SMTP_SENDERS), pause(SMS_REFERRALS // TWILIO_SENDERS)
    work = [
        *(lambda n=n: smtp_client(ledger, smtp_ports, items[n::SMTP_SENDERS], seed + n, smtp_pause)
          for n in range(SMTP_SENDERS)),
        *(lambda n=n: browsers(n) for n in range(BROWSERS_AT_ONCE)),
        *(lambda n=n: twilio_client(ledger, http_ports, texts[n::TWILIO_SENDERS], seed + 500 + n, sms_pause)
          for n in range(TWILIO_SENDERS)),
    ]  # fmt: skip
    threads = [threading.Thread(target=guarded(ledger, f"client {n}", w), daemon=True) for n, w in enumerate(work)]
    try:
        for gw in gateways:
            gw.start(timeout=60)
        for thread in threads:
            thread.start()
        kill_and_restart(gateways, ledger, rng, kills)
        killed_by = ledger.accepted
        for thread in threads:
            thread.join(timeout=max(1.0, ledger.deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "clients still sending at the deadline"
        sending = time.monotonic() - started
        wait_for(lambda: settled(url), SETTLE, "everything processed, sent and escalated")
        for gw in gateways:
            assert gw.terminate() == 0, gw.tail(gw.generation)
        verify = cli(home, "verify")
        figures = check_store(url, ledger, items, texts)
        errors = [f"inst{n} {line}" for n, gw in enumerate(gateways) for line in gw.error_lines()]
        summary = (
            f"scale faults (seed {seed}): {INSTANCES} instances on PostgreSQL; sent {SMTP_REFERRALS} by SMTP, "
            f"{WEB_REFERRALS} by web form, {SMS_REFERRALS} by SMS; attempts {dict(ledger.attempts)}, "
            f"retried {dict(ledger.retried)}; yeses {ledger.accepted}\n"
            f"  {sum(gw.kills for gw in gateways)} SIGKILLs (the last at {killed_by} yeses): {'; '.join(kills)}\n"
            f"  {'; '.join(f'{k} {v}' for k, v in figures.items())}\n"
            f"  verify exit {verify.returncode}; gateway ERROR/Traceback log lines: {len(errors)}"
            + "".join(f"\n    {line}" for line in errors[:10])
            + f"\n  wall time {time.monotonic() - started:.1f}s (clients done at {sending:.1f}s)"
        )
        with capsys.disabled():
            print("\n" + summary)
        for name, value in figures.items():
            record_property(name, value)
        record_property("kills", sum(gw.kills for gw in gateways))
        assert not ledger.failures, "\n".join(ledger.failures[:20])
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert figures["lost"] == figures["twinned"] == figures["duplicate alert rows"] == 0, figures
        assert figures["steps fired twice"] == figures["unfinished immediate chains"] == 0, figures
        assert figures["alerts queued twice in a step"] == figures["extra alert firings"] == 0, figures
        assert figures["not alerted"] == figures["stored unasked"] == figures["under another reference"] == 0, figures
        assert figures["missing alert rows"] == figures["duplicate receipts"] == 0, figures
        assert sum(gw.kills for gw in gateways) == KILLS
        assert killed_by < SMTP_REFERRALS + WEB_REFERRALS + SMS_REFERRALS, "the kills were not all during the load"
    except BaseException:
        with capsys.disabled():
            print(f"\nscale faults FAILED (seed {seed}); kills so far: {kills}; failures: {ledger.failures[:10]}")
            for n, gw in enumerate(gateways):
                print(f"--- inst{n} generation {gw.generation} stderr (tail) ---\n{gw.tail(gw.generation, 20)}")
        raise
    finally:
        ledger.deadline = 0.0  # stop any client still retrying
        for thread in threads:
            thread.join(timeout=20)


def check_store(url: str, ledger: Ledger, items: list[Item], texts: list[tuple[str, str, str]]) -> dict[str, int]:
    """The figures the test asserts on, from the clients' yeses and the store."""
    answered: dict[tuple[str, str], str] = {}
    for key, refs in ledger.yeses.items():
        assert len(set(refs)) == 1, f"{key} got different references: {refs}"
        answered[key] = refs[0]
    stored = rows(
        url,
        "SELECT m.dedupe_key, m.channel, m.processed_at, r.id, r.reference, r.state, r.urgency"
        " FROM messages m LEFT JOIN referrals r ON r.message_id = m.id",
    )
    by_key: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    by_reference: Counter[str] = Counter()
    for row in stored:
        by_key[row[0]].append(row)
        by_reference[row[4]] += 1
    # The dedupe key of each yes: SMTP's from the sender and bytes, SMS's the MessageSid. A form's
    # is keyed with the form's secret, so its receipt reference stands in for it.
    keys = {("smtp", i.message_id): dedupe_key(i.sender, i.raw) for i in items}
    keys |= {("sms", sid): f"sms:{sid}" for _, _, sid in texts}
    lost = sum(1 for k, dk in keys.items() if k in answered and not by_key.get(dk))
    lost += sum(1 for (channel, _), ref in answered.items() if channel == "web" and by_reference[ref] == 0)
    twinned = sum(len(found) - 1 for found in by_key.values() if len(found) > 1)
    twinned += sum(n - 1 for n in by_reference.values() if n > 1)
    wrong = sum(1 for k, dk in keys.items() if k in answered and any(r[4] != answered[k] for r in by_key.get(dk, [])))
    web_references = {ref for (channel, _), ref in answered.items() if channel == "web"}
    unasked = sum(
        1 for row in stored if row[0] not in keys.values() and not (row[1] == "web" and row[4] in web_references)
    )

    # Escalation: each (referral, chain, step, round) is one deadline row and fires once, and
    # queues one row per recipient and channel it alerted: as many as its event names, once.
    step_rows = Counter(rows(url, "SELECT referral_id, chain, step, round FROM deadlines WHERE kind = 'step'"))
    fired: Counter[tuple[str, int, int]] = Counter()
    alerted: dict[tuple[str, int, int], int] = {}  # per step as fired: how many sends it made
    for referral_id, detail in rows(url, "SELECT referral_id, detail FROM events WHERE kind = 'escalation_step'"):
        step = json.loads(detail)
        fired[(referral_id, step["step"], step["round"])] += 1
        if not step.get("skipped"):
            alerted[(referral_id, step["step"], step["round"])] = len(step["alerted"])
    expected_rows: Counter[str] = Counter()
    for (referral_id, _, _), sends in alerted.items():
        expected_rows[referral_id] += sends
    alert_rows = rows(
        url,
        "SELECT referral_id, created_at, recipient_hash, channel FROM deliveries WHERE kind IN ('alert', 'reminder')",
    )
    queued = Counter(r for r, _, _, _ in alert_rows)
    # A firing's rows share its instant: more instants than steps is a step queued twice.
    firings = Counter(r for r, _ in {(r, at) for r, at, _, _ in alert_rows})
    steps_sent = Counter(r for r, _, _ in alerted)
    receipts = Counter(r for (r,) in rows(url, "SELECT referral_id FROM deliveries WHERE kind = 'receipt'"))
    immediate = {row[3] for row in stored if row[6] == "immediate"}
    unfinished = sum(1 for r in immediate if {s for (ref, s, _) in fired if ref == r} != {1, 2})
    return {
        "stored": len(stored),
        "lost": lost,
        "twinned": twinned,
        "under another reference": wrong,
        "stored unasked": unasked,
        "not alerted": sum(1 for row in stored if row[2] is None or row[5] != "alerted"),
        "immediate referrals": len(immediate),
        "step firings": sum(fired.values()),
        "steps fired twice": sum(n - 1 for n in fired.values() if n > 1)
        + sum(n - 1 for n in step_rows.values() if n > 1),
        "unfinished immediate chains": unfinished,
        "alert rows": len(alert_rows),
        "duplicate alert rows": sum(max(0, queued[r] - expected_rows[r]) for r in queued),
        "alerts queued twice in a step": sum(n - 1 for n in Counter(alert_rows).values() if n > 1),
        "extra alert firings": sum(max(0, n - steps_sent[r]) for r, n in firings.items()),
        "missing alert rows": sum(max(0, expected_rows[r] - queued[r]) for r in expected_rows),
        "duplicate receipts": sum(n - 1 for n in receipts.values() if n > 1),
    }
