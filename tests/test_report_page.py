"""The coordinators' report as a web page: who may see it, filters, CSV, decisions, CSRF, escaping.

A real gateway (FakeClock, workers=False) receives real referrals over SMTP; the report page runs
on a real aiohttp server with the real session middleware and the gateway's own database, sealer
and settings. The browser is aiohttp's client with a cookie jar. Signing in goes through a
test-only route that calls WebSessions.sign_in (the sign-in pages are gateway.dashboard's).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from html import unescape
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp import ClientResponse, CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.sealing import sealed_context
from gateway.report import undelivered as report
from gateway.report.decisions import WHAT
from gateway.staff.sessions import Sessions
from gateway.staff.users import Role, User, Users
from gateway.track.verify import verify
from gateway.web.report_page import STATES, ReportPage
from gateway.web.session import CSRF_FIELD, WebSessions, csrf_token, setup_sessions
from tests.conftest import make_message, referral_body, smtp_send

Client = TestClient[web.Request, web.Application]
HOSTILE = '<script>alert(\'x\')</script>" onmouseover="alert(1)" &amp; <b>Sam Testchild</b>'
# Personal data the referrals hold (tests/conftest.py); none of it may appear in a URL.
PERSONAL = ("Sam", "Testchild", "Ann", "Example", "W1A", "nhs.example", "Street", "9990000")


class Store:
    def __init__(self, gw: Gateway, refs: dict[str, str], people: dict[str, User]) -> None:
        self.gw = gw
        self.refs = refs
        self.people = people


@pytest.fixture
async def store(gateway: Gateway, home: Path, clock: FakeClock) -> Store:
    """Three items a day later: a late urgent referral (MASH), a late incomplete one (triage), and
    one quarantined because its stored copy was damaged. Plus one staff user of each role."""
    refs: dict[str, str] = {}
    bodies = {
        "late": referral_body(urgency="urgent"),
        "incomplete": "Referrer name: Ann Example\nChild name: Sam Testchild\nDetails:\nWorried.\n",
    }
    for name, body in bodies.items():
        code, text = await smtp_send(gateway.smtp_port, make_message(body, message_id=f"<{name}@nhs.example>"))
        assert code == 250, text
        refs[name] = text.split()[-1]
    assert await gateway.process_all() == 2
    await gateway.deliver_all()
    code, text = await smtp_send(gateway.smtp_port, make_message(referral_body(), message_id="<q@nhs.example>"))
    assert code == 250
    refs["quarantined"] = text.split()[-1]
    with sqlite3.connect(home / "var" / "gateway.db") as conn:  # a disk fault: no stage can read it
        conn.execute("UPDATE messages SET raw = x'00' WHERE processed_at IS NULL")
    for _ in range(gateway.config.settings.processing.max_attempts):
        await gateway.process_all()
        clock.advance(timedelta(seconds=11))
    clock.advance(timedelta(days=1))
    accounts = Users(gateway.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    people = {
        "coordinator": await accounts.add(
            "c.jones", "Cora Jones", Role.COORDINATOR, [], "violet kettle 1", clock.now()
        ),
        "duty": await accounts.add("d.okafor", "Dev Okafor", Role.DUTY, ["mash"], "violet kettle 2", clock.now()),
        "admin": await accounts.add("a.admin", "Ada Admin", Role.ADMIN, [], "violet kettle 3", clock.now()),
    }
    return Store(gateway, refs, people)


class Browser:
    """A client that remembers every URL it was given or sent to, to check none is personal."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.urls: list[str] = []

    async def get(self, path: str) -> tuple[int, str, ClientResponse]:
        self.urls.append(path)
        response = await self.client.get(path, allow_redirects=False)
        return response.status, await response.text(), response

    async def post(self, path: str, data: dict[str, str]) -> tuple[int, str, str]:
        self.urls.append(path)
        response = await self.client.post(path, data=data, allow_redirects=False)
        location = response.headers.get("Location", "")
        if location:
            self.urls.append(location)
        return response.status, await response.text(), location

    async def page(self, path: str = "/report") -> str:
        status, html, _ = await self.get(path)
        assert status == 200, html
        self.urls += [unescape(u) for u in re.findall(r'(?:href|action|src)="([^"]*)"', html)]
        return html


