"""The staff dashboard over real HTTP: sign-in, sessions, roles, the queues, a referral's page,
acknowledge and close, CSRF on every POST, hostile content escaped, and no personal data in URLs.

Referrals arrive by real SMTP into a real Gateway (workers=False, FakeClock); the pages are served
by an aiohttp app wired as gateway.app wires them, and a browser is aiohttp's client with a jar.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import ClientResponse, CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from sqlalchemy import select

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import events
from gateway.staff.users import REFUSED_MESSAGE, Role, Users
from gateway.web.session import CSRF_FIELD, IDLE_TIMEOUT
from tests.conftest import maildir_messages, make_message, referral_body, referral_row, send_referral, smtp_send
from tests.staff_auth import TestApps
from tests.staff_auth import sign_in as staff_sign_in
from tests.test_mime_reading import nested

PASSWORD = "violet kettle harbour"
REFERRER = "ann.example@nhs.example"
Client = TestClient[web.Request, web.Application]


class Browser:
    """Opens browsers on the gateway's app; `apps` holds the staff's authenticator apps."""

    def __init__(self, open_one: Callable[[], Awaitable[Client]], apps: TestApps) -> None:
        self._open = open_one
        self.apps = apps

    async def __call__(self) -> Client:
        return await self._open()


HOSTILE_NAME = '<script>alert("x")</script>\u202eevil\'"&'
HOSTILE_STAFF = '<img src=x onerror=alert(1)> "Mo" O\'Neil'
ALLOWED_URL = re.compile(
    r"(/assets/[\w.-]+|/favicon\.ico|/dashboard|/sign-in|/sign-out|/refer|/report|/admin/users|/admin/config|/account"
    r"|/referrals/[0-9a-f]{32}(/acknowledge|/close|/hold(/lift)?|/attachments/\d+|/raw|/answer/(not-ours|more-info|duplicate))?|#[\w-]+)"
)


@pytest.fixture
async def accounts(gateway: Gateway) -> Users:
    users = Users(gateway.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    now = gateway.clock.now()
    await users.add("mash.worker", HOSTILE_STAFF, Role.DUTY, ["mash"], PASSWORD, now)
    await users.add("triage.worker", "Tia Triage", Role.DUTY, ["triage"], PASSWORD, now)
    await users.add("coord", "Cora Coordinator", Role.COORDINATOR, [], PASSWORD, now)
    await users.add("admin", "Ada Admin", Role.ADMIN, [], PASSWORD, now)
    return users


@pytest.fixture
async def browser(gateway: Gateway, accounts: Users) -> AsyncIterator[Browser]:
    """Browsers on the gateway's own app, with staff accounts that hash cheaply."""
    app = gateway.web_app(accounts)  # the same wiring as the running gateway
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    opened: list[Client] = []

    async def open_one() -> Client:
        client: Client = TestClient(server, cookie_jar=CookieJar(unsafe=True))
        await client.start_server()
        opened.append(client)
        return client

    assert isinstance(gateway.clock, FakeClock)
    yield Browser(open_one, TestApps(gateway.clock))
    for client in opened:
        await client.close()
    await server.close()


def csrf(html: str) -> str:
    match = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def unique_parts_removed(html: str) -> str:
    """A page without what differs on every response (the CSP nonce, the CSRF token)."""
    return re.sub(r'(nonce|value)="[^"]*"', "", html)


async def sign_in(browser: Browser, client: Client, username: str, password: str = PASSWORD) -> ClientResponse:
    """Through every step of the real sign-in (tests/staff_auth.py), with codes from pyotp."""
    return await staff_sign_in(client, browser.apps, username, password)


async def signed_in(browser: Browser, username: str) -> Client:
    client = await browser()
    response = await sign_in(browser, client, username)
    assert response.status == 303 and response.headers["Location"] == "/dashboard", await response.text()
    return client


async def page(client: Client, path: str, status: int = 200) -> str:
    response = await client.get(path, allow_redirects=False)
    text = await response.text()
    assert response.status == status, text
    return text


async def post(client: Client, path: str, data: dict[str, str], form_page: str) -> ClientResponse:
    token = csrf(await page(client, form_page))
    return await client.post(path, data={CSRF_FIELD: token, **data}, allow_redirects=False)


async def ready(gateway: Gateway, *mids_urgencies: tuple[str, str]) -> list[str]:
    refs = [await send_referral(gateway, mid, urgency=urgency) for mid, urgency in mids_urgencies]
    await gateway.process_all()
    await gateway.deliver_all()
    return refs


async def referral_id(gateway: Gateway, reference: str) -> str:
    return str((await referral_row(gateway, reference)).id)


