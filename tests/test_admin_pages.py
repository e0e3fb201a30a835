"""The administrator's pages over real HTTP: who may see them, adding, disabling and resetting
accounts, CSRF on every POST, the read-only config view (no member's address or number, no
secret), hostile names escaped, and nothing personal in any URL.

A real Gateway (workers=False, FakeClock) provides the database; the pages are served by an aiohttp
app wired as gateway.app wires the staff pages, and signing in goes through the dashboard's real
/sign-in page. A browser is aiohttp's client with a cookie jar.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
from aiohttp import ClientResponse, CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from markupsafe import escape
from sqlalchemy import update

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.config import Config
from gateway.core.clock import FakeClock
from gateway.core.schema import users as users_table
from gateway.route.coverage import gaps
from gateway.staff.users import Role, User, Users
from gateway.web.session import CSRF_FIELD
from tests.conftest import write_config
from tests.staff_auth import TestApps
from tests.staff_auth import sign_in as staff_sign_in

PASSWORD = "violet kettle harbour"
NEW_PASSWORD = "copper lantern meadow"
Client = TestClient[web.Request, web.Application]
# Script, quotes, an ampersand, a right-to-left override, and 500 characters.
HOSTILE = ('<script>alert(\'x\')</script>" onmouseover="alert(1)" &amp; \u202eevil ' + "W" * 500)[:500]
ALLOWED_URL = re.compile(
    r"(/assets/[\w.-]+|/favicon\.ico|/dashboard|/sign-in|/sign-out|/refer|/report|/admin/users|/admin/config|/account"
    r"|/admin/users/[0-9a-f]{32}/(disable|reset-password|reset-factor|end-sessions)|#[\w-]+)"
)
TWILIO_SID = "AC" + "5e" * 16
_HOSTILE_TOML = HOSTILE.replace('"', '\\"')
SECRET_CONFIG = f"""
[sms]
provider = "twilio"
account_sid = "{TWILIO_SID}"
from_number = "+447700900999"
auth_token_file = "twilio-token-file-name"

[[coordinators]]
id = "mallory"
name = "{_HOSTILE_TOML}"
email = "mallory.hostile@demo-council.example"

[[partners]]
name = "Demo Keyed Trust"
addresses = ["named.sender@keyed-trust.example"]
openpgp = ["{"AB12" * 10}"]
[[partners.professionals]]
name = "Quinn Nurse"
mobile = "07700 900301"
[[partners.professionals]]
name = "Rae Nurse"
mobile = "07700 900302"

[[teams.rota.overrides]]
from = "2026-11-28T02:00"
to = "2026-11-28T03:00"
members = []
note = "<script>alert('note')</script>"
"""


@pytest.fixture
async def accounts(gateway: Gateway) -> dict[str, User]:
    users = Users(gateway.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    now = gateway.clock.now()
    return {
        "admin": await users.add("ada.admin", "Ada Admin", Role.ADMIN, [], PASSWORD, now),
        "other_admin": await users.add("oli.admin", "Oli Admin", Role.ADMIN, [], PASSWORD, now),
        "coordinator": await users.add("cora.coord", "Cora Coordinator", Role.COORDINATOR, [], PASSWORD, now),
        "duty": await users.add("dev.duty", "Dev Duty", Role.DUTY, ["mash", "triage"], PASSWORD, now),
    }


class Browser:
    """A client with its own cookie jar that remembers every URL it was given or sent to."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.urls: list[str] = []

    async def get(self, path: str, status: int = 200) -> str:
        self.urls.append(path)
        response = await self.client.get(path, allow_redirects=False)
        text = await response.text()
        assert response.status == status, text
        self.urls += [unescape(u) for u in re.findall(r'(?:href|action|src)="([^"]*)"', text)]
        self.urls.append(response.headers.get("Location", ""))
        return text

    async def post(self, path: str, data: dict[str, str | list[str]], token: str | None = "") -> ClientResponse:
        """A POST with this session's CSRF token (from /admin/users or /dashboard), unless token is None."""
        if token == "":
            token = csrf(await self.get("/dashboard"))
        fields: list[tuple[str, str]] = [(CSRF_FIELD, token)] if token is not None else []
        for name, value in data.items():
            fields += [(name, v) for v in value] if isinstance(value, list) else [(name, value)]
        self.urls.append(path)
        response = await self.client.post(path, data=fields, allow_redirects=False)
        self.urls.append(response.headers.get("Location", ""))
        return response


