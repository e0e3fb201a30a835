"""The coordinators' report as a web page: GET /report, GET /report.csv, POST /report/decisions.

The same rows as `referral-gateway report undelivered` (gateway.report.undelivered), filterable by team,
state and kind of reason, with a form per item to record a decision (gateway.report.decisions) that
takes it off the report. Only a signed-in coordinator may see or decide: a duty worker or an
administrator gets 403, and a visitor who is not signed in is sent to the sign-in page.

Decisions, each for a reason:
- Nothing personal in any URL. The filters are GET parameters, but only known values are
  accepted (a team id from config, a state, a kind code); anything else is dropped, never
  echoed. A decision is a POST whose item key (a referral's internal id or a text's provider
  SID) travels in the body; the answer is a 303 to /report with the same filters, and the
  confirmation is carried in the session (a reference, which is not personal).
- CSRF: every POST carries the session's token (gateway.web.session.require_csrf); 403 and
  nothing recorded without it.
- CSP with a fresh nonce per page, for the one module script that starts govuk-frontend;
  nothing else inline. Set in on_response_prepare after the site-wide headers, as the form does.
- Every value is autoescaped by the template; none is passed to a macro as "html".
- The CSV download is exactly the CLI's CSV for the items shown (report.render).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypedDict
from urllib.parse import urlencode

from aiohttp import web

from gateway.config import Config
from gateway.core.clock import Clock, uk_time
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.sealed import Sealed
from gateway.core.sealing import Sealer
from gateway.report import decisions
from gateway.report import undelivered as report
from gateway.report.answer_counts import answer_counts
from gateway.report.plain_words import state_words
from gateway.staff.users import Role, User
from gateway.web.headers import add_page_headers
from gateway.web.session import WebSessions, get_session, require_csrf
from gateway.web.templates import StaffPages

log = logging.getLogger(__name__)

_FLASH = "report_flash"
RECENT = timedelta(days=7)  # decisions listed under the report this long
# The states an item on the report can be in (the answers' ends, like closed, never are).
_NEVER_ON_IT = (State.ACKNOWLEDGED, State.CLOSED, State.FORWARDED, State.DUPLICATE, State.REPLY)
STATES = (*(s.value for s in State if s not in _NEVER_ON_IT), "held")


@dataclass(frozen=True)
class Filters:
    team: str = ""
    state: str = ""
    kind: str = ""

    def as_query(self) -> dict[str, str]:
        return {k: v for k, v in (("team", self.team), ("state", self.state), ("kind", self.kind)) if v}

    def keep(self, row: report.Row) -> bool:
        return (
            (not self.team or row.team_id == self.team)
            and (not self.state or row.state == self.state)
            and (not self.kind or self.kind in row.kinds)
        )


class ReportPage:
    def __init__(
        self,
        config: Config,
        db: Database,
        sealer: Sealer,
        sessions: WebSessions,
        clock: Clock,
        sign_in_path: str = "/sign-in",
    ) -> None:
        self._db = db
        self._sealed = Sealed(sealer)
        self._sessions = sessions
        self._settings = config.settings
        self._pages = StaffPages(config)  # the staff layout: navigation, who is signed in, sign-out
        self._clock = clock
        self._sign_in = sign_in_path

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/report", self.show)
        app.router.add_get("/report.csv", self.csv)
        app.router.add_post("/report/decisions", self.decide)
        add_page_headers(app)

    # --- helpers -------------------------------------------------------------------------------

    async def _page(
        self, request: web.Request, template: str, status: int = 200, user: User | None = None, **context: object
    ) -> web.Response:
        return await self._pages.render(request, template, status, user, **context)

    async def _coordinator(self, request: web.Request) -> User | web.Response:
        """The signed-in coordinator, or the answer to give instead."""
        user = await self._sessions.current_user(request)
        if user is None:
            if request.method == "GET":
                raise web.HTTPSeeOther(self._sign_in)
            return await self._page(
                request, "message.html", 403, title="Sign in first", paragraphs=["Sign in, then try again."]
            )
        if user.role is not Role.COORDINATOR:
            log.info("user %s (%s) refused the report", user.id, user.role.value)
            return await self._page(
                request,
                "message.html",
                403,
                user,
                title="You cannot see the report",
                paragraphs=["Only coordinators can see the report and record decisions on it."],
            )
        return user

    def _filters(self, query: Mapping[str, str]) -> Filters:
        team = query.get("team", "")
        state = query.get("state", "")
        kind = query.get("kind", "")
        return Filters(
            team=team if any(t.id == team for t in self._settings.teams) else "",
            state=state if state in STATES else "",
            kind=kind if kind in report.KINDS else "",
        )

    async def _answered(self) -> str:
        """Structured answers given in the last 7 days, as counts (gateway.report.answer_counts)."""
        async with self._db.read() as conn:
            return (await answer_counts(conn, self._clock.now() - RECENT)).words()

    async def _rows(self, filters: Filters) -> list[report.Row]:
        rows = await report.undelivered(self._db.engine, self._settings, self._clock.now())
        return [r for r in rows if filters.keep(r)]

    # --- pages ---------------------------------------------------------------------------------

    async def show(self, request: web.Request) -> web.Response:
        found = await self._coordinator(request)
        if isinstance(found, web.Response):
            return found
        session = await get_session(request)
        flash = session.pop(_FLASH, None)
        flash = flash if isinstance(flash, str) else ""
        return await self._report(request, found, self._filters(request.query), flash=flash)

    async def _report(
        self,
        request: web.Request,
        user: User,
        filters: Filters,
        *,
        status: int = 200,
        flash: str = "",
        problem: tuple[str, str, str, str] | None = None,  # item key, error, chosen what, note
    ) -> web.Response:
        rows = await self._rows(filters)
        recent = await decisions.recent(self._db, self._sealed, self._clock.now() - RECENT)
        items = []
        error_list = []
        for n, r in enumerate(rows, 1):
            anchor = f"item-{n}"
            error, what, note = "", "", ""
            if problem is not None and problem[0] == r.key:
                _, error, what, note = problem
                error_list.append({"text": f"{r.reference}: {error}", "href": f"#{anchor}-what"})
            items.append(
                {
                    "anchor": anchor,
                    "key": r.key,
                    "reference": r.reference,
                    "team": r.team,
                    "state": r.state,
                    "received": uk_time(r.received_at),
                    "age": report.human(r.age),
                    "escalation": r.escalation or "-",
                    "reason": r.reason,
                    "error": error,
                    "what": what,
                    "note": note,
                }
            )
        if problem is not None and not error_list:
            error_list.append({"text": problem[1], "href": "#report-items"})
        query = filters.as_query()
        return await self._page(
            request,
            "report.html",
            status,
            user,
            error=bool(error_list),  # the staff layout's "Error:" title prefix
            has_errors=bool(error_list),
            error_list=error_list,
            flash=flash,
            rows=items,
            filtered=bool(query),
            filters=query,
            csv_url="/report.csv" + (f"?{urlencode(query)}" if query else ""),
            team_items=_options([("", "All teams"), *((t.id, t.name) for t in self._settings.teams)], filters.team),
            state_items=_options([("", "All states"), *((s, state_words(s)) for s in STATES)], filters.state),
            kind_items=_options([("", "All reasons"), *report.KINDS.items()], filters.kind),
            what_items=list(decisions.WHAT.items()),
            answered=await self._answered(),
            max_note=decisions.MAX_NOTE,
            recent=[
                {
                    "reference": d.reference,
                    "decided_at": uk_time(d.decided_at),
                    "decided_by": d.decided_by,
                    "what": d.what,
                    "note": d.note or "-",
                }
                for d in recent
            ],
            recent_days=RECENT.days,
        )

    async def csv(self, request: web.Request) -> web.Response:
        found = await self._coordinator(request)
        if isinstance(found, web.Response):
            return found
        rows = await self._rows(self._filters(request.query))
        stamp = self._clock.now().strftime("%Y-%m-%d-%H%M")
        return web.Response(
            text=report.render(rows, "csv"),
            content_type="text/csv",
            charset="utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="referral-report-{stamp}.csv"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def decide(self, request: web.Request) -> web.Response:
        found = await self._coordinator(request)
        if isinstance(found, web.Response):
            return found
        form = await request.post()
        await require_csrf(request, form)
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        filters = self._filters(fields)
        item, what, note = fields.get("item", ""), fields.get("what", ""), fields.get("note", "")
        try:
            done = await decisions.record(self._db, self._sealed, found, item, what, note, self._clock.now())
        except decisions.AlreadyDecided:
            flash = "A decision on that item had been recorded already; it is off the report."
        except decisions.DecisionError as exc:
            return await self._report(request, found, filters, status=400, problem=(item, str(exc), what, note[:5000]))
        else:
            flash = f"Decision recorded for {done.reference}: {decisions.WHAT[done.what]}. It is off the report."
        (await get_session(request))[_FLASH] = flash
        query = filters.as_query()
        raise web.HTTPSeeOther("/report" + (f"?{urlencode(query)}" if query else ""))


class Option(TypedDict):
    """An item of a govukSelect: a dict, as the macro reads it."""

    value: str
    text: str
    selected: bool


def _options(choices: list[tuple[str, str]], chosen: str) -> list[Option]:
    return [{"value": value, "text": text, "selected": value == chosen} for value, text in choices]
