"""Structured answers (issue 15) end to end: referrals arrive by real SMTP into a real Gateway
(workers=False, FakeClock), staff sign in to its own aiohttp app and answer with the CSRF token,
and everything the gateway sends goes through a real aiosmtpd relay. Keys are real: the gateway's
and a neighbouring authority's in GnuPG homes of their own, and the forward is decrypted with gpg."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiohttp import CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.smtp import SMTP, Envelope, Session
from argon2 import PasswordHasher
from sqlalchemy import func, select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.config import ConfigError
from gateway.core.clock import FakeClock
from gateway.core.reference import new_reference
from gateway.core.schema import additional_info, answers, deadlines, deliveries, events, referrals
from gateway.duty.deadline_rules import due_at
from gateway.open.crypto.openpgp import OpenPGP
from gateway.pipeline.replies import references_in_body, references_in_subject, subject_of
from gateway.report import undelivered as report
from gateway.staff.users import Role, Users
from gateway.track.acks import NotFound
from gateway.track.verify import verify
from gateway.web.session import CSRF_FIELD
from tests.conftest import (
    Sink,
    both_databases,
    make_message,
    referral_row,
    send_referral,
    smtp_send,
    valid_nhs,
    write_config,
)
from tests.staff_auth import TestApps
from tests.staff_auth import sign_in as staff_sign_in

PASSWORD = "violet kettle harbour"
REFERRER = "ann.example@nhs.example"
MASH = "mash-duty@demo-council.example"
TRIAGE = "triage@demo-council.example"
KEYED = "front-door@borsetshire.example"  # a neighbour whose key we hold
UNKEYED = "mash@felpersham.example"  # a neighbour without one
DEAD = "gone@ambridge.example"  # a neighbour whose mail server refuses the address
NOWHERE = new_reference(lambda bits: 12345)  # a valid reference that no referral has
REASON = "Family moved to Borsetshire last week; Sam Testchild is at school there"
Client = TestClient[web.Request, web.Application]


class Relay(Sink):
    """The council's relay: takes everything but mail to DEAD, which it refuses for good."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address == DEAD:
            return "550 5.1.1 no such mailbox"
        return await super().handle_RCPT(server, session, envelope, address, options)


@dataclass
class Keys:
    neighbour_home: Path
    neighbour_fpr: str
    gateway_fpr: str


def gpg(home: Path, *args: str, data: bytes = b"") -> bytes:
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", *args], input=data, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.fixture
def keys(home: Path) -> Iterator[Keys]:
    short = Path(tempfile.mkdtemp(prefix="gpg"))  # gpg-agent socket paths must be short
    gateway_pgp = OpenPGP(home / "keys" / "gnupg")
    gateway_fpr = gateway_pgp.generate_key("Demo gateway", "referrals@demo-council.example")
    neighbour = short / "borsetshire"
    neighbour.mkdir(mode=0o700)
    gpg(neighbour, "--passphrase", "", "--quick-gen-key", f"Borsetshire front door <{KEYED}>", "ed25519", "sign", "2y")
    fpr = gpg(neighbour, "--with-colons", "--list-secret-keys").decode().split("fpr:::::::::")[1][:40]
    gpg(neighbour, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "2y")
    gateway_pgp.import_keys(gpg(neighbour, "--armor", "--export", fpr))
    gpg(neighbour, "--import", data=gateway_pgp.export_public(gateway_fpr))
    gateway_pgp.close()
    yield Keys(neighbour, fpr, gateway_fpr)
    for gnupghome in (neighbour, home / "keys" / "gnupg"):
        subprocess.run(["gpgconf", "--homedir", str(gnupghome), "--kill", "gpg-agent"], check=False)
    shutil.rmtree(short, ignore_errors=True)