Open = Callable[..., Awaitable[Browser]]


def csrf(html: str) -> str:
    match = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


@pytest.fixture
def shown_config(request: pytest.FixtureRequest, gateway: Gateway, home: Path) -> Config:
    """The config the admin pages show: the gateway's own, or (param "secrets") one with Twilio, a
    hostile coordinator, a keyed partner and an hour with nobody on duty at the EDT."""
    if getattr(request, "param", "") != "secrets":
        return gateway.config
    return config_mod.load(write_config(home.parent / "shown", SECRET_CONFIG))


@pytest.fixture
async def browser(
    gateway: Gateway, accounts: dict[str, User], shown_config: Config
) -> AsyncIterator[tuple[Open, list[Browser]]]:
    users = Users(gateway.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    # The gateway's own app, built from the config the admin pages are to show (its database,
    # keys and workers stay the running gateway's).
    gateway.config = shown_config
    app = gateway.web_app(users)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    opened: list[Browser] = []
    assert isinstance(gateway.clock, FakeClock)
    apps = TestApps(gateway.clock)

    async def open_as(username: str = "", password: str = PASSWORD) -> Browser:
        client: Client = TestClient(server, cookie_jar=CookieJar(unsafe=True))
        await client.start_server()
        browser = Browser(client)
        opened.append(browser)
        if username:  # through every step of the real sign-in, with codes from pyotp
            response = await staff_sign_in(client, apps, username, password)
            assert response.status == 303 and response.headers["Location"] == "/dashboard", await response.text()
        return browser

    yield open_as, opened
    for b in opened:
        await b.client.close()
    await server.close()


async def user_rows(gateway: Gateway) -> list[tuple[object, ...]]:
    """What an admin's change would alter (not the last sign-in, which signing in moves)."""
    return [
        (u.id, u.username, u.display_name, u.role, u.teams, u.disabled_at, u.password_changed_at, u.session_epoch)
        for u in await Users(gateway.db).all()
    ]


async def password_works(gateway: Gateway, username: str, password: str) -> bool:
    cheap = Users(gateway.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    return isinstance(await cheap.authenticate(username, password, gateway.clock.now()), User)


def all_urls_clean(opened: list[Browser], personal: tuple[str, ...]) -> None:
    for b in opened:
        for url in filter(None, b.urls):
            assert ALLOWED_URL.fullmatch(url), url
            # A user id is 32 random hex digits, so it can spell "ada" by chance: the pattern above
            # already proves it opaque, so only the rest of the URL is searched for names.
            rest = re.sub(r"[0-9a-f]{32}", "", url)
            assert not any(p.lower() in rest.lower() for p in personal), url


# --- who may see ---------------------------------------------------------------------------------


async def test_only_administrators(
    browser: tuple[Open, list[Browser]], gateway: Gateway, accounts: dict[str, User]
) -> None:
    open_as, _ = browser
    anonymous = await open_as()
    for path in ("/admin/users", "/admin/config"):
        await anonymous.get(path, 303)
        assert anonymous.urls[-1] == "/sign-in"
    before = await user_rows(gateway)
    for username in ("dev.duty", "cora.coord"):
        b = await open_as(username)
        for path in ("/admin/users", "/admin/config"):
            html = await b.get(path, 403)
            assert "You cannot see this page" in html and "Ada Admin" not in html
        add = await b.post("/admin/users", {"username": "x.new", "display_name": "X", "role": "admin"})
        assert add.status == 403
        target = accounts["other_admin"].id
        for action in ("disable", "reset-password"):
            response = await b.post(
                f"/admin/users/{target}/{action}", {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}
            )
            assert response.status == 403
    assert await user_rows(gateway) == before
    admin = await open_as("ada.admin")
    users_html = await admin.get("/admin/users")
    for text in ("ada.admin", "Oli Admin", "Cora Coordinator", "dev.duty", "MASH duty team", "Front door triage team"):
        assert text in users_html
    assert "argon2" not in users_html and "$" not in users_html  # no hash, ever
    assert "administrator" in users_html and "duty worker" in users_html
    assert "never" in users_html  # oli.admin has not signed in
    assert "Asha Okafor" in await admin.get("/admin/config")


# --- changes -------------------------------------------------------------------------------------


async def test_add_with_policy_errors_then_success(
    browser: tuple[Open, list[Browser]], gateway: Gateway, accounts: dict[str, User], caplog: pytest.LogCaptureFixture
) -> None:
    open_as, opened = browser
    admin = await open_as("ada.admin")
    before = await user_rows(gateway)
    refusals: list[tuple[dict[str, str | list[str]], str, str, str]] = [
        ({"username": "n.new", "display_name": "Nia New", "role": "duty"}, PASSWORD, PASSWORD, "at least one team"),
        (
            {"username": "n.new", "display_name": "Nia New", "role": "coordinator", "teams": ["mash"]},
            PASSWORD,
            PASSWORD,
            "Only duty workers have teams",
        ),
        ({"username": "n.new", "display_name": "Nia New"}, PASSWORD, PASSWORD, "Select a role"),
        ({"username": "N", "display_name": "Nia New", "role": "admin"}, PASSWORD, PASSWORD, "Enter a username"),
        ({"username": "n.new", "display_name": " ", "role": "admin"}, PASSWORD, PASSWORD, "Enter the person"),
        (
            {"username": "n.new", "display_name": "Nia New", "role": "admin"},
            PASSWORD,
            "violet kettle harbor",
            "not the same",
        ),
        (
            {"username": "n.new", "display_name": "Nia New", "role": "admin"},
            "Password2025!",
            "Password2025!",
            "most common",
        ),
        (
            {"username": "n.new", "display_name": "Nia New", "role": "admin"},
            "short one",
            "short one",
            "use at least 12",
        ),
        ({"username": "ada.admin", "display_name": "Nia New", "role": "admin"}, PASSWORD, PASSWORD, "already a user"),
    ]
    for fields, password, again, message in refusals:
        response = await admin.post("/admin/users", {**fields, "password": password, "password_again": again})
        html = await response.text()
        assert response.status == 400, (message, response.headers.get("Location"))
        assert message in html and "There is a problem" in html and "<title>Error:" in html
        assert password not in html and again not in html  # never echoed
        if fields.get("display_name") == "Nia New":
            assert 'value="Nia New"' in html  # the rest is kept
    assert await user_rows(gateway) == before
    caplog.set_level(logging.INFO, logger="gateway")
    response = await admin.post(
        "/admin/users",
        {
            "username": "N.New",
            "display_name": "Nia New",
            "role": "duty",
            "teams": ["mash", "triage"],
            "password": PASSWORD,
            "password_again": PASSWORD,
        },
    )
    assert response.status == 303 and response.headers["Location"] == "/admin/users"
    html = await admin.get("/admin/users")
    assert "Added duty worker n.new." in html
    added = await Users(gateway.db).find("n.new")
    assert added is not None and added.teams == ("mash", "triage") and added.role is Role.DUTY
    await open_as("n.new")  # signs in with the password the admin typed
    assert f"admin {accounts['admin'].id} added user {added.id} (duty)" in caplog.text
    assert not any("n.new" in r.getMessage() or "Nia" in r.getMessage() for r in caplog.records)
    all_urls_clean(opened, ("n.new", "Nia", "ada.admin", "Ada"))


async def test_disable_signs_the_user_out(
    browser: tuple[Open, list[Browser]], gateway: Gateway, accounts: dict[str, User], caplog: pytest.LogCaptureFixture
) -> None:
    open_as, opened = browser
    duty = await open_as("dev.duty")
    await duty.get("/dashboard")
    admin = await open_as("ada.admin")
    caplog.set_level(logging.INFO, logger="gateway")
    target = accounts["duty"]
    response = await admin.post(f"/admin/users/{target.id}/disable", {})
    assert response.status == 303 and response.headers["Location"] == "/admin/users"
    assert f"admin {accounts['admin'].id} disabled user {target.id}" in caplog.text
    assert "dev.duty" not in caplog.text and "Dev Duty" not in caplog.text
    html = await admin.get("/admin/users")
    assert "Disabled dev.duty" in html and "Disabled</strong>" in html
    await duty.get("/dashboard", 303)  # that user's next request is signed out
    assert duty.urls[-1] == "/sign-in"
    assert not await password_works(gateway, "dev.duty", PASSWORD)
    # Again: nothing changes (the first time is kept). Oneself: refused.
    disabled_at = (await Users(gateway.db).get(target.id)).disabled_at  # type: ignore[union-attr]
    gateway.clock.advance(timedelta(minutes=1))  # type: ignore[attr-defined]
    assert (await admin.post(f"/admin/users/{target.id}/disable", {})).status == 303
    assert (await Users(gateway.db).get(target.id)).disabled_at == disabled_at  # type: ignore[union-attr]
    response = await admin.post(f"/admin/users/{accounts['admin'].id}/disable", {})
    assert response.status == 400 and "cannot disable your own account" in await response.text()
    assert (await Users(gateway.db).get(accounts["admin"].id)).active  # type: ignore[union-attr]
    response = await admin.post(f"/admin/users/{'0' * 32}/disable", {})
    assert response.status == 404 and "no such user" in await response.text()
    all_urls_clean(opened, ("dev.duty", "Dev", "ada.admin"))


async def test_reset_password(
    browser: tuple[Open, list[Browser]], gateway: Gateway, accounts: dict[str, User], caplog: pytest.LogCaptureFixture
) -> None:
    open_as, opened = browser
    coordinator = await open_as("cora.coord")
    target = accounts["coordinator"]
    for _ in range(5):  # locked by wrong passwords
        await password_works(gateway, "cora.coord", "wrong password entirely")
    admin = await open_as("ada.admin")
    row = re.search(
        rf'<tr class="govuk-table__row" id="user-{target.id}">.*?</tr>', await admin.get("/admin/users"), re.S
    )
    assert row and "not locked" not in row.group(0) and "GMT" in row.group(0)  # the lock, as a time
    path = f"/admin/users/{target.id}/reset-password"
    for password, again, message in (
        (NEW_PASSWORD, "copper lantern meadows", "not the same"),
        ("password123456", "password123456", "most common"),
        ("cora.coord is me", "cora.coord is me", "contains the username"),
        ("", "", "Enter the password"),
    ):
        response = await admin.post(path, {"password": password, "password_again": again})
        text = await response.text()
        assert response.status == 400 and message in text, text
        assert f'href="#user-{target.id}-password' in text and f'id="user-{target.id}-password"' in text
        assert not password or password not in text
    assert await password_works(gateway, "cora.coord", PASSWORD) is False  # still locked
    caplog.set_level(logging.INFO, logger="gateway")
    response = await admin.post(path, {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD})
    assert response.status == 303 and response.headers["Location"] == "/admin/users"
    assert f"admin {accounts['admin'].id} reset the password of user {target.id}" in caplog.text
    assert NEW_PASSWORD not in caplog.text and "cora" not in caplog.text
    html = await admin.get("/admin/users")
    row = re.search(rf'<tr class="govuk-table__row" id="user-{target.id}">.*?</tr>', html, re.S)
    assert "New password set for cora.coord" in html and row and "not locked" in row.group(0)
    await coordinator.get("/dashboard", 303)  # the old session ended
    assert await password_works(gateway, "cora.coord", NEW_PASSWORD)  # unlocked, with the new one
    assert not await password_works(gateway, "cora.coord", PASSWORD)
    all_urls_clean(opened, ("cora", "Cora", "ada.admin"))


async def test_every_post_needs_the_csrf_token(
    browser: tuple[Open, list[Browser]], gateway: Gateway, accounts: dict[str, User]
) -> None:
    open_as, _ = browser
    admin = await open_as("ada.admin")
    before = await user_rows(gateway)
    target = accounts["duty"].id
    posts: list[tuple[str, dict[str, str | list[str]]]] = [
        (
            "/admin/users",
            {
                "username": "n.new",
                "display_name": "Nia",
                "role": "admin",
                "password": PASSWORD,
                "password_again": PASSWORD,
            },
        ),
        (f"/admin/users/{target}/disable", {}),
        (f"/admin/users/{target}/reset-password", {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}),
    ]
    for path, data in posts:
        for token in (None, "forged-token-value"):
            response = await admin.post(path, data, token)
            assert response.status == 403, path
    assert await user_rows(gateway) == before
    assert await password_works(gateway, "dev.duty", PASSWORD)


# --- the config view ------------------------------------------------------------------------------


@pytest.mark.parametrize("shown_config", ["secrets"], indirect=True)
async def test_config_view_shows_names_not_contacts_or_secrets(
    browser: tuple[Open, list[Browser]], gateway: Gateway, shown_config: Config
) -> None:
    open_as, opened = browser
    admin = await open_as("ada.admin")
    html = await admin.get("/admin/config")
    s = shown_config.settings
    people = [m for t in s.teams for m in t.members] + list(s.coordinators)
    for person in people:
        assert str(escape(person.name)) in html
    assert "Asha Okafor" in html and "email, SMS" in html and "Femi Adeyemi" in html
    for text in (
        "MASH duty team",
        "office",
        "Monday",
        "09:00-17:00",
        "Wednesday",
        "Chloe swaps in",
        "sexual-abuse-to-mash",
        "postcode: W1, WC1, WC2",
        "Emergency Duty Team",
        "until acknowledged",
        "on-duty, mailbox",
        "Demo Community Health",
        "Demo Keyed Trust",
        "Iris Novak",
        "twilio",
    ):
        assert text in html, text
    keyed = re.search(r"Demo Keyed Trust</bdi></th>\s*<td[^>]*>1</td>\s*<td[^>]*>1</td>\s*<td[^>]*>2</td>", html)
    assert keyed, "partner counts: 1 address, 1 key, 2 professionals"
    # No member's, coordinator's or professional's address or number, in any format.
    text = unescape(html)
    digits = re.sub(r"\D", "", text)
    contacts = [p.email for p in people if p.email] + [p.mobile for p in people if p.mobile]
    contacts += [pro.mobile for partner in s.partners for pro in partner.professionals]
    contacts += [t.email for t in s.teams] + [t.phone for t in s.teams if t.phone]  # shared ones too (issue 11)
    for contact in contacts:
        assert contact not in text, contact
        if contact.startswith("+44"):  # a mobile, in any spelling
            assert contact[3:] not in digits and "0" + contact[3:] not in digits, contact
            assert "07700 " + contact[6:] not in text
    assert "named.sender" not in text and "keyed-trust.example" not in text
    assert re.search(r"Shared mailbox</dt>\s*<dd[^>]*>Set\b", html), "whether it is set, not what"
    # No secret: the account SID, the token's file, key files and fingerprints, the session key.
    for secret in (TWILIO_SID, "twilio-token-file-name", "AB12AB12", "900999", "session.key", "gnupg"):
        assert secret not in text, secret
    for key_file in (gateway.config.keys_dir).iterdir():
        if key_file.is_file():
            content = key_file.read_bytes()
            assert content.decode("latin-1")[:40] not in text
    # check-config's coverage result: the one hour with nobody at the EDT, for every route.
    start = gateway.clock.now()
    found = gaps(s, start, 28)
    assert found and f"{len(found)} gaps" in html
    for gap in found:
        for line in gap.lines():
            assert str(escape(line)) in html, line
    assert "Sat 28 Nov 2026, 02:00-03:00" in html
    # The hostile coordinator name and override note are escaped and isolated.
    assert "<script>alert" not in html
    assert f'<bdi class="app-user-text">{escape(HOSTILE)}</bdi>' in html
    assert str(escape("<script>alert('note')</script>")) in html
    all_urls_clean(opened, ("Asha", "Okafor", "demo-council.example", "ada.admin"))


async def test_config_view_without_gaps(browser: tuple[Open, list[Browser]]) -> None:
    open_as, _ = browser
    html = await (await open_as("ada.admin")).get("/admin/config")
    assert "No gaps" in html and "Every route has someone reachable on duty for the 28 days" in html
    assert "spool" in html


# --- hostile names -------------------------------------------------------------------------------


async def test_hostile_names_escaped_everywhere(
    browser: tuple[Open, list[Browser]], gateway: Gateway, accounts: dict[str, User]
) -> None:
    open_as, opened = browser
    async with gateway.db.write() as conn:  # an old row, from before names were checked
        for user in (accounts["admin"], accounts["duty"]):
            await conn.execute(update(users_table).where(users_table.c.id == user.id).values(display_name=HOSTILE))
    admin = await open_as("ada.admin")
    isolated = f'<bdi class="app-user-text">{escape(HOSTILE)}</bdi>'
    for path in ("/admin/users", "/admin/config"):
        html = await admin.get(path)
        assert "<script>alert" not in html and 'onmouseover="alert' not in html
        assert isolated in html  # the signed-in admin's own name in the header
    assert (await admin.get("/admin/users")).count(isolated) >= 3  # header, and two rows
    response = await admin.post(
        "/admin/users",
        {
            "username": "h.new",
            "display_name": HOSTILE,
            "role": "admin",
            "password": PASSWORD,
            "password_again": PASSWORD,
        },
    )
    html = await response.text()
    assert response.status == 400 and "Enter the person" in html  # control characters, and too long
    assert "<script>alert" not in html and f'value="{escape(HOSTILE)}"' in html
    duty = await open_as("cora.coord")
    forbidden = await duty.get("/admin/users", 403)
    assert "<script>alert" not in forbidden
    all_urls_clean(opened, ("ada.admin", "script", "alert"))
