"""Issue 15: linked history by keyed index, and cumulative concern. Referrals arrive by real SMTP
into a real Gateway (workers=False, FakeClock); the staff pages are read over real HTTP as a
coordinator; alerts are read from the maildirs the managers' and coordinators' mail goes to."""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from gateway import config as config_mod
from gateway.app import SHARED_KEYS, Gateway
from gateway.cli.main import main
from gateway.config import ConfigError
from gateway.core.clock import FakeClock
from gateway.core.model import Child
from gateway.core.schema import child_index, child_index_builds, deliveries, events, referrals
from gateway.history import concern, index, keys
from gateway.history.keys import KEY_FILE, Hasher
from gateway.report.timeline import timeline
from tests.conftest import (
    COMPLETE_BODY,
    START,
    both_databases,
    maildir_messages,
    make_message,
    smtp_send,
    valid_nhs,
    write_config,
)
from tests.test_dashboard import Browser, page, post, signed_in
from tests.test_dashboard import accounts as accounts  # the fixtures: staff and a browser on the app
from tests.test_dashboard import browser as browser

MANAGER = "dev.malik@demo-council.example"  # the MASH team's manager in config/gateway.toml
COORDINATOR = "iris.novak@demo-council.example"
TRUST = ("ann.example@nhs.example", "Demo NHS Foundation Trust")
HEALTH = ("pat.visitor@community-health.example", "Demo Community Health")
SECRETS = ("Sam Testchild", "9990000018", "W1A", "Zebra-crossing", "03/04/2021", "2021-04-03")


def body(
    *,
    name: str = "Sam Testchild",
    nhs: str | None = None,
    postcode: str = "W1A 1AA",
    urgency: str = "standard",
    organisation: str = TRUST[1],
) -> str:
    """The filled-in referral form (tests/conftest.py) about a child of our choosing; nhs="": none given."""
    number = valid_nhs() if nhs is None else nhs
    text = COMPLETE_BODY.format(nhs=number, postcode=postcode, category="neglect", urgency=urgency)
    text = text.replace("Sam Testchild", name).replace("Demo NHS Foundation Trust", organisation)
    return text if number else text.replace("NHS number: \n", "")


async def send(gw: Gateway, mid: str, text: str, sender: str = TRUST[0]) -> str:
    code, reply = await smtp_send(gw.smtp_port, make_message(text, sender=sender, message_id=f"<{mid}@x.example>"))
    assert code == 250, reply
    return reply.split()[-1]


async def settle(gw: Gateway) -> None:
    await gw.process_all()
    await gw.deliver_all()


async def rid(gw: Gateway, reference: str) -> str:
    async with gw.engine.connect() as conn:
        return str((await conn.execute(select(referrals.c.id).where(referrals.c.reference == reference))).scalar_one())


def earlier_table(html: str) -> dict[str, str]:
    """The 'Earlier referrals about this child' table: reference -> what matched."""
    section = html.split("Earlier referrals about this child")[1].split("Timeline")[0]
    rows = re.findall(
        r">([0-9A-Z]{4}-[0-9A-Z]{4})</a></td>.*?<td class=\"govuk-table__cell\">([^<]*)</td>\s*</tr>", section, re.S
    )
    return dict(rows)


async def cli(*argv: str) -> int:
    """The command, as an administrator runs it (in a thread: it runs an event loop of its own)."""
    return await asyncio.to_thread(main, list(argv))


def concern_alerts(home: Path, address: str) -> list[str]:
    """The concern alerts in a mailbox, as their reader sees them (headers and decoded text)."""
    found = [m for m in maildir_messages(home, address) if "CUMULATIVE CONCERN" in m["Subject"]]
    return [f"{m['Subject']}\n{m['X-Referral-Reference']}\n{m.get_content()}" for m in found]


# --- the keyed hashes -----------------------------------------------------------------------------