# --- signing in ----------------------------------------------------------------------------------


async def test_sign_in_refusal_and_lockout(browser: Browser) -> None:
    client = await browser()
    assert (await client.get("/dashboard", allow_redirects=False)).headers["Location"] == "/sign-in"
    for username, password in (("nobody", PASSWORD), ("coord", "wrong password here")):
        response = await sign_in(browser, client, username, password)
        text = await response.text()
        assert response.status == 400 and REFUSED_MESSAGE in text
        assert username not in text  # never echoed: it may be a password typed in the wrong box
    for _ in range(4):  # five wrong in a row, with the one above: locked
        assert (await sign_in(browser, client, "coord", "wrong password here")).status == 400
    response = await sign_in(browser, client, "coord", PASSWORD)  # the right password, but locked
    assert response.status == 400 and REFUSED_MESSAGE in await response.text()

    response = await sign_in(browser, client, "admin")
    assert response.status == 303 and response.headers["Location"] == "/dashboard"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    dashboard = await client.get("/dashboard")
    assert dashboard.status == 200
    csp = dashboard.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and "unsafe-inline" not in csp
    html = await dashboard.text()
    assert all(f'nonce="{nonce.group(1)}"' in tag for tag in re.findall(r"<script[^>]*>", html))
    assert "Administrators do not see referrals" in html


async def test_session_expiry_and_sign_out(browser: Browser, gateway: Gateway) -> None:
    assert isinstance(gateway.clock, FakeClock)
    client = await signed_in(browser, "coord")
    gateway.clock.advance(IDLE_TIMEOUT - timedelta(minutes=1))
    await page(client, "/dashboard")
    gateway.clock.advance(IDLE_TIMEOUT)
    assert (await client.get("/dashboard", allow_redirects=False)).headers["Location"] == "/sign-in"

    client = await signed_in(browser, "coord")
    other = await signed_in(browser, "coord")
    third = await signed_in(browser, "coord")
    response = await post(client, "/sign-out", {}, "/dashboard")
    assert response.status == 200 and "You have signed out" in await response.text()
    assert (await client.get("/dashboard", allow_redirects=False)).status == 303
    # Signing out ends this session only; "sign out everywhere else" on /account ends the others.
    await page(other, "/dashboard")
    response = await post(other, "/account/sign-out-others", {}, "/account")
    assert response.status == 303 and response.headers["Location"] == "/account"
    assert "Signed out everywhere else (1 session ended)" in await page(other, "/account")
    assert (await third.get("/dashboard", allow_redirects=False)).status == 303
    await page(other, "/dashboard")


async def test_every_post_needs_the_csrf_token(browser: Browser, gateway: Gateway) -> None:
    (reference,) = await ready(gateway, ("c1", "urgent"))
    rid = await referral_id(gateway, reference)
    client = await signed_in(browser, "coord")
    await page(client, "/dashboard")
    for path, data in (
        ("/sign-in", {"username": "coord", "password": PASSWORD}),
        ("/sign-out", {}),
        (f"/referrals/{rid}/acknowledge", {}),
        (f"/referrals/{rid}/close", {"outcome": "early_help"}),
    ):
        for token in ({}, {CSRF_FIELD: "forged"}):
            response = await client.post(path, data={**data, **token}, allow_redirects=False)
            assert response.status == 403, path
    assert (await referral_row(gateway, reference)).acknowledged_at is None
    await page(client, "/dashboard")  # still signed in


# --- the dashboard -------------------------------------------------------------------------------


