"""Issue 14: partner-signed content received again (a replay, or a client sending twice under a
new Message-ID) makes no second referral. Real SMTP to the gateway, PGP/MIME made with the gpg
command line and S/MIME with openssl, on SQLite and PostgreSQL; nothing of ours is mocked."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import event, func, select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core.clock import FakeClock
from gateway.core.schema import ALERT_KINDS, deliveries, events, messages, referrals, signed_content
from gateway.report import undelivered as report
from gateway.report.timeline import timeline
from gateway.track.verify import verify
from gateway.web.session import CSRF_FIELD
from tests.conftest import both_databases, maildir_messages, make_message, referral_body, smtp_send, write_config
from tests.staff_auth import csrf_of
from tests.test_dashboard import Browser, page, signed_in
from tests.test_dashboard import accounts as accounts  # the fixtures: staff and a browser on the app
from tests.test_dashboard import browser as browser
from tests.test_history import COORDINATOR, HEALTH, MANAGER, concern_alerts
from tests.test_history import body as history_body
from tests.test_secure_intake import (
    MASH,
    SENDER,
    Setup,
    config_text,
    gpg,
    inner_entity,
    outer,
    pgpmime_message,
    smime_message,
)
from tests.test_secure_intake import setup as setup  # the fixture, with its GnuPG homes
from tests.test_smime import openssl

SECRETS = ("Sam Testchild", "Zebra-crossing", "W1A", "Example Street", "Ann Example")


def gateway_config(s: Setup, database_url: str, *, strict: bool = True, extra: str = "") -> config_mod.Config:
    return config_mod.load(write_config(s.home, config_text(s, strict=strict) + extra, database_url=database_url))


@pytest.fixture
async def gateway(setup: Setup, clock: FakeClock, database_url: str) -> AsyncIterator[Gateway]:
    gw = Gateway(gateway_config(setup, database_url), clock=clock, workers=False)
    await gw.start()
    yield gw
    await gw.stop()


async def send(gw: Gateway, raw: bytes) -> str:
    code, text = await smtp_send(gw.smtp_port, raw, sender=SENDER)
    assert code == 250, text
    return text.split()[-1]


async def settle(*gateways: Gateway) -> None:
    for gw in gateways:
        await gw.process_all()
        await gw.deliver_all()


async def states(gw: Gateway) -> dict[str, str]:
    async with gw.engine.connect() as conn:
        return {r.reference: r.state for r in await conn.execute(select(referrals.c.reference, referrals.c.state))}


async def alerts(gw: Gateway) -> dict[str, int]:
    """Alert rows queued, by reference: a repeat must have none."""
    async with gw.engine.connect() as conn:
        rows = await conn.execute(
            select(referrals.c.reference, func.count(deliveries.c.id))
            .join(deliveries, deliveries.c.referral_id == referrals.c.id)
            .where(deliveries.c.kind.in_(ALERT_KINDS))
            .group_by(referrals.c.reference)
        )
        return {r[0]: r[1] for r in rows}


async def details(gw: Gateway, reference: str, kind: str) -> list[dict[str, object]]:
    async with gw.engine.connect() as conn:
        rows = await conn.execute(
            select(events.c.detail)
            .join(referrals, referrals.c.id == events.c.referral_id)
            .where(referrals.c.reference == reference, events.c.kind == kind)
        )
        return [json.loads(r.detail) for r in rows]


async def referral_id(gw: Gateway, reference: str) -> str:
    async with gw.engine.connect() as conn:
        return str((await conn.execute(select(referrals.c.id).where(referrals.c.reference == reference))).scalar_one())


def receipts(s: Setup) -> list[str]:
    """The receipts to the sender, as they read them: one encrypted to their OpenPGP key (the key
    they signed with) is decrypted in their own GnuPG home."""
    out = []
    for m in maildir_messages(s.home, SENDER):
        if "NOT passed on" in m["Subject"]:
            continue
        entity: EmailMessage = m
        if m.get_content_type() == "multipart/encrypted":
            armoured = m.get_payload()[1].get_payload(decode=True)  # type: ignore[index,union-attr]
            plain = gpg(s.pgp_partner_home, "--decrypt", stdin=armoured)
            entity = email.message_from_bytes(plain, _class=EmailMessage, policy=email.policy.default)
        text = next(p for p in entity.walk() if p.get_content_type() == "text/plain").get_content()
        out.append(f"Subject: {m['Subject']}\n{text}")
    return out


async def check_repeat(gw: Gateway, s: Setup, first: str, again: str) -> None:
    """`again` is closed as a repeat of `first`: one live referral, one set of alerts, both
    timelines, the report, the sender's receipt, and verify holds."""
    assert (await states(gw))[first] == "alerted"
    assert (await states(gw))[again] == "repeat"
    assert list(await alerts(gw)) == [first]  # the repeat queued no alert of its own
    assert len(maildir_messages(s.home, MASH)) == 1  # the team's mailbox was alerted once
    assert [d["of"] for d in await details(gw, again, "repeat")] == [first]
    assert [d["as"] for d in await details(gw, first, "received_again")] == [again]
    assert await details(gw, again, "routed") == [] and await details(gw, again, "parsed") == []
    names: dict[str, str] = {}
    first_line = [e.what for e in await timeline(gw.db, gw.config.settings, await referral_id(gw, first), names)]
    again_line = [e.what for e in await timeline(gw.db, gw.config.settings, await referral_id(gw, again), names)]
    assert any(w.startswith(f"Received again as {again} on ") for w in first_line), first_line
    assert any(w.startswith(f"A repeat of {first}: ") for w in again_line), again_line
    rows = [r for r in await report.undelivered(gw.engine, gw.config.settings, gw.clock.now()) if "repeat" in r.kinds]
    assert [(r.reference, r.state) for r in rows] == [(again, "repeat")]
    assert f"repeat of {first}" in rows[0].reason
    # The second receipt names the first reference and nothing of the referral.
    (told,) = [text for text in receipts(s) if "Received before" in text]
    assert first in told and again in told and "no second referral was made" in told
    assert not any(secret in told for secret in SECRETS)
    assert await verify(gw.engine, gw.clock.now()) == []


