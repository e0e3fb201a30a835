"""Escalation chains: who is alerted at each step, exactly when, on which channel, and that an
acknowledgement by a named person stops the chain and stands everyone else down.

What a duty manager would check: the right people were alerted (by email and by text), the next
step came on time and not a second early, nobody was alerted twice by a restart, and once someone
has it, nobody else is chased. Everything is read from what went on the wire (the maildirs and the
SMS spool) and from the durable rows; time moves only by the FakeClock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, text

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import deadlines, deliveries, events
from gateway.report import undelivered as report
from tests.conftest import (
    START,
    both_databases,
    maildir_messages,
    make_message,
    referral_body,
    referral_row,
    send_referral,
    valid_nhs,
    write_config,
)

REFERRER = "ann.example@nhs.example"
# Who is who in config/gateway.toml: (email, mobile in E.164 as the SMS spool names it).
PEOPLE = {
    "mash": ("mash-duty@demo-council.example", None),
    "asha": ("asha.okafor@demo-council.example", "+447700900101"),
    "ben": ("ben.carter@demo-council.example", "+447700900102"),
    "chloe": ("chloe.davies@demo-council.example", "+447700900103"),
    "dev": ("dev.malik@demo-council.example", "+447700900104"),  # MASH manager
    "triage": ("triage@demo-council.example", None),
    "erin": ("erin.walsh@demo-council.example", "+447700900105"),
    "femi": ("femi.adeyemi@demo-council.example", None),
    "edt": ("edt@demo-council.example", None),
    "gus": ("gus.lindqvist@demo-council.example", "+447700900106"),  # EDT day shift 08:00-20:00
    "hana": ("hana.sato@demo-council.example", "+447700900107"),  # EDT night shift 20:00-08:00, manager
    "iris": ("iris.novak@demo-council.example", "+447700900108"),  # coordinator
    "referrer": (REFERRER, None),
}
# The child's data, which no SMS and no unencrypted email may carry.
CHILD_DATA = ("Sam Testchild", "W1A", "Example Street", "Zebra-crossing", valid_nhs(), "03/04/2021")


def both(*names: str) -> set[str]:
    """'asha email', 'asha sms', ... for people alerted on both channels (the mailbox has no mobile)."""
    return {f"{n} {c}" for n in names for c in ("email", "sms") if c == "email" or PEOPLE[n][1]}


send = functools.partial(send_referral, urgency="immediate")
referral = referral_row


def labels(gw: Gateway) -> dict[str, str]:
    """recipient_hash -> 'asha email' / 'asha sms': who a delivery row is for, without unsealing it."""
    out: dict[str, str] = {}
    for name, (address, mobile) in PEOPLE.items():
        out[gw.signer.recipient_hash(address)] = f"{name} email"
        if mobile:
            out[gw.signer.recipient_hash(mobile)] = f"{name} sms"
    return out


async def queued(gw: Gateway, referral_id: str, *, since: datetime | None = None) -> Counter[tuple[str, str]]:
    """(kind, 'who channel') of every delivery row queued for a referral (at or after `since`)."""
    who = labels(gw)
    query = select(deliveries.c.kind, deliveries.c.channel, deliveries.c.recipient_hash).where(
        deliveries.c.referral_id == referral_id
    )
    if since is not None:
        query = query.where(deliveries.c.created_at >= since)
    async with gw.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    found: Counter[tuple[str, str]] = Counter()
    for row in rows:
        label = who.get(row.recipient_hash, f"unknown {row.channel}")
        assert label.endswith(row.channel), (label, row.channel)
        found[(row.kind, label)] += 1
    return found


def alerted(counts: Counter[tuple[str, str]], kind: str) -> set[str]:
    return {who for (k, who), _ in counts.items() if k == kind}


async def step_rows(gw: Gateway, referral_id: str) -> list[Any]:
    async with gw.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(deadlines)
                    .where(deadlines.c.referral_id == referral_id, deadlines.c.kind == "step")
                    .order_by(deadlines.c.id)
                )
            ).all()
        )


async def step_events(gw: Gateway, referral_id: str) -> list[tuple[datetime, dict[str, Any]]]:
    async with gw.engine.connect() as conn:
        rows = await conn.execute(
            select(events.c.at, events.c.detail)
            .where(events.c.referral_id == referral_id, events.c.kind == "escalation_step")
            .order_by(events.c.id)
        )
        return [(row.at, json.loads(row.detail)) for row in rows]


def sms_spool(home: Path, number: str | None) -> list[str]:
    """The texts sent to a number, oldest first (none for someone without a mobile)."""
    if number is None:
        return []
    box = home / "var" / "sms" / number / "new"
    return [p.read_text() for p in sorted(box.iterdir())] if box.is_dir() else []


def ack_link(gw: Gateway, text: str) -> str:
    match = re.search(r"http://\S+/ack/(\S+)", text)
    assert match, text
    return f"http://127.0.0.1:{gw.http_port}/ack/{match.group(1)}"


async def acknowledge(gw: Gateway, link: str, name: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(link, data={"name": name}) as response:
        assert response.status == 200
        assert f"acknowledged by <strong>{name}</strong>" in await response.text()


@asynccontextmanager
async def running(
    home: Path, clock: FakeClock, database_url: str, *, extra: str = "", edit: Callable[[str], str] | None = None
) -> AsyncIterator[Gateway]:
    """A gateway on the demo config, changed by `extra` (appended) and `edit` (applied to the text)."""
    path = write_config(home, extra, database_url=database_url)
    if edit is not None:
        path.write_text(edit(path.read_text()))
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"config template changed: {old!r} not found once"
    return text.replace(old, new)


# ---------------------------------------------------------------------------------------------
# The immediate chain, step by step


async def test_immediate_chain_alerts_each_step_on_time_by_email_and_sms(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    reference = await send(gateway, "e1")
    assert await gateway.process_all() == 1
    await gateway.deliver_all()
    rid = (await referral(gateway, reference)).id

    # Step 1, at routing (Wednesday 10:00): Asha and Ben are on the rota; the MASH mailbox.
    first = await queued(gateway, rid)
    assert alerted(first, "alert") == both("asha", "ben", "mash")
    assert alerted(first, "receipt") == {"referrer email"}
    assert all(n == 1 for n in first.values()), first
    assert maildir_messages(home, PEOPLE["chloe"][0]) == []  # not on duty on Wednesdays
    (row,) = await step_rows(gateway, rid)
    assert (row.chain, row.step, row.round, row.due_at) == ("immediate", 1, 0, START + timedelta(minutes=10))

    # Step 2 falls due at +10m exactly: not a second before.
    clock.set(START + timedelta(minutes=9, seconds=59))
    assert await gateway.fire_deadlines() == 0
    assert await queued(gateway, rid) == first
    clock.set(START + timedelta(minutes=10))
    assert await gateway.fire_deadlines() == 1
    assert await gateway.fire_deadlines() == 0  # fired once
    second = await queued(gateway, rid, since=clock.now())
    # "team": the mailbox and every member; "managers": Dev (already in the team: once each).
    assert second == Counter({("reminder", who): 1 for who in both("mash", "asha", "ben", "chloe", "dev")})

    # +15m: the acknowledgement deadline is missed (an event; no alert, only the referrer's follow-up).
    clock.set(START + timedelta(minutes=15))
    assert await gateway.fire_deadlines() == 1
    assert await queued(gateway, rid, since=clock.now()) == Counter({("follow_up", "referrer email"): 1})

    # Step 3 at +25m: the out-of-hours team's member on duty (Gus, EDT day shift) and Iris.
    clock.set(START + timedelta(minutes=24, seconds=59))
    assert await gateway.fire_deadlines() == 0
    clock.set(START + timedelta(minutes=25))
    assert await gateway.fire_deadlines() == 1
    third = await queued(gateway, rid, since=clock.now())
    assert third == Counter({("reminder", who): 1 for who in both("gus", "iris")})

    # ...and again every 30 minutes until someone acknowledges: +55m, +85m.
    for minutes in (55, 85):
        clock.set(START + timedelta(minutes=minutes) - timedelta(seconds=1))
        assert await gateway.fire_deadlines() == 0
        clock.set(START + timedelta(minutes=minutes))
        assert await gateway.fire_deadlines() == 1
        assert await queued(gateway, rid, since=clock.now()) == third

    rows = await step_rows(gateway, rid)
    assert [(r.step, r.round, r.due_at - START, r.fired_at and r.fired_at - START) for r in rows] == [
        (1, 0, timedelta(minutes=10), timedelta(minutes=10)),
        (2, 0, timedelta(minutes=25), timedelta(minutes=25)),
        (2, 1, timedelta(minutes=55), timedelta(minutes=55)),
        (2, 2, timedelta(minutes=85), timedelta(minutes=85)),
        (2, 3, timedelta(minutes=115), None),
    ]
    assert [(at - START, d["step"], d["round"]) for at, d in await step_events(gateway, rid)] == [
        (timedelta(0), 1, 0),
        (timedelta(minutes=10), 2, 0),
        (timedelta(minutes=25), 3, 0),
        (timedelta(minutes=55), 3, 1),
        (timedelta(minutes=85), 3, 2),
    ]

    # On the wire: each SMS says what and where to acknowledge, and nothing about the child.
    await gateway.deliver_all()
    texts = sms_spool(home, PEOPLE["asha"][1])
    assert len(texts) == 2  # step 1 and step 2
    for sms in texts + sms_spool(home, PEOPLE["gus"][1]) + sms_spool(home, PEOPLE["iris"][1]):
        assert reference in sms and "IMMEDIATE" in sms and "MASH duty team" in sms
        assert re.search(r"http://\S+/ack/\S+", sms), sms
        for secret in CHILD_DATA:
            assert secret not in sms
    assert len(sms_spool(home, PEOPLE["gus"][1])) == 3  # +25m, +55m, +85m
    assert "(escalated)" in texts[1] and "(escalated)" not in texts[0]
    for name in ("mash", "asha", "dev", "gus", "iris"):
        for message in maildir_messages(home, PEOPLE[name][0]):
            assert message["X-Referral-Reference"] == reference
            for secret in CHILD_DATA:
                assert secret not in message.as_string()
    (dev,) = maildir_messages(home, PEOPLE["dev"][0])
    assert dev["Subject"] == f"ESCALATED: IMMEDIATE referral {reference} not yet acknowledged"
    overdue = maildir_messages(home, PEOPLE["iris"][0])
    assert [m["Subject"] for m in overdue] == [f"OVERDUE: IMMEDIATE referral {reference} not yet acknowledged"] * 3


# ---------------------------------------------------------------------------------------------
# Acknowledgement stops the chain and stands everyone down


@both_databases
async def test_acknowledgement_stops_the_chain_and_tells_everyone_already_alerted(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    reference = await send(gateway, "e2")
    await gateway.process_all()
    clock.set(START + timedelta(minutes=10))
    assert await gateway.fire_deadlines() == 1  # step 2: the whole team and its manager
    await gateway.deliver_all()

    # Chloe acknowledges from the escalation email she got at step 2.
    clock.set(START + timedelta(minutes=12))
    (chloe_alert,) = maildir_messages(home, PEOPLE["chloe"][0])
    await acknowledge(gateway, ack_link(gateway, chloe_alert.get_content()), "Chloe Davies")

    row = await referral(gateway, reference)
    assert row.state == "acknowledged" and row.acknowledged_by == "Chloe Davies"
    assert row.acknowledged_at == clock.now()
    async with gateway.engine.connect() as conn:
        rows = (await conn.execute(select(deadlines).where(deadlines.c.referral_id == row.id))).all()
    unfired = [r for r in rows if r.fired_at is None]
    # The next step (+25m) and the acknowledgement deadline (+15m), cancelled with the acknowledgement.
    assert sorted((r.kind, r.due_at - START) for r in unfired) == [
        ("ack", timedelta(minutes=15)),
        ("handover", timedelta(hours=7)),  # 17:00, when MASH closes
        ("step", timedelta(minutes=25)),
    ]
    assert all(r.cancelled_at == row.acknowledged_at for r in unfired)

    # Hours later nothing more has fired, and nobody is chased again.
    before = await queued(gateway, row.id)
    for hours in (1, 4, 24):
        clock.set(START + timedelta(hours=hours))
        assert await gateway.fire_deadlines() == 0
    assert await queued(gateway, row.id) == before
    assert alerted(before, "reminder") == both("mash", "asha", "ben", "chloe", "dev")

    # Everyone alerted (by step 1 or step 2), on every channel they were alerted on, is told who
    # has it; Chloe is not told about her own acknowledgement, by email or by text.
    told = alerted(before, "ack_told")
    assert told == both("mash", "asha", "ben", "dev")
    assert all(n == 1 for (kind, _), n in before.items() if kind == "ack_told")
    await gateway.deliver_all()
    for name in ("mash", "asha", "ben", "dev"):
        (notice,) = [m for m in maildir_messages(home, PEOPLE[name][0]) if m["Subject"].startswith("Referral")]
        assert notice["Subject"] == f"Referral {reference} has been acknowledged"
        assert "acknowledged by Chloe Davies" in notice.get_content()
    for name in ("asha", "ben", "dev"):
        last = sms_spool(home, PEOPLE[name][1])[-1]
        assert f"referral {reference} was acknowledged by Chloe Davies" in last
    assert [m["Subject"] for m in maildir_messages(home, PEOPLE["chloe"][0])] == [
        f"ESCALATED: IMMEDIATE referral {reference} not yet acknowledged"
    ]
    assert not any("acknowledged by" in text for text in sms_spool(home, PEOPLE["chloe"][1]))
    # Those never alerted about it are not told either.
    for name in ("gus", "hana", "iris"):
        assert maildir_messages(home, PEOPLE[name][0]) == []
        assert sms_spool(home, PEOPLE[name][1]) == []


async def test_acknowledging_from_a_text_message_stops_the_chain(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    reference = await send(gateway, "e3")
    await gateway.process_all()
    await gateway.deliver_all()
    clock.set(START + timedelta(minutes=3))
    (text,) = sms_spool(home, PEOPLE["ben"][1])
    await acknowledge(gateway, ack_link(gateway, text), "Ben Carter")
    rid = (await referral(gateway, reference)).id
    clock.set(START + timedelta(hours=2))
    assert await gateway.fire_deadlines() == 0
    counts = await queued(gateway, rid)
    assert alerted(counts, "reminder") == set()
    # Ben is not told of his own acknowledgement, on his phone or by email.
    assert alerted(counts, "ack_told") == both("mash", "asha")


async def lock_waiters(gw: Gateway, count: int) -> None:
    """Until `count` PostgreSQL backends of this database are waiting for a lock (10 s at most)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(10), gw.engine.connect() as conn:
        while (await conn.execute(query)).scalar_one() < count:
            await conn.rollback()  # a new transaction: pg_stat_activity is read once per transaction


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_acknowledgement_while_a_step_is_firing_still_stops_the_chain(
    gateway: Gateway, clock: FakeClock
) -> None:
    """PostgreSQL, where the deadline loop (of this instance or another) and an acknowledgement
    write at once: step 2 is about to fire when Asha acknowledges. Both must succeed, in either
    order, the step it queued must be cancelled, and those it alerted told; nothing fires after."""
    reference = await send(gateway, "race")
    await gateway.process_all()
    rid = (await referral(gateway, reference)).id
    (step,) = await step_rows(gateway, rid)
    clock.set(START + timedelta(minutes=10))
    async with gateway.engine.connect() as holder:
        # Another transaction holds the step's row for a moment, so the firing and the
        # acknowledgement both reach it before either commits.
        await holder.execute(select(deadlines.c.id).where(deadlines.c.id == step.id).with_for_update())
        firing = asyncio.create_task(gateway.fire_deadlines())
        await lock_waiters(gateway, 1)
        acking = asyncio.create_task(
            gateway.tracker.acknowledge(rid, gateway.signer.recipient_hash(PEOPLE["asha"][0]), "Asha Okafor")
        )
        await lock_waiters(gateway, 2)
        await holder.rollback()
    assert await firing == 1
    assert not (await acking).already
    async with gateway.engine.connect() as conn:
        rows = (await conn.execute(select(deadlines).where(deadlines.c.referral_id == rid))).all()
    assert [r for r in rows if r.fired_at is None and r.cancelled_at is None] == []
    counts = await queued(gateway, rid)
    assert alerted(counts, "reminder") == both("mash", "asha", "ben", "chloe", "dev")
    # Chloe and Dev, alerted by the step that was firing, are told too; Asha is not.
    assert alerted(counts, "ack_told") == both("mash", "ben", "chloe", "dev")
    clock.set(START + timedelta(hours=3))
    assert await gateway.fire_deadlines() == 0
    assert await queued(gateway, rid) == counts