@pytest.fixture
async def browse(store: Store, clock: FakeClock, home: Path) -> AsyncIterator[Callable[[str], Awaitable[Browser]]]:
    gw = store.gw
    app = web.Application()
    setup_sessions(app, home / "keys", "http://127.0.0.1:8080")
    sessions = WebSessions(Users(gw.db), Sessions(gw.db), clock)

    async def sign_in(request: web.Request) -> web.Response:  # test-only: no password, by user id in the body
        user = await Users(gw.db).get(str((await request.post())["user"]))
        assert user is not None
        await sessions.sign_in(request, user, "test")
        return web.Response(text=await csrf_token(request))

    app.router.add_post("/test-sign-in", sign_in)
    ReportPage(gw.config, gw.db, gw.sealer, sessions, clock).routes(app)
    server = TestServer(app)
    await server.start_server()
    opened: list[Browser] = []

    async def open_as(role: str) -> Browser:
        client: Client = TestClient(server, cookie_jar=CookieJar(unsafe=True))
        await client.start_server()
        browser = Browser(client)
        opened.append(browser)
        if role:
            response = await client.post("/test-sign-in", data={"user": store.people[role].id})
            assert response.status == 200
        return browser

    yield open_as
    for browser in opened:
        await browser.client.close()
    await server.close()
    for browser in opened:
        assert_no_personal_urls(browser.urls)


def assert_no_personal_urls(urls: list[str]) -> None:
    allowed = {"team": {"mash", "triage"}, "state": set(STATES), "kind": set(report.KINDS)}
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        assert parts.fragment in {"", "main-content", "report-items"} or parts.fragment.startswith("item-"), url
        paths = {
            "",
            "/report",
            "/report.csv",
            "/report/decisions",
            "/sign-in",
            "/sign-out",
            "/dashboard",
            "/account",
            "/favicon.ico",
        }
        assert parts.path in paths or parts.path.startswith("/assets/"), url
        for name, value in parse_qsl(parts.query):
            assert value in allowed[name], url
        assert not any(word.lower() in url.lower() for word in PERSONAL), url


async def csrf_of(browser: Browser) -> str:
    html = await browser.page()
    match = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert match, "no CSRF field on the report page"
    return match.group(1)


def item_key(html: str, reference: str) -> str:
    row = html[html.index(f">{reference}</th>") :]
    match = re.search(r'name="item" value="([^"]+)"', row)
    assert match
    return match.group(1)


