"""Staff sessions: cookie flags, idle and absolute expiry, sign-out, and CSRF, on a tiny real aiohttp app.

The app below stands in for the staff pages: sign in with a form (the password alone: the second
factor's steps are tested in tests/test_mfa.py, through the real pages), a page that needs a
signed-in user, a refresh timer's request, sign-out, and one form that changes something.
The browser is aiohttp's client with a cookie jar that treats the test server as a secure origin,
so the production cookie (Secure, __Host-) is sent back as a browser would send it over https.
"""

from __future__ import annotations

import re
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from gateway.core import db
from gateway.core.clock import FakeClock
from gateway.staff.sessions import Sessions
from gateway.staff.users import Role, SignInRefused, Users
from gateway.web.session import (
    ABSOLUTE_TIMEOUT,
    CSRF_FIELD,
    IDLE_TIMEOUT,
    LOCAL_COOKIE_NAME,
    SECURE_COOKIE_NAME,
    SESSION_KEY_FILE,
    WebSessions,
    cookie_secure,
    csrf_token,
    require_csrf,
    setup_sessions,
)

PASSWORD = "violet kettle harbour"
PUBLIC_URL = "https://referrals.council.example"

Browser = Callable[[], Awaitable[TestClient[web.Request, web.Application]]]


def make_app(
    accounts: Users, sessions: WebSessions, clock: FakeClock, keys_dir: Path, public_url: str
) -> web.Application:
    app = web.Application()
    setup_sessions(app, keys_dir, public_url)

    async def sign_in_form(request: web.Request) -> web.Response:
        return web.Response(text=await csrf_token(request))

    async def sign_in(request: web.Request) -> web.Response:
        form = await request.post()
        await require_csrf(request, form)
        result = await accounts.authenticate(str(form["username"]), str(form["password"]), clock.now())
        if isinstance(result, SignInRefused):
            return web.Response(status=401, text=result.message)
        await sessions.sign_in(request, result, "test")
        return web.Response(text=await csrf_token(request))

    def page(activity: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def show(request: web.Request) -> web.Response:
            user = await sessions.current_user(request, activity=activity)
            if user is None:
                return web.Response(status=401, text="sign in")
            return web.Response(text=user.username)

        return show

    async def sign_out(request: web.Request) -> web.Response:
        await require_csrf(request, await request.post())
        await sessions.sign_out(request)
        return web.Response(text="signed out")

    async def change(request: web.Request) -> web.Response:
        await require_csrf(request, await request.post())
        return web.Response(text="changed")

    app.router.add_get("/sign-in", sign_in_form)
    app.router.add_post("/sign-in", sign_in)
    app.router.add_get("/me", page(activity=True))
    app.router.add_get("/poll", page(activity=False))
    app.router.add_post("/sign-out", sign_out)
    app.router.add_post("/change", change)
    return app


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[db.Database]:
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}")
    await db.upgrade(engine)
    yield db.Database(engine)
    await engine.dispose()


