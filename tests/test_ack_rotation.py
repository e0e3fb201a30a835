"""`keys rotate ack`: links already sent keep working through the overlap (ack.link_ttl), new links
are signed with the new key only, and the old key's links are refused once the overlap is over."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core import b64url
from gateway.core.clock import FakeClock, SystemClock
from gateway.outbox import token_keys
from tests.conftest import maildir_messages, make_message, referral_body, smtp_send

MASH = "mash-duty@demo-council.example"
LINK = re.compile(r"http://\S+/ack/(\S+)")


@pytest.fixture
def clock() -> FakeClock:
    # On the wall clock's date: the CLI dates the overlap from now (the config is open at all hours).
    return FakeClock(SystemClock().now())


@pytest.fixture
async def gw(home: Path, clock: FakeClock) -> AsyncIterator[Gateway]:
    from tests.conftest import write_config

    gateway = Gateway(config_mod.load(write_config(home, all_hours=True)), clock=clock, workers=False)
    await gateway.start()
    yield gateway
    await gateway.stop()


async def alert_link(gw: Gateway, home: Path, n: int) -> str:
    code, _ = await smtp_send(gw.smtp_port, make_message(referral_body(), message_id=f"<ackrot-{n}@nhs.example>"))
    assert code == 250
    await gw.process_all()
    await gw.deliver_all()
    match = LINK.search(maildir_messages(home, MASH)[-1].get_content())
    assert match
    return match.group(1)


async def post(gw: Gateway, token: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{gw.http_port}/ack/{token}", data={"name": "Dana Duty"}) as response,
    ):
        return response.status


def key_of(token: str) -> object:
    return json.loads(b64url.decode(token.split(".")[0])).get("k")


def v1_token(key: bytes, token: str) -> str:
    """The same claim as a link sent before links named their key (version 1), signed with `key`."""
    data = json.loads(b64url.decode(token.split(".")[0]))
    payload = json.dumps({"v": 1, "r": data["r"], "to": data["to"], "exp": data["exp"]}, separators=(",", ":"))
    mac = hmac.new(key, b"ack\0" + payload.encode(), hashlib.sha256).digest()
    return f"{b64url.encode(payload.encode())}.{b64url.encode(mac)}"


async def test_old_links_work_through_the_overlap_then_stop(
    gw: Gateway, home: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = home / "keys"
    old_key = (keys / token_keys.KEY_FILE).read_bytes()
    hashed = gw.signer.recipient_hash(MASH)
    first, second, third = [await alert_link(gw, home, n) for n in range(3)]
    legacy = v1_token(old_key, third)
    assert key_of(first) == token_keys.key_id(old_key)

    config = str(home / "config" / "gateway.toml")
    assert await asyncio.to_thread(main, ["keys", "rotate", "ack", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "links already sent keep working until" in out and "7 days" in out
    new_key = (keys / token_keys.KEY_FILE).read_bytes()
    assert new_key != old_key
    assert await asyncio.to_thread(main, ["keys", "rotation-status", "--config", config]) == 0
    status = capsys.readouterr().out
    assert f"acknowledgement-link key: current {token_keys.key_id(new_key)}" in status
    assert f"previous {token_keys.key_id(old_key)}: verifies links until" in status

    # After the rotation: a link made before it still acknowledges, as does a version-1 link.
    clock.advance(timedelta(days=1))
    assert await post(gw, first) == 200
    assert await post(gw, legacy) == 200
    # A new alert's link is signed with the new key, and its recipient is hashed as before (SMS
    # acknowledgements and rate limits compare stored hashes).
    fresh = await alert_link(gw, home, 3)
    assert key_of(fresh) == token_keys.key_id(new_key)
    assert gw.signer.recipient_hash(MASH) == hashed
    assert await post(gw, fresh) == 200

    # After the overlap (ack.link_ttl from the rotation): the old key's link is refused, and the
    # old key is the one `keys retire-unused` then deletes.
    clock.advance(timedelta(days=6, hours=1))
    assert await post(gw, second) == 410
    [(path, _)] = token_keys.expired_previous(keys, clock.now())
    assert path.read_bytes() == old_key


async def test_retire_unused_keeps_an_ack_key_in_its_overlap(home: Path, gw: Gateway) -> None:
    config = str(home / "config" / "gateway.toml")
    assert await asyncio.to_thread(main, ["keys", "rotate", "ack", "--config", config]) == 0
    assert await asyncio.to_thread(main, ["keys", "retire-unused", "--config", config]) == 0
    assert len(list((home / "keys" / token_keys.PREVIOUS_DIR).glob("*.key"))) == 1


async def test_retire_unused_deletes_an_ack_key_after_its_overlap(
    home: Path, gw: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = home / "keys"
    token_keys.rotate(keys, SystemClock().now() - timedelta(minutes=1))  # as if rotated ack.link_ttl ago
    config = str(home / "config" / "gateway.toml")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["keys", "retire-unused", "--config", config]) == 0
    assert "the old acknowledgement-link key" in capsys.readouterr().out
    assert not list((keys / token_keys.PREVIOUS_DIR).glob("*.key"))
    assert (keys / token_keys.RECIPIENT_KEY_FILE).is_file()  # recipients' stored hashes still match
