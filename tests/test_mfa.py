"""Multi-factor staff sign-in over real HTTP on the gateway's own app: enrolment at the first
sign-in, codes accepted once, wrong codes locking the account, recovery codes, resets, the
per-address throttle, "your sessions", re-authentication, and every step in the audit chain.

A real Gateway (workers=False, FakeClock); codes are computed by pyotp from the secret the enrolment
page shows (tests/staff_auth.py), as a person's app would compute them.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiohttp import ClientResponse, CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from sqlalchemy import select, update

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import events, recovery_codes, staff_factors
from gateway.staff import totp
from gateway.staff.factors import RECOVERY_CODES, Factors
from gateway.staff.throttle import ADDRESS_FAILURES, ADDRESS_WINDOW
from gateway.staff.users import LOCKOUT, MAX_FAILURES, REFUSED_MESSAGE, Role, Users
from gateway.track.verify import verify
from gateway.web.account_pages import REAUTH_WINDOW
from gateway.web.session import CSRF_FIELD, IDLE_TIMEOUT, PENDING_TIMEOUT
from gateway.web.sign_in_pages import CODE_REFUSED, ENROL_REFUSED
from tests.conftest import both_databases
from tests.staff_auth import TestApps, csrf_of, recovery_codes_on, secret_on
from tests.staff_auth import sign_in as full_sign_in

PASSWORD = "violet kettle harbour"
NEW_PASSWORD = "copper lantern meadow"
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
Client = TestClient[web.Request, web.Application]


def cheap() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class Staff:
    """The gateway's app with cheap hashing, browsers on it, and everyone's authenticator app."""

    def __init__(self, gateway: Gateway, server: TestServer, users: Users, factors: Factors) -> None:
        self.gateway = gateway
        self.server = server
        self.users = users
        self.factors = factors
        assert isinstance(gateway.clock, FakeClock)
        self.clock: FakeClock = gateway.clock
        self.apps = TestApps(gateway.clock)
        self.opened: list[Client] = []

    async def browser(self, agent: str = FIREFOX) -> Client:
        client: Client = TestClient(self.server, cookie_jar=CookieJar(unsafe=True), headers={"User-Agent": agent})
        await client.start_server()
        self.opened.append(client)
        return client

    async def signed_in(self, username: str, password: str = PASSWORD, agent: str = FIREFOX) -> Client:
        client = await self.browser(agent)
        response = await full_sign_in(client, self.apps, username, password)
        assert response.status == 303 and response.headers["Location"] == "/dashboard", await response.text()
        return client

    async def events(self, kind: str) -> list[dict[str, object]]:
        async with self.gateway.db.read() as conn:
            rows = (await conn.execute(select(events).where(events.c.kind == kind).order_by(events.c.id))).all()
        return [{"actor": r.actor, "referral_id": r.referral_id, **json.loads(r.detail)} for r in rows]


@pytest.fixture
async def staff(gateway: Gateway) -> AsyncIterator[Staff]:
    users = Users(gateway.db, cheap())
    now = gateway.clock.now()
    await users.add("a.khan", "Aisha Khan", Role.DUTY, ["mash"], PASSWORD, now)
    await users.add("ada.admin", "Ada Admin", Role.ADMIN, [], PASSWORD, now)
    await users.add("cora.coord", "Cora Coordinator", Role.COORDINATOR, [], PASSWORD, now)
    factors = Factors(gateway.db, gateway.sealer, cheap())
    server = TestServer(gateway.web_app(users, factors=factors), host="127.0.0.1")
    await server.start_server()
    found = Staff(gateway, server, users, factors)
    yield found
    for client in found.opened:
        await client.close()
    await server.close()


async def form(client: Client, path: str, status: int = 200) -> str:
    response = await client.get(path, allow_redirects=False)
    text = await response.text()
    assert response.status == status, (path, response.status, text)
    return text


async def post(client: Client, path: str, data: dict[str, str], page: str) -> ClientResponse:
    token = csrf_of(await form(client, page))
    return await client.post(path, data={CSRF_FIELD: token, **data}, allow_redirects=False)


async def password_step(client: Client, username: str, password: str = PASSWORD) -> ClientResponse:
    return await post(client, "/sign-in", {"username": username, "password": password}, "/sign-in")


async def refused_everywhere(client: Client) -> None:
    """A half-signed-in session sees nothing: every staff page sends it to sign in."""
    for path in ("/dashboard", "/report", "/admin/users", "/admin/config", "/account", "/referrals/" + "0" * 32):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/sign-in", path


# --- enrolment at the first sign-in --------------------------------------------------------------


@both_databases
async def test_first_sign_in_sets_up_the_app_and_recovery_codes_before_anything_is_seen(staff: Staff) -> None:
    client = await staff.browser()
    response = await password_step(client, "a.khan")
    assert response.status == 303 and response.headers["Location"] == "/sign-in/authenticator"
    await refused_everywhere(client)
    html = await form(client, "/sign-in/authenticator")
    svg = re.search(r"<svg.*?</svg>", html, re.S)  # drawn on the server: no script, no image to fetch
    assert svg and "<title>QR code for your authenticator app</title>" in svg.group(0)
    assert "<script" not in svg.group(0) and "<img" not in html
    secret = secret_on(html)
    assert len(secret) == 32
    # The QR code is the otpauth URI of this secret, with the parameters every app supports.
    uri = totp.provisioning_uri(secret, "a.khan", "Demo Borough Council")
    assert uri == f"otpauth://totp/Demo%20Borough%20Council:a.khan?secret={secret}&issuer=Demo%20Borough%20Council"
    assert svg.group(0) == totp.qr_svg(uri)
    # Nothing stored until a code proves the app holds the secret.
    async with staff.gateway.db.read() as conn:
        assert (await conn.execute(select(staff_factors))).first() is None

    response = await client.post(
        "/sign-in/authenticator", data={CSRF_FIELD: csrf_of(html), "code": "000000"}, allow_redirects=False
    )
    assert response.status == 400 and ENROL_REFUSED in await response.text()
    code = totp.code_at(secret, totp.step_of(staff.clock.now()))
    response = await client.post(
        "/sign-in/authenticator", data={CSRF_FIELD: csrf_of(html), "code": code}, allow_redirects=False
    )
    assert response.status == 303 and response.headers["Location"] == "/sign-in/recovery-codes"
    await refused_everywhere(client)  # not until the recovery codes are saved

    codes_page = await form(client, "/sign-in/recovery-codes")
    codes = recovery_codes_on(codes_page)
    assert len(codes) == RECOVERY_CODES == len(set(codes))
    assert all(re.fullmatch(r"[a-z2-9]{4}(-[a-z2-9]{4}){3}", c) for c in codes)
    response = await client.post("/sign-in/recovery-codes", data={CSRF_FIELD: csrf_of(codes_page)})
    assert response.status == 400 and "Save your recovery codes first" in await response.text()
    await refused_everywhere(client)
    response = await client.post(
        "/sign-in/recovery-codes", data={CSRF_FIELD: csrf_of(codes_page), "saved": "yes"}, allow_redirects=False
    )
    assert response.status == 303 and response.headers["Location"] == "/dashboard"
    await form(client, "/dashboard")

    # At rest: the secret sealed, the recovery codes hashed; neither readable in the database.
    async with staff.gateway.db.read() as conn:
        factor = (await conn.execute(select(staff_factors))).one()
        hashes = [r.code_hash for r in (await conn.execute(select(recovery_codes))).all()]
    assert secret.encode() not in factor.secret and len(hashes) == RECOVERY_CODES
    assert all(h.startswith("$argon2id$") and not any(c in h for c in codes) for h in hashes)

    user = await staff.users.find("a.khan")
    assert user is not None
    assert (await staff.events("staff_factor_enrolled"))[0]["actor"] == f"user:{user.id}"
    assert (await staff.events("staff_signed_in")) == [
        {"actor": f"user:{user.id}", "referral_id": None, "how": "enrolment"}
    ]
    assert await verify(staff.gateway.engine, staff.clock.now()) == []  # staff events keep the chain whole


async def test_an_enrolment_begun_elsewhere_cannot_replace_the_app_set_up_first(staff: Staff) -> None:
    intruder = await staff.browser()  # someone else who has the first password
    await password_step(intruder, "a.khan")
    intruder_page = await form(intruder, "/sign-in/authenticator")
    await staff.signed_in("a.khan")  # the owner sets up their app
    owner_secret = staff.apps.secrets["a.khan"]
    theirs = secret_on(intruder_page)
    code = totp.code_at(theirs, totp.step_of(staff.clock.now()))
    response = await intruder.post(
        "/sign-in/authenticator", data={CSRF_FIELD: csrf_of(intruder_page), "code": code}, allow_redirects=False
    )
    assert response.status == 303 and response.headers["Location"] == "/sign-in"
    await refused_everywhere(intruder)
    user = await staff.users.find("a.khan")
    assert user is not None
    staff.clock.advance(timedelta(seconds=totp.STEP_SECONDS))
    now = staff.clock.now()
    assert not await staff.factors.check_code(user.id, totp.code_at(theirs, totp.step_of(now)), now)
    assert await staff.factors.check_code(user.id, totp.code_at(owner_secret, totp.step_of(now) + 1), now)


async def test_recovery_codes_not_saved_are_made_again_at_the_next_sign_in(staff: Staff) -> None:
    client = await staff.browser()
    await password_step(client, "a.khan")
    html = await form(client, "/sign-in/authenticator")
    staff.apps.secrets["a.khan"] = secret_on(html)
    data = {CSRF_FIELD: csrf_of(html), "code": staff.apps.code("a.khan")}
    await client.post("/sign-in/authenticator", data=data, allow_redirects=False)
    first = recovery_codes_on(await form(client, "/sign-in/recovery-codes"))  # shown, then the tab closed
    again = await staff.browser()
    response = await password_step(again, "a.khan")
    assert response.headers["Location"] == "/sign-in/code"  # the app is set up: its code first
    response = await post(again, "/sign-in/code", {"code": staff.apps.code("a.khan")}, "/sign-in/code")
    assert response.headers["Location"] == "/sign-in/recovery-codes"
    await refused_everywhere(again)
    page = await form(again, "/sign-in/recovery-codes")
    assert not set(recovery_codes_on(page)) & set(first)  # new ones; the unsaved ones no longer work
    response = await again.post(
        "/sign-in/recovery-codes", data={CSRF_FIELD: csrf_of(page), "saved": "yes"}, allow_redirects=False
    )
    assert response.headers["Location"] == "/dashboard"
    assert (await staff.events("staff_signed_in"))[-1]["how"] == "code"


async def test_a_half_signed_in_session_expires(staff: Staff) -> None:
    client = await staff.browser()
    await password_step(client, "a.khan")
    staff.clock.advance(PENDING_TIMEOUT)
    response = await client.get("/sign-in/authenticator", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/sign-in"


# --- codes ---------------------------------------------------------------------------------------


@both_databases
async def test_sign_in_with_a_code_and_a_replayed_code_is_refused(staff: Staff) -> None:
    await staff.signed_in("a.khan")  # enrols
    client = await staff.browser()
    response = await password_step(client, "a.khan")
    assert response.status == 303 and response.headers["Location"] == "/sign-in/code"
    await refused_everywhere(client)
    code = staff.apps.code("a.khan")
    response = await post(client, "/sign-in/code", {"code": code}, "/sign-in/code")
    assert response.status == 303 and response.headers["Location"] == "/dashboard"
    await form(client, "/dashboard")

    thief = await staff.browser()  # saw the code typed, and has the password
    await password_step(thief, "a.khan")
    response = await post(thief, "/sign-in/code", {"code": code}, "/sign-in/code")
    text = await response.text()
    assert response.status == 400 and CODE_REFUSED in text
    await refused_everywhere(thief)
    user = await staff.users.find("a.khan")
    assert user is not None
    assert (await staff.events("staff_code_failed"))[-1] == {
        "actor": f"user:{user.id}",
        "referral_id": None,
        "factor": "totp",
    }
    # The next code the app shows works (with spaces, as some apps show it).
    fresh = staff.apps.code("a.khan")
    response = await post(thief, "/sign-in/code", {"code": f"{fresh[:3]} {fresh[3:]}"}, "/sign-in/code")
    assert response.status == 303 and response.headers["Location"] == "/dashboard"


async def test_wrong_codes_lock_the_account_like_wrong_passwords(staff: Staff) -> None:
    await staff.signed_in("a.khan")
    client = await staff.browser()
    for _ in range(MAX_FAILURES):
        # A right password between wrong codes does not clear the count.
        await password_step(client, "a.khan")
        response = await post(client, "/sign-in/code", {"code": "123456"}, "/sign-in/code")
        assert response.status == 400 and CODE_REFUSED in await response.text()
    user = await staff.users.find("a.khan")
    assert user is not None and user.locked(staff.clock.now())
    response = await password_step(client, "a.khan")
    assert response.status == 400 and REFUSED_MESSAGE in await response.text()
    staff.clock.advance(LOCKOUT)
    await staff.signed_in("a.khan")


async def test_a_locked_account_is_refused_at_the_code_step_even_with_the_right_code(staff: Staff) -> None:
    await staff.signed_in("a.khan")
    client = await staff.browser()
    await password_step(client, "a.khan")
    user = await staff.users.find("a.khan")
    assert user is not None
    for _ in range(MAX_FAILURES):  # locked meanwhile, from elsewhere
        await staff.users.count_failure(user.id, staff.clock.now())
    response = await post(client, "/sign-in/code", {"code": staff.apps.code("a.khan")}, "/sign-in/code")
    assert response.status == 400 and CODE_REFUSED in await response.text()


async def test_a_recovery_code_works_once(staff: Staff) -> None:
    await staff.signed_in("a.khan")
    first, second = staff.apps.recovery["a.khan"][:2]
    client = await staff.browser()
    await password_step(client, "a.khan")
    response = await post(client, "/sign-in/recovery", {"recovery_code": first.upper()}, "/sign-in/code")
    assert response.status == 303 and response.headers["Location"] == "/account"
    assert f"You have {RECOVERY_CODES - 1} unused recovery codes" in await form(client, "/account")
    user = await staff.users.find("a.khan")
    assert user is not None
    assert (await staff.events("staff_recovery_code_used")) == [
        {"actor": f"user:{user.id}", "referral_id": None, "left": RECOVERY_CODES - 1}
    ]

    again = await staff.browser()
    await password_step(again, "a.khan")
    response = await post(again, "/sign-in/recovery", {"recovery_code": first}, "/sign-in/code")
    assert response.status == 400 and CODE_REFUSED in await response.text()
    response = await post(again, "/sign-in/recovery", {"recovery_code": second.replace("-", "")}, "/sign-in/code")
    assert response.status == 303


# --- resets --------------------------------------------------------------------------------------


async def test_a_password_reset_keeps_the_factor_and_a_factor_reset_makes_the_user_enrol_again(
    staff: Staff,
) -> None:
    duty = await staff.signed_in("a.khan")
    old_recovery = staff.apps.recovery["a.khan"][0]
    await staff.users.reset_password("a.khan", NEW_PASSWORD, staff.clock.now())
    await form(duty, "/dashboard", 303)  # the reset ended the session
    client = await staff.browser()
    response = await password_step(client, "a.khan", NEW_PASSWORD)
    assert response.headers["Location"] == "/sign-in/code"  # the password alone is not enough

    duty = await staff.signed_in("a.khan", NEW_PASSWORD)
    admin = await staff.signed_in("ada.admin")
    user = await staff.users.find("a.khan")
    assert user is not None
    response = await post(admin, f"/admin/users/{user.id}/reset-factor", {}, "/admin/users")
    assert response.status == 303
    assert "Authenticator reset for a.khan" in await form(admin, "/admin/users")
    await form(duty, "/dashboard", 303)
    admin_user = await staff.users.find("ada.admin")
    assert admin_user is not None
    assert (await staff.events("staff_factor_reset")) == [
        {"actor": f"admin:{admin_user.id}", "referral_id": None, "user": user.id}
    ]
    client = await staff.browser()
    response = await password_step(client, "a.khan", NEW_PASSWORD)
    assert response.headers["Location"] == "/sign-in/authenticator"
    assert not await staff.factors.use_recovery_code(user.id, old_recovery, staff.clock.now())
    await staff.signed_in("a.khan", NEW_PASSWORD)  # enrols a new app


async def test_an_administrator_ends_a_users_sessions(staff: Staff) -> None:
    desk = await staff.signed_in("a.khan")
    laptop = await staff.signed_in("a.khan")
    admin = await staff.signed_in("ada.admin")
    user = await staff.users.find("a.khan")
    assert user is not None
    response = await post(admin, f"/admin/users/{user.id}/end-sessions", {}, "/admin/users")
    assert response.status == 303
    assert "Ended 2 sessions of a.khan" in await form(admin, "/admin/users")
    for client in (desk, laptop):
        await form(client, "/dashboard", 303)
    ended = await staff.events("staff_session_ended")
    assert ended[-1]["why"] == "admin" and ended[-1]["count"] == 2 and str(ended[-1]["actor"]).startswith("admin:")


# --- per-address throttle ------------------------------------------------------------------------


@both_databases
async def test_password_spraying_from_one_address_is_throttled_whatever_the_username(staff: Staff) -> None:
    client = await staff.browser()
    answers = [(await password_step(client, f"sprayed.{n}", "Autumn2026 is here")).status for n in range(40)]
    assert answers[:ADDRESS_FAILURES] == [400] * ADDRESS_FAILURES
    assert answers[ADDRESS_FAILURES:] == [429] * (40 - ADDRESS_FAILURES)
    # Even the right password of a real account is refused unchecked now, in words that say when.
    response = await password_step(client, "cora.coord")
    text = await response.text()
    assert response.status == 429 and "Try again in 15 minutes" in text
    assert response.headers["Retry-After"] == str(15 * 60)
    # Audited once, when the address reached the limit, not at every refusal after it.
    assert (await staff.events("staff_sign_in_throttled")) == [
        {"actor": "anonymous", "referral_id": None, "failures": ADDRESS_FAILURES}
    ]
    # Unknown usernames never reach the audit chain or the page.
    failed = await staff.events("staff_sign_in_failed")
    assert len(failed) == ADDRESS_FAILURES and all(
        e == {"actor": "anonymous", "referral_id": None, "reason": "unknown_user"} for e in failed
    )
    assert "sprayed" not in text

    staff.clock.advance(ADDRESS_WINDOW)
    await staff.signed_in("cora.coord")


# --- sessions and re-authentication --------------------------------------------------------------


async def test_your_sessions_lists_them_and_signs_out_everywhere_else(staff: Staff) -> None:
    phone = await staff.signed_in("a.khan", agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Safari/604.1")
    desk = await staff.signed_in("a.khan")
    html = await form(desk, "/account")
    assert "Firefox on Windows" in html and "Safari on iPhone" in html
    assert html.count("This session") == 1
    response = await post(desk, "/account/sign-out-others", {}, "/account")
    assert response.status == 303
    html = await form(desk, "/account")
    assert "Signed out everywhere else (1 session ended)" in html and "Safari on iPhone" not in html
    await form(phone, "/dashboard", 303)
    assert (await staff.events("staff_session_ended"))[-1]["why"] == "elsewhere"


async def test_an_idle_session_found_expired_is_recorded(staff: Staff) -> None:
    client = await staff.signed_in("a.khan")
    staff.clock.advance(IDLE_TIMEOUT)
    await form(client, "/dashboard", 303)
    assert (await staff.events("staff_session_ended"))[-1]["why"] == "idle"
    await post(await staff.signed_in("a.khan"), "/sign-out", {}, "/dashboard")
    assert (await staff.events("staff_signed_out"))[-1]["why"] == "signed_out"


async def test_changing_the_password_needs_the_password_and_a_code_again(staff: Staff) -> None:
    client = await staff.signed_in("a.khan")
    other = await staff.signed_in("a.khan")
    staff.clock.advance(REAUTH_WINDOW)
    await form(client, "/dashboard")
    response = await client.get("/account/password", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/account/confirm?then=password"
    page = "/account/confirm?then=password"
    response = await post(
        client, "/account/confirm", {"then": "password", "password": PASSWORD, "code": "000000"}, page
    )
    assert response.status == 400 and "The password or the code is not right" in await response.text()
    response = await post(
        client,
        "/account/confirm",
        {"then": "https://evil.example/", "password": PASSWORD, "code": staff.apps.code("a.khan")},
        page,
    )
    assert response.headers["Location"] == "/account"  # no redirect anywhere but our fixed steps
    response = await post(
        client, "/account/confirm", {"then": "password", "password": PASSWORD, "code": staff.apps.code("a.khan")}, page
    )
    assert response.status == 303 and response.headers["Location"] == "/account/password"
    response = await post(
        client, "/account/password", {"password": "short", "password_again": "short"}, "/account/password"
    )
    assert response.status == 400 and "use at least 12" in await response.text()
    response = await post(
        client, "/account/password", {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}, "/account/password"
    )
    assert response.status == 303
    assert "Your password has been changed" in await form(client, "/account")  # this session goes on
    await form(other, "/dashboard", 303)  # the other ended
    await staff.signed_in("a.khan", NEW_PASSWORD)
    assert (await staff.events("staff_password_changed"))[-1]["by"] == "self"


async def test_a_new_authenticator_replaces_the_old_one_after_re_authentication(staff: Staff) -> None:
    other = await staff.signed_in("a.khan")
    client = await staff.signed_in("a.khan")
    old_secret = staff.apps.secrets["a.khan"]
    staff.clock.advance(REAUTH_WINDOW)
    await form(client, "/dashboard")
    assert (await client.get("/account/authenticator", allow_redirects=False)).headers["Location"] == (
        "/account/confirm?then=authenticator"
    )
    response = await post(
        client,
        "/account/confirm",
        {"then": "authenticator", "password": PASSWORD, "code": staff.apps.code("a.khan")},
        "/account/confirm?then=authenticator",
    )
    assert response.headers["Location"] == "/account/authenticator"
    html = await form(client, "/account/authenticator")
    new_secret = secret_on(html)
    assert new_secret != old_secret
    staff.apps.secrets["a.khan"], staff.apps.last_step["a.khan"] = new_secret, 0
    response = await client.post(
        "/account/authenticator",
        data={CSRF_FIELD: csrf_of(html), "code": staff.apps.code("a.khan")},
        allow_redirects=False,
    )
    assert response.status == 303
    assert "Your new authenticator app is set up" in await form(client, "/account")
    await form(other, "/dashboard", 303)  # a changed factor ends the other sessions
    assert (await staff.events("staff_session_ended"))[-1]["why"] == "factor_changed"
    user = await staff.users.find("a.khan")
    assert user is not None
    now = staff.clock.now()
    assert not await staff.factors.check_code(user.id, totp.code_at(old_secret, totp.step_of(now)), now)
    await staff.signed_in("a.khan")  # with the new app


# --- the codes themselves ------------------------------------------------------------------------


def test_codes_follow_rfc_6238_with_one_step_of_drift_and_never_twice() -> None:
    # RFC 6238 appendix B: the SHA-1 key "12345678901234567890" at T=59 s gives 94287082 (8 digits);
    # authenticator apps show the last 6.
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    assert totp.code_at(secret, 59 // 30) == "287082"
    from datetime import UTC, datetime

    now = datetime.fromtimestamp(30 * 1000 + 5, UTC)
    for offset in (-1, 0, 1):
        assert totp.matching_step(secret, totp.code_at(secret, 1000 + offset), now, 0) == 1000 + offset
    assert totp.matching_step(secret, totp.code_at(secret, 998), now, 0) is None  # too old
    assert totp.matching_step(secret, totp.code_at(secret, 1002), now, 0) is None  # too far ahead
    assert totp.matching_step(secret, totp.code_at(secret, 1000), now, 1000) is None  # used
    assert totp.matching_step(secret, "12345a", now, 0) is None


@both_databases
async def test_the_audit_chain_holds_no_password_code_or_refused_username(staff: Staff) -> None:
    client = await staff.browser()
    await password_step(client, "not.a.user", "hunter2 hunter2 hunter2")
    await password_step(client, "a.khan", "wrong password here")
    await staff.signed_in("a.khan")
    async with staff.gateway.db.read() as conn:
        text = json.dumps([tuple(map(str, r)) for r in (await conn.execute(select(events))).all()])
    for secret in ("not.a.user", "hunter2", "wrong password", PASSWORD, staff.apps.secrets["a.khan"], "127.0.0.1"):
        assert secret not in text
    assert await verify(staff.gateway.engine, staff.clock.now()) == []
    # `verify` checks staff events as it checks a referral's: an edited one breaks the chain.
    async with staff.gateway.db.write() as conn:
        await conn.execute(
            update(events).where(events.c.kind == "staff_sign_in_failed").values(detail='{"reason":"nothing"}')
        )
    problems = await verify(staff.gateway.engine, staff.clock.now())
    assert problems and all("does not match its hash" in p for p in problems)
