"""HTTP: the acknowledgement pages (and the home of the later web form and dashboard).

GET /ack/{token} only shows a confirm page: mail scanners and link previewers follow GET links,
and a scanner must never acknowledge a referral. POST records who acknowledged and when.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
from aiohttp import web

from gateway.core.clock import Clock, uk_time
from gateway.outbox.tokens import AckSigner, TokenError, TokenExpired
from gateway.track.acks import NotFound, Tracker

_MAX_NAME = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u200e\u200f\u202a-\u202e\u2066-\u2069]")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # The ack URL carries a capability token: never send it on as a Referer.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def web_environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir / "web"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["uk_time"] = uk_time
    return env


class AckPages:
    def __init__(
        self,
        signer: AckSigner,
        tracker: Tracker,
        clock: Clock,
        env: jinja2.Environment,
        council: str,
        duty_phone: str,
    ) -> None:
        self._signer = signer
        self._tracker = tracker
        self._clock = clock
        self._env = env
        self._common = {"council": council, "duty_phone": duty_phone}

    def _page(self, template: str, status: int = 200, **context: object) -> web.Response:
        body = self._env.get_template(template).render(**self._common, **context)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def _error(self, status: int, title: str, message: str) -> web.Response:
        return self._page("error.html", status, title=title, message=message)

    async def _claim(self, request: web.Request) -> tuple[object, str] | web.Response:
        try:
            claim = self._signer.verify(request.match_info["token"], self._clock.now())
        except TokenExpired as exc:
            return self._error(410, "This link has expired", str(exc))
        except TokenError as exc:
            return self._error(400, "This link is not valid", str(exc))
        try:
            row = await self._tracker.lookup(claim.referral_id, claim.recipient_hash)
        except NotFound:
            return self._error(
                404,
                "This link is not valid",
                "No referral matches this link. Open the link from the alert email again, or call the duty team.",
            )
        return row, claim.recipient_hash

    async def confirm(self, request: web.Request) -> web.Response:
        found = await self._claim(request)
        if isinstance(found, web.Response):
            return found
        row, _ = found
        return self._page("ack_confirm.html", referral=row, error=None, name="")

    async def record(self, request: web.Request) -> web.Response:
        found = await self._claim(request)
        if isinstance(found, web.Response):
            return found
        row, recipient_hash = found
        form = await request.post()
        name = _CONTROL.sub("", str(form.get("name", ""))).strip()
        if not name or len(name) > _MAX_NAME:
            error = "Enter your full name" if not name else f"Your name must be {_MAX_NAME} characters or fewer"
            return self._page("ack_confirm.html", 400, referral=row, error=error, name=name[:_MAX_NAME])
        result = await self._tracker.acknowledge(row.id, recipient_hash, name)  # type: ignore[attr-defined]
        return self._page("ack_done.html", result=result)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(pages: AckPages) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/ack/{token}", pages.confirm)
    app.router.add_post("/ack/{token}", pages.record)
    app.router.add_get("/healthz", _health)
    return app