def neighbours_config(keys: Keys) -> str:
    return (
        f'[keys]\nopenpgp_fingerprint = "{keys.gateway_fpr}"\n\n'
        f'[[neighbours]]\nname = "Borsetshire Council"\naddress = "{KEYED}"\nphone = "01632 960001"\n'
        f'openpgp = "{keys.neighbour_fpr}"\n\n'
        f'[[neighbours]]\nname = "Felpersham Council"\naddress = "{UNKEYED}"\nphone = "01632 960002"\n\n'
        f'[[neighbours]]\nname = "Ambridge Council"\naddress = "{DEAD}"\n'
    )


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    server = Relay()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def gateway(home: Path, clock: FakeClock, keys: Keys, relay: Relay, database_url: str) -> AsyncIterator[Gateway]:
    relay_config = f'[mail.relay]\nhost = "127.0.0.1"\nport = {relay.port}\nstarttls = false\ntimeout = "5s"\n'
    path = write_config(home, neighbours_config(keys), relay=relay_config, database_url=database_url)
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def clients(gateway: Gateway) -> AsyncIterator[dict[str, Client]]:
    """A signed-in browser (aiohttp's client with a cookie jar) per staff user, on the gateway's app."""
    users = Users(gateway.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    now = gateway.clock.now()
    await users.add("mash.worker", "Mo Mash", Role.DUTY, ["mash"], PASSWORD, now)
    await users.add("triage.worker", "Tia Triage", Role.DUTY, ["triage"], PASSWORD, now)
    await users.add("coord", "Cora Coordinator", Role.COORDINATOR, [], PASSWORD, now)
    await users.add("admin", "Ada Admin", Role.ADMIN, [], PASSWORD, now)
    server = TestServer(gateway.web_app(users), host="127.0.0.1")
    await server.start_server()
    assert isinstance(gateway.clock, FakeClock)
    apps = TestApps(gateway.clock)
    out: dict[str, Client] = {}
    for name in ("mash.worker", "triage.worker", "coord", "admin"):
        client: Client = TestClient(server, cookie_jar=CookieJar(unsafe=True))
        await client.start_server()
        response = await staff_sign_in(client, apps, name, PASSWORD)
        assert response.status == 303, await response.text()
        out[name] = client
    yield out
    for client in out.values():
        await client.close()
    await server.close()


async def page(client: Client, path: str, status: int = 200) -> str:
    response = await client.get(path, allow_redirects=False)
    text = await response.text()
    assert response.status == status, text
    return text


async def answer(client: Client, rid: str, which: str, data: dict[str, str]) -> tuple[int, str]:
    html = await page(client, f"/referrals/{rid}")
    token = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert token
    response = await client.post(
        f"/referrals/{rid}/answer/{which}", data={CSRF_FIELD: token.group(1), **data}, allow_redirects=False
    )
    return response.status, await response.text()


async def arrived(gateway: Gateway, mid: str, urgency: str = "urgent", postcode: str = "W1A 1AA") -> tuple[str, str]:
    """A referral by real SMTP, processed and its alerts and receipt sent: (reference, id)."""
    reference = await send_referral(gateway, mid, urgency=urgency, postcode=postcode)
    await gateway.process_all()
    await gateway.deliver_all()
    return reference, str((await referral_row(gateway, reference)).id)


async def acknowledge(client: Client, rid: str) -> None:
    html = await page(client, f"/referrals/{rid}")
    token = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert token
    response = await client.post(
        f"/referrals/{rid}/acknowledge", data={CSRF_FIELD: token.group(1)}, allow_redirects=False
    )
    assert response.status == 303


async def kinds(gateway: Gateway, rid: str) -> list[str]:
    async with gateway.engine.connect() as conn:
        rows = await conn.execute(select(events.c.kind).where(events.c.referral_id == rid).order_by(events.c.id))
        return [r.kind for r in rows]


async def all_event_details(gateway: Gateway) -> str:
    async with gateway.engine.connect() as conn:
        return " ".join(r.detail for r in await conn.execute(select(events.c.detail)))


def text_of(msg: EmailMessage) -> str:
    """What a reader sees: the subject and the decoded text body (base64 would hide anything)."""
    assert msg.get_content_type() == "text/plain", msg.get_content_type()
    return f"{msg['Subject']}\n{msg.get_content()}"


# --- not ours: another team ------------------------------------------------------------------------


@both_databases
async def test_not_ours_to_another_team_alerts_it_afresh_and_tells_the_referrer(
    gateway: Gateway, clients: dict[str, Client], relay: Relay, clock: FakeClock
) -> None:
    reference, rid = await arrived(gateway, "team1")
    before = await referral_row(gateway, reference)
    assert before.team_id == "mash" and before.state == "alerted"
    assert [m for m in relay.to(TRIAGE) if reference in str(m["Subject"])] == []
    await gateway.tracker.lookup(rid, gateway.signer.recipient_hash(MASH))  # MASH's ack link works now
    assert (await gateway.tracker.alert_sent_to(gateway.signer.recipient_hash(MASH), reference))[1] == reference
    clock.advance(timedelta(minutes=10))  # within the sessions' idle timeout
    status, _ = await answer(clients["mash.worker"], rid, "not-ours", {"destination": "team:triage", "reason": REASON})
    assert status == 303
    after = await referral_row(gateway, reference)
    assert (after.team_id, after.state, after.acknowledged_at) == ("triage", "routed", None)
    # The new team's own deadline, counted from when it was given the referral, not from arrival.
    settings = gateway.config.settings
    triage = settings.team("triage")
    rule = settings.deadline_rule(triage, "urgent")
    assert after.due_at == due_at(rule, clock.now(), settings.schedule_for(triage))
    async with gateway.engine.connect() as conn:
        open_rows = (
            await conn.execute(
                select(deadlines.c.kind).where(
                    deadlines.c.referral_id == rid, deadlines.c.fired_at.is_(None), deadlines.c.cancelled_at.is_(None)
                )
            )
        ).all()
    assert "ack" in {r.kind for r in open_rows}  # one live acknowledgement deadline: the new team's
    assert len([r for r in open_rows if r.kind == "ack"]) == 1
    await gateway.deliver_all()
    assert any(reference in str(m["Subject"]) for m in relay.to(TRIAGE))  # the new team alerted
    told = [m for m in relay.to(REFERRER) if "passed to" in str(m["Subject"])]
    assert len(told) == 1 and "Front door triage team" in text_of(told[0])
    assert REASON not in text_of(told[0]) and valid_nhs() not in text_of(told[0])
    # The old team no longer sees it, nor can its alert's link acknowledge it; the new team
    # acknowledges it as any new referral.
    with pytest.raises(NotFound):
        await gateway.tracker.lookup(rid, gateway.signer.recipient_hash(MASH))
    with pytest.raises(NotFound):  # nor a reply to its alert (as an SMS acknowledgement is found)
        await gateway.tracker.alert_sent_to(gateway.signer.recipient_hash(MASH), reference)
    await page(clients["mash.worker"], f"/referrals/{rid}", 403)
    await acknowledge(clients["triage.worker"], rid)
    assert (await referral_row(gateway, reference)).state == "acknowledged"
    html = await page(clients["coord"], f"/referrals/{rid}")
    assert ("not ours: another team" in html and "Tia" in html) or "Front door triage team" in html
    assert REASON.replace("'", "&#39;") in html  # the reason, on the signed-in page only
    assert "Not ours: routed afresh to Front door triage team" in html  # the timeline
    assert REASON not in await all_event_details(gateway)  # never in the audit log
    async with gateway.engine.connect() as conn:
        sealed = (await conn.execute(select(answers.c.reason))).scalar_one()
    assert REASON.encode() not in sealed
    assert await verify(gateway.engine, gateway.clock.now()) == []  # the invariants hold


# --- not ours: another authority -------------------------------------------------------------------


@both_databases
async def test_a_forward_to_a_neighbour_with_a_key_is_encrypted_and_ends_ours_once_delivered(
    gateway: Gateway, clients: dict[str, Client], relay: Relay, keys: Keys
) -> None:
    reference, rid = await arrived(gateway, "fwd1")
    status, _ = await answer(
        clients["mash.worker"], rid, "not-ours", {"destination": "neighbour:Borsetshire Council", "reason": REASON}
    )
    assert status == 303
    row = await referral_row(gateway, reference)
    assert row.state == "forwarding"  # still ours: on the report until delivered
    assert any(
        r.reference == reference
        for r in await report.undelivered(gateway.engine, gateway.config.settings, gateway.clock.now())
    )
    await gateway.deliver_all()
    assert (await referral_row(gateway, reference)).state == "forwarded"
    (forward,) = relay.to(KEYED)
    assert forward.get_content_type() == "multipart/encrypted"
    raw = forward.as_bytes()
    assert valid_nhs().encode() not in raw and b"Testchild" not in raw
    armoured = raw[raw.index(b"-----BEGIN PGP MESSAGE-----") : raw.index(b"-----END PGP MESSAGE-----") + 25]
    entity = email.message_from_bytes(gpg(keys.neighbour_home, "--decrypt", data=armoured), policy=email.policy.default)
    assert isinstance(entity, EmailMessage)
    plain = str(entity.get_content())
    assert valid_nhs() in plain and "Sam Testchild" in plain and REASON in plain and reference in plain
    told = [m for m in relay.to(REFERRER) if "passed to" in str(m["Subject"])]
    assert len(told) == 1 and "Borsetshire Council" in text_of(told[0]) and "01632 960001" in text_of(told[0])
    assert "forwarded" in await kinds(gateway, rid)
    html = await page(clients["coord"], f"/referrals/{rid}")
    assert "Not ours: forwarded to Borsetshire Council" in html and "Delivered to the neighbouring authority" in html


@both_databases
async def test_without_a_key_only_a_notice_goes_and_a_forward_that_dies_comes_back_to_us(
    gateway: Gateway, clients: dict[str, Client], relay: Relay
) -> None:
    reference, rid = await arrived(gateway, "fwd2")
    status, _ = await answer(
        clients["mash.worker"], rid, "not-ours", {"destination": "neighbour:Felpersham Council", "reason": REASON}
    )
    assert status == 303
    await gateway.deliver_all()
    (notice,) = relay.to(UNKEYED)
    text = text_of(notice)
    assert reference in text and "020 7946" in text  # whom to call: our duty phone
    for personal in (valid_nhs(), "Testchild", "Example Street", "Zebra-crossing", REASON, "Ann Example"):
        assert personal not in text, personal
    assert (await referral_row(gateway, reference)).state == "forwarded"

    dead_ref, dead_id = await arrived(gateway, "fwd3")
    await acknowledge(clients["mash.worker"], dead_id)
    status, _ = await answer(
        clients["mash.worker"], dead_id, "not-ours", {"destination": "neighbour:Ambridge Council", "reason": "moved"}
    )
    assert status == 303
    await gateway.deliver_all()  # the relay refuses the address for good: the forward is dead
    row = await referral_row(gateway, dead_ref)
    assert row.state == "undeliverable" and row.acknowledged_at is None  # back in our duty queue
    rows = await report.undelivered(gateway.engine, gateway.config.settings, gateway.clock.now())
    (line,) = [r for r in rows if r.reference == dead_ref]
    assert "forward to a neighbouring authority failed for good" in line.reason
    assert dead_ref in await page(clients["mash.worker"], "/dashboard")
    await acknowledge(clients["mash.worker"], dead_id)  # a person takes it up again
    assert (await referral_row(gateway, dead_ref)).state == "acknowledged"
    assert await verify(gateway.engine, gateway.clock.now()) == []  # the invariants hold


# --- more information needed -----------------------------------------------------------------------


@both_databases
async def test_more_information_asks_without_the_reason_in_clear_and_a_reply_threads_back(
    gateway: Gateway, clients: dict[str, Client], relay: Relay
) -> None:
    reference, rid = await arrived(gateway, "info1")
    worker = clients["mash.worker"]
    status, html = await answer(worker, rid, "more-info", {"reason": "Which school does Sam attend?"})
    assert status == 400 and "Acknowledge the referral before you ask" in html
    await acknowledge(worker, rid)
    status, _ = await answer(worker, rid, "more-info", {"reason": "Which school does Sam attend?"})
    assert status == 303
    assert (await referral_row(gateway, reference)).state == "acknowledged"
    assert "Waiting for more information from the referrer" in await page(worker, f"/referrals/{rid}")
    await gateway.deliver_all()
    (request,) = [m for m in relay.to(REFERRER) if "More information needed" in str(m["Subject"])]
    assert reference in str(request["Subject"]) and "020 7946" in text_of(request)
    assert request["Reply-To"] == "referrals@demo-council.example"  # a referral address: the reply comes in
    assert "school" not in text_of(request).lower()  # the reason only ever in encrypted mail

    # A reply from someone else quoting the reference is a new referral, as today.
    stranger = make_message(
        "Re: the school is Ambridge Primary",
        sender="someone@else.example",
        message_id="<s1@else.example>",
        subject=f"Re: More information needed: referral {reference}",
    )
    code, text = await smtp_send(gateway.smtp_port, stranger, sender="someone@else.example")
    assert code == 250
    stranger_ref = text.split()[-1]
    # The referrer's own reply threads back onto the referral.
    reply = make_message(
        "Sam attends Ambridge Primary School.",
        message_id="<r1@nhs.example>",
        subject=f"Re: More information needed: referral {reference}",
    )
    code, text = await smtp_send(gateway.smtp_port, reply)
    assert code == 250
    reply_ref = text.split()[-1]
    await gateway.process_all()
    await gateway.deliver_all()
    assert (await referral_row(gateway, stranger_ref)).state in ("routed", "alerted")
    assert (await referral_row(gateway, reply_ref)).state == "reply"  # not a new referral
    reply_page = await page(clients["coord"], f"/referrals/{(await referral_row(gateway, reply_ref)).id}")
    assert f'href="/referrals/{rid}">{reference}</a>' in reply_page
    assert (await referral_row(gateway, reference)).state == "acknowledged"
    async with gateway.engine.connect() as conn:
        (item,) = (await conn.execute(select(additional_info))).all()
    assert item.referral_id == rid and b"Ambridge Primary" not in item.content  # sealed
    html = await page(worker, f"/referrals/{rid}")
    assert "Sam attends Ambridge Primary School." in html and "Waiting for more information" not in html
    assert "More information received" in html  # the timeline
    told = [m for m in relay.to(MASH) if "More information received" in str(m["Subject"])]
    assert len(told) == 1 and "Ambridge" not in text_of(told[0])  # the team alerted, nothing personal
    assert "information_received" in await kinds(gateway, rid)
    assert "Which school" not in await all_event_details(gateway)
    assert await verify(gateway.engine, gateway.clock.now()) == []  # the invariants hold


# --- duplicate -------------------------------------------------------------------------------------


@both_databases
async def test_duplicate_links_both_and_ends_this_one(
    gateway: Gateway, clients: dict[str, Client], relay: Relay
) -> None:
    first_ref, first_id = await arrived(gateway, "dup1")
    second_ref, second_id = await arrived(gateway, "dup2")
    status, _ = await answer(
        clients["mash.worker"], second_id, "duplicate", {"of": first_ref.lower(), "reason": "Same concern as the first"}
    )
    assert status == 303
    assert (await referral_row(gateway, second_ref)).state == "duplicate"
    assert (await referral_row(gateway, first_ref)).state == "alerted"  # the live one, unchanged
    async with gateway.engine.connect() as conn:
        live = (
            await conn.execute(
                select(func.count()).where(
                    deadlines.c.referral_id == second_id,
                    deadlines.c.fired_at.is_(None),
                    deadlines.c.cancelled_at.is_(None),
                )
            )
        ).scalar_one()
    assert live == 0
    assert "duplicate_linked" in await kinds(gateway, first_id)
    html = await page(clients["coord"], f"/referrals/{second_id}")
    assert f"Duplicate of {first_ref}" in html
    assert f"{second_ref} was linked to it as a duplicate" in await page(clients["coord"], f"/referrals/{first_id}")
    await gateway.deliver_all()
    (told,) = [m for m in relay.to(REFERRER) if "joined" in str(m["Subject"])]
    assert second_ref in str(told["Subject"]) and first_ref not in text_of(told)  # never which one


# --- bad input ---------------------------------------------------------------------------------------


@both_databases
async def test_bad_answers_are_refused_with_a_clear_message_and_change_nothing(
    gateway: Gateway, clients: dict[str, Client]
) -> None:
    reference, rid = await arrived(gateway, "bad1")
    other_ref, other_id = await arrived(gateway, "bad2", postcode="ZZ9 9ZZ")  # routed to triage
    assert (await referral_row(gateway, other_ref)).team_id == "triage"
    worker = clients["mash.worker"]

    async def snapshot() -> tuple[object, ...]:
        async with gateway.engine.connect() as conn:
            counts = [
                (await conn.execute(select(func.count()).select_from(t))).scalar_one()
                for t in (answers, deliveries, deadlines)
            ]
            state = (
                await conn.execute(select(referrals.c.state, referrals.c.team_id).where(referrals.c.id == rid))
            ).one()
            moved = (
                await conn.execute(
                    select(func.count()).where(events.c.referral_id == rid, events.c.kind.not_in(("viewed",)))
                )
            ).scalar_one()
        return (*counts, tuple(state), moved)

    before = await snapshot()
    cases = [
        ("not-ours", {"destination": "team:triage", "reason": "   "}, "Give a reason"),
        ("not-ours", {"destination": "team:nosuch", "reason": "x"}, "Choose the team"),
        ("not-ours", {"destination": "team:mash", "reason": "x"}, "already with MASH duty team"),
        ("not-ours", {"destination": "neighbour:Nowhere Council", "reason": "x"}, "Choose the authority"),
        ("not-ours", {"destination": "", "reason": "x"}, "Choose where the referral should go"),
        ("duplicate", {"of": NOWHERE, "reason": "x"}, f"There is no referral {NOWHERE} that you may see"),
        ("duplicate", {"of": other_ref, "reason": "x"}, f"There is no referral {other_ref} that you may see"),
        ("duplicate", {"of": reference, "reason": "x"}, "cannot be a duplicate of itself"),
        ("duplicate", {"of": "not a ref", "reason": "x"}, "Give the reference"),
        ("duplicate", {"of": other_ref, "reason": ""}, "Give a reason"),
        ("more-info", {"reason": "x"}, "Acknowledge the referral before you ask"),
    ]
    for which, data, message in cases:
        status, html = await answer(worker, rid, which, data)
        assert status == 400 and message in html, (which, data)
        assert 'class="govuk-error-summary' in html
    assert await snapshot() == before
    # An administrator answers nothing; a referral of another team is the same 403 as none.
    assert (await answer_forbidden(clients["admin"], rid)) == 403
    assert (await answer_forbidden(worker, other_id)) == 403
    assert await snapshot() == before


async def answer_forbidden(client: Client, rid: str) -> int:
    html = await page(client, "/dashboard")
    token = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert token
    response = await client.post(
        f"/referrals/{rid}/answer/duplicate",
        data={CSRF_FIELD: token.group(1), "of": "7KM4-Q9XC", "reason": "x"},
        allow_redirects=False,
    )
    return response.status


def test_check_config_refuses_a_neighbour_at_our_own_mailbox(home: Path) -> None:
    path = write_config(home, f'[[neighbours]]\nname = "Us again"\naddress = "{MASH}"\n')
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    assert "neighbours[0].address" in str(caught.value) and "our own teams' mailboxes" in str(caught.value)
    path = write_config(
        home,
        '[[neighbours]]\nname = "A"\naddress = "a@a.example"\nsmime_cert = "keys/none.pem"\n'
        '[[neighbours]]\nname = "a"\naddress = "b@a.example"\n',
    )
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    assert "neighbours[0].smime_cert" in str(caught.value) and "does not exist" in str(caught.value)
    assert "neighbours[1].name" in str(caught.value) and "keep one [[neighbours]] block" in str(caught.value)


# --- counted in the report and the daily digest ----------------------------------------------------


@both_databases
async def test_each_answer_is_counted_on_the_report_page_and_in_the_digest(
    gateway: Gateway, clients: dict[str, Client], relay: Relay
) -> None:
    worker = clients["mash.worker"]
    first_ref, first_id = await arrived(gateway, "count1")
    _, second_id = await arrived(gateway, "count2")
    _, third_id = await arrived(gateway, "count3")
    assert "answered not ours: 0, more information: 0, duplicate: 0" in await page(clients["coord"], "/report")
    assert (await answer(worker, second_id, "duplicate", {"of": first_ref, "reason": "the same"}))[0] == 303
    await acknowledge(worker, third_id)
    assert (await answer(worker, third_id, "more-info", {"reason": "school?"}))[0] == 303
    assert (await answer(worker, first_id, "not-ours", {"destination": "team:triage", "reason": "older child"}))[
        0
    ] == 303
    counted = "answered not ours: 1, more information: 1, duplicate: 1"
    assert counted in await page(clients["coord"], "/report")
    assert await gateway.make_digest() == 1
    await gateway.deliver_all()
    (digest,) = [m for m in relay.to("iris.novak@demo-council.example") if "daily digest" in str(m["Subject"])]
    assert f"Answered in the last 24 hours: {counted}" in text_of(digest)
    assert await verify(gateway.engine, gateway.clock.now()) == []  # the invariants hold


@both_databases
async def test_retention_removes_an_answered_referrals_reason_and_keeps_what_happened(
    gateway: Gateway, clients: dict[str, Client], clock: FakeClock
) -> None:
    first_ref, _ = await arrived(gateway, "keep1")
    second_ref, second_id = await arrived(gateway, "keep2")
    assert (await answer(clients["mash.worker"], second_id, "duplicate", {"of": first_ref, "reason": REASON}))[0] == 303
    await gateway.deliver_all()
    clock.advance(gateway.config.settings.retention.closed_after + timedelta(days=1))
    await gateway.purge_all()
    row = await referral_row(gateway, second_ref)
    assert row.purged_at is not None and row.content is None
    async with gateway.engine.connect() as conn:
        (kept,) = (await conn.execute(select(answers).where(answers.c.referral_id == second_id))).all()
    assert kept.reason is None and kept.kind == "duplicate"  # the answer stays, its reason goes
    assert "duplicate" in await kinds(gateway, second_id) and "purged" in await kinds(gateway, second_id)
    assert (await referral_row(gateway, first_ref)).purged_at is None  # the live one is not closed
    assert await verify(gateway.engine, gateway.clock.now()) == []  # the invariants hold


def test_check_config_says_what_a_forward_to_each_neighbour_carries(
    home: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(home, neighbours_config(keys), all_hours=True)
    main(["check-config", "--config", str(path)])  # the exit code is about rota coverage, not this
    out = capsys.readouterr().out
    assert f"neighbour: 'Borsetshire Council' at {KEYED}: a forward carries the referral, encrypted" in out
    assert f"neighbour: 'Felpersham Council' at {UNKEYED}: a forward carries a notice with no personal data" in out


def test_references_are_found_in_a_subject_as_typed_and_in_a_body_as_printed() -> None:
    ref = new_reference(lambda bits: 98765)
    compact = ref.replace("-", "")
    assert references_in_subject(f"Re: More information needed: referral {ref.lower()}") == [ref]
    assert references_in_subject(f"RE: {compact} and again {ref[:4]} {ref[5:]}") == [ref]
    assert references_in_subject("Re: REFERRAL for SAFEGUARDING") == []  # eight-letter words fail the check
    assert references_in_body(f"> Please reply quoting {ref}.\n> referral {NOWHERE}") == [ref, NOWHERE]
    assert references_in_body(f"x{ref} {ref}y {compact} {ref.lower()}") == []  # only as our mails print it
    folded = (
        f"Subject: =?utf-8?q?Re=3A_Mwy_o_wybodaeth?=\r\n =?utf-8?q?_{ref}?=\r\nFrom: a@b.example\r\n\r\nbody".encode()
    )
    assert references_in_subject(subject_of(folded)) == [ref]