def test_identifiers_are_normalised_and_each_kind_hashes_apart() -> None:
    hasher = Hasher(b"k" * 32)
    a = Child(name="Sam  TESTCHILD", date_of_birth=date(2021, 4, 3), nhs_number="999 000 0018", postcode="w1a1aa")
    b = Child(name="sam testchild", date_of_birth=date(2021, 4, 3), nhs_number="9990000018", postcode="W1A 1AA")
    assert valid_nhs() == "9990000018"
    assert hasher.digests(a) == hasher.digests(b)
    assert set(hasher.digests(a)) == {keys.NHS, keys.NAME_DOB, keys.DOB_POSTCODE}
    assert len(set(hasher.digests(a).values())) == 3  # a label per kind: no two kinds share a digest
    # A wrong check digit, a name without a date of birth, or a postcode of no valid shape: no digest.
    assert hasher.digests(Child(name="Sam", nhs_number="9990000017", postcode="W1A 1AA")) == {}
    # Another key, other digests: the index means nothing without its key.
    assert Hasher(b"j" * 32).digests(a)[keys.NHS] != hasher.digests(a)[keys.NHS]
    assert hasher.organisation("Demo  NHS trust") == hasher.organisation("demo nhs TRUST") != hasher.organisation("x")
    assert hasher.organisation("  ") is None