@pytest.fixture
async def accounts(database: db.Database, clock: FakeClock) -> Users:
    found = Users(database, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    await found.add("a.khan", "Aisha Khan", Role.DUTY, ["mash"], PASSWORD, clock.now())
    return found


@pytest.fixture
def sessions(accounts: Users, database: db.Database, clock: FakeClock) -> WebSessions:
    return WebSessions(accounts, Sessions(database), clock)


@pytest.fixture
async def server(accounts: Users, sessions: WebSessions, clock: FakeClock, tmp_path: Path) -> AsyncIterator[TestServer]:
    test_server = TestServer(make_app(accounts, sessions, clock, tmp_path / "keys", PUBLIC_URL))
    await test_server.start_server()
    yield test_server
    await test_server.close()


@pytest.fixture
async def browser(server: TestServer) -> AsyncIterator[Browser]:
    """Opens browsers (each with its own cookie jar) on the server."""
    opened: list[TestClient[web.Request, web.Application]] = []

    async def open_one() -> TestClient[web.Request, web.Application]:
        jar = CookieJar(unsafe=True, treat_as_secure_origin=str(server.make_url("/")))
        client: TestClient[web.Request, web.Application] = TestClient(server, cookie_jar=jar)
        await client.start_server()
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        await client.close()


async def signed_in(browser: Browser) -> tuple[TestClient[web.Request, web.Application], str]:
    """A browser signed in as a.khan, and the CSRF token its pages would carry."""
    client = await browser()
    token = await (await client.get("/sign-in")).text()
    response = await client.post("/sign-in", data={"username": "a.khan", "password": PASSWORD, CSRF_FIELD: token})
    assert response.status == 200, await response.text()
    return client, await response.text()


async def status(client: TestClient[web.Request, web.Application], path: str = "/me") -> int:
    return (await client.get(path)).status


def set_cookie(client: TestClient[web.Request, web.Application], value: str) -> None:
    """What a thief, or someone editing their cookie, would do."""
    client.session.cookie_jar.update_cookies({SECURE_COOKIE_NAME: value}, response_url=client.make_url("/"))


def cookie_of(client: TestClient[web.Request, web.Application]) -> str:
    return next(c.value for c in client.session.cookie_jar if c.key == SECURE_COOKIE_NAME)


# -- the cookie -----------------------------------------------------------------------------------------------


async def test_the_cookie_is_secure_httponly_strict_and_ends_with_the_browser(browser: Browser) -> None:
    client = await browser()
    response = await client.get("/sign-in")
    header = response.headers["Set-Cookie"]
    assert header.startswith(f"{SECURE_COOKIE_NAME}=")
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert attributes == {"httponly", "path", "samesite", "secure"}  # no Domain, Max-Age or Expires
    assert "SameSite=Strict" in header and "Path=/;" in header + ";"


@pytest.mark.parametrize(
    ("url", "secure"),
    [
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080", False),
        ("http://[::1]:8080", False),
        ("https://127.0.0.1:8443", True),
        ("http://referrals.council.example", True),  # never sent back over http: fails closed
        (PUBLIC_URL, True),
    ],
)
def test_only_plain_http_on_loopback_gets_a_cookie_without_secure(url: str, secure: bool) -> None:
    assert cookie_secure(url) is secure


async def test_on_loopback_http_the_cookie_has_no_secure_flag_but_the_rest(
    accounts: Users, sessions: WebSessions, clock: FakeClock, tmp_path: Path
) -> None:
    app = make_app(accounts, sessions, clock, tmp_path / "keys", "http://127.0.0.1:8080")
    async with TestClient(TestServer(app)) as client:
        token = await (await client.get("/sign-in")).text()
        response = await client.post("/sign-in", data={"username": "a.khan", "password": PASSWORD, CSRF_FIELD: token})
        header = response.headers["Set-Cookie"]
        assert header.startswith(f"{LOCAL_COOKIE_NAME}=") and "HttpOnly" in header and "SameSite=Strict" in header
        assert "Secure" not in header
        assert (await client.get("/me")).status == 200


async def test_the_session_key_is_made_once_with_mode_0600(tmp_path: Path, server: TestServer) -> None:
    key_file = tmp_path / "keys" / SESSION_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) == 32
    before = key_file.read_bytes()
    setup_sessions(web.Application(), tmp_path / "keys", PUBLIC_URL)  # a restart reuses it
    assert key_file.read_bytes() == before


async def test_a_tampered_cookie_is_no_session(browser: Browser) -> None:
    client, _ = await signed_in(browser)
    value = cookie_of(client)
    set_cookie(client, value[:-6] + ("AAAAAA" if value[-6:] != "AAAAAA" else "BBBBBB"))
    assert await status(client) == 401
    set_cookie(client, value)
    assert await status(client) == 200


# -- signing in and expiry ------------------------------------------------------------------------------------


async def test_signing_in_replaces_the_session_and_its_csrf_token(browser: Browser) -> None:
    client = await browser()
    assert await status(client) == 401
    anonymous_token = await (await client.get("/sign-in")).text()
    anonymous_cookie = cookie_of(client)
    response = await client.post(
        "/sign-in", data={"username": "a.khan", "password": PASSWORD, CSRF_FIELD: anonymous_token}
    )
    token = await response.text()
    assert token != anonymous_token and cookie_of(client) != anonymous_cookie
    assert (await client.get("/me")).status == 200
    assert (await client.post("/change", data={CSRF_FIELD: anonymous_token})).status == 403
    assert (await client.post("/change", data={CSRF_FIELD: token})).status == 200


async def test_a_wrong_password_gives_no_session(browser: Browser) -> None:
    client = await browser()
    token = await (await client.get("/sign-in")).text()
    response = await client.post(
        "/sign-in", data={"username": "a.khan", "password": "nope nope nope", CSRF_FIELD: token}
    )
    assert response.status == 401
    assert await status(client) == 401


