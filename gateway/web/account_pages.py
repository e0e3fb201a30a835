"""A signed-in user's own account: their sessions, and changes that need them to sign in again.

GET /account, POST /account/sign-out-others, GET/POST /account/confirm, GET/POST /account/password,
GET/POST /account/authenticator, POST /account/recovery-codes, POST /account/recovery-codes/saved.

Decisions, each for a reason:
- "Your sessions" lists the live sessions (gateway.staff.sessions) with a short browser name and
  times; this one is marked, and "sign out everywhere else" ends the rest. No address is shown or kept.
- Changing the password or the authenticator, or making new recovery codes, needs the password and
  a code again within REAUTH_WINDOW (ASVS 5.0 7.5.1): someone at an unlocked screen cannot lock the
  owner out or take the account over. The step to return to is a fixed name ("then"), never a URL.
  Staff accounts hold no email address or mobile number, so there are none to change here.
- Wrong passwords and codes here count towards the account's lockout, as at sign-in.
- A new password, authenticator or set of recovery codes ends the user's other sessions (ASVS 7.4.3):
  if someone else had signed in, the change is what the owner makes after noticing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from aiohttp import web

from gateway.config import Config
from gateway.core.clock import Clock, uk_time
from gateway.core.db import Database
from gateway.staff import events, totp
from gateway.staff.factors import RECOVERY_CODES, Factors
from gateway.staff.passwords import PasswordPolicyError, check_password
from gateway.staff.sessions import SessionRecord
from gateway.staff.users import SignInRefused, User, Users
from gateway.web.headers import add_page_headers
from gateway.web.session import WebSessions, get_session, require_csrf
from gateway.web.sign_in_pages import CODE_REFUSED, ENROL_REFUSED, issuer
from gateway.web.templates import StaffPages

log = logging.getLogger(__name__)

REAUTH_WINDOW = timedelta(minutes=5)
_FLASH = "account_flash"
_NEW_SECRET = "account_new_secret"  # noqa: S105 (the session key it is kept under)
_MAX_FIELD = 1024
THEN = {"password": "/account/password", "authenticator": "/account/authenticator", "recovery-codes": "/account"}
_THEN_WORDS = {
    "password": "change your password",
    "authenticator": "set up a new authenticator app",
    "recovery-codes": "make new recovery codes",
}

Handler = Callable[[web.Request, User, SessionRecord, Mapping[str, str]], Awaitable[web.StreamResponse]]


class AccountPages:
    def __init__(
        self, config: Config, db: Database, users: Users, factors: Factors, sessions: WebSessions, clock: Clock
    ) -> None:
        self._config = config
        self._db = db
        self._users = users
        self._factors = factors
        self._sessions = sessions
        self._clock = clock
        self._pages = StaffPages(config)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/account", self._signed_in(self.account))
        app.router.add_post("/account/sign-out-others", self._signed_in(self.sign_out_others, post=True))
        app.router.add_get("/account/confirm", self._signed_in(self.confirm_form))
        app.router.add_post("/account/confirm", self._signed_in(self.confirm, post=True))
        app.router.add_get("/account/password", self._signed_in(self.password_form, fresh="password"))
        app.router.add_post("/account/password", self._signed_in(self.password, post=True, fresh="password"))
        app.router.add_get("/account/authenticator", self._signed_in(self.authenticator_form, fresh="authenticator"))
        app.router.add_post(
            "/account/authenticator", self._signed_in(self.authenticator, post=True, fresh="authenticator")
        )
        app.router.add_post(
            "/account/recovery-codes", self._signed_in(self.recovery_codes, post=True, fresh="recovery-codes")
        )
        app.router.add_post("/account/recovery-codes/saved", self._signed_in(self.codes_saved, post=True))
        add_page_headers(app)

    def _signed_in(
        self, handler: Handler, post: bool = False, fresh: str = ""
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            form: Mapping[str, str] = {}
            if post:  # the CSRF token first, then who is signed in
                posted = await request.post()
                await require_csrf(request, posted)
                form = {k: v for k, v in posted.items() if isinstance(v, str)}
            user = await self._sessions.current_user(request)
            record = await self._sessions.current_session(request)
            if user is None or record is None:
                raise web.HTTPSeeOther("/sign-in")
            # fresh: the change needs a recent re-authentication; the name is the step to return to.
            if fresh and (record.reauth_at is None or self._clock.now() - record.reauth_at >= REAUTH_WINDOW):
                raise web.HTTPSeeOther(f"/account/confirm?then={fresh}")
            return await handler(request, user, record, form)

        return wrapped

    async def _page(
        self, request: web.Request, template: str, user: User, status: int = 200, **context: object
    ) -> web.Response:
        return await self._pages.render(request, template, status, user, **context)

    async def _done(self, request: web.Request, flash: str) -> web.StreamResponse:
        (await get_session(request))[_FLASH] = flash
        raise web.HTTPSeeOther("/account")

    # --- the account page and sessions ----------------------------------------------------------

    async def account(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        flash = (await get_session(request)).pop(_FLASH, None)
        now = self._clock.now()
        rows = [
            {
                "browser": s.browser,
                "signed_in": uk_time(s.signed_in_at),
                "seen": uk_time(s.seen_at),
                "this": s.id == record.id,
            }
            for s in await self._sessions.records.of_user(user.id, now)
        ]
        state = await self._factors.state(user.id)
        return await self._page(
            request,
            "account.html",
            user,
            rows=rows,
            others=sum(1 for r in rows if not r["this"]),
            recovery_left=state.recovery_left,
            flash=flash if isinstance(flash, str) else "",
        )

    async def sign_out_others(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        count = await self._sessions.records.end_all(
            user.id, "elsewhere", self._clock.now(), events.actor_of(user.id), keep=record.id
        )
        log.info("user %s ended %d other sessions", user.id, count)
        return await self._done(
            request, f"Signed out everywhere else ({count} session{'s' if count != 1 else ''} ended)."
        )

    # --- signing in again -----------------------------------------------------------------------

    async def confirm_form(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        then = request.query.get("then", "")
        if then not in THEN:
            raise web.HTTPSeeOther("/account")
        return await self._page(request, "reauth.html", user, then=then, then_words=_THEN_WORDS[then], error=None)

    async def confirm(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        then = form.get("then", "")
        if then not in THEN:
            raise web.HTTPSeeOther("/account")
        now = self._clock.now()
        password, code = form.get("password", "")[:_MAX_FIELD], form.get("code", "")
        checked = await self._users.authenticate(user.username, password, now) if password else None
        ok = isinstance(checked, User) and await self._factors.check_code(user.id, code, now)
        if not ok:
            if isinstance(checked, User):  # the password was right, the code not: count it too
                await self._users.count_failure(user.id, now)
            kind = "password" if not isinstance(checked, User) else "totp"
            await events.record(
                self._db,
                events.event(events.CODE_FAILED, events.actor_of(user.id), now, factor=kind, step="reauthentication"),
            )
            error = "The password or the code is not right. " + CODE_REFUSED.split(". ", 1)[1]
            return await self._page(
                request, "reauth.html", user, 400, then=then, then_words=_THEN_WORDS[then], error=error
            )
        assert not isinstance(checked, SignInRefused)
        await self._users.clear_failures(user.id)
        await self._sessions.records.reauthenticated(record.id, now)
        await events.record(self._db, events.event(events.REAUTHENTICATED, events.actor_of(user.id), now))
        if then == "recovery-codes":  # a POST makes them: back to the page with its button
            return await self._done(request, "You have signed in again: you can make new recovery codes now.")
        raise web.HTTPSeeOther(THEN[then])

    # --- the password ---------------------------------------------------------------------------

    async def password_form(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        return await self._page(request, "change_password.html", user, errors={})

    async def password(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        new, again = form.get("password", ""), form.get("password_again", "")
        errors: dict[str, str] = {}
        if not new:
            errors["password"] = "Enter the new password"  # noqa: S105 (a message)
        elif new != again:
            errors["password-again"] = "The two passwords are not the same; type the same one twice"
        else:
            try:
                check_password(new, user.username)
            except PasswordPolicyError as exc:
                errors["password"] = str(exc)[:1].upper() + str(exc)[1:]
        if errors:
            return await self._page(request, "change_password.html", user, 400, errors=errors)
        now = self._clock.now()
        await self._users.reset_password(user.username, new, now)  # ends every session (the epoch) ...
        await self._sessions.records.adopt_epoch(record.id, user.id)  # ... but this one
        await self._sessions.records.end_all(user.id, "password", now, events.actor_of(user.id), keep=record.id)
        await events.record(self._db, events.event(events.PASSWORD_CHANGED, events.actor_of(user.id), now, by="self"))
        log.info("user %s changed their password", user.id)
        return await self._done(request, "Your password has been changed. Your other sessions have ended.")

    # --- the authenticator and recovery codes ---------------------------------------------------

    async def _enrol_page(
        self, request: web.Request, user: User, secret: str, status: int, error: str | None
    ) -> web.Response:
        uri = totp.provisioning_uri(secret, user.username, issuer(self._config))
        return await self._page(
            request,
            "enrol.html",
            user,
            status,
            error=error,
            qr=totp.qr_svg(uri),
            secret=totp.grouped(secret),
            action="/account/authenticator",
        )

    async def authenticator_form(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        secret = totp.new_secret()
        (await get_session(request))[_NEW_SECRET] = secret  # the cookie is encrypted; sealed once confirmed
        return await self._enrol_page(request, user, secret, 200, None)

    async def authenticator(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        session = await get_session(request)
        secret = session.get(_NEW_SECRET)
        if not isinstance(secret, str):
            raise web.HTTPSeeOther("/account/authenticator")
        now = self._clock.now()
        if not await self._factors.enrol(user.id, secret, form.get("code", ""), now, replace=True):
            return await self._enrol_page(request, user, secret, 400, ENROL_REFUSED)
        session.pop(_NEW_SECRET, None)
        await events.record(
            self._db, events.event(events.FACTOR_ENROLLED, events.actor_of(user.id), now, factor="totp", replaced=True)
        )
        # ASVS 7.4.3: a changed factor ends the other sessions (one may be the reason it changed).
        await self._sessions.records.end_all(user.id, "factor_changed", now, events.actor_of(user.id), keep=record.id)
        log.info("user %s set up a new authenticator", user.id)
        return await self._done(
            request,
            "Your new authenticator app is set up; the old one no longer works. Your other sessions have ended.",
        )

    async def recovery_codes(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        now = self._clock.now()
        codes = await self._factors.new_recovery_codes(user.id, now)
        await events.record(
            self._db, events.event(events.RECOVERY_CODES_MADE, events.actor_of(user.id), now, count=len(codes))
        )
        return await self._page(
            request,
            "recovery_codes.html",
            user,
            codes=codes,
            count=RECOVERY_CODES,
            action="/account/recovery-codes/saved",
        )

    async def codes_saved(
        self, request: web.Request, user: User, record: SessionRecord, form: Mapping[str, str]
    ) -> web.StreamResponse:
        if form.get("saved") != "yes":
            return await self._page(
                request,
                "message.html",
                user,
                400,
                title="Save your recovery codes first",
                paragraphs=["Go back, save or print the codes, tick the box to say you have, and continue."],
            )
        now = self._clock.now()
        await self._factors.codes_saved(user.id, now)
        await self._sessions.records.end_all(user.id, "factor_changed", now, events.actor_of(user.id), keep=record.id)
        return await self._done(
            request, "Your new recovery codes are saved. The old ones no longer work. Your other sessions have ended."
        )