# ---------------------------------------------------------------------------------------------
# Out of hours: the EDT's rota


@both_databases
async def test_out_of_hours_referral_goes_to_the_edt_member_on_the_shift_of_that_moment(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    saturday = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)  # MASH is closed; the EDT's night shift
    cases = [
        # (received, urgency, route, on duty): an urgent one by the borough's postcodes; immediate
        # ones by the immediate route, whose chain also texts the one on duty.
        (saturday, "urgent", "borough-postcodes", "hana"),
        (saturday.replace(hour=7, minute=59, second=59), "immediate", "immediate-in-borough", "hana"),
        (saturday.replace(hour=8), "immediate", "immediate-in-borough", "gus"),  # hand-over: the day shift
    ]
    for at, urgency, route_name, on_duty in cases:
        clock.set(at)
        reference = await send(gateway, f"ooh-{at:%H%M%S}", urgency=urgency)
        assert await gateway.process_all() == 1
        row = await referral(gateway, reference)
        assert (row.team_id, row.route_name) == ("edt", route_name), at
        counts = await queued(gateway, row.id)
        assert {who.split()[0] for who in alerted(counts, "alert")} == {"edt", on_duty}, at
        if urgency == "immediate":
            assert alerted(counts, "alert") == both("edt", on_duty), at
        ((_, first_step),) = await step_events(gateway, row.id)
        assert first_step["step"] == 1 and first_step["notify"] == ["on-duty", "mailbox"]
    await gateway.deliver_all()
    assert len(maildir_messages(home, PEOPLE["hana"][0])) == 2
    assert len(sms_spool(home, PEOPLE["hana"][1])) == 1  # the immediate one at 07:59:59
    (gus,) = maildir_messages(home, PEOPLE["gus"][0])
    assert gus["Subject"].endswith("for Emergency Duty Team")
    assert len(sms_spool(home, PEOPLE["gus"][1])) == 1
    for name in ("mash", "asha", "ben", "chloe", "dev"):  # MASH is closed: nothing to it on a Saturday
        assert maildir_messages(home, PEOPLE[name][0]) == []


