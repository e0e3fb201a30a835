"""Signing in with two factors: the password, then a code from an authenticator app (or a recovery
code); at the first sign-in, setting the app up and saving recovery codes. And signing out.

GET/POST /sign-in, GET/POST /sign-in/code, POST /sign-in/recovery, GET/POST /sign-in/authenticator,
GET/POST /sign-in/recovery-codes, POST /sign-out.

Decisions, each for a reason:
- The password step alone gives only a half-signed-in session (gateway.web.session.Pending), which
  every other page refuses: it sees nothing until the second factor is given, or, at the first
  sign-in, until an authenticator is set up and the recovery codes are saved.
- One answer for every refused password (wrong, unknown user, locked, disabled), as before. At the
  code step the person has shown the password, so the step itself says the password was right (as
  in every two-step sign-in); what it does not say is why a code was refused (wrong, already used,
  or the account now locked): one message for all. Wrong codes count towards the account's
  lockout with wrong passwords, so a stolen password still gives only MAX_FAILURES guesses a lock.
- Failures also count per client address (gateway.staff.throttle; behind trusted proxies the one
  gateway.web.forwarded finds): over the limit an address is refused before any check (429, with
  the minutes to wait), whatever the username.
- Every sign-in, refusal, enrolment and use of a recovery code is in the audit chain (no username
  that was refused, no password or code, no address).
- The sign-in pages take no "next" parameter: every redirect goes to a fixed path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from aiohttp import web

from gateway.config import Config
from gateway.core import audit
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.staff import events, totp
from gateway.staff.factors import RECOVERY_CODES, AlreadyEnrolled, Factors
from gateway.staff.throttle import AddressThrottle, throttled_message
from gateway.staff.users import Refusal, SignInRefused, User, Users
from gateway.web.forwarded import client_address
from gateway.web.headers import add_page_headers
from gateway.web.session import Pending, WebSessions, require_csrf
from gateway.web.templates import StaffPages

log = logging.getLogger(__name__)

_MAX_FIELD = 1024  # a username or password longer than this is refused without hashing it
CODE_REFUSED = (
    "The code is not right, or it has been used already, or the account is locked. Type the code your "
    "authenticator app shows now (a new one comes every 30 seconds), or use one of your recovery codes. "
    "After 5 wrong codes or passwords in a row the account is locked for 15 minutes."
)
ENROL_REFUSED = (
    "The code does not match. Check the app shows an entry for this gateway, then type the 6-digit code it shows now."
)


def issuer(config: Config) -> str:
    """The name the authenticator app shows beside the codes: the council's, without a colon
    (the otpauth URI uses one as the separator)."""
    return re.sub(r"[:\x00-\x1f]", " ", config.settings.gateway.council).strip() or "Referral gateway"


class SignInPages:
    def __init__(
        self,
        config: Config,
        db: Database,
        users: Users,
        factors: Factors,
        throttle: AddressThrottle,
        sessions: WebSessions,
        clock: Clock,
    ) -> None:
        self._config = config
        self._db = db
        self._users = users
        self._factors = factors
        self._throttle = throttle
        self._sessions = sessions
        self._clock = clock
        self._pages = StaffPages(config)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/sign-in", self.sign_in_form)
        app.router.add_post("/sign-in", self.sign_in)
        app.router.add_get("/sign-in/code", self.code_form)
        app.router.add_post("/sign-in/code", self.code)
        app.router.add_post("/sign-in/recovery", self.recovery)
        app.router.add_get("/sign-in/authenticator", self.enrol_form)
        app.router.add_post("/sign-in/authenticator", self.enrol)
        app.router.add_get("/sign-in/recovery-codes", self.recovery_codes)
        app.router.add_post("/sign-in/recovery-codes", self.codes_saved)
        app.router.add_post("/sign-out", self.sign_out)
        add_page_headers(app)

    async def _page(self, request: web.Request, template: str, status: int = 200, **context: object) -> web.Response:
        return await self._pages.render(request, template, status, None, **context)

    async def _posted(self, request: web.Request) -> Mapping[str, str]:
        form = await request.post()
        await require_csrf(request, form)
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def _record(self, *batch: audit.Event) -> None:
        await events.record(self._db, *batch)

    async def _throttled(self, request: web.Request, template: str, **context: object) -> web.Response | None:
        """The 429 page when this client address has failed too often lately; None if it may try."""
        now = self._clock.now()
        minutes = await self._throttle.refused_for(client_address(request), now)
        if minutes is None:
            return None
        log.info("sign-in refused: too many failures from this client address")
        response = await self._page(request, template, 429, error=throttled_message(minutes), **context)
        response.headers["Retry-After"] = str(minutes * 60)
        return response

    async def _pending(self, request: web.Request, stage: str) -> Pending:
        """The half-signed-in session at `stage`, or a redirect to where it belongs."""
        pending = await self._sessions.pending(request)
        if pending is None:
            raise web.HTTPSeeOther("/sign-in")
        if pending.stage != stage:
            raise web.HTTPSeeOther(STAGE_PATHS[pending.stage])
        return pending

    # --- the password ---------------------------------------------------------------------------

    async def sign_in_form(self, request: web.Request) -> web.StreamResponse:
        if await self._sessions.current_user(request, activity=False) is not None:
            raise web.HTTPSeeOther("/dashboard")
        return await self._page(request, "sign_in.html", error=None)

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        form = await self._posted(request)
        throttled = await self._throttled(request, "sign_in.html")
        if throttled is not None:
            return throttled
        username, password = form.get("username", ""), form.get("password", "")
        now = self._clock.now()
        if not username or not password or len(username) > _MAX_FIELD or len(password) > _MAX_FIELD:
            result: User | SignInRefused = SignInRefused(Refusal.UNKNOWN_USER)
        else:
            result = await self._users.authenticate(username, password, now)
        if isinstance(result, SignInRefused):
            detail = {"reason": result.reason.value} | ({"user": result.user_id} if result.user_id else {})
            await self._failed(request, events.event(events.SIGN_IN_FAILED, "anonymous", now, **detail))
            return await self._page(request, "sign_in.html", 400, error=result.message)
        state = await self._factors.state(result.id)
        if state.enrolled:
            await self._sessions.begin(request, result, "code")
            raise web.HTTPSeeOther("/sign-in/code")
        await self._sessions.begin(request, result, "enrol", totp.new_secret())
        raise web.HTTPSeeOther("/sign-in/authenticator")

    # --- the code, or a recovery code -----------------------------------------------------------

    async def code_form(self, request: web.Request) -> web.StreamResponse:
        await self._pending(request, "code")
        return await self._page(request, "sign_in_code.html", error=None)

    async def _failed(self, request: web.Request, *batch: audit.Event) -> None:
        """Audit a refusal and count it against the client's address (auditing, once, the
        refusal that makes the address wait)."""
        now = self._clock.now()
        if await self._throttle.failed(client_address(request), now):
            batch = (*batch, events.event(events.SIGN_IN_THROTTLED, "anonymous", now, failures=self._throttle.limit))
        await self._record(*batch)

    async def _second_factor_refused(self, request: web.Request, user: User, kind: str) -> web.Response:
        now = self._clock.now()
        await self._users.count_failure(user.id, now)
        await self._failed(request, events.event(events.CODE_FAILED, events.actor_of(user.id), now, factor=kind))
        log.info("sign-in of user %s: %s refused", user.id, kind)
        return await self._page(request, "sign_in_code.html", 400, error=CODE_REFUSED)

    async def _second_step(
        self, request: web.Request, kind: str, check: Callable[[str, Mapping[str, str], datetime], Awaitable[bool]]
    ) -> User | web.StreamResponse:
        """The code step's common part: the user whose second factor `check` accepts, or the page
        that refuses it (throttled, locked, or wrong)."""
        form = await self._posted(request)
        pending = await self._pending(request, "code")
        throttled = await self._throttled(request, "sign_in_code.html")
        if throttled is not None:
            return throttled
        user, now = pending.user, self._clock.now()
        fresh = await self._users.get(user.id)
        # A locked account is refused without looking at the code: no guessing while it is locked.
        if fresh is None or fresh.locked(now) or not await check(user.id, form, now):
            return await self._second_factor_refused(request, user, kind)
        return fresh

    async def code(self, request: web.Request) -> web.StreamResponse:
        async def check(user_id: str, form: Mapping[str, str], now: datetime) -> bool:
            return await self._factors.check_code(user_id, form.get("code", ""), now)

        result = await self._second_step(request, "totp", check)
        if not isinstance(result, User):
            return result
        return await self._signed_in(request, result, "code")

    async def recovery(self, request: web.Request) -> web.StreamResponse:
        async def check(user_id: str, form: Mapping[str, str], now: datetime) -> bool:
            return await self._factors.use_recovery_code(user_id, form.get("recovery_code", "")[:_MAX_FIELD], now)

        result = await self._second_step(request, "recovery_code", check)
        if not isinstance(result, User):
            return result
        now = self._clock.now()
        left = (await self._factors.state(result.id)).recovery_left
        await self._record(events.event(events.RECOVERY_CODE_USED, events.actor_of(result.id), now, left=left))
        return await self._signed_in(request, result, "recovery")

    async def _signed_in(self, request: web.Request, user: User, how: str) -> web.StreamResponse:
        """Both factors given: a full session, unless the recovery codes are still to be saved."""
        await self._users.clear_failures(user.id)
        if not (await self._factors.state(user.id)).codes_saved:
            await self._sessions.advance(request, "codes", how=how)
            raise web.HTTPSeeOther("/sign-in/recovery-codes")
        await self._sessions.sign_in(request, user, how)
        raise web.HTTPSeeOther("/account" if how == "recovery" else "/dashboard")

    # --- first sign-in: the authenticator and the recovery codes --------------------------------

    async def _enrol_page(self, request: web.Request, pending: Pending, status: int, error: str | None) -> web.Response:
        secret = pending.secret or ""
        uri = totp.provisioning_uri(secret, pending.user.username, issuer(self._config))
        return await self._page(
            request,
            "enrol.html",
            status,
            error=error,
            qr=totp.qr_svg(uri),
            secret=totp.grouped(secret),
            action="/sign-in/authenticator",
        )

    async def enrol_form(self, request: web.Request) -> web.StreamResponse:
        return await self._enrol_page(request, await self._pending(request, "enrol"), 200, None)

    async def enrol(self, request: web.Request) -> web.StreamResponse:
        form = await self._posted(request)
        pending = await self._pending(request, "enrol")
        now = self._clock.now()
        try:
            enrolled = pending.secret is not None and await self._factors.enrol(
                pending.user.id, pending.secret, form.get("code", ""), now
            )
        except AlreadyEnrolled:
            # Set up meanwhile from another session (perhaps by someone else holding the first
            # password): never replaced from here. Start again: the code step now.
            log.warning("user %s: a second first-sign-in enrolment refused", pending.user.id)
            await self._sessions.sign_out(request)
            raise web.HTTPSeeOther("/sign-in") from None
        if not enrolled:
            # Not counted towards the lockout: whoever is here holds the secret they are checking.
            return await self._enrol_page(request, pending, 400, ENROL_REFUSED)
        await self._record(events.event(events.FACTOR_ENROLLED, events.actor_of(pending.user.id), now, factor="totp"))
        log.info("user %s set up an authenticator", pending.user.id)
        await self._sessions.advance(request, "codes", how="enrolment")
        raise web.HTTPSeeOther("/sign-in/recovery-codes")

    async def recovery_codes(self, request: web.Request) -> web.StreamResponse:
        """New codes every time this page is shown (shown once each: none is kept to show again)."""
        pending = await self._pending(request, "codes")
        now = self._clock.now()
        codes = await self._factors.new_recovery_codes(pending.user.id, now)
        await self._record(
            events.event(events.RECOVERY_CODES_MADE, events.actor_of(pending.user.id), now, count=len(codes))
        )
        return await self._page(
            request, "recovery_codes.html", codes=codes, count=RECOVERY_CODES, action="/sign-in/recovery-codes"
        )

    async def codes_saved(self, request: web.Request) -> web.StreamResponse:
        form = await self._posted(request)
        pending = await self._pending(request, "codes")
        if form.get("saved") != "yes":
            return await self._page(
                request,
                "message.html",
                400,
                title="Save your recovery codes first",
                paragraphs=[
                    "Go back, save or print the codes, tick the box to say you have, and continue.",
                    "If you reload the page you get new codes, and the ones shown before stop working.",
                ],
            )
        await self._factors.codes_saved(pending.user.id, self._clock.now())
        await self._sessions.sign_in(request, pending.user, pending.how or "enrolment")
        raise web.HTTPSeeOther("/account" if pending.how == "recovery" else "/dashboard")

    # --- signing out ----------------------------------------------------------------------------

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        await require_csrf(request, await request.post())
        await self._sessions.sign_out(request)
        return await self._page(request, "signed_out.html")


STAGE_PATHS = {"code": "/sign-in/code", "enrol": "/sign-in/authenticator", "codes": "/sign-in/recovery-codes"}
