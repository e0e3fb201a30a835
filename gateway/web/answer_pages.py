"""The structured answers on the referral page (issue 15; what each does: gateway.track.answers).

POST /referrals/{id}/answer/not-ours      destination=team:<id> | neighbour:<name>, reason
POST /referrals/{id}/answer/more-info     reason
POST /referrals/{id}/answer/duplicate     of=<reference>, reason

Each goes through the dashboard's own plumbing (gateway.web.dashboard): the CSRF token first, then
who is signed in, then whether they may see the referral (the same 403 for one that does not exist).
Administrators answer nothing. A refused answer shows the referral page again with the error next
to the form that was sent (status 400) and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.staff.users import Role, User
from gateway.track.answers import AnswerError, Answers
from gateway.web import dashboard_data as data
from gateway.web.answers_data import ANSWER_FORM
from gateway.web.dashboard import DashboardPages

log = logging.getLogger(__name__)

Answer = Callable[[User, str, dict[str, str]], Awaitable[object]]


class AnswerPages:
    def __init__(self, dashboard: DashboardPages, answers: Answers) -> None:
        self._dashboard = dashboard
        self._answers = answers

    def routes(self, app: web.Application) -> None:
        """After DashboardPages.routes on the same app."""
        posted = self._dashboard.posted
        app.router.add_post(
            "/referrals/{referral_id}/answer/not-ours", posted(self._handler("not-ours", self._not_ours))
        )
        app.router.add_post("/referrals/{referral_id}/answer/more-info", posted(self._handler("more-info", self._more)))
        app.router.add_post(
            "/referrals/{referral_id}/answer/duplicate", posted(self._handler("duplicate", self._duplicate))
        )

    def _handler(self, form_name: str, answer: Answer) -> Callable[[web.Request, User], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request, user: User) -> web.StreamResponse:
            row = await self._dashboard.visible(request, user)
            if row is None or user.role is Role.ADMIN:
                return await self._dashboard.forbidden(request, user)
            try:
                await answer(user, row.id, self._dashboard.form(request))
            except AnswerError as exc:
                # The page shows the error beside the field at fault, and the summary links to it.
                request[ANSWER_FORM] = f"{form_name}-{exc.field}" if exc.field else form_name
                return await self._dashboard.again(request, user, str(exc))
            log.info("dashboard: user %s answered referral %s (%s)", user.id, row.reference, form_name)
            raise web.HTTPSeeOther(f"/referrals/{row.id}")

        return handle

    async def _not_ours(self, user: User, referral_id: str, form: dict[str, str]) -> object:
        kind, _, target = form.get("destination", "").partition(":")
        reason = form.get("reason", "")
        if kind == "team":
            return await self._answers.to_team(user.id, referral_id, target, reason)
        if kind == "neighbour":
            return await self._answers.to_neighbour(user.id, user.display_name, referral_id, target, reason)
        raise AnswerError(
            "Choose where the referral should go: another of our teams, or a neighbouring authority", "destination"
        )

    async def _more(self, user: User, referral_id: str, form: dict[str, str]) -> object:
        return await self._answers.more_information(user.id, referral_id, form.get("reason", ""))

    async def _duplicate(self, user: User, referral_id: str, form: dict[str, str]) -> object:
        triage = self._dashboard.triage_id

        def may_see(team_id: str | None) -> bool:
            return data.may_see(user, team_id, triage)

        return await self._answers.duplicate(user.id, referral_id, form.get("of", ""), form.get("reason", ""), may_see)
