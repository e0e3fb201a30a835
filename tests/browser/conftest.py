"""Browser tests: real headless Chromium from Debian's package, driven by Playwright's async API,
against a real gateway on loopback (the `gateway` fixture of tests/conftest.py: SQLite under a temp
home, FakeClock, no workers). No browser is downloaded: Playwright launches /usr/bin/chromium (the
one on PATH) through `executable_path`; `playwright install` is never needed.

Chromium absent: the tests skip on a developer's machine, and fail when CI=true, so CI cannot go
green without them (.ci/run installs the package).

One Playwright driver and one browser per test, not per module: pytest-asyncio gives every test its
own event loop here (function scope, see pyproject.toml), and a Playwright connection belongs to
the loop that started it; a module-wide browser would need module-wide loops for every fixture it
meets. A launch costs ~0.6 s, which keeps the whole browser suite to a few seconds.

axe-core is the copy axe-playwright-python bundles, injected with page.evaluate, so it runs under
the form's strict CSP (a <script> tag would be blocked)."""

from __future__ import annotations

import os
import re
import shutil
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    Request,
    Response,
    Route,
    async_playwright,
)

from gateway.app import Gateway
from tests.conftest import ROOT

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox will not start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no calls home, no component downloads: loopback only
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers have a small /dev/shm
]
# WCAG 2.2 AA, and every level below it (axe tags each rule with the version that added it).
WCAG_22_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"  # git-ignored; CI keeps it as an artifact


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        if in_ci():
            pytest.fail("chromium is not installed: CI must run the browser tests (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); browser tests skipped outside CI")
    return path


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            await launched.close()  # ends the Chromium processes Playwright started


@dataclass
class Tab:
    """A page in its own browser context, and what went wrong in it that no assertion looked at:
    console errors (a CSP refusal shows up here) and uncaught script errors."""

    page: Page
    context: BrowserContext
    javascript: bool
    problems: list[str] = field(default_factory=list)

    @property
    def variant(self) -> str:
        return "js" if self.javascript else "nojs"


async def open_tab(browser: Browser, base_url: str, *, javascript: bool = True) -> Tab:
    context = await browser.new_context(base_url=base_url, java_script_enabled=javascript)
    page = await context.new_page()
    tab = Tab(page, context, javascript)
    if not javascript:
        _SCRIPTLESS.add(page)

    def on_console(message: ConsoleMessage) -> None:
        # Chromium logs every HTTP error as "Failed to load resource", including the form's own
        # 400 with the error summary (expected); subresources are checked in on_response instead.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            tab.problems.append(f"console: {message.text}")

    def on_page_error(error: Error) -> None:
        tab.problems.append(f"page error: {error}")

    def on_response(response: Response) -> None:
        # A stylesheet, script, font or the icon (/favicon.ico, which Chromium asks for) that fails.
        request = response.request
        if response.status >= 400 and request.resource_type != "document":
            tab.problems.append(f"{response.status} for {request.resource_type} {request.url}")

    def on_request_failed(request: Request) -> None:
        # A navigation can be cut short by the next one (a double click without JavaScript submits
        # twice and Chromium cancels the first): the page that counts is the one that loads.
        if request.resource_type != "document":
            tab.problems.append(f"failed: {request.resource_type} {request.url} {request.failure}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    return tab


@pytest.fixture(params=[True, False], ids=["js", "nojs"])
def javascript(request: pytest.FixtureRequest) -> bool:
    """Each form test runs twice: with JavaScript, and without (the form must work either way)."""
    return bool(request.param)


@pytest.fixture
def base_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.http_port}"


@pytest.fixture
async def tab(browser: Browser, base_url: str, javascript: bool) -> AsyncIterator[Tab]:
    opened = await open_tab(browser, base_url, javascript=javascript)
    yield opened
    await opened.context.close()
    assert opened.problems == [], opened.problems


_SCRIPTLESS: weakref.WeakSet[Page] = weakref.WeakSet()  # pages opened with JavaScript off


async def run_axe(page: Page) -> dict[str, Any]:
    """axe-core's full result for the page as it is now, WCAG 2.2 AA rules only."""
    if page in _SCRIPTLESS:
        return await _run_axe_on_copy(page)
    options = {"runOnly": {"type": "tag", "values": WCAG_22_AA}, "resultTypes": ["violations"]}
    return dict((await Axe().run(page, options=options)).response)


async def _run_axe_on_copy(page: Page) -> dict[str, Any]:
    """axe on a page opened without JavaScript: axe.run's promise never settles there (timers do
    not run) and Playwright reports it garbage collected. So the page's document, as the browser
    holds it now, is served at the same URL to a page with JavaScript on, minus every <script>
    (none ran in the original, so none may run in the copy): the same DOM, the same stylesheets
    from the same server, and axe can run. Switching scripts back on over a second DevTools
    session does not work: Chromium keeps them off while any session asks for that."""
    html = re.sub(r"<script\b[^>]*>.*?</script>", "", await page.content(), flags=re.S | re.I)
    browser = page.context.browser
    assert browser is not None
    context = await browser.new_context()
    try:
        copy = await context.new_page()
        url = page.url

        async def serve_copy(route: Route) -> None:
            await route.fulfill(body=html, content_type="text/html; charset=utf-8")

        await copy.route(lambda requested: requested == url, serve_copy)
        await copy.goto(url)
        return await run_axe(copy)
    finally:
        await context.close()


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        targets = [" ".join(map(str, node["target"])) for node in violation["nodes"]]
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} -> {targets}")
    return "\n".join(lines)


class AxeViolations(AssertionError):
    """axe found WCAG 2.2 AA violations; `found` is (rule id, targets) for each."""

    def __init__(self, message: str, found: list[tuple[str, list[str]]]) -> None:
        super().__init__(message)
        self.found = found


async def axe(page: Page) -> dict[str, Any]:
    """Assert axe finds no WCAG 2.2 AA violation on the page; the result, for further checks."""
    result = await run_axe(page)
    assert result["passes"], "axe ran no rule: it is not really running"
    violations = result["violations"]
    if violations:
        report = f"axe violations on {page.url}:\n{describe(violations)}"
        print(report)  # in the captured output of the failure, whatever catches the exception
        found = [(v["id"], [" ".join(map(str, n["target"])) for n in v["nodes"]]) for v in violations]
        raise AxeViolations(report, found)
    return result


@dataclass
class AxeLater:
    """axe on each page a test visits, asserted at the end, so that one page's violation does
    not hide what the rest of the test (other pages, the form's behaviour) would have found."""

    reports: list[str] = field(default_factory=list)
    found: list[tuple[str, list[str]]] = field(default_factory=list)

    async def check(self, page: Page) -> None:
        try:
            await axe(page)
        except AxeViolations as exc:
            self.reports.append(str(exc))
            self.found += exc.found

    def assert_none(self) -> None:
        if self.found:
            raise AxeViolations("\n".join(self.reports), self.found)


async def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG under tests/artifacts/screenshots/, kept by CI as a test artifact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=path, full_page=True)
    return path
