"""The public referral form, driven over real HTTP on loopback: a real gateway (SQLite, the real
intake writer) with the form's routes on the same app the gateway builds for its ack pages, and a
real aiohttp client with a cookie jar standing in for the browser. Time is the gateway's FakeClock."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import messages, referrals
from gateway.core.sealing import sealed_context
from gateway.intake import form_model
from gateway.intake.web_form import STATIC_DIR, ReferralForm
from gateway.parse.referral import parse_json
from gateway.web.ack_pages import AckPages, make_app, web_environment
from gateway.web.templates import form_environment
from tests.conftest import ROOT, maildir_messages, write_config

TODAY = date(2026, 11, 25)  # the UK date at conftest.START
GOOD: dict[str, str] = {
    "referrer_name": "Alex Example",
    "referrer_role": "Community midwife",
    "referrer_organisation": "Example Maternity Unit",
    "referrer_email": "alex.example@example.org",
    "referrer_phone": "020 7946 0000",
    "child_born": "yes",
    "child_name": "Sam Sample",
    "child_dob-day": "5",
    "child_dob-month": "3",
    "child_dob-year": "2021",
    "child_nhs_number": "999 000 0018",
    "child_address": "1 Example Street\r\nLondon",
    "child_postcode": "w1a 1aa",
    "category": "neglect",
    "urgency": "urgent",
    "parents_aware": "yes",
    "consent_basis": "Parent consented to the referral on the phone.",
    "details": "Synthetic example. Sam was seen at a home visit without enough food in the house.\r\n"
    "The home was very cold.",
}


@dataclass
class Page:
    status: int
    text: str
    headers: Any
    url: str


@dataclass
class Links(HTMLParser):
    """Every URL a page points at, and every <script>'s nonce and body."""

    urls: list[str] = field(default_factory=list)
    scripts: list[tuple[str | None, str]] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    styles: int = 0
    _in_script: str | None = None

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action", "formaction") and value is not None:
                self.urls.append(value)
            if name.startswith("on"):
                self.handlers.append(name)
            if name == "style":
                self.styles += 1
        if tag == "script":
            self._in_script = dict(attrs).get("nonce") or ""
            self.scripts.append((dict(attrs).get("nonce"), ""))

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            nonce, body = self.scripts[-1]
            self.scripts[-1] = (nonce, body + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = None


def links(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


class Browser:
    """One browser: a cookie jar (unsafe=True: cookies for 127.0.0.1) and every URL it was sent to."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.locations: list[str] = []
        self.pages: list[Page] = []

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str) -> Page:
        async with self.session.get(self.base + path, allow_redirects=False) as response:
            page = Page(response.status, await response.text(), response.headers, str(response.url))
        self.pages.append(page)
        return page

    async def form(self) -> tuple[Page, dict[str, str]]:
        page = await self.get("/refer")
        assert page.status == 200
        hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page.text))
        return page, hidden

    async def post(self, data: Any, *, follow: bool = True, **kwargs: Any) -> Page:
        async with self.session.post(self.base + "/refer", data=data, allow_redirects=False, **kwargs) as response:
            page = Page(response.status, await response.text(), response.headers, str(response.url))
        self.pages.append(page)
        if response.status == 303:
            self.locations.append(response.headers["Location"])
            if follow:
                return await self.get(response.headers["Location"])
        return page

    async def send(self, answers: dict[str, str], **extra: str) -> Page:
        _, hidden = await self.form()
        return await self.post({**hidden, **answers, **extra})


@dataclass
class Site:
    gateway: Gateway
    clock: FakeClock
    home: Path
    base: str
    browsers: list[Browser] = field(default_factory=list)

    def browser(self) -> Browser:
        browser = Browser(self.base)
        self.browsers.append(browser)
        return browser

    def count(self, table: str = "referrals") -> int:
        with sqlite3.connect(self.home / "var" / "gateway.db") as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - fixed names

    async def stored(self) -> list[tuple[str, bytes, dict[str, Any]]]:
        """(reference, raw, envelope) of every stored referral, opened with the gateway's key."""
        gw = self.gateway
        async with gw.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        referrals.c.reference, messages.c.id, messages.c.raw, messages.c.envelope, messages.c.channel
                    )
                    .join(messages, messages.c.id == referrals.c.message_id)
                    .order_by(referrals.c.received_at)
                )
            ).all()
        assert all(row.channel == "web" for row in rows)
        return [
            (
                row.reference,
                gw.sealer.open(row.raw, sealed_context("raw", row.id)),
                json.loads(gw.sealer.open(row.envelope, sealed_context("envelope", row.id))),
            )
            for row in rows
        ]


SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def make_site(home: Path, clock: FakeClock) -> AsyncIterator[SiteFactory]:
    """A gateway (waiting only 200 ms for SQLite's write lock) and, on a second port, the app the
    gateway builds (make_app: its site-wide security headers) with the form's routes added, as
    app.py wires it."""
    path = write_config(home)
    path.write_text(path.read_text().replace('url = ""', 'url = ""\nbusy_timeout = "200ms"'))
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    runners: list[web.AppRunner] = []
    sites: list[Site] = []

    async def build(**options: Any) -> Site:
        cfg = gw.config
        s = cfg.settings
        pages = AckPages(
            gw.signer, gw.tracker, clock, web_environment(cfg.templates_dir), s.gateway.council, s.gateway.duty_phone
        )
        app = make_app(pages)
        form = ReferralForm(
            gw.writer,
            form_environment(cfg.templates_dir),
            clock,
            b"k" * 32,
            s.gateway.council,
            s.gateway.duty_phone,
            secure=options.pop("secure", False),
            **options,
        )
        form.routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        sites.append(Site(gw, clock, home, f"http://127.0.0.1:{port}"))
        return sites[-1]

    yield build
    for built in sites:
        for browser in built.browsers:
            await browser.close()
    for runner in runners:
        await runner.cleanup()
    await gw.stop()


@pytest.fixture
async def site(make_site: SiteFactory) -> Site:
    return await make_site()


# GOV.UK's icons (the crown) are under images/; the council's own icon is /favicon.ico.
CROWN_MARKS = (
    "govuk-logo",
    "govuk-header__",
    "govuk-footer__crown",
    "Crown copyright",
    "govuk-crest",
    "images/favicon",
)


