"""What every HTML page of ours shares: a fresh nonce per response for its one module script, and
the headers that go with it (a Content-Security-Policy allowing no other script, no caching of
pages that may hold personal data, no referrer, no framing)."""

from __future__ import annotations

import secrets

from aiohttp import web

NONCE: web.RequestKey[str] = web.RequestKey("page_nonce", str)


def new_nonce(request: web.Request) -> str:
    """A nonce for the page this request is answered with; `page_headers` sends it in the CSP."""
    nonce = secrets.token_urlsafe(18)
    request[NONCE] = nonce
    return nonce


async def page_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the page headers, for responses rendered with a nonce."""
    nonce = request.get(NONCE)
    if nonce is None:
        return
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["Cache-Control"] = "no-store"  # pages show answers and referrals: personal data
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"


def add_page_headers(app: web.Application) -> None:
    """Once per app, after any site-wide headers (so this CSP wins over a stricter one)."""
    if page_headers not in app.on_response_prepare:
        app.on_response_prepare.append(page_headers)
