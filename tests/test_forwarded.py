"""Issue 13: HTTP behind a reverse proxy. With `[http] trusted_proxies`, the public form's flood
guard and the staff sign-in throttle count the client X-Forwarded-For names, not the proxy; a
header from anyone else, or the part of the chain a client wrote itself, changes nothing.

A real Gateway (SQLite, FakeClock) on loopback: the form through the gateway's own listener, the
sign-in pages through the app the gateway builds (with cheap hashing, as tests/test_mfa.py does).
The test client on 127.0.0.1 stands in for the proxy; the addresses are documentation ranges."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import ip_network
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from argon2 import PasswordHasher
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.config import ConfigError
from gateway.core.clock import FakeClock
from gateway.core.schema import messages
from gateway.core.sealing import sealed_context
from gateway.staff.factors import Factors
from gateway.staff.throttle import ADDRESS_FAILURES
from gateway.staff.users import Role, Users
from gateway.web.forwarded import resolve
from gateway.web.session import CSRF_FIELD
from tests.conftest import write_config
from tests.staff_auth import csrf_of
from tests.test_web_form import GOOD

LIMIT = 30  # the form's default allowance per client in 15 minutes (ReferralForm.from_config)
ALICE, BOB, REAL = "198.51.100.11", "198.51.100.22", "203.0.113.33"
PASSWORD = "violet kettle harbour"
GatewayFactory = Callable[[str], Awaitable[Gateway]]


def with_trusted(home: Path, networks: str) -> Path:
    path = write_config(home)
    text = path.read_text()
    path.write_text(text.replace("[http]\n", f"[http]\ntrusted_proxies = {networks}\n", 1))
    return path


@pytest.fixture
async def make_gateway(home: Path, clock: FakeClock) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def start(networks: str) -> Gateway:
        gw = Gateway(config_mod.load(with_trusted(home, networks)), clock=clock, workers=False)
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop()


async def flood_post(session: aiohttp.ClientSession, gw: Gateway, forwarded_for: str | None) -> int:
    # No CSRF token: a 403, but counted first (a flood need not be valid), as in test_shared_state.
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    async with session.post(f"http://127.0.0.1:{gw.http_port}/refer", data={"x": "1"}, headers=headers) as response:
        await response.read()
        return response.status


async def send_referral(gw: Gateway, forwarded_for: str) -> int:
    """The whole form, as a browser behind the proxy sends it: the status after the redirect."""
    base, headers = f"http://127.0.0.1:{gw.http_port}", {"X-Forwarded-For": forwarded_for}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers) as browser:
        async with browser.get(base + "/refer") as page:
            hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', await page.text()))
        async with browser.post(base + "/refer", data={**hidden, **GOOD}) as done:
            await done.read()
            return done.status


async def stored_peers(gw: Gateway) -> list[str]:
    async with gw.engine.connect() as conn:
        rows = (await conn.execute(select(messages.c.id, messages.c.envelope))).all()
    return [json.loads(gw.sealer.open(row.envelope, sealed_context("envelope", row.id)))["peer"] for row in rows]


# --- the public form's flood guard ---------------------------------------------------------------


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway('["10.0.0.0/8", "127.0.0.1/32"]')
    async with aiohttp.ClientSession() as proxy:
        assert [await flood_post(proxy, gw, ALICE) for _ in range(LIMIT)] == [403] * LIMIT
        assert await flood_post(proxy, gw, ALICE) == 429
        # Another client through the same proxy is a referrer of its own: let through.
        assert await flood_post(proxy, gw, BOB) == 403
        # And so is the proxy itself, with no header (a health check, say): neither Alice nor Bob.
        assert await flood_post(proxy, gw, None) == 403
    assert await send_referral(gw, BOB) == 200
    assert await send_referral(gw, ALICE) == 429
    # The sealed envelope keeps the client, not the proxy; no log line names either.
    assert await stored_peers(gw) == [BOB]
    assert ALICE not in caplog.text and BOB not in caplog.text


async def test_without_trusted_proxies_x_forwarded_for_is_ignored(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("[]")
    async with aiohttp.ClientSession() as client:
        # A new address in every header: still one client, the connection's.
        statuses = [await flood_post(client, gw, f"198.51.100.{n}") for n in range(LIMIT)]
        assert statuses == [403] * LIMIT
        assert await flood_post(client, gw, BOB) == 429
    assert await send_referral(gw, REAL) == 429


async def test_a_proxy_not_in_the_list_is_not_believed(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway('["10.0.0.0/8"]')  # the peer, 127.0.0.1, is not a trusted proxy
    async with aiohttp.ClientSession() as client:
        assert [await flood_post(client, gw, f"198.51.100.{n}") for n in range(LIMIT)] == [403] * LIMIT
        assert await flood_post(client, gw, BOB) == 429


async def test_a_forged_start_of_the_chain_counts_as_the_real_client(make_gateway: GatewayFactory) -> None:
    """A client sends its own X-Forwarded-For; the proxy appends the address it saw. Only that last
    entry is the proxy's word: whatever the client wrote before it changes nothing."""
    gw = await make_gateway('["127.0.0.1/32", "10.0.0.0/8"]')
    async with aiohttp.ClientSession() as proxy:
        forged = [f"192.0.2.{n}, {REAL}" for n in range(LIMIT - 2)] + [f"evil, {REAL}", f"{BOB}, 10.1.2.3, {REAL}"]
        assert [await flood_post(proxy, gw, chain) for chain in forged] == [403] * LIMIT
        assert await flood_post(proxy, gw, REAL) == 429
        # Through a second trusted proxy (10.1.2.3 appended by ours), the client is still REAL.
        assert await flood_post(proxy, gw, f"{REAL}, 10.1.2.3") == 429
        assert await flood_post(proxy, gw, f"{REAL}, {ALICE}") == 403  # ALICE is the client here


