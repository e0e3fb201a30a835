"""The administrator's pages: staff accounts, and a read-only view of the loaded config.

GET /admin/users, POST /admin/users (add), POST /admin/users/{user_id}/disable,
POST /admin/users/{user_id}/reset-password, POST /admin/users/{user_id}/reset-factor,
POST /admin/users/{user_id}/end-sessions, GET /admin/config.

Decisions, each for a reason:
- Only role admin: a duty worker or coordinator gets the staff 403 page; a visitor who is not
  signed in is sent to /sign-in. Sessions, expiry and CSRF are gateway.web.session's, as on the
  dashboard: every POST checks the token first, before even who is signed in.
- Nothing personal in any URL: an account is addressed by its internal random id, never by the
  username; every answer to a change is a 303 to the fixed /admin/users, with the confirmation
  carried in the session.
- No password or hash is ever shown, echoed back into a form or logged; logs name user ids only.
  An administrator cannot disable their own account (the last administrator would lock everyone
  out of user management).
- A password reset never touches the second factor: resetting the authenticator is its own act,
  which also removes the recovery codes and ends the user's sessions; they set up a new app at their
  next sign-in. Both, disabling, and ending a user's sessions are in the audit chain as "admin:<id>".
- The config view is for checking, not a copy of the file: members and coordinators by name with
  the channels they have ("email, SMS"), never their addresses or numbers; partners by name with
  counts; no secret (token, password file, key, account SID). Team mailboxes and duty phones are
  the council's public contact points, given to every referrer, so they are shown.
- Every value is autoescaped and, where it comes from outside (a name, a note), isolated with
  `| user` (gateway.web.templates.user_text) so a right-to-left override cannot reorder the page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from aiohttp import web

from gateway.config import Config
from gateway.core.clock import Clock, uk_time
from gateway.core.db import Database
from gateway.staff import events
from gateway.staff.factors import Factors
from gateway.staff.passwords import CONTROL, PasswordPolicyError, check_password
from gateway.staff.users import Role, User, UserError, UsernameTaken, Users, normalise_username
from gateway.web.config_view import config_view
from gateway.web.headers import add_page_headers
from gateway.web.session import WebSessions, get_session, require_csrf
from gateway.web.templates import StaffPages

log = logging.getLogger(__name__)

_FLASH = "admin_flash"
ROLE_WORDS = {Role.DUTY: "duty worker", Role.COORDINATOR: "coordinator", Role.ADMIN: "administrator"}


@dataclass(frozen=True)
class Posted:
    """What an admin form sent: the first text value of each field, and every team ticked ("teams"
    is the one field with many values). Empty for a GET."""

    fields: Mapping[str, str] = field(default_factory=dict)
    teams: tuple[str, ...] = ()

    def text(self, name: str) -> str:
        return self.fields.get(name, "")


AdminHandler = Callable[[web.Request, User, Posted], Awaitable[web.StreamResponse]]


class AddValues(TypedDict, total=False):
    """The add form's answers to show again; never a password."""

    username: str
    display_name: str
    role: str
    teams: list[str]


class UserRow(TypedDict):
    """A row of the accounts table: what it shows, already in words."""

    id: str
    anchor: str
    username: str
    name: str
    role: str
    teams: list[str]
    active: bool
    disabled_at: str
    locked_until: str
    last_sign_in: str
    self: bool  # the administrator's own account: no disable button
    enrolled: bool  # has an authenticator app set up


@dataclass
class Problems:
    """A refused form: errors by field (anchored in the page), and what to type in again."""

    errors: dict[str, str] = field(default_factory=dict)  # field id -> message
    values: AddValues = field(default_factory=AddValues)
    target: str = ""  # the user id of a per-user form, "" for the add form


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _passwords(form: Posted, username: str, prefix: str, problems: Problems) -> str:
    password, again = form.text("password"), form.text("password_again")
    if not password:
        problems.errors[f"{prefix}password"] = "Enter the password"
    elif password != again:
        problems.errors[f"{prefix}password-again"] = "The two passwords are not the same; type the same one twice"
    else:
        try:
            check_password(password, username)
        except PasswordPolicyError as exc:
            problems.errors[f"{prefix}password"] = _sentence(str(exc))
    return password


