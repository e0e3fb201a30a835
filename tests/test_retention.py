"""Retention against the running gateway: referrals sent by SMTP, acknowledged and closed by a
coordinator on the staff pages, the injected clock moved on past `[retention] closed_after`, then
purged. Checked as an auditor would: the database's columns, the bytes on disk, `verify`, the
referral page, and that nothing else moved (a snapshot of every table)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.config import ConfigError
from gateway.core.clock import FakeClock
from gateway.core.schema import child_index, decisions, deliveries, events, messages, metadata, referrals
from gateway.report import decisions as decisions_mod
from gateway.report import retention
from gateway.report.holds import set_hold
from gateway.staff.users import Role, User, Users
from gateway.track.close import close
from gateway.track.verify import verify
from gateway.web.session import CSRF_FIELD
from tests.conftest import Sink, both_databases, make_message, referral_body, smtp_send, write_config
from tests.staff_auth import TestApps, csrf_of
from tests.staff_auth import sign_in as staff_sign_in

PASSWORD = "violet kettle harbour"
Client = TestClient[web.Request, web.Application]
# What the synthetic referrals hold (tests/conftest.py): none of it may survive a purge in clear.
PERSONAL = ("Sam Testchild", "Zebra-crossing-unique-detail", "W1A 1AA", "ann.example")
NOTE = "Phoned Ann Example at the trust about Sam Testchild"


def retention_config(home: Path, sink_port: int, extra: str = "") -> Path:
    relay = f'[mail.relay]\nhost = "127.0.0.1"\nport = {sink_port}\nstarttls = false\ntimeout = "5s"\n'
    return write_config(home, '[retention]\nclosed_after = "90d"\nbatch = 1\n' + extra, relay=relay)


@dataclass
class World:
    gw: Gateway
    clock: FakeClock
    sink: Sink
    home: Path
    client: Client
    coordinator: User
    refs: dict[str, str]
    ids: dict[str, str]
    apps: TestApps

    async def sign_in_again(self) -> None:
        """Months passed: the coordinator's session has long expired, so they sign in again."""
        self.client.session.cookie_jar.clear()
        response = await staff_sign_in(self.client, self.apps, "coord", PASSWORD)
        assert response.status == 303, await response.text()

    @property
    def config_path(self) -> Path:
        return self.home / "config" / "gateway.toml"


async def cli(argv: list[str]) -> int:
    """The command line, as an administrator runs it (its own event loop, so off this one)."""
    return await asyncio.to_thread(main, argv)


async def page(client: Client, path: str, status: int = 200) -> str:
    response = await client.get(path, allow_redirects=False)
    text = await response.text()
    assert response.status == status, text
    return text


async def post(client: Client, rid: str, action: str, data: dict[str, str] | None = None) -> int:
    token = csrf_of(await page(client, f"/referrals/{rid}"))
    response = await client.post(
        f"/referrals/{rid}/{action}", data={CSRF_FIELD: token, **(data or {})}, allow_redirects=False
    )
    return response.status


async def send(gw: Gateway, name: str) -> str:
    code, text = await smtp_send(gw.smtp_port, make_message(referral_body(), message_id=f"<{name}@nhs.example>"))
    assert code == 250, text
    return text.split()[-1]


async def rows_of(gw: Gateway) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to prove that something changed nothing."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with gw.engine.connect() as conn:
        for table in metadata.sorted_tables:
            out[table.name] = sorted(
                (tuple(row) for row in await conn.execute(select(table))), key=lambda row: repr(row)
            )
    return out