@both_databases
async def test_a_pgpmime_message_resent_under_a_new_message_id_is_a_repeat(gateway: Gateway, setup: Setup) -> None:
    body = pgpmime_message(setup, referral_body())
    first = await send(gateway, outer(body, "pgp-1"))
    await settle(gateway)
    again = await send(gateway, outer(body, "pgp-2"))  # the same signed bytes, a new Message-ID
    await settle(gateway)
    assert first != again
    await check_repeat(gateway, setup, first, again)
    async with gateway.engine.connect() as conn:
        (row,) = (await conn.execute(select(signed_content))).all()
    assert row.referral_id == await referral_id(gateway, first)
    assert len(row.digest) == 64 and "Zebra" not in row.digest  # a keyed digest, not content


def smime_signed(s: Setup, body: str) -> bytes:
    done = openssl(
        "smime", "-sign", "-md", "sha256", "-signer", str(s.partner.cert_path), "-inkey", str(s.partner.key_path),
        stdin=inner_entity(body),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def smime_encrypted(s: Setup, signed: bytes) -> bytes:
    done = openssl("smime", "-encrypt", "-aes256", str(s.gateway_cert), stdin=signed)
    assert done.returncode == 0, done.stderr
    return done.stdout


@both_databases
async def test_smime_signed_content_received_again_is_a_repeat_however_it_is_wrapped(
    gateway: Gateway, setup: Setup
) -> None:
    """Signed once, encrypted twice (two different envelopes, as a forwarding relay or an attacker
    re-encrypting a captured message would make): the signed content is what counts."""
    signed = smime_signed(setup, referral_body())
    first = await send(gateway, outer(smime_encrypted(setup, signed), "sm-1"))
    await settle(gateway)
    again = await send(gateway, outer(smime_encrypted(setup, signed), "sm-2"))
    await settle(gateway)
    await check_repeat(gateway, setup, first, again)


async def test_copies_processed_in_one_batch_make_one_original(gateway: Gateway, setup: Setup) -> None:
    """Both copies stored before either is processed: one worker claims both in one batch, neither
    finds the other in the table, and the write lets exactly one through; the other is processed
    again and found to be a repeat."""
    body = pgpmime_message(setup, referral_body())
    sent = [await send(gateway, outer(body, f"batch-{n}")) for n in (1, 2)]
    await settle(gateway)
    # The earlier received wins; on the test's still clock both came at once, so either may.
    found = await states(gateway)
    first, again = (sent[0], sent[1]) if found[sent[0]] == "alerted" else (sent[1], sent[0])
    await check_repeat(gateway, setup, first, again)


@both_databases
async def test_one_batch_with_two_copies_and_a_copy_of_an_earlier_referral(
    gateway: Gateway, setup: Setup, clock: FakeClock
) -> None:
    """One batch holds a copy of a referral made earlier and two copies of new content: the earlier
    one's copy is its repeat, the first received of the two new copies is the referral and the
    second its repeat. The batch's repeats check is one read of the table, not one per message."""
    old, new = pgpmime_message(setup, referral_body()), pgpmime_message(setup, referral_body(urgency="immediate"))
    original = await send(gateway, outer(old, "b-0"))
    await settle(gateway)
    sent = []
    for n, body in enumerate((old, new, new), start=1):
        clock.advance(timedelta(seconds=1))  # received in this order
        sent.append(await send(gateway, outer(body, f"b-{n}")))
    reads: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "signed_content" in statement:
            reads.append(statement)

    event.listen(gateway.engine.sync_engine, "before_cursor_execute", count)
    try:
        assert await gateway.processor.run_once() == 3  # all three in one batch
    finally:
        event.remove(gateway.engine.sync_engine, "before_cursor_execute", count)
    assert len(reads) == 1, reads
    await settle(gateway)  # the second new copy lost the write and is processed again
    found = await states(gateway)
    assert [found[ref] for ref in (original, *sent)] == ["alerted", "repeat", "alerted", "repeat"]
    assert [d["of"] for d in await details(gateway, sent[0], "repeat")] == [original]
    assert [d["of"] for d in await details(gateway, sent[2], "repeat")] == [sent[1]]
    assert set(await alerts(gateway)) == {original, sent[1]}
    assert await verify(gateway.engine, gateway.clock.now()) == []


async def test_different_content_from_the_same_partner_makes_two_referrals(gateway: Gateway, setup: Setup) -> None:
    one = await send(gateway, outer(smime_message(setup.partner, setup.gateway_cert, referral_body()), "d-1"))
    two = await send(
        gateway, outer(smime_message(setup.partner, setup.gateway_cert, referral_body(urgency="immediate")), "d-2")
    )
    three = await send(gateway, outer(pgpmime_message(setup, referral_body()), "d-3"))
    await settle(gateway)
    assert await states(gateway) == {one: "alerted", two: "alerted", three: "alerted"}
    counted = await alerts(gateway)
    assert set(counted) == {one, two, three}  # each alerted (an immediate one to more people)
    assert len(maildir_messages(setup.home, MASH)) == 3
    assert receipts(setup) and not any("Received before" in text for text in receipts(setup))


async def test_unsigned_or_unknown_signer_mail_sent_again_is_not_a_repeat(setup: Setup, clock: FakeClock) -> None:
    """Only a known partner's signature proves two messages are the same referral: plain mail,
    and mail signed by a certificate the directory does not accept, is never dropped as a repeat."""
    gw = Gateway(gateway_config(setup, "", strict=False), clock=clock, workers=False)
    await gw.start()
    try:
        plain = inner_entity(referral_body())
        stranger = smime_message(setup.stranger, setup.gateway_cert, referral_body(postcode="SW1A 1AA"))
        sent = [await send(gw, outer(raw, f"u-{n}")) for n, raw in enumerate((plain, plain, stranger, stranger))]
        await settle(gw)
        assert set((await states(gw)).values()) == {"alerted"} and len(await states(gw)) == 4
        assert set(await alerts(gw)) == set(sent)
        async with gw.engine.connect() as conn:
            assert (await conn.execute(select(signed_content))).all() == []
    finally:
        await gw.stop()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_concurrent_replays_on_two_instances_make_one_original(
    setup: Setup,
    clock: FakeClock,
    database_url: str,
) -> None:
    """Two instances on one PostgreSQL, each claiming one message at a time, process copies of the
    same signed message at once: exactly one original, every other copy a repeat of it."""
    one_at_a_time = "\n[processing]\nbatch = 1\n"
    config = gateway_config(setup, database_url, extra=one_at_a_time)
    gateways = [Gateway(config, clock=clock, workers=False) for _ in range(2)]
    for gw in gateways:
        await gw.start()
    try:
        body = pgpmime_message(setup, referral_body())
        sent = [await send(gateways[n % 2], outer(body, f"race-{n}")) for n in range(4)]
        await asyncio.gather(*(gw.process_all() for gw in gateways))
        await settle(*gateways)
        found = await states(gateways[0])
        (original,) = [ref for ref in sent if found[ref] == "alerted"]
        assert sorted(found[ref] for ref in sent if ref != original) == ["repeat"] * 3
        assert list(await alerts(gateways[0])) == [original]
        repeats = {str(d["of"]) for ref in sent if ref != original for d in await details(gateways[0], ref, "repeat")}
        assert repeats == {original}
        assert len(await details(gateways[0], original, "received_again")) == 3
        assert await verify(gateways[0].engine, clock.now()) == []
    finally:
        for gw in gateways:
            await gw.stop()


async def test_coordinators_see_the_repeat_and_what_it_repeats(
    gateway: Gateway, setup: Setup, browser: Browser
) -> None:
    body = pgpmime_message(setup, referral_body())
    first = await send(gateway, outer(body, "web-1"))
    await settle(gateway)
    again = await send(gateway, outer(body, "web-2"))
    await settle(gateway)
    first_id, again_id = await referral_id(gateway, first), await referral_id(gateway, again)
    coordinator = await signed_in(browser, "coord")
    repeat_page = await page(coordinator, f"/referrals/{again_id}")
    assert f'<a class="govuk-link" href="/referrals/{first_id}">{first}</a>' in repeat_page
    assert "no second referral was made" in repeat_page and "Sam Testchild" not in repeat_page
    assert f"Received again as {again} on " in await page(coordinator, f"/referrals/{first_id}")
    listed = await page(coordinator, "/report?kind=repeat")
    assert again in listed and f"a repeat of {first}" in listed
    assert first not in listed.replace(f"a repeat of {first}", "")  # the live one is not a repeat item
    # Like any item, it leaves the report only by a coordinator's recorded decision.
    decided = await coordinator.post(
        "/report/decisions",
        data={CSRF_FIELD: csrf_of(listed), "item": f"referral:{again_id}", "what": "false_alarm", "note": ""},
        allow_redirects=False,
    )
    assert decided.status == 303, await decided.text()
    after = await page(coordinator, "/report?kind=repeat")
    assert f">{again}</th>" in listed and f">{again}</th>" not in after and "off the report" in after
    assert [d["what"] for d in await details(gateway, again, "decision")] == ["false_alarm"]


async def test_a_repeat_is_purged_on_the_retention_clock_and_the_next_copy_is_still_a_repeat(
    gateway: Gateway, setup: Setup, clock: FakeClock
) -> None:
    """A repeat is closed when it is found to be one, so retention removes its copy of the
    message after closed_after, as for any closed referral; the earlier referral, still open,
    keeps everything, and content received a third time is a repeat of it all the same."""
    body = pgpmime_message(setup, referral_body())
    first = await send(gateway, outer(body, "keep-1"))
    await settle(gateway)
    again = await send(gateway, outer(body, "keep-2"))
    await settle(gateway)
    clock.advance(gateway.config.settings.retention.closed_after + timedelta(days=1))
    assert await gateway.purge_all() == 1
    async with gateway.engine.connect() as conn:
        rows = {
            r.reference: r
            for r in await conn.execute(
                select(referrals.c.reference, referrals.c.purged_at, func.length(messages.c.raw).label("raw")).join(
                    messages, messages.c.id == referrals.c.message_id
                )
            )
        }
    assert rows[again].purged_at is not None and rows[again].raw == 0
    assert rows[first].purged_at is None and rows[first].raw > 0
    third = await send(gateway, outer(body, "keep-3"))
    await settle(gateway)
    assert (await states(gateway))[third] == "repeat"
    assert [d["of"] for d in await details(gateway, third, "repeat")] == [first]
    assert await verify(gateway.engine, clock.now()) == []


async def test_a_repeat_does_not_count_towards_a_cumulative_concern(
    setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """One referral replayed is one referral: the partner's copy and its repeat, and one from
    another organisation, are two referrals about the child, not the three a concern needs; also
    after `reindex`, which indexes every stored referral."""
    gw = Gateway(gateway_config(setup, "", strict=False), clock=clock, workers=False)
    await gw.start()
    try:
        signed = pgpmime_message(setup, referral_body(urgency="standard"))
        first = await send(gw, outer(signed, "cc-1"))
        await settle(gw)
        again = await send(gw, outer(signed, "cc-2"))
        await settle(gw)
        assert (await states(gw))[again] == "repeat"
        assert await asyncio.to_thread(main, ["reindex", "--config", str(gw.config.file)]) == 0
        assert "reindex: OK" in capsys.readouterr().out
        clock.advance(timedelta(days=1))
        other = make_message(history_body(organisation=HEALTH[1]), sender=HEALTH[0], message_id="<cc-3@x.example>")
        code, text = await smtp_send(gw.smtp_port, other)
        assert code == 250, text
        await settle(gw)
        assert len(await states(gw)) == 3 and first in await states(gw)
        assert concern_alerts(setup.home, MANAGER) == [] and concern_alerts(setup.home, COORDINATOR) == []
        async with gw.engine.connect() as conn:
            assert (await conn.execute(select(events).where(events.c.kind == "cumulative_concern"))).all() == []
    finally:
        await gw.stop()