async def test_queues_most_urgent_first_with_time_left(browser: Browser, gateway: Gateway) -> None:
    assert isinstance(gateway.clock, FakeClock)
    standard, immediate, urgent = await ready(gateway, ("q1", "standard"), ("q2", "immediate"), ("q3", "urgent"))
    gateway.clock.advance(timedelta(minutes=20))  # the immediate one's 15 minutes have passed
    html = await page(await signed_in(browser, "mash.worker"), "/dashboard")
    order = re.findall(r'data-reference="([^"]+)"', html)
    assert order == [immediate, urgent, standard]
    rows = {ref: html.split(f'data-reference="{ref}"')[1].split("</tr>")[0] for ref in order}
    assert "late by 05m" in rows[immediate]
    due = (await referral_row(gateway, urgent)).due_at - gateway.clock.now()
    minutes = int(due.total_seconds() // 60)
    assert f"{minutes // 60}h {minutes % 60:02d}m left" in rows[urgent]
    assert "step 1" in rows[immediate]  # the immediate chain alerts at once


async def test_roles_see_only_what_they_may(browser: Browser, gateway: Gateway) -> None:
    (mash_ref,) = await ready(gateway, ("r1", "urgent"))
    code, text = await smtp_send(
        gateway.smtp_port, make_message("Child name: Pat Incomplete\nDetails: worried", message_id="<r2@nhs.example>")
    )
    assert code == 250
    triage_ref = text.split()[-1]
    await gateway.process_all()
    mash_id, triage_id = await referral_id(gateway, mash_ref), await referral_id(gateway, triage_ref)

    mash = await signed_in(browser, "mash.worker")
    html = await page(mash, "/dashboard")
    assert mash_ref in html and triage_ref not in html
    forbidden = await page(mash, f"/referrals/{triage_id}", 403)
    missing = await page(mash, f"/referrals/{'0' * 32}", 403)  # the same answer as for one that exists
    assert unique_parts_removed(forbidden) == unique_parts_removed(missing)
    response = await post(mash, f"/referrals/{triage_id}/acknowledge", {}, "/dashboard")
    assert response.status == 403

    coord = await signed_in(browser, "coord")
    html = await page(coord, "/dashboard")
    assert mash_ref in html and triage_ref in html
    await page(coord, f"/referrals/{triage_id}")

    admin = await signed_in(browser, "admin")
    assert mash_ref not in await page(admin, "/dashboard")
    await page(admin, f"/referrals/{mash_id}", 403)
    async with gateway.engine.connect() as conn:
        viewers = (await conn.execute(select(events.c.actor).where(events.c.kind == "viewed"))).scalars().all()
    assert len(viewers) == 1  # the coordinator's view; refusals show nothing and record nothing


# --- a referral ----------------------------------------------------------------------------------


async def test_referral_page_audited_acknowledge_and_close(browser: Browser, gateway: Gateway, home: Path) -> None:
    first, second = await ready(gateway, ("p1", "standard"), ("p2", "urgent"))
    rid = await referral_id(gateway, second)
    client = await signed_in(browser, "mash.worker")
    html = await page(client, f"/referrals/{rid}")
    assert "Sam Testchild" in html and "Zebra-crossing-unique-detail" in html
    assert first in html and "same NHS number" in html  # the earlier referral about the child
    timeline = html.split('id="timeline"')[1]
    for words in ("Received (email)", "Routed to MASH duty team", "The alert to MASH duty team was sent by email"):
        assert words in timeline
    async with gateway.engine.connect() as conn:
        viewed = (
            await conn.execute(select(events).where(events.c.referral_id == rid, events.c.kind == "viewed"))
        ).one()
    user = await Users(gateway.db).find("mash.worker")
    assert user is not None and viewed.actor == f"user:{user.id}"
    assert "Sam" not in viewed.detail

    # Closing before acknowledging is refused and changes nothing.
    response = await post(client, f"/referrals/{rid}/close", {"outcome": "assessment"}, f"/referrals/{rid}")
    assert response.status == 400
    response = await post(client, f"/referrals/{rid}/acknowledge", {}, f"/referrals/{rid}")
    assert response.status == 303 and response.headers["Location"] == f"/referrals/{rid}"
    row = await referral_row(gateway, second)
    assert row.state == "acknowledged" and row.acknowledged_by == HOSTILE_STAFF
    assert second not in await page(client, "/dashboard")

    response = await post(client, f"/referrals/{rid}/close", {"outcome": "nonsense"}, f"/referrals/{rid}")
    assert response.status == 400 and "Select the outcome" in await response.text()
    response = await post(client, f"/referrals/{rid}/close", {"outcome": "strategy_discussion"}, f"/referrals/{rid}")
    assert response.status == 303
    assert (await referral_row(gateway, second)).state == "closed"
    async with gateway.engine.connect() as conn:
        closed = (
            await conn.execute(select(events).where(events.c.referral_id == rid, events.c.kind == "closed"))
        ).one()
    assert json.loads(closed.detail)["outcome"] == "strategy_discussion" and closed.actor == f"user:{user.id}"
    await gateway.deliver_all()
    notices = [m for m in maildir_messages(home, REFERRER) if "outcome" in m["Subject"]]
    assert len(notices) == 1 and notices[0]["X-Referral-Reference"] == second
    body = notices[0].get_content()
    assert "Strategy discussion" in body
    for secret in ("Sam Testchild", "Zebra", "W1A", "9990000018"):
        assert secret not in notices[0].as_string()
    html = await page(client, f"/referrals/{rid}")
    assert "Closed by" in html and "Strategy discussion" in html


async def test_hostile_content_is_escaped_and_urls_hold_nothing_personal(browser: Browser, gateway: Gateway) -> None:
    long_text = "A" * 5000
    body = (
        referral_body()
        .replace("Sam Testchild", HOSTILE_NAME)
        .replace("Ann Example", f"<b>Ann</b>\u202e{long_text}")
        .replace("Demo NHS Foundation Trust", '"><svg onload=alert(1)>')
        .replace("consent given by mother", "<iframe src=//evil>")
        .replace(
            "Zebra-crossing-unique-detail: synthetic test concern text.", f"</dd><script>x()</script>\n{long_text}"
        )
    )
    code, text = await smtp_send(gateway.smtp_port, make_message(body, message_id="<h1@nhs.example>"))
    assert code == 250
    reference = text.split()[-1]
    await gateway.process_all()
    await gateway.deliver_all()
    rid = await referral_id(gateway, reference)

    seen_urls: list[str] = []
    pages: dict[str, str] = {}
    for who in ("mash.worker", "coord"):
        client = await signed_in(browser, who)
        pages[f"{who} dashboard"] = await page(client, "/dashboard")
        pages[f"{who} referral"] = await page(client, f"/referrals/{rid}")
        if who == "mash.worker":
            response = await post(client, f"/referrals/{rid}/acknowledge", {}, f"/referrals/{rid}")
            seen_urls.append(response.headers["Location"])
        pages[f"{who} acknowledged"] = await page(client, f"/referrals/{rid}")
    for name, html in pages.items():
        for raw in ("<script>alert", "<script>x()", "<img src=x", "<svg", "<iframe", "<b>Ann"):
            assert raw not in html, (name, raw)
        # Bidirectional overrides only ever inside an isolating <bdi>.
        for chunk in html.split("\u202e")[:-1]:
            assert chunk.rfind("<bdi") > chunk.rfind("</bdi>"), name
        seen_urls += re.findall(r'(?:href|action|src)="([^"]*)"', html)
    referral = pages["coord referral"]
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in referral
    assert long_text in referral and "&#34;&gt;&lt;svg onload=alert(1)&gt;" in referral
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages["mash.worker dashboard"]  # the staff name too
    assert "Acknowledged by &lt;img" in pages["mash.worker acknowledged"]
    for url in seen_urls:
        assert ALLOWED_URL.fullmatch(url), url


async def test_attachments_listed_and_downloaded_audited(browser: Browser, gateway: Gateway) -> None:
    msg = make_message(referral_body(), message_id="<a1@nhs.example>")
    msg.add_attachment(
        b"<html><script>x()</script></html>", maintype="text", subtype="html", filename="<b>notes</b>.html"
    )
    code, text = await smtp_send(gateway.smtp_port, msg)
    assert code == 250
    await gateway.process_all()
    rid = await referral_id(gateway, text.split()[-1])
    client = await signed_in(browser, "coord")
    html = await page(client, f"/referrals/{rid}")
    assert "&lt;b&gt;notes&lt;/b&gt;.html" in html and f'href="/referrals/{rid}/attachments/1"' in html
    response = await client.get(f"/referrals/{rid}/attachments/1")
    assert response.status == 200 and await response.read() == b"<html><script>x()</script></html>"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert "sandbox" in response.headers["Content-Security-Policy"]
    await page(client, f"/referrals/{rid}/attachments/2", 403)
    async with gateway.engine.connect() as conn:
        kinds = (await conn.execute(select(events.c.kind).where(events.c.referral_id == rid))).scalars().all()
    assert kinds.count("attachment_opened") == 1 and kinds.count("viewed") == 1


async def test_the_triage_team_opens_a_quarantined_referral_its_alert_links_to(
    browser: Browser, gateway: Gateway
) -> None:
    # A quarantined referral is routed to no team; triage is alerted to look at it (issue 11), so
    # the link in that alert opens for triage's duty workers and for coordinators, and for no one else.
    deep = nested(60).replace(b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nMessage-ID: <deep@nhs.example>\r\n", 1)
    code, text = await smtp_send(gateway.smtp_port, deep)
    assert code == 250
    await gateway.process_all()
    row = await referral_row(gateway, text.split()[-1])
    assert row.state == "quarantined" and row.team_id is None
    html = await page(await signed_in(browser, "triage.worker"), f"/referrals/{row.id}")
    assert row.reference in html
    await page(await signed_in(browser, "coord"), f"/referrals/{row.id}")
    await page(await signed_in(browser, "mash.worker"), f"/referrals/{row.id}", 403)
    await page(await signed_in(browser, "admin"), f"/referrals/{row.id}", 403)
