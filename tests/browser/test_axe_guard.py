"""The accessibility checks prove nothing unless axe-core really runs: a page with a known
violation, served over HTTP with a CSP as strict as the form's, must be caught."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from playwright.async_api import Browser

from tests.browser.conftest import axe, open_tab, run_axe

pytestmark = pytest.mark.browser

NONCE = "guard-nonce"
# The form's own policy (gateway/web_form.py): no inline script without the nonce, so axe must be
# injected by page.evaluate (which CSP does not govern), not by a <script> tag.
CSP = (
    f"default-src 'none'; script-src 'self' 'nonce-{NONCE}'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
BROKEN = """<!DOCTYPE html>
<html lang="en-GB">
<head><meta charset="utf-8"><title>A page with a known violation</title></head>
<body><main><h1>Known violation</h1><img src="/pixel.svg"></main></body>
</html>"""
PIXEL = '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'


@pytest.fixture
async def broken_site() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=BROKEN, content_type="text/html", headers={"Content-Security-Policy": CSP})

    async def pixel(request: web.Request) -> web.Response:
        return web.Response(text=PIXEL, content_type="image/svg+xml")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/pixel.svg", pixel)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_axe_really_runs_and_finds_a_known_violation(browser: Browser, broken_site: str) -> None:
    tab = await open_tab(browser, broken_site)
    response = await tab.page.goto("/")
    assert response is not None and response.headers["content-security-policy"] == CSP

    result = await run_axe(tab.page)
    assert result["testEngine"]["name"] == "axe-core"
    assert [v["id"] for v in result["violations"]] == ["image-alt"]
    [node] = result["violations"][0]["nodes"]
    assert node["target"] == ["img"]
    # Rules ran and passed (html-has-lang, document-title, ...): axe checked the page, it did not
    # merely return an empty list.
    passed = {rule["id"] for rule in result["passes"]}
    assert {"html-has-lang", "document-title"} <= passed

    # The helper every page test uses fails on it, naming the rule.
    with pytest.raises(AssertionError, match="image-alt"):
        await axe(tab.page)
    await tab.context.close()