# ---------------------------------------------------------------------------------------------
# A step nobody can be reached for is skipped at once


MANAGERS_FIRST = """
[[escalations]]
id = "managers-first"
[[escalations.steps]]
notify = ["managers"]
channels = ["email", "sms"]
wait = "1h"
[[escalations.steps]]
notify = ["on-duty", "mailbox"]
channels = ["email"]
wait = "10m"
[[escalations.steps]]
notify = ["managers"]
channels = ["email", "sms"]
wait = "2h"
[[escalations.steps]]
notify = ["coordinators"]
channels = ["email"]
wait = "30m"
until_acknowledged = true
"""


def mash_without_manager(text: str) -> str:
    """MASH on the chain above, and Dev no longer its manager: MASH has no manager at all."""
    text = replace_once(
        text,
        'schedule = "office"\nescalation = { immediate = "immediate", urgent = "urgent", standard = "standard" }',
        'schedule = "office"\nescalation = "managers-first"',
    )
    return replace_once(text, 'mobile = "07700 900104"\nmanager = true\n', 'mobile = "07700 900104"\n')


@both_databases
async def test_a_step_with_nobody_reachable_is_skipped_at_once_not_waited_out(
    home: Path, clock: FakeClock, database_url: str
) -> None:
    async with running(home, clock, database_url, extra=MANAGERS_FIRST, edit=mash_without_manager) as gw:
        reference = await send(gw, "e4")
        await gw.process_all()
        rid = (await referral(gw, reference)).id
        # Step 1 (managers: none) skipped at routing; step 2 sent at the same instant, not after 1h.
        assert [(at, d["step"], d.get("skipped")) for at, d in await step_events(gw, rid)] == [
            (START, 1, "nobody reachable on duty for this step"),
            (START, 2, None),
        ]
        assert alerted(await queued(gw, rid), "alert") == {"asha email", "ben email", "mash email"}
        (row,) = await step_rows(gw, rid)
        assert (row.step, row.due_at) == (2, START + timedelta(minutes=10))

        # At +10m step 3 (managers again: none) is skipped and step 4 fires at the same instant.
        clock.set(START + timedelta(minutes=9, seconds=59))
        assert await gw.fire_deadlines() == 0
        clock.set(START + timedelta(minutes=10))
        assert await gw.fire_deadlines() == 1
        assert await queued(gw, rid, since=clock.now()) == Counter({("reminder", "iris email"): 1})
        fired, following = await step_rows(gw, rid)
        assert fired.fired_at == clock.now()
        assert [(d["step"], "skipped" in d) for d in json.loads(fired.detail)] == [(3, True), (4, False)]
        assert (following.step, following.round, following.due_at) == (3, 1, START + timedelta(minutes=40))
        steps = await step_events(gw, rid)
        assert [(at - START, d["step"], "skipped" in d) for at, d in steps[2:]] == [
            (timedelta(minutes=10), 3, True),
            (timedelta(minutes=10), 4, False),
        ]