async def test_idle_sessions_expire_and_use_keeps_them_alive(browser: Browser, clock: FakeClock) -> None:
    client, _ = await signed_in(browser)
    for _ in range(3):  # used every 29 minutes: stays signed in past the idle limit
        clock.advance(IDLE_TIMEOUT - timedelta(minutes=1))
        assert await status(client) == 200
    clock.advance(IDLE_TIMEOUT)
    assert await status(client) == 401
    clock.advance(timedelta(seconds=1))
    assert await status(client) == 401  # ended for good, not just refused once


async def test_requests_a_page_makes_by_itself_do_not_count_as_use(browser: Browser, clock: FakeClock) -> None:
    client, _ = await signed_in(browser)
    clock.advance(IDLE_TIMEOUT / 2)
    assert await status(client, "/poll") == 200
    clock.advance(IDLE_TIMEOUT / 2)
    assert await status(client, "/poll") == 401


async def test_sessions_end_after_the_absolute_limit_however_busy(browser: Browser, clock: FakeClock) -> None:
    client, _ = await signed_in(browser)
    used = timedelta()
    while used + IDLE_TIMEOUT / 2 < ABSOLUTE_TIMEOUT:
        clock.advance(IDLE_TIMEOUT / 2)
        used += IDLE_TIMEOUT / 2
        assert await status(client) == 200
    clock.advance(ABSOLUTE_TIMEOUT - used)
    assert await status(client) == 401


# -- signing out, and other ways sessions end -----------------------------------------------------------------


async def test_sign_out_ends_this_session_and_copies_of_it(browser: Browser) -> None:
    client, token = await signed_in(browser)
    thief = await browser()
    set_cookie(thief, cookie_of(client))
    assert await status(thief) == 200
    response = await client.post("/sign-out", data={CSRF_FIELD: token})
    assert response.status == 200
    deletion = response.headers["Set-Cookie"]
    assert re.match(rf"{SECURE_COOKIE_NAME}=(\"\")?;", deletion) and "Max-Age=0" in deletion
    assert "Secure" in deletion and "SameSite=Strict" in deletion  # or a browser ignores a __Host- deletion
    assert await status(client) == 401

    assert await status(thief) == 401


async def test_sign_out_ends_only_this_session_and_ending_all_ends_the_others(
    browser: Browser, sessions: WebSessions, accounts: Users, clock: FakeClock
) -> None:
    desk, token = await signed_in(browser)
    laptop, _ = await signed_in(browser)
    phone, _ = await signed_in(browser)
    await desk.post("/sign-out", data={CSRF_FIELD: token})
    assert await status(desk) == 401
    assert await status(laptop) == 200  # a session of its own, ended one by one
    user = await accounts.find("a.khan")
    assert user is not None
    assert len(await sessions.records.of_user(user.id, clock.now())) == 2
    assert await sessions.records.end_all(user.id, "admin", clock.now(), "admin:test") == 2
    assert await status(laptop) == 401 and await status(phone) == 401
    again, _ = await signed_in(browser)  # signing in afresh works
    assert await status(again) == 200


async def test_disabling_or_resetting_the_password_ends_sessions(
    browser: Browser, accounts: Users, clock: FakeClock
) -> None:
    client, _ = await signed_in(browser)
    await accounts.reset_password("a.khan", "amber tulip quarry", clock.now())
    assert await status(client) == 401

    client = await browser()
    token = await (await client.get("/sign-in")).text()
    form = {"username": "a.khan", "password": "amber tulip quarry", CSRF_FIELD: token}
    assert (await client.post("/sign-in", data=form)).status == 200
    await accounts.disable("a.khan", clock.now())
    assert await status(client) == 401


# -- CSRF -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [None, "", "wrong-token", "é-not-ascii", "token-of-another-session"])
async def test_a_post_without_the_right_csrf_token_is_forbidden(browser: Browser, given: str | None) -> None:
    client, token = await signed_in(browser)
    if given == "token-of-another-session":
        _, given = await signed_in(browser)
    response = await client.post("/change", data={} if given is None else {CSRF_FIELD: given})
    assert response.status == 403
    assert "reload the page" in await response.text()
    assert (await client.post("/change", data={CSRF_FIELD: token})).status == 200


async def test_the_sign_in_form_needs_its_csrf_token_too(browser: Browser) -> None:
    client = await browser()
    await client.get("/sign-in")
    response = await client.post("/sign-in", data={"username": "a.khan", "password": PASSWORD})
    assert response.status == 403
    assert await status(client) == 401