def test_the_index_key_is_a_shared_key_of_its_own(home: Path) -> None:
    assert KEY_FILE in SHARED_KEYS  # made by `keys init`, required on PostgreSQL, in keys/ (backed up)
    key = keys.load_key(home / "keys")
    assert len(key) == 32 and (home / "keys" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert keys.load_key(home / "keys") == key  # made once, then read


# --- linked history ------------------------------------------------------------------------------


@both_databases
async def test_earlier_referrals_by_index_say_what_matched(
    browser: Browser, gateway: Gateway, clock: FakeClock
) -> None:
    # Every child here has the same date of birth (the form's); names, NHS numbers and postcodes differ.
    first = await send(gateway, "h1", body(urgency="urgent"))
    by_name = await send(gateway, "h2", body(nhs="", postcode="SW1A 2AA", urgency="urgent"))
    by_postcode = await send(gateway, "h3", body(nhs="", name="Alex Otherchild", urgency="urgent"))
    other = await send(gateway, "h4", body(nhs="", name="Kim Unrelated", postcode="EC1A 1BB", urgency="urgent"))
    clock.advance(timedelta(minutes=5))
    latest = await send(gateway, "h5", body(name="Sam Renamed", postcode="N1 9GU", urgency="urgent"))
    await settle(gateway)
    async with gateway.engine.connect() as conn:
        indexed = (await conn.execute(select(child_index))).all()
    # Only keyed hashes: nothing of the child in clear; one row per identifier each referral gave.
    assert not any(secret in repr(indexed) for secret in SECRETS)
    assert len(indexed) == 3 + 2 + 2 + 2 + 3  # h2-h4 give no NHS number
    client = await signed_in(browser, "coord")
    assert earlier_table(await page(client, f"/referrals/{await rid(gateway, latest)}")) == {first: "same NHS number"}
    html = await page(client, f"/referrals/{await rid(gateway, by_postcode)}")
    assert earlier_table(html) == {first: "same date of birth and postcode"}
    assert earlier_table(await page(client, f"/referrals/{await rid(gateway, by_name)}")) == {
        first: "same name and date of birth"
    }
    assert earlier_table(await page(client, f"/referrals/{await rid(gateway, other)}")) == {}  # another child


async def test_the_concern_check_reads_only_the_latest_referrals_about_a_child(
    gateway: Gateway, clock: FakeClock
) -> None:
    # A child referred again and again: each new referral's concern check reads a bounded number of
    # of referrals (concern.LATEST per identifier), the newest, not every earlier one about the child.
    sent = []
    for n in range(4):
        sent.append(await send(gateway, f"m{n}", body(urgency="urgent")))
        clock.advance(timedelta(minutes=1))
    await settle(gateway)
    last = await rid(gateway, sent[-1])
    async with gateway.engine.connect() as conn:
        rows = await conn.execute(select(child_index).where(child_index.c.referral_id == last))
        mine = {r.kind: r.digest for r in rows}
        received = (await conn.execute(select(referrals.c.received_at).where(referrals.c.id == last))).scalar_one()
        everything = await index.matches(conn, mine, exclude=last, until=received)
        newest = await index.matches(conn, mine, exclude=last, until=received, latest=1)
        two = await index.matches(conn, mine, exclude=last, until=received, latest=2)
    assert len(mine) == 3 and len(everything) == 3
    # The latest one per kind of identifier: the newest earlier referral, by all three of them.
    assert set(newest) == {await rid(gateway, sent[2])} and newest[await rid(gateway, sent[2])].kinds == set(mine)
    assert set(two) == {await rid(gateway, sent[1]), await rid(gateway, sent[2])}


@both_databases
async def test_reindex_builds_the_index_and_a_replaced_key_is_rebuilt(
    browser: Browser, gateway: Gateway, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await send(gateway, "r1", body(urgency="urgent"))
    second = await send(gateway, "r2", body(urgency="urgent"))
    await settle(gateway)
    # As before the upgrade that added the index: the rows and the build are not there.
    async with gateway.engine.begin() as conn:
        await conn.execute(delete(child_index))
        await conn.execute(delete(child_index_builds))
    client = await signed_in(browser, "coord")
    page_of_second = f"/referrals/{await rid(gateway, second)}"
    # Not built: the page still finds the earlier referral, by opening the older ones.
    assert earlier_table(await page(client, page_of_second)) == {first: "same NHS number"}

    config = str(gateway.config.file)
    assert await cli("reindex", "--config", config) == 0
    out = capsys.readouterr().out
    assert "reindex: OK" in out and "(2)" in out
    async with gateway.engine.connect() as conn:
        assert {r.referral_id for r in await conn.execute(select(child_index))} == {
            await rid(gateway, first),
            await rid(gateway, second),
        }
        builds = (await conn.execute(select(child_index_builds))).all()
    assert [b.referrals for b in builds] == [2]
    assert earlier_table(await page(client, page_of_second)) == {first: "same NHS number"}
    assert await cli("reindex", "--config", config) == 0  # again: the same index, no twin rows

    # The index key replaced: rows made with the old one match nothing, so the page falls back to
    # opening older referrals until reindex has rebuilt them under the new key.
    key_path = gateway.config.keys_dir / KEY_FILE
    os.unlink(key_path)
    new_key = keys.load_key(gateway.config.keys_dir)
    assert await cli("reindex", "--config", config) == 0
    async with gateway.engine.connect() as conn:
        kept = {r.key_id for r in await conn.execute(select(child_index.c.key_id))}
    assert kept == {Hasher(new_key).key_id}

    key_path.unlink()
    assert await cli("reindex", "--config", config) == 2
    assert "the index key is missing" in capsys.readouterr().err


# --- cumulative concern --------------------------------------------------------------------------


@both_databases
async def test_three_below_urgent_from_two_organisations_alert_managers_and_coordinators(
    browser: Browser, gateway: Gateway, clock: FakeClock, home: Path
) -> None:
    first = await send(gateway, "c1", body())
    await settle(gateway)
    clock.advance(timedelta(days=10))
    second = await send(gateway, "c2", body(organisation=HEALTH[1]), sender=HEALTH[0])
    await settle(gateway)
    assert concern_alerts(home, MANAGER) == [] and concern_alerts(home, COORDINATOR) == []  # two: not yet
    clock.advance(timedelta(days=10))
    third = await send(gateway, "c3", body())
    await settle(gateway)

    for address in (MANAGER, COORDINATOR):
        (alert,) = concern_alerts(home, address)
        assert third in alert and first in alert and second in alert
        assert "3 referrals" in alert and "30 days" in alert and "2 different organisations" in alert
        assert not any(secret in alert for secret in SECRETS)  # in clear: references and counts only
    third_id = await rid(gateway, third)
    lines = [e.what for e in await timeline(gateway.db, gateway.config.settings, third_id, {})]
    assert (
        f"Cumulative concern: 3 referrals in 30 days from 2 organisations (with {first}, {second}); "
        "2 manager(s) and coordinator(s) alerted"
    ) in lines
    html = await page(await signed_in(browser, "coord"), f"/referrals/{third_id}")
    banner = html.split('id="cumulative-concern"')[1].split("govuk-caption-l")[0]
    assert "Cumulative concern: 3 referrals in 30 days from 2 organisations" in banner and first in banner
    assert "none was urgent on its own" in banner
    # The earlier referrals of the set say so too, and which referral raised it.
    for earlier in (first, second):
        html = await page(await signed_in(browser, "coord"), f"/referrals/{await rid(gateway, earlier)}")
        banner = html.split('id="cumulative-concern"')[1].split("govuk-caption-l")[0]
        assert f"This referral is part of a cumulative concern raised on {third}: 3 referrals in 30 days" in banner
        assert f'href="/referrals/{third_id}"' in banner and "none was urgent on its own" in banner
    # A referral about another child, stored meanwhile, has no banner.
    unrelated = await send(gateway, "c0", body(name="Kim Unrelated", nhs="", postcode="EC1A 1BB"))
    await settle(gateway)
    html = await page(await signed_in(browser, "coord"), f"/referrals/{await rid(gateway, unrelated)}")
    assert 'id="cumulative-concern"' not in html

    # A fourth about the same child: the managers know already; not raised again for that set.
    clock.advance(timedelta(days=1))
    await send(gateway, "c4", body(organisation=HEALTH[1]), sender=HEALTH[0])
    await settle(gateway)
    assert len(concern_alerts(home, MANAGER)) == 1
    async with gateway.engine.connect() as conn:
        raised = (await conn.execute(select(events.c.detail).where(events.c.kind == "cumulative_concern"))).all()
        kinds = {r.kind for r in await conn.execute(select(deliveries.c.kind))}
    assert len(raised) == 1 and json.loads(raised[0].detail)["referrals"] == 3 and "concern" in kinds


async def mark_duplicate(browser: Browser, copy_id: str, of: str) -> None:
    """A duty worker answers 'duplicate of' on the copy's page, as they would."""
    client = await signed_in(browser, "mash.worker")
    answered = await post(
        client,
        f"/referrals/{copy_id}/answer/duplicate",
        {"of": of, "reason": "The same referral sent twice"},
        f"/referrals/{copy_id}",
    )
    assert answered.status == 303, await answered.text()


@both_databases
async def test_a_copy_marked_duplicate_does_not_count_towards_a_concern(
    browser: Browser, gateway: Gateway, clock: FakeClock, home: Path
) -> None:
    # One referral sent twice by the trust, then one from another organisation: two referrals, not three.
    first = await send(gateway, "d1", body())
    copy = await send(gateway, "d2", body())
    await settle(gateway)
    await mark_duplicate(browser, await rid(gateway, copy), first)
    clock.advance(timedelta(days=1))
    other = await send(gateway, "d3", body(organisation=HEALTH[1]), sender=HEALTH[0])
    await settle(gateway)
    assert concern_alerts(home, MANAGER) == [] and concern_alerts(home, COORDINATOR) == []
    html = await page(await signed_in(browser, "coord"), f"/referrals/{await rid(gateway, other)}")
    assert 'id="cumulative-concern"' not in html
    # A third referral in its own right completes the set, as usual; the copy is not in it.
    clock.advance(timedelta(days=1))
    third = await send(gateway, "d4", body())
    await settle(gateway)
    (alert,) = concern_alerts(home, MANAGER)
    assert first in alert and other in alert and third in alert and copy not in alert


@both_databases
async def test_a_concern_raised_before_a_copy_was_marked_duplicate_is_kept(
    browser: Browser, gateway: Gateway, home: Path
) -> None:
    first = await send(gateway, "k1", body())
    copy = await send(gateway, "k2", body())
    await settle(gateway)
    third = await send(gateway, "k3", body(organisation=HEALTH[1]), sender=HEALTH[0])
    await settle(gateway)
    assert len(concern_alerts(home, MANAGER)) == 1  # three, as far as anyone knew then
    await mark_duplicate(browser, await rid(gateway, copy), first)
    html = await page(await signed_in(browser, "coord"), f"/referrals/{await rid(gateway, third)}")
    assert 'id="cumulative-concern"' in html  # sent, so never withdrawn silently
    assert len(concern_alerts(home, MANAGER)) == 1


@both_databases
async def test_a_set_stored_in_one_batch_raises_one_concern(gateway: Gateway, home: Path) -> None:
    # Stored in one instant, each of the three completes the set: the managers hear of it once.
    await send(gateway, "b1", body())
    await send(gateway, "b2", body())
    await send(gateway, "b3", body(organisation=HEALTH[1]), sender=HEALTH[0])
    await settle(gateway)
    assert len(concern_alerts(home, MANAGER)) == 1 and len(concern_alerts(home, COORDINATOR)) == 1
    async with gateway.engine.connect() as conn:
        raised = (await conn.execute(select(events).where(events.c.kind == "cumulative_concern"))).all()
    assert len(raised) == 1


async def test_no_concern_from_one_organisation_an_urgent_one_or_outside_the_window(
    gateway: Gateway, clock: FakeClock, home: Path
) -> None:
    # Three from one organisation: however many, one organisation is not a cumulative concern.
    for n in range(3):
        await send(gateway, f"one{n}", body())
        clock.advance(timedelta(days=1))
    await settle(gateway)
    # Another child: three from two organisations, but one of them urgent (escalated already).
    other = {"name": "Alex Otherchild", "nhs": "", "postcode": "EC1A 1BB"}
    await send(gateway, "u1", body(**other))
    await send(gateway, "u2", body(**other, urgency="urgent", organisation=HEALTH[1]), sender=HEALTH[0])
    await send(gateway, "u3", body(**other))
    await settle(gateway)
    # A third child: three from two organisations, but over 30 days from the first to the last.
    far = {"name": "Kim Farapart", "nhs": "", "postcode": "N1 9GU"}
    await send(gateway, "f1", body(**far))
    clock.advance(timedelta(days=20))
    await send(gateway, "f2", body(**far, organisation=HEALTH[1]), sender=HEALTH[0])
    clock.advance(timedelta(days=11))
    await send(gateway, "f3", body(**far))
    await settle(gateway)
    assert concern_alerts(home, MANAGER) == [] and concern_alerts(home, COORDINATOR) == []
    async with gateway.engine.connect() as conn:
        assert (await conn.execute(select(events).where(events.c.kind == "cumulative_concern"))).all() == []


def test_concern_config_is_checked(home: Path) -> None:
    for extra, words in (
        ('[concern]\nwindow = "30m"\n', ("concern.window", "use days, like '30d'")),
        ("[concern]\nreferrals = 2\norganisations = 3\n", ("concern", "make organisations at most referrals")),
        ("[concern]\nreferrals = 1\n", ("concern.referrals", "2")),
    ):
        with pytest.raises(ConfigError) as caught:
            config_mod.load(write_config(home, extra))
        text = str(caught.value.issues[0])
        assert all(w in text for w in words), text
    assert config_mod.load(write_config(home)).settings.concern.window == timedelta(days=30)


def test_what_counts_towards_a_concern() -> None:
    rule = concern.Rule(timedelta(days=30), referrals=3, organisations=2)
    at = START
    trust, health = "t" * 64, "h" * 64

    def member(n: int, urgency: str | None = "standard", org: str | None = trust) -> concern.Member:
        return concern.Member(f"{n:032x}", f"REF{n}", at + timedelta(days=n), urgency, org)

    new = member(3, org=health)
    found = concern.decide(new, [member(1), member(2)], rule)
    assert found is not None and found.members[-1] == new and found.organisations == 2
    assert found.detail()["linked"] == ["REF1", "REF2"] and found.detail()["window"] == "30 days"
    assert concern.decide(new, [member(1)], rule) is None  # two referrals
    assert concern.decide(member(3), [member(1), member(2)], rule) is None  # one organisation
    # An organisation not known counts as a referral, never as another organisation.
    assert concern.decide(new, [member(1), member(2, org=None)], rule) is not None
    assert concern.decide(new, [member(1, org=None), member(2, org=None)], rule) is None
    assert concern.decide(new, [member(1, "urgent"), member(2)], rule) is None  # escalated on its own
    assert concern.decide(new, [member(1, None), member(2)], rule) is None  # no urgency: treated as immediate