# ---------------------------------------------------------------------------------------------
# Two referrals, two chains


async def test_a_referral_arriving_during_a_wait_starts_its_own_chain(gateway: Gateway, clock: FakeClock) -> None:
    first = await send(gateway, "e5")
    await gateway.process_all()
    first_id = (await referral(gateway, first)).id
    before = await step_rows(gateway, first_id)

    clock.set(START + timedelta(minutes=5))  # during step 1's ten-minute wait
    second = await send(gateway, "e6")
    await gateway.process_all()
    second_id = (await referral(gateway, second)).id
    # Its own step 1 (an alert, not an escalation), to the same people, at +5m.
    counts = await queued(gateway, second_id)
    assert alerted(counts, "alert") == both("asha", "ben", "mash") and alerted(counts, "reminder") == set()
    (row,) = await step_rows(gateway, second_id)
    assert (row.step, row.round, row.due_at) == (1, 0, START + timedelta(minutes=15))
    assert await step_rows(gateway, first_id) == before  # the first chain is untouched

    clock.set(START + timedelta(minutes=10))
    assert await gateway.fire_deadlines() == 1  # only the first referral's step 2
    assert alerted(await queued(gateway, first_id, since=clock.now()), "reminder") == both(
        "mash", "asha", "ben", "chloe", "dev"
    )
    assert await queued(gateway, second_id, since=clock.now()) == Counter()
    clock.set(START + timedelta(minutes=15))
    assert await gateway.fire_deadlines() == 2  # the first one's deadline; the second one's step 2
    assert alerted(await queued(gateway, second_id, since=clock.now()), "reminder") == both(
        "mash", "asha", "ben", "chloe", "dev"
    )
    # The first one's referrer is told it has not been picked up yet (no alert to anyone).
    assert await queued(gateway, first_id, since=clock.now()) == Counter({("follow_up", "referrer email"): 1})
    assert [(r.step, r.due_at - START) for r in await step_rows(gateway, first_id)] == [
        (1, timedelta(minutes=10)),
        (2, timedelta(minutes=25)),
    ]
    assert [(r.step, r.due_at - START) for r in await step_rows(gateway, second_id)] == [
        (1, timedelta(minutes=15)),
        (2, timedelta(minutes=30)),
    ]