class AdminPages:
    def __init__(
        self, config: Config, db: Database, users: Users, factors: Factors, sessions: WebSessions, clock: Clock
    ) -> None:
        self._config = config
        self._db = db
        self._factors = factors
        self._s = config.settings
        self._users = users
        self._sessions = sessions
        self._clock = clock
        self._pages = StaffPages(config)

    def routes(self, app: web.Application) -> None:
        """Needs gateway.web.session.setup_sessions(app, ...) on the same app, and the sign-in
        pages of gateway.web.dashboard.DashboardPages."""
        app.router.add_get("/admin/users", self._admin(self.users_page))
        app.router.add_post("/admin/users", self._admin(self.add, post=True))
        app.router.add_post("/admin/users/{user_id}/disable", self._admin(self.disable, post=True))
        app.router.add_post("/admin/users/{user_id}/reset-password", self._admin(self.reset, post=True))
        app.router.add_post("/admin/users/{user_id}/reset-factor", self._admin(self.reset_factor, post=True))
        app.router.add_post("/admin/users/{user_id}/end-sessions", self._admin(self.end_sessions, post=True))
        app.router.add_get("/admin/config", self._admin(self.config_page))
        add_page_headers(app)

    # --- plumbing ------------------------------------------------------------------------------

    async def _page(
        self, request: web.Request, template: str, user: User, status: int = 200, **context: object
    ) -> web.Response:
        return await self._pages.render(request, template, status, user, **context)

    def _admin(
        self, handler: AdminHandler, post: bool = False
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            form = Posted()
            if post:  # the CSRF token first, then who is signed in: a forged post learns nothing
                posted = await request.post()
                await require_csrf(request, posted)
                fields: dict[str, str] = {}
                teams: tuple[str, ...] = ()
                for name in posted:
                    values = [v for v in posted.getall(name) if isinstance(v, str)]  # not uploaded files
                    if name == "teams":
                        teams = tuple(values)
                    else:
                        fields[name] = values[0] if values else ""
                form = Posted(fields, teams)
            user = await self._sessions.current_user(request)
            if user is None:
                raise web.HTTPSeeOther("/sign-in")
            if user.role is not Role.ADMIN:
                log.info("admin pages: user %s (%s) refused", user.id, user.role.value)
                return await self._page(request, "forbidden.html", user, 403)
            return await handler(request, user, form)

        return wrapped

    async def _done(self, request: web.Request, flash: str) -> web.StreamResponse:
        (await get_session(request))[_FLASH] = flash
        raise web.HTTPSeeOther("/admin/users")

    # --- users ---------------------------------------------------------------------------------

    async def users_page(
        self,
        request: web.Request,
        user: User,
        form: Posted,
        problems: Problems | None = None,
        status: int = 200,
    ) -> web.StreamResponse:
        flash = (await get_session(request)).pop(_FLASH, None) if problems is None else None
        now = self._clock.now()
        rows: list[UserRow] = [
            {
                "id": u.id,
                "anchor": f"user-{u.id}",
                "username": u.username,
                "name": u.display_name,
                "role": ROLE_WORDS[u.role],
                "teams": [self._s.team_name(t) for t in u.teams],
                "active": u.active,
                "disabled_at": uk_time(u.disabled_at) if u.disabled_at else "",
                "locked_until": uk_time(u.locked_until) if u.locked_until and u.locked(now) else "",
                "last_sign_in": uk_time(u.last_sign_in_at) if u.last_sign_in_at else "never",
                "self": u.id == user.id,
                "enrolled": (await self._factors.state(u.id)).enrolled,
            }
            for u in await self._users.all()
        ]
        problems = problems or Problems()
        return await self._page(
            request,
            "admin_users.html",
            user,
            status,
            error=bool(problems.errors),
            error_list=[{"text": text, "href": f"#{key}"} for key, text in problems.errors.items()],
            errors=problems.errors,
            values=problems.values,
            target=problems.target,
            flash=flash if isinstance(flash, str) else "",
            rows=rows,
            teams=[(t.id, t.name) for t in self._s.teams],
            roles=[(r.value, ROLE_WORDS[r]) for r in Role],
        )

    async def add(self, request: web.Request, user: User, form: Posted) -> web.StreamResponse:
        username_text = form.text("username")
        name = form.text("display_name")
        role_text = form.text("role")
        chosen = list(form.teams)
        problems = Problems(
            values={"username": username_text, "display_name": name, "role": role_text, "teams": chosen}
        )
        username = ""
        try:
            username = normalise_username(username_text)
        except UserError:
            problems.errors["add-username"] = (
                "Enter a username of 2 to 64 letters, digits, dots, hyphens, underscores or @, starting with a "
                "letter or digit (for example the person's staff login, like a.khan)"
            )
        if not name.strip() or len(name) > 200 or CONTROL.search(name):
            problems.errors["add-display-name"] = (
                "Enter the person's name as it should be shown, up to 200 characters, without control characters"
            )
        role = next((r for r in Role if r.value == role_text), None)
        known = {t.id for t in self._s.teams}
        teams = [t for t in dict.fromkeys(chosen) if t in known]
        if role is None:
            problems.errors["add-role"] = "Select a role"
        elif role is Role.DUTY and not teams:
            problems.errors["add-teams"] = "Select at least one team for a duty worker"
        elif role is not Role.DUTY and teams:
            problems.errors["add-teams"] = f"Only duty workers have teams; clear the teams for a {ROLE_WORDS[role]}"
        password = _passwords(form, username or username_text, "add-", problems)
        if not problems.errors and role is not None:
            try:
                added = await self._users.add(username, name, role, teams, password, self._clock.now())
            except UsernameTaken:
                problems.errors["add-username"] = "There is already a user with this username; choose another"
            except UserError as exc:  # a rule of gateway.staff.users not mirrored above
                problems.errors["add-username"] = _sentence(str(exc))
            else:
                log.info("admin %s added user %s (%s)", user.id, added.id, role.value)
                return await self._done(request, f"Added {ROLE_WORDS[role]} {added.username}.")
        log.info("admin %s: adding a user refused (%s)", user.id, ", ".join(problems.errors))
        return await self.users_page(request, user, form, problems, 400)

    async def _target(self, request: web.Request, user: User, form: Posted) -> User | web.StreamResponse:
        target = await self._users.get(request.match_info["user_id"])
        if target is None:
            problems = Problems(errors={"users": "There is no such user; the list below shows who there is"})
            return await self.users_page(request, user, form, problems, 404)
        return target

    async def disable(self, request: web.Request, user: User, form: Posted) -> web.StreamResponse:
        target = await self._target(request, user, form)
        if not isinstance(target, User):
            return target
        if target.id == user.id:
            problems = Problems(errors={"users": "You cannot disable your own account; ask another administrator"})
            return await self.users_page(request, user, form, problems, 400)
        if target.active:
            now = self._clock.now()
            await self._users.disable(target.username, now)
            await events.record(
                self._db, events.event(events.SESSION_ENDED, f"admin:{user.id}", now, user=target.id, why="disabled")
            )
            log.info("admin %s disabled user %s", user.id, target.id)
        return await self._done(request, f"Disabled {target.username}: they are signed out and cannot sign in.")

    async def reset(self, request: web.Request, user: User, form: Posted) -> web.StreamResponse:
        target = await self._target(request, user, form)
        if not isinstance(target, User):
            return target
        problems = Problems(target=target.id)
        password = _passwords(form, target.username, f"user-{target.id}-", problems)
        if problems.errors:
            log.info("admin %s: password reset of user %s refused", user.id, target.id)
            return await self.users_page(request, user, form, problems, 400)
        now = self._clock.now()
        await self._users.reset_password(target.username, password, now)
        await events.record(
            self._db, events.event(events.PASSWORD_CHANGED, f"admin:{user.id}", now, user=target.id, by="admin")
        )
        log.info("admin %s reset the password of user %s", user.id, target.id)
        return await self._done(
            request,
            f"New password set for {target.username}: their sessions have ended and the account is unlocked. "
            "Their authenticator app is unchanged.",
        )

    async def reset_factor(self, request: web.Request, user: User, form: Posted) -> web.StreamResponse:
        target = await self._target(request, user, form)
        if not isinstance(target, User):
            return target
        now = self._clock.now()
        if await self._factors.reset(target.id):
            await self._users.end_sessions(target.id)  # a session signed in with the old app ends too
            await events.record(self._db, events.event(events.FACTOR_RESET, f"admin:{user.id}", now, user=target.id))
            log.info("admin %s reset the authenticator of user %s", user.id, target.id)
        return await self._done(
            request,
            f"Authenticator reset for {target.username}: their sessions have ended, their recovery codes no longer "
            "work, and they set up a new app at their next sign-in.",
        )

    async def end_sessions(self, request: web.Request, user: User, form: Posted) -> web.StreamResponse:
        target = await self._target(request, user, form)
        if not isinstance(target, User):
            return target
        count = await self._sessions.records.end_all(target.id, "admin", self._clock.now(), f"admin:{user.id}")
        log.info("admin %s ended %d sessions of user %s", user.id, count, target.id)
        return await self._done(request, f"Ended {count} session{'s' if count != 1 else ''} of {target.username}.")

    # --- the config ----------------------------------------------------------------------------

    async def config_page(self, request: web.Request, user: User, form: Posted) -> web.StreamResponse:
        return await self._page(request, "admin_config.html", user, **config_view(self._config, self._clock.now()))
