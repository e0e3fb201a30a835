"""Dispatch: route a referral, work out its deadline and fire its escalation chain's steps.

The pipeline calls `first` when a referral is routed (the chain's first step); the tracker calls
`step` when a step row falls due. Both return what to write (alerts, events, the next step's row)
and write nothing themselves, so the caller can commit it in one transaction with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.config import Settings
from gateway.config.duty import Escalation, Team
from gateway.core.model import Problem, Referral, Urgency
from gateway.duty.deadline_rules import due_at as deadline_due
from gateway.duty.schedule import Schedule
from gateway.outbox.alerting import Alerter, AlertFacts, Content
from gateway.outbox.compose import Outgoing
from gateway.route import escalate
from gateway.route.rules import Decision, Facts, route


@dataclass
class Dispatched:
    team: Team
    due_at: datetime
    outgoing: list[Outgoing] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (kind, detail)
    next_step: dict[str, Any] | None = None  # a deadlines row (kind 'step'), without referral_id
    fired: list[dict[str, Any]] = field(default_factory=list)  # what each step did (for the row)
    decision: Decision | None = None
    encryption_failed: list[str] = field(default_factory=list)


def chain_by_id(settings: Settings, chain_id: str | None, team: Team, urgency: Urgency | None) -> Escalation:
    """The chain a step row names; if config no longer has it, the team's current chain."""
    found = next((e for e in settings.escalations if e.id == chain_id), None)
    return found or settings.escalation_of(team, urgency)


class Dispatcher:
    def __init__(self, settings: Settings, alerter: Alerter) -> None:
        self._s = settings
        self._alerter = alerter

    async def first(
        self,
        *,
        referral: Referral,
        referral_id: str,
        reference: str,
        received_at: datetime,
        now: datetime,
        facts: Facts,
        security: dict[str, Any],
        content: Content | None,
    ) -> Dispatched:
        decision = route(referral, self._s, facts)
        team = self._s.team(decision.team_id)
        schedule = self._s.schedule_for(team)
        rule = self._s.deadline_rule(team, referral.urgency)
        due = deadline_due(rule, received_at, schedule)
        chain = self._s.escalation_of(team, referral.urgency)
        out = Dispatched(team=team, due_at=due, decision=decision)
        out.events.append(
            (
                "routed",
                {
                    "route": decision.route.name,
                    "team": team.id,
                    "in_hours": decision.in_hours,
                    "hours": decision.hours,
                    "deadline": rule.describe(),
                    "due_at": due.isoformat(),
                    "escalation": chain.id,
                },
            )
        )
        alert = AlertFacts(
            referral_id,
            reference,
            team,
            decision.route.name,
            referral.urgency,
            referral.problems,
            received_at,
            due,
            now,
            security,
        )
        await self._fire(out, chain, (0, 0), alert, self._out_of_hours(decision), schedule, content)
        return out

    async def step(
        self,
        *,
        referral_id: str,
        reference: str,
        team: Team,
        route_name: str,
        urgency: Urgency | None,
        problems: tuple[Problem, ...],
        received_at: datetime,
        due_at: datetime,
        chain_id: str | None,
        position: tuple[int, int],
        now: datetime,
    ) -> Dispatched:
        chain = chain_by_id(self._s, chain_id, team, urgency)
        step = min(position[0], len(chain.steps) - 1)  # the chain may have shrunk in config since
        out = Dispatched(team=team, due_at=due_at)
        routed = next((r for r in self._s.routes if r.name == route_name), None)
        ooh = self._s.find_team(routed.out_of_hours) if routed and routed.out_of_hours else None
        alert = AlertFacts(referral_id, reference, team, route_name, urgency, problems, received_at, due_at, now)
        await self._fire(out, chain, (step, position[1]), alert, ooh, self._s.schedule_for(team), None)
        return out

    def _out_of_hours(self, decision: Decision) -> Team | None:
        ooh = decision.route.out_of_hours
        return self._s.find_team(ooh) if ooh else None

    async def _fire(
        self,
        out: Dispatched,
        chain: Escalation,
        start: tuple[int, int],
        alert: AlertFacts,
        ooh: Team | None,
        schedule: Schedule,
        content: Content | None,
    ) -> None:
        plan = escalate.plan(self._s, chain, out.team, ooh, start, alert.now, alert.due_at, schedule)
        # The first step that reaches anyone at routing sends the alert (with the content, for
        # those with keys), even when the steps before it were skipped; later ones are reminders.
        first = start == (0, 0)
        for fired in plan.fired:
            detail = {"chain": chain.id, **fired.describe()}
            out.fired.append(detail)
            out.events.append(("escalation_step", detail))
            if fired.skipped:
                continue
            kind = "alert" if first else "reminder"
            first = False
            facts = AlertFacts(**{**alert.__dict__, "step_notify": ", ".join(fired.notify)})
            messages, failures = await self._alerter.alerts(
                kind, fired.sends, facts, content if kind == "alert" else None
            )
            out.outgoing += messages
            out.encryption_failed += failures
        if plan.next_step is not None:
            step, round_, due = plan.next_step
            out.next_step = {"kind": "step", "chain": chain.id, "step": step, "round": round_, "due_at": due}