# ---------------------------------------------------------------------------------------------
# The report


async def test_report_shows_the_latest_step_and_everyone_alerted(gateway: Gateway, clock: FakeClock) -> None:
    reference = await send(gateway, "e7")
    await gateway.process_all()
    clock.set(START + timedelta(minutes=10))
    await gateway.fire_deadlines()
    clock.set(START + timedelta(minutes=15))
    await gateway.fire_deadlines()
    clock.set(START + timedelta(minutes=16))
    (row,) = await report.undelivered(gateway.engine, gateway.config.settings, clock.now())
    assert row.reference == reference and row.team == "MASH duty team"
    assert row.reason == "not acknowledged within 15 minutes (overdue by 01m)"
    everyone_so_far = (
        "Asha Okafor (email), Asha Okafor (sms), Ben Carter (email), Ben Carter (sms), "
        "Chloe Davies (email), Chloe Davies (sms), Dev Malik (email), Dev Malik (sms), MASH duty team (email)"
    )
    assert row.escalation == f"step 2 (team, managers) at 2026-11-25 10:10 UTC; alerted: {everyone_so_far}"

    clock.set(START + timedelta(minutes=25))
    await gateway.fire_deadlines()
    (row,) = await report.undelivered(gateway.engine, gateway.config.settings, clock.now())
    assert row.escalation == (
        "step 3 (out-of-hours, coordinators) at 2026-11-25 10:25 UTC; alerted: "
        "Asha Okafor (email), Asha Okafor (sms), Ben Carter (email), Ben Carter (sms), "
        "Chloe Davies (email), Chloe Davies (sms), Dev Malik (email), Dev Malik (sms), "
        "Gus Lindqvist (email), Gus Lindqvist (sms), Iris Novak (email), Iris Novak (sms), MASH duty team (email)"
    )
    table = report.render([row], "table", wide=True)  # the 100-column table leaves the escalation out
    assert "step 3 (out-of-hours, coordinators)" in table and "Iris Novak (sms)" in table
    (as_json,) = json.loads(report.render([row], "json"))
    assert as_json["escalation"] == row.escalation


