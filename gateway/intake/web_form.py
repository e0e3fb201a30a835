"""Intake by web form: the public referral form at /refer, built with the GOV.UK Design System.

GET /refer shows the form; POST /refer checks it (gateway.intake.form_model), stores the referral.json it
makes through the same durable intake as email, then answers 303 to GET /refer/done, the receipt
page (POST-redirect-GET: a refresh there sends nothing again). The signed values below (CSRF field,
submission token, receipt cookie) are made and checked by gateway.intake.form_tokens, the rate limit
is counted by gateway.intake.rate_limit; what the form does with them is decided here.

Decisions, each for a reason:
- Nothing personal in any URL, and not even the reference: the receipt page reads the reference
  from a short-lived cookie (30 minutes) signed with keys/web-form.key, so it needs no database
  read and works the same on every instance. The reference is not personal data; the cookie is
  HttpOnly and SameSite=Lax.
- One referral per rendered form. Each form carries a random submission token, bound by HMAC to
  the browser's CSRF cookie (another browser cannot use it). The intake dedupe key is
  "web:" + the token + a digest of the document: a double click or a resent POST makes one
  referral and shows the same reference, while a form changed and sent again from the same page
  (the back button) is a new referral, never silently merged into the first.
- CSRF: a random cookie (a session cookie, so a form left open for hours still works; __Host-
  prefixed and Secure when the public URL is https, so a sibling subdomain cannot plant one) and
  a hidden field holding HMAC(key, cookie), compared in constant time. Without it: 403, nothing
  stored.
- Honeypot: a text field off screen, hidden from screen readers and out of the tab order. Filled
  in, a valid form gets an ordinary-looking receipt with a reference that was never stored;
  nothing is stored (logged as a warning, with no content).
- Rate limit: POSTs per client address, counted in the database (gateway.intake.rate_limit), so
  every instance behind a balancer shares one limit. The address is gateway.web.forwarded's: behind
  a reverse proxy in `[http] trusted_proxies`, the client's from X-Forwarded-For, not the proxy's.
  Over it: 429 with the duty phone number.
- Size: the body is read here with its own limit (413 above it), whatever the app's
  client_max_size, and at most 100 fields are parsed.
- CSP with a fresh nonce per page: the template's one-line class script and the module script
  that starts govuk-frontend carry it; nothing else inline. Set in on_response_prepare after any
  site-wide headers, so it wins over a stricter CSP without scripts.
- A failed commit (database locked or gone) answers 503 with the form and every answer kept, to
  send again: the referrer's text is never lost to our fault.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import jinja2
from aiohttp import web

from gateway.config import Config
from gateway.core import keyfiles
from gateway.core.clock import LONDON, Clock
from gateway.core.model import Channel
from gateway.core.reference import new_reference
from gateway.core.sealed import WebEnvelope
from gateway.intake import form_model
from gateway.intake.form_tokens import KEY_FILE, RECEIPT_TTL, FormTokens, csrf_cookie_ok, new_csrf_cookie
from gateway.intake.rate_limit import RateLimiter
from gateway.intake.store import Incoming, IntakeWriter
from gateway.staff import throttle
from gateway.web.forwarded import client_address
from gateway.web.headers import NONCE, new_nonce, page_headers
from gateway.web.templates import form_environment

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
FAVICON = (STATIC_DIR / "favicon.ico").read_bytes()  # gateway/web_assets/favicon.py makes it
HONEYPOT = "comments"  # bots fill a field so named; browsers do not autofill it
MAX_BODY = 128 * 1024  # the longest answers, all non-ASCII and percent-encoded, fit with room
MAX_FIELDS = 100


@dataclass(frozen=True)
class _Cookies:
    csrf: str
    receipt: str


class ReferralForm:
    """The handlers of /refer and /refer/done, and the /assets the form's pages load."""

    def __init__(
        self,
        writer: IntakeWriter,
        env: jinja2.Environment,
        clock: Clock,
        key: bytes,
        council: str,
        duty_phone: str,
        *,
        secure: bool,
        limit: int = 30,
        window: timedelta = timedelta(minutes=15),
        max_body: int = MAX_BODY,
        address_key: bytes | None = None,
    ) -> None:
        self._tokens = FormTokens(key, clock)  # first: it refuses a short key
        self._writer = writer
        self._env = env
        self._clock = clock
        self._common = {"council": council, "duty_phone": duty_phone}
        self._secure = secure
        prefix = "__Host-" if secure else ""  # __Host-: Secure, Path=/, and no subdomain may set it
        self._cookies = _Cookies(csrf=f"{prefix}refer_csrf", receipt=f"{prefix}refer_receipt")
        # Addresses are hashed with the staff sign-in throttle's key (from_config); without one, with
        # a key derived from this form's own, so a test's form needs no second key file.
        hashing = address_key or hashlib.sha256(b"form addresses\0" + key).digest()
        self._limiter = RateLimiter(writer.db, hashing, clock, limit, window)
        self._max_body = max_body

    @classmethod
    def from_config(cls, config: Config, writer: IntakeWriter, clock: Clock) -> ReferralForm:
        # Made on first run, like the ack key; losing it only voids open forms and receipts.
        key = keyfiles.load_or_create(config.keys_dir / KEY_FILE)
        s = config.settings
        return cls(
            writer,
            form_environment(config.templates_dir),
            clock,
            key,
            s.gateway.council,
            s.gateway.duty_phone,
            secure=s.http.public_url.startswith("https://"),
            address_key=throttle.address_key(config.keys_dir),
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/refer", self.show)
        app.router.add_post("/refer", self.submit)
        app.router.add_get("/refer/done", self.done)
        app.router.add_static("/assets/", STATIC_DIR, follow_symlinks=False, show_index=False)
        # Browsers ask for /favicon.ico on every page, whatever the page names: served here, with
        # no sign-in (it is the same for everyone), so it is never a 404 in a log or a console.
        app.router.add_get("/favicon.ico", self.favicon)
        app.on_response_prepare.append(self._headers)

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(body=FAVICON, content_type="image/x-icon")  # cached a day: see _headers

    # --- cookies and pages ---------------------------------------------------------------------

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", secure=self._secure, httponly=True, samesite="Lax")

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.get(NONCE) is not None:
            await page_headers(request, response)
        elif request.path == "/favicon.ico":  # after the site-wide no-store, which would replace it
            response.headers["Cache-Control"] = "public, max-age=86400"
            response.headers["X-Content-Type-Options"] = "nosniff"
        elif request.path.startswith("/assets/"):
            response.headers["Cache-Control"] = "public, max-age=3600"
            response.headers["X-Content-Type-Options"] = "nosniff"

    def _page(self, request: web.Request, template: str, status: int = 200, **context: object) -> web.Response:
        nonce = new_nonce(request)
        body = self._env.get_template(f"form/{template}").render(**self._common, cspNonce=nonce, **context)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def _message(
        self, request: web.Request, status: int, title: str, *paragraphs: str, form_link: bool = True
    ) -> web.Response:
        return self._page(request, "message.html", status, title=title, paragraphs=paragraphs, form_link=form_link)

    def _form(
        self,
        request: web.Request,
        status: int,
        cookie: str,
        submission: str,
        checked: form_model.Checked | None = None,
        problem: str | None = None,
    ) -> web.Response:
        answers = checked.answers if checked else form_model.answers_from({})
        errors = {error.field: error for error in checked.errors} if checked else {}
        return self._page(
            request,
            "refer.html",
            status,
            has_errors=bool(errors or problem),
            answers=answers,
            errors=errors,
            error_list=[{"text": e.message, "href": f"#{e.anchor}"} for e in errors.values()],
            problem=problem,
            csrf_token=self._tokens.csrf_field(cookie),
            submission=submission,
            honeypot=HONEYPOT,
            category_items=[{"value": v, "text": t} for v, t in form_model.CATEGORY_LABELS.items()],
            urgency_items=[
                {"value": v, "text": t, "hint": {"text": h}} for v, (t, h) in form_model.URGENCY_LABELS.items()
            ],
            max_details=form_model.TEXT_FIELDS["details"].max_length,
        )

    async def show(self, request: web.Request) -> web.Response:
        cookie = request.cookies.get(self._cookies.csrf, "")
        fresh = not csrf_cookie_ok(cookie)
        if fresh:
            cookie = new_csrf_cookie()
        response = self._form(request, 200, cookie, self._tokens.new_submission(cookie))
        if fresh:
            self._set_cookie(response, self._cookies.csrf, cookie)  # a session cookie: no expiry
        return response

    async def done(self, request: web.Request) -> web.Response:
        receipt = self._tokens.receipt(request.cookies.get(self._cookies.receipt))
        if receipt is None:
            return self._message(
                request,
                200,
                "There is no receipt to show",
                "A receipt is shown here for 30 minutes after a referral is sent, in the browser that sent it.",
                "If you gave an email address, your receipt with the reference was emailed to you. If you are "
                f"not sure your referral was sent, phone the duty team on {self._common['duty_phone']}.",
            )
        reference, emailed = receipt
        return self._page(request, "done.html", reference=reference, emailed=emailed)

    async def _read_form(self, request: web.Request) -> dict[str, str] | web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return self._message(
                request, 400, "The form could not be read", "Send your referral from the form on this site."
            )
        if (request.content_length or 0) > self._max_body:
            return self._too_large(request)
        body = bytearray()
        while chunk := await request.content.read(64 * 1024):
            body += chunk
            if len(body) > self._max_body:  # chunked, or a Content-Length that lied
                return self._too_large(request)
        try:
            pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
        except ValueError:  # more than MAX_FIELDS fields
            return self._message(request, 400, "The form could not be read", "Send your referral from the form.")
        form: dict[str, str] = {}
        for name, value in pairs:
            form.setdefault(name, value)  # the first of a repeated field, as aiohttp's .get() would
        return form

    def _too_large(self, request: web.Request) -> web.Response:
        response = self._message(
            request,
            413,
            "Your referral is too long to send",
            "Nothing has been sent. Go back, shorten the details (a summary is enough: the duty team will "
            "call you for more), and send it again.",
            f"If it cannot wait, phone the duty team on {self._common['duty_phone']}.",
            form_link=False,
        )
        response.force_close()  # the rest of the body is not read: do not reuse the connection
        return response

    async def submit(self, request: web.Request) -> web.Response:
        duty_phone = self._common["duty_phone"]
        retry = await self._limiter.hit(client_address(request))
        if retry is not None:
            response = self._message(
                request,
                429,
                "The form has been sent too many times",
                "Nothing has been sent this time. Too many forms came from your network in a short time.",
                f"To make a referral now, phone the duty team on {duty_phone}. If a child is in immediate "
                "danger, call 999.",
                f"You can use the form again in {math.ceil(retry / 60)} minutes.",
                form_link=False,
            )
            response.headers["Retry-After"] = str(math.ceil(retry))
            return response
        form = await self._read_form(request)
        if isinstance(form, web.Response):
            return form
        cookie = request.cookies.get(self._cookies.csrf, "")
        sent = form.get("csrf_token", "")
        if not self._tokens.csrf_ok(cookie, sent):
            log.warning("web form: refused a POST without a valid CSRF token")
            return self._message(
                request,
                403,
                "Your referral has not been sent",
                "The form could not be checked as coming from this site. This happens when cookies are "
                "blocked, or the form was opened in another browser.",
                "Go back, copy what you wrote, open the form again and send it. Or phone the duty team on "
                f"{duty_phone}.",
            )
        submission = form.get("submission", "")
        token = self._tokens.submission_token(cookie, submission)
        if token is None:
            return self._message(
                request, 400, "Your referral has not been sent", "Open the form again and send it from there."
            )
        today = self._clock.now().astimezone(LONDON).date()
        checked = form_model.check(form, today)
        if checked.errors or checked.document is None or checked.referral is None:
            return self._form(request, 400, cookie, submission, checked)
        emailed = checked.referral.referrer.email is not None
        if form.get(HONEYPOT):
            # Looks the same as success to whatever filled it in; the reference was never stored.
            log.warning("web form: honeypot field filled; nothing stored")
            return self._to_receipt(new_reference(), emailed)
        item = Incoming(
            channel=Channel.WEB,
            raw=checked.document,
            envelope=WebEnvelope(checked.referral.referrer.email, client_address(request)),
            dedupe_key=f"web:{token}:{hashlib.sha256(checked.document).hexdigest()[:32]}",
        )
        try:
            accepted = await self._writer.submit(item)
        except Exception as exc:  # noqa: BLE001
            # The one place an intake failure becomes a reply: the form again with every answer,
            # so nothing typed is lost, and a temporary status.
            log.error("web intake: commit failed (%s); answered 503", type(exc).__name__)
            response = self._form(
                request,
                503,
                cookie,
                submission,
                checked,
                problem="Your referral has not been sent, because of a problem on our side. Your answers are "
                f"below: send them again in a minute. If it cannot wait, phone the duty team on {duty_phone}.",
            )
            response.headers["Retry-After"] = "60"
            return response
        log.info(
            "web intake: accepted referral %s%s",
            accepted.reference,
            " (the same form sent again)" if accepted.duplicate else "",
        )
        return self._to_receipt(accepted.reference, emailed)

    def _to_receipt(self, reference: str, emailed: bool) -> web.Response:
        response = web.Response(status=303, headers={"Location": "/refer/done"})
        self._set_cookie(
            response,
            self._cookies.receipt,
            self._tokens.receipt_value(reference, emailed),
            int(RECEIPT_TTL.total_seconds()),
        )
        return response