def decisions_rows(home: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM decisions").fetchall()


# -- who may see it ---------------------------------------------------------------------------------------


async def test_a_coordinator_sees_every_item_with_its_details(
    store: Store, browse: Callable[[str], Awaitable[Browser]]
) -> None:
    browser = await browse("coordinator")
    status, html, response = await browser.get("/report")
    assert status == 200
    for reference in store.refs.values():
        assert f">{reference}</th>" in html
    assert "MASH duty team" in html and "Front door triage team" in html and "(not routed)" in html
    assert "not acknowledged within 4 working hours" in html and "quarantined at stage" in html
    assert "1d " in html  # the age
    assert "3 items need attention" in html
    # CSP: a nonce, and every script carries it; nothing inline without it.
    headers = response.headers
    nonce = re.search(r"'nonce-([^']+)'", headers["Content-Security-Policy"])
    assert nonce and "unsafe-inline" not in headers["Content-Security-Policy"]
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts and all(f'nonce="{nonce.group(1)}"' in s for s in scripts)
    assert headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("role", ["duty", "admin"])
async def test_duty_workers_and_administrators_get_403(
    store: Store, browse: Callable[[str], Awaitable[Browser]], role: str, home: Path
) -> None:
    browser = await browse(role)
    for path in ("/report", "/report.csv"):
        status, body, _ = await browser.get(path)
        assert status == 403
        assert store.refs["late"] not in body
    token = await (await browser.client.post("/test-sign-in", data={"user": store.people[role].id})).text()
    status, _, _ = await browser.post(
        "/report/decisions", {CSRF_FIELD: token, "item": "referral:x", "what": "resent", "note": ""}
    )
    assert status == 403
    assert decisions_rows(home) == []


async def test_without_signing_in_the_report_sends_you_to_sign_in(
    store: Store, browse: Callable[[str], Awaitable[Browser]]
) -> None:
    browser = await browse("")
    status, _, response = await browser.get("/report")
    assert status == 303 and response.headers["Location"] == "/sign-in"
    status, _, _ = await browser.get("/report.csv")
    assert status == 303


# -- filters and CSV --------------------------------------------------------------------------------------


async def test_filters_by_team_state_and_kind_of_reason(
    store: Store, browse: Callable[[str], Awaitable[Browser]]
) -> None:
    browser = await browse("coordinator")
    refs = store.refs

    def shown(html: str) -> set[str]:
        return {name for name, ref in refs.items() if f">{ref}</th>" in html}

    assert shown(await browser.page("/report?team=mash")) == {"late"}
    assert shown(await browser.page("/report?team=triage")) == {"incomplete"}
    assert shown(await browser.page("/report?state=quarantined")) == {"quarantined"}
    assert shown(await browser.page("/report?kind=late")) == {"late", "incomplete"}
    assert shown(await browser.page("/report?kind=quarantined&team=mash")) == set()
    html = await browser.page("/report?kind=late&state=alerted")
    assert shown(html) == {"late", "incomplete"}
    assert 'href="/report.csv?state=alerted&amp;kind=late"' in html  # the CSV keeps the filters
    # Values that are not known filters are dropped, never echoed (they could be anything).
    status, html, _ = await browser.get("/report?team=Sam+Testchild&state=%3Cb%3E")
    assert status == 200 and shown(html) == set(refs) and "Testchild" not in html and "<b>" not in html
    browser.urls.pop()  # that URL was ours, made up to be hostile


async def test_the_csv_download_is_the_clis_csv_for_the_same_items(
    store: Store, browse: Callable[[str], Awaitable[Browser]], clock: FakeClock
) -> None:
    browser = await browse("coordinator")
    gw = store.gw
    status, body, response = await browser.get("/report.csv?team=mash")
    assert status == 200
    headers = response.headers
    assert headers["Content-Type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="referral-report-[0-9-]+\.csv"', headers["Content-Disposition"])
    rows = await report.undelivered(gw.engine, gw.config.settings, clock.now())
    assert body == report.render([r for r in rows if r.team_id == "mash"], "csv")
    (line,) = list(csv.DictReader(io.StringIO(body)))
    assert line["reference"] == store.refs["late"] and line["team"] == "MASH duty team"
    _, everything, _ = await browser.get("/report.csv")
    assert everything == report.render(rows, "csv")


# -- decisions ----------------------------------------------------------------------------------------------


async def test_a_decision_takes_the_item_off_the_page_and_the_cli_report_and_is_recorded(
    store: Store, browse: Callable[[str], Awaitable[Browser]], clock: FakeClock, home: Path
) -> None:
    gw = store.gw
    browser = await browse("coordinator")
    token = await csrf_of(browser)
    late = store.refs["late"]
    key = item_key(await browser.page(), late)
    status, _, location = await browser.post(
        "/report/decisions",
        {CSRF_FIELD: token, "item": key, "what": "phoned_team", "note": "Spoke to the MASH manager", "team": "mash"},
    )
    assert status == 303 and location == "/report?team=mash"

    html = await browser.page()
    assert f">{late}</th>" not in html
    assert f"Decision recorded for {late}: {WHAT['phoned_team']}" in html
    assert "Cora Jones" in html and "Spoke to the MASH manager" in html  # under recent decisions
    assert "Decision recorded" not in await browser.page()  # the notice is shown once
    rows = await report.undelivered(gw.engine, gw.config.settings, clock.now())
    assert late not in report.render(rows, "table") and late not in report.render(rows, "csv")
    assert {r.reference for r in rows} == {store.refs["incomplete"], store.refs["quarantined"]}

    (row,) = decisions_rows(home)
    coordinator = store.people["coordinator"]
    assert row["decided_by"] == coordinator.id and row["what"] == "phoned_team"
    assert row["item_key"] == key and row["referral_id"] == key.removeprefix("referral:")
    assert row["decided_at"].startswith(clock.now().strftime("%Y-%m-%d %H:%M"))
    assert b"MASH manager" not in row["note"]  # sealed
    assert gw.sealer.open(row["note"], sealed_context("decision_note", row["id"])) == b"Spoke to the MASH manager"
    with sqlite3.connect(home / "var" / "gateway.db") as conn:
        ((actor, detail),) = conn.execute("SELECT actor, detail FROM events WHERE kind = 'decision'").fetchall()
    assert actor == f"user:{coordinator.id}"
    assert json.loads(detail) == {"decision": row["id"], "what": "phoned_team"}
    assert await verify(gw.engine, clock.now()) == []  # the chain holds and the lifecycle allows it

    # The same form again (a double click, or a second coordinator): nothing new is recorded.
    status, _, _ = await browser.post("/report/decisions", {CSRF_FIELD: token, "item": key, "what": "resent"})
    assert status == 303
    assert "had been recorded already" in await browser.page()
    assert len(decisions_rows(home)) == 1


async def test_without_the_csrf_token_nothing_is_recorded(
    store: Store, browse: Callable[[str], Awaitable[Browser]], home: Path
) -> None:
    browser = await browse("coordinator")
    key = item_key(await browser.page(), store.refs["late"])
    for token in ({}, {CSRF_FIELD: "not-the-token"}):
        status, _, _ = await browser.post("/report/decisions", {**token, "item": key, "what": "resent"})
        assert status == 403
    assert decisions_rows(home) == []
    assert f">{store.refs['late']}</th>" in await browser.page()


async def test_hostile_text_in_a_note_is_escaped_wherever_it_is_shown(
    store: Store, browse: Callable[[str], Awaitable[Browser]], home: Path
) -> None:
    browser = await browse("coordinator")
    token = await csrf_of(browser)
    key = item_key(await browser.page(), store.refs["incomplete"])
    # A refused form shows the note again, in its box.
    status, html, _ = await browser.post("/report/decisions", {CSRF_FIELD: token, "item": key, "what": "other"})
    assert status == 400 and "Say in the note what was done" in html
    status, html, _ = await browser.post("/report/decisions", {CSRF_FIELD: token, "item": key, "note": HOSTILE})
    assert status == 400 and "Choose what was done" in html
    assert_escaped(html)
    assert decisions_rows(home) == []
    # Recorded, it is listed under recent decisions.
    status, _, _ = await browser.post(
        "/report/decisions", {CSRF_FIELD: token, "item": key, "what": "other", "note": HOSTILE}
    )
    assert status == 303
    html = await browser.page()
    assert_escaped(html)
    assert "&lt;b&gt;Sam Testchild&lt;/b&gt;" in html


def assert_escaped(html: str) -> None:
    assert "<script>alert" not in html and "<b>Sam" not in html and 'onmouseover="alert' not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&#34; onmouseover=&#34;alert(1)&#34; &amp;amp;" in html


async def test_an_unknown_item_is_refused_with_a_message(
    store: Store, browse: Callable[[str], Awaitable[Browser]], home: Path
) -> None:
    browser = await browse("coordinator")
    token = await csrf_of(browser)
    status, html, _ = await browser.post(
        "/report/decisions", {CSRF_FIELD: token, "item": "referral:nope", "what": "resent"}
    )
    assert status == 400 and "not on the report any more" in html
    assert decisions_rows(home) == []