# ---------------------------------------------------------------------------------------------
# A restart mid-chain


@both_databases
async def test_a_restart_mid_chain_neither_repeats_nor_misses_a_step(
    gateway: Gateway, home: Path, clock: FakeClock
) -> None:
    reference = await send(gateway, "e8")
    await gateway.process_all()
    clock.set(START + timedelta(minutes=10))
    assert await gateway.fire_deadlines() == 1  # step 2
    await gateway.deliver_all()
    rid = (await referral(gateway, reference)).id
    before = await queued(gateway, rid)
    await gateway.stop()

    # A new process on the same home, config and database, started after step 3 fell due.
    restarted = Gateway(config_mod.load(home / "config" / "gateway.toml"), clock=clock, workers=False)
    await restarted.start()
    try:
        clock.set(START + timedelta(minutes=26))
        assert await restarted.fire_deadlines() == 2  # the missed deadline (+15m) and step 3 (+25m)
        assert await restarted.fire_deadlines() == 0
        await restarted.deliver_all()
        after = await queued(restarted, rid)
        # Exactly one row per step, kind and recipient: step 1, step 2 once each, step 3 once.
        assert all(n == 1 for n in after.values()), after
        added = after - before
        # Step 3's reminders, and the referrer's one follow-up for the missed deadline.
        assert added == Counter({("reminder", who): 1 for who in both("gus", "iris")}) + Counter(
            {("follow_up", "referrer email"): 1}
        )
        assert [(d["step"], d["round"]) for _, d in await step_events(restarted, rid)] == [(1, 0), (2, 0), (3, 0)]
        rows = await step_rows(restarted, rid)
        assert [(r.step, r.round, r.fired_at and r.fired_at - START) for r in rows] == [
            (1, 0, timedelta(minutes=10)),
            (2, 0, timedelta(minutes=26)),
            (2, 1, None),
        ]
        # The next round is counted from when step 3 actually fired, not lost in the restart.
        assert rows[-1].due_at == START + timedelta(minutes=56)
        async with restarted.engine.connect() as conn:
            pending = (await conn.execute(select(deliveries.c.id).where(deliveries.c.state != "sent"))).all()
        assert pending == []
        assert len(sms_spool(home, PEOPLE["iris"][1])) == 1 and len(sms_spool(home, PEOPLE["asha"][1])) == 2
    finally:
        await restarted.stop()
    await gateway.start()  # the fixture stops it again


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-chain: the gateway as a real process (as in tests/test_crash_recovery.py), with
# every worker loop running, killed with SIGKILL the moment a step has committed. Each process
# runs on a FakeClock fixed at a time given on its command line, so the chain's minutes pass
# between processes, not in the test's wall time.