async def test_form_renders_with_999_message_council_branding_and_no_crown(site: Site) -> None:
    browser = site.browser()
    page, hidden = await browser.form()
    assert "If a child is in immediate danger, call 999 now" in page.text
    assert "020 7946 0000" in page.text  # the duty phone
    assert page.text.count("Demo Borough Council") >= 2  # header and footer
    for mark in (*CROWN_MARKS, "GDS Transport", "GOV.UK - The best place"):
        assert mark not in page.text, mark
    assert set(hidden) == {"csrf_token", "submission"}
    for name in ("child_dob-day", "child_dob-month", "child_dob-year", "child_due_date-year"):
        assert f'name="{name}"' in page.text  # date inputs, both there without JavaScript
    for value in ("immediate", "urgent", "standard", "domestic abuse", "pre-birth"):
        assert f'type="radio" value="{value}"' in page.text
    assert 'lang="en-GB"' in page.text
    honeypot = re.search(r'<div class="app-honeypot" aria-hidden="true">.*?</div>', page.text, re.S)
    assert honeypot and 'tabindex="-1"' in honeypot[0] and 'autocomplete="off"' in honeypot[0]

    css = await browser.get("/assets/council.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert "font-family:arial,sans-serif" in css.text
    js = await browser.get("/assets/govuk-frontend.min.js")
    assert js.status == 200 and "initAll" in js.text
    assert (await browser.get("/assets/")).status in (403, 404)  # no index


def test_built_css_is_from_the_committed_sources() -> None:
    """gateway/static/ is committed (serve needs no npm): it must be the build of the sources as
    they are now. After editing council.scss or package*.json, run gateway/web_assets/build.py."""
    assets = ROOT / "gateway" / "web_assets"
    build = json.loads((STATIC_DIR / "BUILD.json").read_text())
    for name, digest in build["sources"].items():
        assert hashlib.sha256((assets / name).read_bytes()).hexdigest() == digest, f"{name} changed: rebuild"
    for name, digest in build["outputs"].items():
        assert hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest() == digest, f"{name} edited by hand"
    package = json.loads((assets / "package.json").read_text())
    assert package["dependencies"]["govuk-frontend"] == build["versions"]["govuk-frontend"] == "6.3.0"
    css = (STATIC_DIR / "council.css").read_text(encoding="utf-8-sig")
    assert "GDS Transport" not in css and "/assets/fonts/" not in css
    assert "font-family:arial,sans-serif" in css and "\n" not in css.strip()  # compressed
    assert not (STATIC_DIR / "images").exists()  # GOV.UK's icons are the crown


async def test_empty_form_shows_error_summary_and_inline_errors_and_stores_nothing(site: Site) -> None:
    browser = site.browser()
    _, hidden = await browser.form()
    page = await browser.post(hidden)
    assert page.status == 400
    assert "<title>Error: " in page.text
    assert "There is a problem" in page.text and 'class="govuk-error-summary"' in page.text
    for name, message in (
        ("referrer_name", "Enter your full name"),
        ("referrer_email", "Enter an email address or a phone number"),
        ("child_born", "Select yes if the child has been born"),
        ("category", "Select the kind of concern"),
        ("urgency", "Select how urgent this is"),
        ("details", "Enter the details of your concern"),
    ):
        assert f'<a href="#{name}">{message}' in page.text  # in the summary, linking to the input
        inline = rf'id="{name}-error" class="govuk-error-message">\s*<span class="govuk-visually-hidden">Error:</span>'
        assert re.search(rf"{inline} {message}", page.text)
    # The same form again: the same tokens, so sending it corrected still makes one referral.
    assert f'value="{hidden["submission"]}"' in page.text and f'value="{hidden["csrf_token"]}"' in page.text
    assert site.count() == 0


async def test_date_errors_name_the_part_and_keep_what_was_typed(site: Site) -> None:
    browser = site.browser()
    page = await browser.send({**GOOD, "child_dob-day": "31", "child_dob-month": "2", "child_dob-year": ""})
    assert page.status == 400
    assert "Date of birth must include a year" in page.text
    assert 'govuk-input--width-4 govuk-input--error" id="child_dob-year"' in page.text  # the part marked
    assert 'govuk-input--width-2" id="child_dob-day" name="child_dob-day" type="text" value="31"' in page.text
    page = await browser.send({**GOOD, "child_dob-day": "31", "child_dob-month": "2"})
    assert "Date of birth must be a real date" in page.text
    page = await browser.send({**GOOD, "child_dob-year": "2027"})
    assert "Child&#39;s date of birth is in the future" in page.text
    assert site.count() == 0


async def test_valid_form_stores_one_referral_and_redirects_to_the_receipt(site: Site) -> None:
    browser = site.browser()
    page = await browser.send(GOOD)
    assert browser.locations == ["/refer/done"]
    assert page.status == 200 and "Referral sent" in page.text
    [(reference, raw, envelope)] = await site.stored()
    assert re.search(rf'<strong id="reference">{reference}</strong>', page.text)
    assert "We will also email a receipt" in page.text
    # What processing will read: the example document's shape, complete, nothing to flag.
    expected = json.loads((ROOT / "config" / "examples" / "complete-referral.json").read_bytes())
    assert json.loads(raw) == {**expected, "child": {**expected["child"], "nhs_number": "9990000018"}}
    referral = parse_json(raw, TODAY)
    assert referral.problems == () and referral.child.postcode == "W1A 1AA"
    assert envelope == {"referrer_email": "alex.example@example.org", "peer": "127.0.0.1"}
    # A refresh of the receipt shows it again; it holds for 30 minutes, then is gone.
    assert reference in (await browser.get("/refer/done")).text
    site.clock.advance(timedelta(minutes=31))
    later = await browser.get("/refer/done")
    assert reference not in later.text and "There is no receipt to show" in later.text


async def test_unborn_baby_and_unknown_postcode_are_sent_for_triage(site: Site) -> None:
    browser = site.browser()
    unborn = {
        **GOOD,
        "child_born": "no",
        "child_name": "",
        "child_dob-day": "",
        "child_dob-month": "",
        "child_dob-year": "",
        "child_due_date-day": "14",
        "child_due_date-month": "2",
        "child_due_date-year": "2027",
        "child_postcode": "",
        "child_postcode_unknown": "yes",
        "category": "pre-birth",
        "referrer_email": "",
    }
    page = await browser.send(unborn)
    assert "Referral sent" in page.text and "We will also email" not in page.text
    [(_, raw, envelope)] = await site.stored()
    referral = parse_json(raw, TODAY)
    assert referral.child.due_date == date(2027, 2, 14) and referral.child.date_of_birth is None
    assert [p.field for p in referral.problems] == ["child_postcode"]  # incomplete: triage
    assert envelope["referrer_email"] is None


async def test_the_same_form_sent_twice_or_double_clicked_makes_one_referral(site: Site) -> None:
    browser = site.browser()
    _, hidden = await browser.form()
    data = {**hidden, **GOOD}
    first = await browser.post(data)
    again = await browser.post(data)  # a refresh that resends the POST
    both = await asyncio.gather(browser.post(data), browser.post(data))  # a double click
    [(reference, _, _)] = await site.stored()
    for page in (first, again, *both):
        assert f'<strong id="reference">{reference}</strong>' in page.text
    assert site.count() == 1 and site.count("messages") == 1


async def test_a_changed_form_sent_again_from_the_same_page_is_a_new_referral(site: Site) -> None:
    browser = site.browser()
    _, hidden = await browser.form()
    await browser.post({**hidden, **GOOD})
    await browser.post({**hidden, **GOOD, "details": GOOD["details"] + " Corrected: two children."})
    assert site.count() == 2  # never silently merged into the first


def altered(token: str) -> str:
    return token[:-1] + ("B" if token.endswith("A") else "A")  # one character changed, always


async def test_post_without_a_valid_csrf_token_is_refused_and_stores_nothing(site: Site) -> None:
    browser, other = site.browser(), site.browser()
    _, hidden = await browser.form()
    _, others = await other.form()
    fresh = site.browser()  # never saw the form: no cookie
    attempts = [
        (fresh, {**hidden, **GOOD}),
        (browser, {**GOOD, "submission": hidden["submission"]}),  # no token
        (browser, {**hidden, **GOOD, "csrf_token": others["csrf_token"]}),  # another browser's
        (browser, {**hidden, **GOOD, "csrf_token": altered(hidden["csrf_token"])}),
    ]
    for who, data in attempts:
        page = await who.post(data)
        assert page.status == 403, page.text
        assert "Your referral has not been sent" in page.text and "020 7946 0000" in page.text
    # The right CSRF token but another browser's submission token: not accepted either.
    page = await browser.post({**hidden, **GOOD, "submission": others["submission"]})
    assert page.status == 400
    assert site.count() == 0 and site.count("messages") == 0


async def test_honeypot_gets_a_normal_receipt_and_nothing_is_stored(site: Site) -> None:
    browser = site.browser()
    page = await browser.send(GOOD, comments="Buy cheap watches")
    assert browser.locations == ["/refer/done"]
    assert page.status == 200 and "Referral sent" in page.text
    assert re.search(r'<strong id="reference">[^<]+</strong>', page.text)
    assert site.count() == 0 and site.count("messages") == 0


HOSTILE = '<script>alert("x")</script>"><img src=x onerror=alert(1)>'


async def test_hostile_input_is_escaped_cleaned_and_limited(site: Site) -> None:
    browser = site.browser()
    page = await browser.send(
        {
            **GOOD,
            "referrer_name": HOSTILE + "\u202egpj.exe\u2066",
            "referrer_role": "A" * 100_000,
            "details": HOSTILE,
            "category": "<b>neglect</b>",
        }
    )
    assert page.status == 400
    assert "Your role must be 100 characters or fewer" in page.text
    assert "Select the kind of concern" in page.text  # a value not offered is no answer
    assert "<script>alert" not in page.text and "<img src=x" not in page.text and "<b>neglect" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "\u202e" not in page.text and "\u2066" not in page.text  # bidi controls removed
    assert "gpj.exe" in page.text
    parsed = links(page.text)
    assert parsed.handlers == [] and parsed.styles == 0
    nonce = re.search(r"'nonce-([^']+)'", page.headers["Content-Security-Policy"])
    assert nonce and parsed.scripts and all(n == nonce[1] for n, _ in parsed.scripts)
    assert site.count() == 0

    # Escaped values, once corrected, are stored as typed (without the bidi controls).
    await browser.send({**GOOD, "referrer_name": 'O\'Brien "Al" <Smith>\u202e', "details": HOSTILE})
    [(_, raw, _)] = await site.stored()
    document = json.loads(raw)
    assert document["referrer"]["name"] == 'O\'Brien "Al" <Smith>' and document["details"] == HOSTILE


async def test_an_oversized_body_is_refused_with_413(site: Site) -> None:
    browser = site.browser()
    _, hidden = await browser.form()
    page = await browser.post({**hidden, **GOOD, "details": "x" * 200_000})
    assert page.status == 413 and "too long to send" in page.text

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        yield f"csrf_token={hidden['csrf_token']}&details=".encode()
        for _ in range(40):
            yield b"y" * 8192

    page = await browser.post(
        chunked(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert page.status == 413
    assert site.count() == 0


async def test_too_many_posts_from_one_address_get_429_then_recover(make_site: SiteFactory) -> None:
    site = await make_site(limit=3, window=timedelta(minutes=10))
    browser = site.browser()
    _, hidden = await browser.form()
    for _ in range(3):
        assert (await browser.post(hidden)).status == 400  # errors count: a flood need not be valid
    page = await browser.post({**hidden, **GOOD})
    assert page.status == 429
    assert "phone the duty team on 020 7946 0000" in page.text and "999" in page.text
    assert 0 < int(page.headers["Retry-After"]) <= 600
    assert site.count() == 0
    with sqlite3.connect(site.home / "var" / "gateway.db") as conn:
        [(client, attempts)] = conn.execute("SELECT client, attempts FROM form_attempts").fetchall()
    assert attempts == 4 and "127.0.0.1" not in client and len(client) == 64  # a keyed hash, never the address
    site.clock.advance(timedelta(minutes=10))
    assert (await browser.post({**hidden, **GOOD})).status == 200
    assert site.count() == 1
    assert site.count("form_attempts") == 1  # the past window's row was deleted


async def test_csp_has_a_fresh_nonce_for_scripts_and_no_unsafe_inline(site: Site) -> None:
    browser = site.browser()
    nonces = []
    for page in (
        (await browser.form())[0],
        await browser.post({}),  # the 400 page for a body that is not a form
        await browser.send(GOOD),
    ):
        csp = page.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
        nonce = re.fullmatch(r"'self' 'nonce-([A-Za-z0-9_-]{24})'", directives["script-src"])
        assert nonce, csp
        scripts = links(page.text).scripts
        assert [n for n, _ in scripts] == [nonce[1], nonce[1]]  # the template's class script and ours
        assert "initAll" in scripts[1][1]
        assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Frame-Options"] == "DENY"
        nonces.append(nonce[1])
    assert len(set(nonces)) == 3


async def test_no_personal_data_in_any_url(site: Site) -> None:
    browser = site.browser()
    await browser.send({**GOOD, "referrer_email": "bad"})  # error page
    await browser.send(GOOD)  # receipt
    [(reference, _, _)] = await site.stored()
    await browser.send(GOOD, comments="spam")  # honeypot receipt
    await browser.get("/refer/done")
    urls = list(browser.locations)
    for page in browser.pages:
        urls += [page.url, *links(page.text).urls]
    personal = [v for v in GOOD.values() if len(v) > 2] + [reference, "Sam", "Alex", "W1A"]
    for url in urls:
        assert re.fullmatch(
            r"(http://127\.0\.0\.1:\d+)?(/refer|/refer/done|/assets/[\w.-]+|/favicon\.ico|#[\w-]+)", url
        ), url
        rest = url.removeprefix(site.base).lower()  # not the port: a random port may hold "2021"
        assert not any(value.lower() in rest for value in personal), url
    assert "/refer/done" in urls and "#referrer_email" in urls


async def test_a_failed_commit_answers_503_with_every_answer_kept(site: Site) -> None:
    browser = site.browser()
    _, hidden = await browser.form()
    blocker = sqlite3.connect(site.home / "var" / "gateway.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the lock past the busy timeout
    try:
        page = await browser.post({**hidden, **GOOD})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert page.status == 503 and page.headers["Retry-After"] == "60"
    assert "because of a problem on our side" in page.text and "OperationalError" not in page.text
    assert 'value="Alex Example"' in page.text and "The home was very cold." in page.text
    assert site.count() == 0
    resent = await browser.post({**hidden, **GOOD})  # the same form, sent again
    assert "Referral sent" in resent.text and site.count() == 1


async def test_https_cookies_are_host_prefixed_and_secure(make_site: SiteFactory) -> None:
    site = await make_site(secure=True)
    async with aiohttp.ClientSession() as session, session.get(site.base + "/refer") as response:
        cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-refer_csrf=")
    for attribute in ("HttpOnly", "Path=/", "SameSite=Lax", "Secure"):
        assert attribute in cookie
    assert "Domain" not in cookie and "Max-Age" not in cookie  # a session cookie


def test_error_messages_never_repeat_the_value() -> None:
    hostile = {name: "zq<x>" + "9" * 3 for name in form_model.NAMES}
    checked = form_model.check(hostile, TODAY)
    assert checked.errors and all("zq" not in error.message for error in checked.errors)


async def test_processing_routes_the_web_referral_and_emails_the_receipt(site: Site) -> None:
    """End to end: what the form stored is what the processing stage reads (channel "web")."""
    browser = site.browser()
    await browser.send(GOOD)
    [(reference, _, _)] = await site.stored()
    assert await site.gateway.process_all() == 1
    await site.gateway.deliver_all()
    with sqlite3.connect(site.home / "var" / "gateway.db") as conn:
        state, incomplete = conn.execute("SELECT state, incomplete FROM referrals").fetchone()
    assert state == "alerted" and not incomplete
    [receipt] = maildir_messages(site.home, "alex.example@example.org")
    assert reference in str(receipt["Subject"]) + receipt.get_content()


async def test_from_config_makes_its_own_key_readable_only_by_the_gateway(site: Site) -> None:
    gw = site.gateway
    form = ReferralForm.from_config(gw.config, gw.writer, site.clock)
    key = gw.config.keys_dir / "web-form.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert ReferralForm.from_config(gw.config, gw.writer, site.clock) is not form  # the same key, read again
