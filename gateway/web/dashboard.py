"""The staff web pages: the duty dashboard, a referral, acknowledge and close (signing in and out
is gateway.web.sign_in_pages').

GET /dashboard, GET /referrals/{id}, GET /referrals/{id}/attachments/{n}, GET /referrals/{id}/raw
(the stored message of one that could not be read, gateway.web.unreadable),
POST /referrals/{id}/acknowledge, POST /referrals/{id}/close, POST /referrals/{id}/hold and
POST /referrals/{id}/hold/lift (coordinators: a legal hold, gateway.report.holds); the structured
answers' POSTs are gateway.web.answer_pages', on the same plumbing.

Decisions, each for a reason:
- Sessions, expiry and CSRF are gateway.web.session's: every POST checks the token first, before
  even who is signed in, so a forged post learns nothing. A half-signed-in session (password
  given, second factor not yet) has no user here, so it is sent to /sign-in like a visitor.
- Nothing personal in any URL: a referral is addressed by its internal random id, never by the
  child's name or NHS number or even the reference; redirects go to fixed paths; the sign-in page
  takes no "next" parameter (no open redirect, nothing to leak).
- A referral the user may not see and one that does not exist get the same 403 page: the answer
  does not tell a duty worker that a referral exists in another team.
- Every view of content is an audited event ("viewed", "attachment_opened", "raw_message_opened"),
  written before the content is sent: if the audit cannot be written the content is not shown.
- Every value from a referral is escaped by Jinja's autoescape and wrapped in <bdi>, so a
  right-to-left override in a name cannot reorder the words around it.
- The pages reuse the public form's layout (templates/web/form/base.html) and Jinja environment,
  with a CSP nonce for the one module script, set in on_response_prepare after the site-wide headers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from gateway.config import Config
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.lifecycle import IllegalTransition, State
from gateway.core.model import OUTCOMES
from gateway.core.records import ReferralRecord
from gateway.core.sealed import Sealed
from gateway.history.keys import Hasher, load_key
from gateway.open.identity import Identity
from gateway.outbox.compose import triage_team
from gateway.outbox.tokens import AckSigner
from gateway.report import holds
from gateway.report.plain_words import state_words
from gateway.report.timeline import timeline
from gateway.staff.users import Role, User, Users
from gateway.track.acks import Tracker
from gateway.track.close import NotAcknowledged, close
from gateway.web import answers_data
from gateway.web import dashboard_data as data
from gateway.web.headers import page_headers
from gateway.web.session import WebSessions, require_csrf
from gateway.web.templates import StaffPages
from gateway.web.unreadable import raw_message, unreadable

log = logging.getLogger(__name__)

_FORM: web.RequestKey[dict[str, str]] = web.RequestKey("dashboard_form", dict)
_ERROR: web.RequestKey[str] = web.RequestKey("dashboard_error", str)
_DOWNLOAD: web.RequestKey[bool] = web.RequestKey("dashboard_download", bool)


Handler = Callable[[web.Request, User], Awaitable[web.StreamResponse]]


class DashboardPages:
    def __init__(
        self,
        config: Config,
        db: Database,
        sealed: Sealed,
        signer: AckSigner,
        tracker: Tracker,
        identity: Identity,
        users: Users,
        sessions: WebSessions,
        clock: Clock,
    ) -> None:
        self._config = config
        self._s = config.settings
        self._db = db
        self._sealed = sealed
        self._signer = signer
        self._tracker = tracker
        self._identity = identity
        self._users = users
        self._clock = clock
        self._hasher = Hasher(load_key(config.keys_dir))
        self._sessions = sessions
        self._pages = StaffPages(config)

    def routes(self, app: web.Application) -> None:
        """Needs gateway.web.session.setup_sessions(app, ...) on the same app, the sign-in pages
        (gateway.web.sign_in_pages) and the /assets route that ReferralForm.routes adds."""
        app.router.add_get("/dashboard", self._signed_in(self.dashboard))
        app.router.add_get("/referrals/{referral_id}", self._signed_in(self.referral))
        app.router.add_get("/referrals/{referral_id}/attachments/{index}", self._signed_in(self.attachment))
        app.router.add_get("/referrals/{referral_id}/raw", self._signed_in(self.raw))
        app.router.add_post("/referrals/{referral_id}/acknowledge", self._posted(self.acknowledge))
        app.router.add_post("/referrals/{referral_id}/close", self._posted(self.close))
        app.router.add_post("/referrals/{referral_id}/hold", self._posted(self.hold))
        app.router.add_post("/referrals/{referral_id}/hold/lift", self._posted(self.lift_hold))
        app.on_response_prepare.append(self._headers)

    # --- plumbing ------------------------------------------------------------------------------

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if _DOWNLOAD in request:  # after the site-wide headers, which would replace it
            response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
            return
        await page_headers(request, response)

    async def _page(
        self, request: web.Request, template: str, status: int = 200, user: User | None = None, **context: object
    ) -> web.Response:
        return await self._pages.render(request, template, status, user, **context)

    async def _forbidden(self, request: web.Request, user: User) -> web.Response:
        return await self._page(request, "forbidden.html", 403, user)

    def _signed_in(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            user = await self._sessions.current_user(request)
            if user is None:
                raise web.HTTPSeeOther("/sign-in")
            return await handler(request, user)

        return wrapped

    def _posted(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A POST: the CSRF token first, then who is signed in."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            form = await request.post()
            await require_csrf(request, form)
            user = await self._sessions.current_user(request)
            if user is None:
                raise web.HTTPSeeOther("/sign-in")
            request[_FORM] = {k: str(v) for k, v in form.items() if isinstance(v, str)}
            return await handler(request, user)

        return wrapped

    async def _visible(self, request: web.Request, user: User) -> ReferralRecord | None:
        row = await data.load(self._db, request.match_info["referral_id"])
        if row is None or not data.may_see(user, row.team_id, triage_team(self._s).id):
            return None
        return row

    # --- the dashboard and a referral ----------------------------------------------------------

    async def dashboard(self, request: web.Request, user: User) -> web.StreamResponse:
        now = self._clock.now()
        queues = await data.queues(self._db, self._s, user, now)
        return await self._page(
            request, "dashboard.html", user=user, queues=queues, now=now, admin=user.role is Role.ADMIN
        )

    async def referral(self, request: web.Request, user: User) -> web.StreamResponse:
        row = await self._visible(request, user)
        if row is None:
            return await self._forbidden(request, user)
        now = self._clock.now()
        # The audit first: no content leaves without its record.
        await data.record(self._db, row.id, user, now, "viewed")
        log.info("dashboard: user %s viewed referral %s", user.id, row.reference)
        content = data.open_content(self._sealed, row.id, row.content)
        unread = await unreadable(self._db, self._sealed, row, content)
        if unread is None or not unread.quarantined:
            files, files_note = await data.attachments(self._db, self._sealed, self._identity, row)
        else:  # its parts are listed under "What was sent": none could be opened as a file
            files, files_note = (), "None could be opened: the parts of the message are listed above."
        names = {u.id: u.display_name for u in await self._users.all()}
        earlier = []
        if content:
            earlier = await data.earlier(self._db, self._sealed, self._s, user, row, content.child, self._hasher)
        return await self._page(
            request,
            "referral.html",
            user=user,
            row=row,
            team=self._s.team_name(row.team_id) if row.team_id else "not routed",
            left=data.QueueRow(
                row.id,
                row.reference,
                row.urgency,
                row.state,
                bool(row.incomplete),
                row.received_at,
                row.due_at,
                (row.due_at - now) if row.due_at else None,
                "",
            ),
            content=content,
            unreadable=unread,
            files=files,
            files_note=files_note,
            timeline=await timeline(self._db, self._s, row.id, names),
            earlier=earlier,
            concern=await data.concern_banner(self._db, row),
            may_acknowledge=row.state in data.ACKNOWLEDGEABLE and user.role is not Role.ADMIN,
            may_close=row.state == State.ACKNOWLEDGED,
            outcomes=OUTCOMES,
            purged_notice=await data.purged_notice(self._db, row),
            repeat_of=await data.repeat_of(self._db, row),
            may_hold=user.role is Role.COORDINATOR and row.purged_at is None,
            hold_reasons=holds.REASONS,
            error=request.get(_ERROR),
            # Structured answers (gateway.web.answer_pages): the forms, the answers given, replies.
            answer_form=request.get(answers_data.ANSWER_FORM, ""),
            answers=await answers_data.view(self._db, self._sealed, self._s, row, user, names),
        )

    async def attachment(self, request: web.Request, user: User) -> web.StreamResponse:
        row = await self._visible(request, user)
        if row is None:
            return await self._forbidden(request, user)
        files, _ = await data.attachments(self._db, self._sealed, self._identity, row)
        index = request.match_info["index"]
        if not index.isdigit() or not 1 <= int(index) <= len(files):
            return await self._forbidden(request, user)
        item = files[int(index) - 1]
        await data.record(self._db, row.id, user, self._clock.now(), "attachment_opened", index=int(index))
        # Sent for download only, never shown by the browser from our origin: it is the sender's file.
        request[_DOWNLOAD] = True
        return web.Response(
            body=item.data,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f"attachment; filename=\"attachment-{index}\"; filename*=UTF-8''"
                + quote(item.filename, safe=""),
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def raw(self, request: web.Request, user: User) -> web.StreamResponse:
        """The stored message of a referral that could not be read, as it came, for a person to
        open in a mail client or pass on. Only for one that could not be read: a readable one's
        content is on its page. Audited before it is sent, like every view of content."""
        row = await self._visible(request, user)
        content = data.open_content(self._sealed, row.id, row.content) if row is not None else None
        if row is None or await unreadable(self._db, self._sealed, row, content) is None:
            return await self._forbidden(request, user)
        raw = await raw_message(self._db, self._sealed, row)
        if raw is None:
            return await self._forbidden(request, user)
        await data.record(self._db, row.id, user, self._clock.now(), "raw_message_opened", size=len(raw))
        log.info("dashboard: user %s downloaded the stored message of referral %s", user.id, row.reference)
        request[_DOWNLOAD] = True
        return web.Response(
            body=raw,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="referral-{row.reference}.eml"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    # --- acknowledge and close -----------------------------------------------------------------

    async def acknowledge(self, request: web.Request, user: User) -> web.StreamResponse:
        row = await self._visible(request, user)
        if row is None or user.role is Role.ADMIN:
            return await self._forbidden(request, user)
        if row.state not in data.ACKNOWLEDGEABLE:
            return await self._again(
                request, user, f"This referral cannot be acknowledged now. Its state: {state_words(row.state)}."
            )
        try:
            await self._tracker.acknowledge(
                row.id, self._signer.recipient_hash("user:" + user.id), user.display_name, via="dashboard"
            )
        except IllegalTransition:  # it moved on between the read and the write
            return await self._again(request, user, "This referral changed meanwhile: look again.")
        log.info("dashboard: user %s acknowledged referral %s", user.id, row.reference)
        raise web.HTTPSeeOther(f"/referrals/{row.id}")

    async def close(self, request: web.Request, user: User) -> web.StreamResponse:
        row = await self._visible(request, user)
        if row is None or user.role is Role.ADMIN:
            return await self._forbidden(request, user)
        outcome = request[_FORM].get("outcome", "")
        if outcome not in OUTCOMES:
            return await self._again(request, user, "Select the outcome")
        try:
            reference = await close(self._db, self._tracker.referrers, row.id, user.id, outcome, self._clock.now())
        except (NotAcknowledged, IllegalTransition):
            return await self._again(request, user, "Acknowledge the referral before you close it.")
        log.info("dashboard: referral %s closed by user %s (%s)", reference, user.id, outcome)
        raise web.HTTPSeeOther(f"/referrals/{row.id}")

    # --- a legal hold (coordinators) ------------------------------------------------------------

    async def hold(self, request: web.Request, user: User) -> web.StreamResponse:
        row = await self._visible(request, user)
        if row is None or user.role is not Role.COORDINATOR:
            return await self._forbidden(request, user)
        form = request[_FORM]
        try:
            await holds.set_hold(
                self._db, user, row.id, form.get("reason", ""), form.get("matter", ""), self._clock.now(), "dashboard"
            )
        except holds.HoldError as exc:
            return await self._again(request, user, str(exc))
        log.info("dashboard: legal hold set on referral %s by user %s", row.reference, user.id)
        raise web.HTTPSeeOther(f"/referrals/{row.id}")

    async def lift_hold(self, request: web.Request, user: User) -> web.StreamResponse:
        row = await self._visible(request, user)
        if row is None or user.role is not Role.COORDINATOR:
            return await self._forbidden(request, user)
        try:
            await holds.lift_hold(self._db, user, row.id, self._clock.now(), "dashboard")
        except holds.HoldError as exc:
            return await self._again(request, user, str(exc))
        log.info("dashboard: legal hold lifted on referral %s by user %s", row.reference, user.id)
        raise web.HTTPSeeOther(f"/referrals/{row.id}")

    # --- for the answer pages (gateway.web.answer_pages), which share this plumbing --------------

    def posted(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        return self._posted(handler)

    async def visible(self, request: web.Request, user: User) -> ReferralRecord | None:
        return await self._visible(request, user)

    async def forbidden(self, request: web.Request, user: User) -> web.Response:
        return await self._forbidden(request, user)

    async def again(self, request: web.Request, user: User, error: str) -> web.StreamResponse:
        return await self._again(request, user, error)

    @staticmethod
    def form(request: web.Request) -> dict[str, str]:
        return request[_FORM]

    @property
    def triage_id(self) -> str:
        return triage_team(self._s).id

    async def _again(self, request: web.Request, user: User, error: str) -> web.StreamResponse:
        """The referral page again with an error (status 400), after the usual audited view."""
        request[_ERROR] = error
        response = await self.referral(request, user)
        response.set_status(400)
        return response