CHILD = """
import asyncio, signal, sys
from datetime import datetime
from pathlib import Path
from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock

async def main() -> None:
    gw = Gateway(config_mod.load(Path(sys.argv[1])), clock=FakeClock(datetime.fromisoformat(sys.argv[2])))
    await gw.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"serving {gw.smtp_port}", flush=True)
    await stop.wait()
    await gw.stop()

asyncio.run(main())
"""


class ChainProcess:
    """One gateway process after another on the same home; each logs to its own files."""

    def __init__(self, home: Path, config: Path) -> None:
        self.home, self.config = home, config
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.smtp_port = 0

    @property
    def db(self) -> Path:
        return self.home / "var" / "gateway.db"

    def log(self, stream: str) -> Path:
        return self.home / "logs" / f"gen{self.generation}.{stream}"

    def start(self, at: datetime) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.generation += 1
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.log("out"), "wb") as out, open(self.log("err"), "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(self.config), at.isoformat()],
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.proc = proc
        wait_until(lambda: "serving" in self.log("out").read_text() or proc.poll() is not None, "serving")
        assert proc.poll() is None, self.log("err").read_text()[-3000:]
        self.smtp_port = int(self.log("out").read_text().split()[1])

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.log("err").read_text()[-3000:]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)) as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet

    def settled(self) -> bool:
        """Every message processed and every delivery sent."""
        return self.query(
            "SELECT (SELECT count(*) FROM messages WHERE processed_at IS NULL)"
            " + (SELECT count(*) FROM deliveries WHERE state != 'sent'), (SELECT count(*) FROM messages)"
        ) == [(0, 1)]

    def fired(self, step: int, round_: int) -> bool:
        return bool(
            self.query(
                "SELECT 1 FROM deadlines WHERE kind = 'step' AND step = ? AND round = ? AND fired_at IS NOT NULL",
                step,
                round_,
            )
        )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll for a condition another process brings about (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


@pytest.mark.slow
def test_sigkill_right_after_a_step_commits_neither_repeats_nor_misses_a_step(tmp_path: Path) -> None:
    home = tmp_path / "gw"
    gw = ChainProcess(home, write_config(home))
    try:
        gw.start(START)  # the referral arrives and is alerted
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, "sender.test", timeout=15) as smtp:
            msg = make_message(referral_body(urgency="immediate"), message_id="<kill@nhs.example>")
            smtp.send_message(msg)
        wait_until(gw.settled, "the first alerts sent")
        gw.sigkill()

        gw.start(START + timedelta(minutes=10))  # step 2 fires; killed as soon as it has committed
        wait_until(lambda: gw.fired(1, 0), "step 2 fired")
        gw.sigkill()
        gw.start(START + timedelta(minutes=13))  # past the killed process's outbox leases (2m)
        wait_until(gw.settled, "step 2's alerts sent")
        gw.sigkill()

        gw.start(START + timedelta(minutes=25))  # step 3, killed again as soon as it has committed
        wait_until(lambda: gw.fired(2, 0), "step 3 fired")
        gw.sigkill()
        gw.start(START + timedelta(minutes=28))
        wait_until(gw.settled, "step 3's alerts sent")
        gw.sigterm()
    finally:
        gw.close()

    # Each step's row fired once, at its time; the next round waits, due 30 minutes after step 3.
    assert gw.query("SELECT step, round, due_at, fired_at IS NOT NULL FROM deadlines WHERE kind = 'step'") == [
        (1, 0, "2026-11-25 10:10:00.000000", 1),
        (2, 0, "2026-11-25 10:25:00.000000", 1),
        (2, 1, "2026-11-25 10:55:00.000000", 0),
    ]
    steps = [json.loads(d) for (d,) in gw.query("SELECT detail FROM events WHERE kind = 'escalation_step'")]
    assert [(s["step"], s["round"]) for s in steps] == [(1, 0), (2, 0), (3, 0)]
    # Queued exactly once per step, kind and recipient, and every one sent.
    rows = gw.query("SELECT kind, channel, recipient_hash, state FROM deliveries")
    per_recipient = Counter((kind, channel, who) for kind, channel, who, _ in rows)
    assert all(n == 1 for n in per_recipient.values()), per_recipient
    assert {state for *_, state in rows} == {"sent"}
    # At least once on the wire, to everyone each step named (a kill between sending and
    # recording "sent" may send one twice: at-least-once, as the outbox documents).
    for name, step_count in {"mash": 2, "asha": 2, "ben": 2, "chloe": 1, "dev": 1, "gus": 1, "iris": 1}.items():
        email, mobile = PEOPLE[name]
        assert len(maildir_messages(home, email)) >= step_count, name
        if mobile:
            assert len(sms_spool(home, mobile)) >= step_count, name
    assert maildir_messages(home, PEOPLE["hana"][0]) == []
    verify = subprocess.run(
        [sys.executable, "-m", "gateway", "verify", "--config", str(gw.config)],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