@pytest.fixture
async def world(home: Path, clock: FakeClock) -> AsyncIterator[World]:
    """Seven referrals, closed at START + about a day, then 89 days pass:
    - purge, decided: closed (the second with a dead outcome notice and a coordinator's decision
      with a note), so both will go once 90 days have passed;
    - held: closed, under a legal hold; undecided: closed with a dead outcome notice nobody has
      decided on; acknowledged: not closed; open: alerted only; quarantined: unreadable."""
    sink = Sink()
    await sink.start()
    gw = Gateway(config_mod.load(retention_config(home, sink.port)), clock=clock, workers=False)
    await gw.start()
    refs = {name: await send(gw, name) for name in ("purge", "decided", "held", "undecided", "acknowledged", "open")}
    await gw.process_all()
    await gw.deliver_all()
    refs["quarantined"] = await send(gw, "quarantined")
    with sqlite3.connect(home / "var" / "gateway.db") as conn:  # a disk fault: no stage can read it
        conn.execute("UPDATE messages SET raw = x'00' WHERE processed_at IS NULL")
    for _ in range(gw.config.settings.processing.max_attempts):
        await gw.process_all()
        clock.advance(timedelta(seconds=11))
    async with gw.engine.connect() as conn:
        ids = {
            name: str((await conn.execute(select(referrals.c.id).where(referrals.c.reference == ref))).scalar_one())
            for name, ref in refs.items()
        }
    users = Users(gw.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    coordinator = await users.add("coord", "Cora Coordinator", Role.COORDINATOR, [], PASSWORD, clock.now())
    await users.add("duty", "Dev Duty", Role.DUTY, ["mash"], PASSWORD, clock.now())
    server = TestServer(gw.web_app(users), host="127.0.0.1")
    await server.start_server()
    client: Client = TestClient(server, cookie_jar=CookieJar(unsafe=True))
    await client.start_server()
    apps = TestApps(clock)
    response = await staff_sign_in(client, apps, "coord", PASSWORD)
    assert response.status == 303, await response.text()

    for name in ("purge", "decided", "held", "undecided", "acknowledged"):
        assert await post(client, ids[name], "acknowledge") == 303
    for name in ("purge", "held"):
        assert await post(client, ids[name], "close", {"outcome": "no_further_action"}) == 303
        clock.advance(timedelta(minutes=1))  # closed one after the other: purged oldest first
    await gw.deliver_all()
    # The relay refuses the outcome notices of these two: each delivery is dead, on the report.
    sink.refuse_with = "550 5.1.1 no such user"
    for name in ("decided", "undecided"):
        assert await post(client, ids[name], "close", {"outcome": "no_further_action"}) == 303
        clock.advance(timedelta(minutes=1))
    await gw.deliver_all()
    sink.refuse_with = None
    await decisions_mod.record(
        gw.db, gw.sealed, coordinator, decisions_mod.referral_key(ids["decided"]), "other", NOTE, clock.now()
    )
    assert await post(client, ids["held"], "hold", {"reason": "court", "matter": "ZW26C00123"}) == 303
    clock.advance(timedelta(days=89))
    world = World(gw, clock, sink, home, client, coordinator, refs, ids, apps)
    yield world
    await world.client.close()
    await server.close()
    await world.gw.stop()
    await sink.stop()


async def test_purge_removes_exactly_the_content_of_old_closed_referrals(world: World) -> None:
    gw, ids = world.gw, world.ids
    async with gw.engine.connect() as conn:
        states = dict((await conn.execute(select(referrals.c.id, referrals.c.state))).all())
        dead = set((await conn.execute(select(deliveries.c.referral_id).where(deliveries.c.state == "dead"))).scalars())
    assert [states[ids[n]] for n in ("purge", "held", "acknowledged", "open", "quarantined")] == [
        "closed",
        "closed",
        "acknowledged",
        "alerted",
        "quarantined",
    ]
    assert {ids["decided"], ids["undecided"]} <= dead

    # 89 days after closing: nothing is due yet.
    assert await retention.dry_run(gw.db, gw.config.settings, gw.clock.now()) == []
    assert await gw.purge_all() == 0

    world.clock.advance(timedelta(days=2))
    before = await rows_of(gw)
    planned = await retention.dry_run(gw.db, gw.config.settings, gw.clock.now())
    assert [c.reference for c in planned] == [world.refs["purge"], world.refs["decided"]]
    assert "1 decision note(s)" in planned[1].removes() and "the referral's content" in planned[0].removes()
    assert await rows_of(gw) == before  # the dry run changed nothing

    sealed = {name: await sealed_of(gw, ids[name]) for name in ids}
    # One batch (batch = 1), then the rest: a purge stopped half-way carries on where it stopped.
    first = await retention.purge_batch(gw.db, gw.config.settings, gw.clock.now(), "gateway")
    assert [c.reference for c in first] == [world.refs["purge"]]
    assert await gw.purge_all() == 1
    after = await rows_of(gw)

    for name in ("purge", "decided"):
        now_held = await sealed_of(gw, ids[name])
        assert now_held["content"] == [None] and now_held["raw"] == [b""] and now_held["envelope"] == [b""]
        assert set(now_held["payloads"]) == {None} and set(now_held["notes"]) <= {None}
        row = await referral(gw, ids[name])
        assert row.purged_at == gw.clock.now() and row.reference == world.refs[name]
        assert row.state == "closed" and row.team_id == "mash" and row.urgency == "urgent"  # metadata kept
    assert sealed["decided"]["notes"] != [None] and (await sealed_of(gw, ids["decided"]))["notes"] == [None]
    for name in ("held", "undecided", "acknowledged", "open", "quarantined"):
        assert await sealed_of(gw, ids[name]) == sealed[name], name
        assert (await referral(gw, name_id := ids[name])).purged_at is None, name_id

    # Gone from the disk too, not just from the rows: no purged sealed blob is left in any file.
    files = b"".join(p.read_bytes() for p in (world.home / "var").glob("gateway.db*"))
    for name in ("purge", "decided"):
        for blob in sealed[name]["content"] + sealed[name]["raw"] + sealed[name]["payloads"]:
            assert blob and blob[-64:] not in files, name
    assert sealed["held"]["content"][0][-64:] in files  # the check can fail: a kept blob is found

    # The child index goes with the content (nothing links a purged child); a kept one's stays.
    async with gw.engine.connect() as conn:
        indexed = set((await conn.execute(select(child_index.c.referral_id))).scalars())
    assert ids["purge"] not in indexed and ids["decided"] not in indexed and ids["held"] in indexed

    # The record stays whole: one `purged` event each, with no personal data, and the chain verifies.
    async with gw.engine.connect() as conn:
        purged = (await conn.execute(select(events).where(events.c.kind == "purged").order_by(events.c.id))).all()
        kept = (await conn.execute(select(events.c.kind).where(events.c.referral_id == ids["purge"]))).scalars().all()
    assert [e.referral_id for e in purged] == [ids["purge"], ids["decided"]]
    detail = json.loads(purged[1].detail)
    assert detail["closed_after"] == "90d" and detail["decision_notes"] == 1 and detail["content"] is True
    assert not any(word in e.detail for e in purged for word in PERSONAL)
    assert {"received", "routed", "acknowledged", "closed", "purged"} <= set(kept)
    assert await verify(gw.engine, gw.clock.now()) == []
    assert await cli(["verify", "--config", str(world.config_path)]) == 0

    # Idempotent: a second run finds nothing and changes nothing.
    assert await gw.purge_all() == 0
    assert await rows_of(gw) == after


async def test_the_referral_page_says_the_content_was_removed(world: World) -> None:
    world.clock.advance(timedelta(days=2))
    assert await world.gw.purge_all() == 2
    await world.sign_in_again()
    html = await page(world.client, f"/referrals/{world.ids['purge']}")
    assert (
        f"The content of this referral was removed on {world.clock.now().strftime('%d %B %Y')} under the "
        "retention policy (closed more than 90 days)." in html
    )
    for word in PERSONAL:
        assert word not in html
    timeline = html.split('id="timeline"')[1]
    assert "Content removed under the retention policy (closed more than 90 days)" in timeline
    assert "Closed by Cora Coordinator" in timeline
    assert "The attachments were removed with the content." in html
    assert "Put under a legal hold" not in html  # nothing left to hold
    # A kept referral about the same child no longer lists the purged ones as earlier referrals.
    kept = await page(world.client, f"/referrals/{world.ids['open']}")
    earlier = kept.split("Earlier referrals about this child")[1].split("Timeline")[0]
    assert world.refs["held"] in earlier and world.refs["purge"] not in earlier
    # The held one shows its hold and its reason in words.
    held = await page(world.client, f"/referrals/{world.ids['held']}")
    assert "Sam Testchild" in held and "Yes: its content is kept past the retention period" in held
    assert "Legal hold set by Cora Coordinator: Court proceedings, matter ZW26C00123" in held


async def test_lifting_a_hold_lets_retention_purge_it(world: World) -> None:
    gw, held = world.gw, world.ids["held"]
    world.clock.advance(timedelta(days=2))
    assert await gw.purge_all() == 2
    assert (await referral(gw, held)).content is not None
    await world.sign_in_again()
    # A hold needs a reason from the list, and a matter reference that is not words.
    target = world.ids["acknowledged"]
    for bad in ({"reason": "court", "matter": "Sam Testchild"}, {"reason": "whim"}, {"reason": "other"}):
        before = await referral(gw, target)
        assert await post(world.client, target, "hold", bad) == 400
        assert await referral(gw, target) == before  # (the page shown again is a view, audited as ever)
    async with gw.engine.connect() as conn:
        kinds = set((await conn.execute(select(events.c.kind).where(events.c.referral_id == target))).scalars())
    assert "legal_hold" not in kinds
    assert await post(world.client, held, "hold/lift") == 303
    assert (await referral(gw, held)).legal_hold is False
    assert await gw.purge_all() == 1
    assert (await referral(gw, held)).content is None
    async with gw.engine.connect() as conn:
        kinds = (await conn.execute(select(events.c.kind, events.c.actor).where(events.c.referral_id == held))).all()
    assert [k for k in kinds if k.kind.startswith("legal_hold")] == [
        ("legal_hold", f"user:{world.coordinator.id}"),
        ("legal_hold_lifted", f"user:{world.coordinator.id}"),
    ]
    assert await verify(gw.engine, gw.clock.now()) == []


async def test_purge_dry_run_and_hold_on_the_command_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    gw, cfg = world.gw, str(world.config_path)
    at = (world.clock.now() + timedelta(days=2)).isoformat()
    before = await rows_of(gw)
    assert await cli(["purge", "--dry-run", "--at", at, "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^{world.refs['purge']}  closed \d{{4}}-\d\d-\d\d  removes: the referral's content", out, re.M)
    assert world.refs["decided"] in out and world.refs["held"] not in out and world.refs["undecided"] not in out
    assert "would remove the content of 2 referral(s)" in out and "nothing was changed" in out
    assert await rows_of(gw) == before
    assert await cli(["purge", "--at", at, "--config", cfg]) == 2  # --at only plans
    assert "--at only plans" in capsys.readouterr().err
    assert await cli(["purge", "--config", cfg]) == 0  # as of the wall clock: before any closure here
    assert "removed the content of 0 referral(s)" in capsys.readouterr().out

    # Holds: refused for a duty worker, an unknown user, a name as the matter, a wrong reference.
    ack = world.refs["acknowledged"]
    for args, words in (
        ([ack, "--reason", "court", "--by", "duty"], "Only an active coordinator"),
        ([ack, "--reason", "court", "--by", "nobody"], "there is no user 'nobody'"),
        ([ack, "--reason", "court", "--matter", "Smith", "--by", "coord"], "never a name"),
        (["2222-2222", "--reason", "court", "--by", "coord"], "No referral has the reference 2222-2222"),
        (["0000-0000", "--reason", "court", "--by", "coord"], "references never use 0, O, 1 or I"),
        ([ack, "--by", "coord"], "say why with --reason"),
    ):
        assert await cli(["hold", *args, "--config", cfg]) == 2, args
        assert words in capsys.readouterr().err, args
    assert await rows_of(gw) == before
    hold = ["hold", ack.lower(), "--reason", "police", "--matter", "CR/2026/0042", "--by", "coord"]
    assert await cli([*hold, "--config", cfg]) == 0
    assert f"referral {ack} is under a legal hold" in capsys.readouterr().out
    assert await cli(["hold", ack, "--reason", "police", "--by", "coord", "--config", cfg]) == 2
    assert "already under a legal hold" in capsys.readouterr().err
    assert (await referral(gw, world.ids["acknowledged"])).legal_hold is True
    assert await cli(["hold", "--lift", ack, "--by", "coord", "--config", cfg]) == 0
    assert (await referral(gw, world.ids["acknowledged"])).legal_hold is False
    async with gw.engine.connect() as conn:
        detail = (
            await conn.execute(
                select(events.c.detail).where(
                    events.c.referral_id == world.ids["acknowledged"], events.c.kind == "legal_hold"
                )
            )
        ).scalar_one()
    assert json.loads(detail) == {"reason": "police", "matter": "CR/2026/0042", "via": "cli"}


async def test_the_running_gateway_purges_on_its_schedule(world: World, home: Path) -> None:
    """The purge loop of a gateway with its workers, after a restart past the retention period."""
    await world.gw.stop()
    world.clock.advance(timedelta(days=2))
    gw = Gateway(config_mod.load(world.config_path), clock=world.clock, workers=True)
    await gw.start()
    try:
        await gw_until_purged(gw, {world.ids["purge"], world.ids["decided"]})
    finally:
        await gw.stop()
    world.gw = Gateway(config_mod.load(world.config_path), clock=world.clock, workers=False)
    await world.gw.start()  # for the fixture's own stop


async def gw_until_purged(gw: Gateway, wanted: set[str]) -> None:
    """Waits on the loop's own progress (the rows), never a fixed time; the loop runs at start."""

    async def purged() -> set[str]:
        async with gw.engine.connect() as conn:
            return set((await conn.execute(select(referrals.c.id).where(referrals.c.purged_at.is_not(None)))).scalars())

    async with asyncio.timeout(30):
        while (found := await purged()) != wanted:
            assert found <= wanted, found
            await asyncio.sleep(0.05)


def test_retention_config_is_checked(home: Path) -> None:
    path = write_config(home, '[retention]\nclosed_after = "90m"\n')
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    text = str(caught.value.issues[0])
    assert "retention.closed_after" in text and "use days, like '90d'" in text
    settings = config_mod.load(write_config(home)).settings
    assert settings.retention.closed_after == timedelta(days=90) and settings.retention.enabled


async def referral(gw: Gateway, referral_id: str) -> Any:
    async with gw.engine.connect() as conn:
        return (await conn.execute(select(referrals).where(referrals.c.id == referral_id))).one()


async def sealed_of(gw: Gateway, referral_id: str) -> dict[str, list[Any]]:
    """Every sealed value that belongs to one referral, as stored."""
    async with gw.engine.connect() as conn:
        row = (
            await conn.execute(
                select(referrals.c.content, messages.c.raw, messages.c.envelope)
                .join(messages, messages.c.id == referrals.c.message_id)
                .where(referrals.c.id == referral_id)
            )
        ).one()
        payloads = (
            await conn.execute(
                select(deliveries.c.payload).where(deliveries.c.referral_id == referral_id).order_by(deliveries.c.id)
            )
        ).scalars()
        notes = (await conn.execute(select(decisions.c.note).where(decisions.c.referral_id == referral_id))).scalars()
        return {
            "content": [row.content],
            "raw": [row.raw],
            "envelope": [row.envelope],
            "payloads": list(payloads),
            "notes": list(notes) or [None],
        }


async def test_verify_finds_a_purge_that_does_not_add_up(world: World) -> None:
    """Damage by hand, as a faulty tool or a person might: verify names each referral and what is wrong."""
    gw, ids, refs = world.gw, world.ids, world.refs
    world.clock.advance(timedelta(days=2))
    assert await gw.purge_all() == 2
    with sqlite3.connect(world.home / "var" / "gateway.db") as conn:
        conn.execute("UPDATE referrals SET content = x'0102' WHERE id = ?", (ids["purge"],))
        conn.execute("UPDATE referrals SET purged_at = NULL WHERE id = ?", (ids["decided"],))
        conn.execute("UPDATE referrals SET purged_at = '2027-02-24 10:00:00' WHERE id = ?", (ids["held"],))
    problems = await verify(gw.engine, gw.clock.now())
    assert sorted(problems) == sorted(
        [
            f"referral {refs['purge']}: marked purged but still holds sealed content",
            f"referral {refs['decided']}: has a 'purged' event but is not marked purged",
            f"referral {refs['held']}: its content was removed but no 'purged' event records it",
            f"referral {refs['held']}: marked purged but still holds sealed content",
        ]
    )


@both_databases
async def test_purge_on_both_databases(gateway: Gateway, clock: FakeClock) -> None:
    """The same purge on SQLite and PostgreSQL (the queries are portable): one closed referral goes,
    a closed one under a legal hold and an open one stay, and the chain verifies."""
    gw = gateway
    refs = [await send(gw, name) for name in ("goes", "held", "open")]
    await gw.process_all()
    await gw.deliver_all()
    users = Users(gw.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    coordinator = await users.add("coord", "Cora Coordinator", Role.COORDINATOR, [], PASSWORD, clock.now())
    ids = []
    for ref in refs:
        async with gw.engine.connect() as conn:
            ids.append(
                str((await conn.execute(select(referrals.c.id).where(referrals.c.reference == ref))).scalar_one())
            )
    for rid in ids[:2]:
        await gw.tracker.acknowledge(rid, gw.signer.recipient_hash(f"user:{coordinator.id}"), "Cora", via="dashboard")
        await close(gw.db, gw.tracker.referrers, rid, coordinator.id, "no_further_action", clock.now())
    await set_hold(gw.db, coordinator, refs[1], "review", "", clock.now(), "test")
    await gw.deliver_all()
    clock.advance(timedelta(days=91))
    assert [c.reference for c in await retention.dry_run(gw.db, gw.config.settings, clock.now())] == [refs[0]]
    assert await gw.purge_all() == 1
    goes, held, still_open = [await referral(gw, rid) for rid in ids]
    assert goes.content is None and held.content is not None and still_open.content is not None
    async with gw.engine.connect() as conn:
        raw = (await conn.execute(select(messages.c.raw).where(messages.c.id == goes.message_id))).scalar_one()
        payloads = set(
            (await conn.execute(select(deliveries.c.payload).where(deliveries.c.referral_id == ids[0]))).scalars()
        )
    assert raw == b"" and payloads == {None}
    assert await verify(gw.engine, clock.now()) == []
    assert await gw.purge_all() == 0
