"""HSTS when the gateway is served over TLS (its public URL is https), and never over plain HTTP,
where it would be ignored at best and pin a development host at worst."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from tests.conftest import START, write_config


async def headers_of(home: Path, public_url: str) -> dict[str, str]:
    path = write_config(home)
    text = path.read_text().replace('public_url = "http://127.0.0.1:8080"', f'public_url = "{public_url}"')
    path.write_text(text)
    gw = Gateway(config_mod.load(path), clock=FakeClock(START), workers=False)
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            pages = {}
            for page in ("/refer", "/sign-in", "/healthz"):
                async with http.get(f"http://127.0.0.1:{gw.http_port}{page}") as response:
                    assert response.status == 200, page
                    pages[page] = response.headers.get("Strict-Transport-Security", "")
            return pages
    finally:
        await gw.stop()


async def test_hsts_on_every_page_when_the_public_url_is_https(tmp_path: Path) -> None:
    pages = await headers_of(tmp_path / "tls", "https://referrals.demo-council.example")
    assert set(pages.values()) == {"max-age=31536000; includeSubDomains"}


async def test_no_hsts_when_served_over_plain_http(tmp_path: Path) -> None:
    pages = await headers_of(tmp_path / "plain", "http://127.0.0.1:8080")
    assert set(pages.values()) == {""}