# --- the staff sign-in throttle -----------------------------------------------------------------


def cheap() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
async def sign_in_app(make_gateway: GatewayFactory) -> AsyncIterator[Callable[[str], Awaitable[TestServer]]]:
    servers: list[TestServer] = []

    async def serve(networks: str) -> TestServer:
        gw = await make_gateway(networks)
        users = Users(gw.db, cheap())
        await users.add("a.khan", "Aisha Khan", Role.DUTY, ["mash"], PASSWORD, gw.clock.now())
        server = TestServer(gw.web_app(users, factors=Factors(gw.db, gw.sealer, cheap())), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        await server.close()


async def password_step(server: TestServer, forwarded_for: str, username: str, password: str) -> int:
    """A browser of its own behind the proxy: the sign-in page, then its password POST's status."""
    headers = {"X-Forwarded-For": forwarded_for}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers) as browser:
        async with browser.get(server.make_url("/sign-in")) as page:
            token = csrf_of(await page.text())
        data = {CSRF_FIELD: token, "username": username, "password": password}
        async with browser.post(server.make_url("/sign-in"), data=data, allow_redirects=False) as response:
            await response.read()
            return response.status


async def test_sign_in_throttle_counts_each_forwarded_client(
    sign_in_app: Callable[[str], Awaitable[TestServer]],
) -> None:
    server = await sign_in_app('["127.0.0.1/32"]')
    sprayed = [await password_step(server, f"192.0.2.9, {ALICE}", f"sprayed.{n}", "guess") for n in range(21)]
    assert sprayed == [400] * ADDRESS_FAILURES + [429]
    assert await password_step(server, ALICE, "a.khan", PASSWORD) == 429  # refused unchecked
    # Bob, behind the same proxy, is not locked out by Alice's guesses: his password is checked.
    assert await password_step(server, BOB, "a.khan", PASSWORD) == 303


async def test_sign_in_throttle_without_trusted_proxies_counts_the_connection(
    sign_in_app: Callable[[str], Awaitable[TestServer]],
) -> None:
    server = await sign_in_app("[]")
    sprayed = [await password_step(server, f"192.0.2.{n}", f"sprayed.{n}", "guess") for n in range(21)]
    assert sprayed == [400] * ADDRESS_FAILURES + [429]
    assert await password_step(server, BOB, "a.khan", PASSWORD) == 429


# --- the setting and the walk --------------------------------------------------------------------


def test_a_bad_network_is_refused_naming_the_key(home: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.load(with_trusted(home, '["10.0.0.0/8", "10.0.0.1/8", "proxy.internal"]'))
    issues = {issue.key: issue for issue in caught.value.issues}
    assert set(issues) == {"http.trusted_proxies[1]", "http.trusted_proxies[2]"}
    assert "'10.0.0.1/8' is not an IP network" in issues["http.trusted_proxies[1]"].message
    assert issues["http.trusted_proxies[2]"].fix.startswith('use one like "10.0.0.0/8"')


def test_the_default_trusts_nobody(home: Path) -> None:
    assert config_mod.load(write_config(home)).settings.http.trusted_proxies == ()


TRUSTED = (ip_network("10.0.0.0/8"), ip_network("127.0.0.1/32"), ip_network("2001:db8:aa::/48"))


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("192.0.2.1", [REAL], "192.0.2.1"),  # an untrusted peer's header is ignored
        ("127.0.0.1", [], "127.0.0.1"),  # no header: the proxy itself
        ("127.0.0.1", [REAL], REAL),
        ("127.0.0.1", [f" {ALICE} ,{REAL} "], REAL),
        ("127.0.0.1", [f"{REAL}, 10.0.0.5, 10.9.9.9"], REAL),  # through three of ours
        ("127.0.0.1", [ALICE, REAL], REAL),  # two header lines are one list, in order
        ("127.0.0.1", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),  # only ours: the furthest
        ("127.0.0.1", [f"{REAL}, garbage"], "127.0.0.1"),  # unreadable: the proxy that wrote it
        ("127.0.0.1", [f"{REAL}:4711"], REAL),  # some proxies add the port
        ("127.0.0.1", ["[2001:db8:1::7]:443"], "2001:db8:1::7"),
        ("2001:db8:aa::1", ["2001:db8:1::7"], "2001:db8:1::7"),
        ("::ffff:127.0.0.1", [REAL], REAL),  # a dual-stack listener's view of an IPv4 proxy
        ("127.0.0.1", [f"::ffff:{REAL}"], REAL),
        (None, [REAL], "unknown"),
    ],
)
def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy(
    peer: str | None, headers: list[str], client: str
) -> None:
    assert resolve(peer, headers, TRUSTED) == client


def test_with_nothing_trusted_the_peer_is_the_client() -> None:
    assert resolve("127.0.0.1", [REAL], ()) == "127.0.0.1"
