"""Acknowledgement links: a forged, altered, expired or misdirected link changes nothing."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import events, referrals
from gateway.outbox.tokens import AckSigner, TokenError, TokenExpired
from tests.conftest import START, both_databases, maildir_messages, make_message, referral_body, smtp_send

MASH = "mash-duty@demo-council.example"


async def alerted_referral(gateway: Gateway, home: Path) -> tuple[str, str]:
    code, text = await smtp_send(gateway.smtp_port, make_message(referral_body(), message_id="<t1@nhs.example>"))
    assert code == 250
    await gateway.process_all()
    await gateway.deliver_all()
    match = re.search(r"http://\S+/ack/(\S+)", maildir_messages(home, MASH)[0].get_content())
    assert match
    return text.split()[-1], match.group(1)


async def post(gateway: Gateway, token: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{gateway.http_port}/ack/{token}", data={"name": "Mallory"}) as response,
    ):
        return response.status, await response.text()


async def nothing_recorded(gateway: Gateway, reference: str) -> bool:
    async with gateway.engine.connect() as conn:
        ref = (await conn.execute(select(referrals).where(referrals.c.reference == reference))).one()
        acks = (
            await conn.execute(
                select(events.c.id).where(events.c.referral_id == ref.id, events.c.kind == "acknowledged")
            )
        ).all()
    return ref.state == "alerted" and ref.acknowledged_at is None and not acks


def tamper(token: str, **changes: object) -> str:
    payload_text, mac = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_text + "=" * (-len(payload_text) % 4)))
    payload.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{new}.{mac}"


@both_databases
async def test_altered_forged_and_garbage_links_are_refused(gateway: Gateway, home: Path) -> None:
    reference, token = await alerted_referral(gateway, home)
    later = tamper(token, exp=2_000_000_000)  # extend the expiry without the key
    other_key = AckSigner(b"k" * 32).sign("0" * 32, MASH, START, timedelta(days=1))
    for bad in (later, other_key, token[:-3], "not-a-token", token.replace(".", "")):
        status, page = await post(gateway, bad)
        assert status == 400, bad
        assert "This link is not valid" in page and "Nothing has been recorded" in page
    assert await nothing_recorded(gateway, reference)


@both_databases
async def test_expired_link_is_refused_with_a_clear_page(gateway: Gateway, home: Path, clock: FakeClock) -> None:
    reference, token = await alerted_referral(gateway, home)
    clock.advance(timedelta(days=7))
    status, page = await post(gateway, token)
    assert status == 410
    assert "This link has expired" in page and "still open" in page
    assert await nothing_recorded(gateway, reference)


@both_databases
async def test_link_for_another_recipient_is_refused(gateway: Gateway, home: Path, clock: FakeClock) -> None:
    """A validly signed link for an address that was never alerted about this referral."""
    reference, _ = await alerted_referral(gateway, home)
    async with gateway.engine.connect() as conn:
        referral_id = (
            await conn.execute(select(referrals.c.id).where(referrals.c.reference == reference))
        ).scalar_one()
    token = gateway.signer.sign(referral_id, "someone@else.example", clock.now(), timedelta(days=1))
    status, page = await post(gateway, token)
    assert status == 404 and "No referral matches this link" in page
    assert await nothing_recorded(gateway, reference)


@given(st.text(min_size=1, max_size=200))
def test_verify_never_accepts_arbitrary_text(text: str) -> None:
    signer = AckSigner(b"s" * 32)
    with pytest.raises(TokenError):
        signer.verify(text, START)


def test_token_round_trip_and_expiry() -> None:
    signer = AckSigner(b"s" * 32)
    token = signer.sign("abc", "Duty@Team.example", START, timedelta(hours=1))
    claim = signer.verify(token, START + timedelta(minutes=59))
    assert claim.referral_id == "abc" and claim.recipient_hash == signer.recipient_hash("duty@team.example")
    with pytest.raises(TokenExpired):
        signer.verify(token, START + timedelta(hours=1))


def one_character_changes(token: str) -> set[str]:
    """Every token one character away (replaced, inserted or removed), and with padding added."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ "
    variants = set()
    for i in range(len(token) + 1):
        variants.add(token[:i] + token[i + 1 :])
        for c in alphabet:
            variants.add(token[:i] + c + token[i + 1 :])
            variants.add(token[:i] + c + token[i:])
    payload, mac = token.split(".")
    variants |= {f"{payload}==.{mac}", f"{payload}.{mac}==", f"{payload}=.{mac}=", token + "="}
    variants.discard(token)
    return variants


def test_only_the_exact_token_verifies() -> None:
    # Python's lenient base64 decoder ignored unused low bits, stray characters and padding, so some
    # one-character changes still opened the page (issue 11): exactly one spelling verifies now.
    signer = AckSigner(b"s" * 32)
    token = signer.sign("0123456789abcdef0123456789abcdef", MASH, START, timedelta(days=1))
    variants = one_character_changes(token)
    assert len(variants) > 20_000
    accepted = []
    for variant in variants:
        try:
            signer.verify(variant, START)
        except TokenError:
            continue
        accepted.append(variant)
    assert accepted == []
    assert signer.verify(token, START).referral_id == "0123456789abcdef0123456789abcdef"


@both_databases
async def test_a_link_with_its_last_character_respelt_is_refused(gateway: Gateway, home: Path) -> None:
    reference, token = await alerted_referral(gateway, home)
    # The MAC's last character carries 4 unused bits: its neighbours in the alphabet decode to the
    # same bytes under a lenient decoder. The page must refuse them.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    same_bytes = alphabet[last & ~0b1111 : (last & ~0b1111) + 16].replace(token[-1], "")
    for c in same_bytes[:3]:
        status, page = await post(gateway, token[:-1] + c)
        assert status == 400 and "This link is not valid" in page
    status, page = await post(gateway, token.replace(".", "==."))
    assert status == 400 and "This link is not valid" in page
    assert await nothing_recorded(gateway, reference)
