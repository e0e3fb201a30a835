"""Dispatch: route a referral, work out its deadline and fire its escalation chain's steps.

The pipeline calls `first` when a referral is routed (the chain's first step); the deadline tracker
calls `step` when a step row falls due. Both return what to write (alerts, events, the next step's
row) and write nothing themselves, so the caller commits it in one transaction with the rest.
One Dispatcher serves both (gateway.app builds it once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime

from gateway.config import Settings
from gateway.config.duty import Escalation, Team
from gateway.core.model import Problem, Referral, Urgency
from gateway.core.sealed import RoutedAtIntake
from gateway.duty.deadline_rules import due_at as deadline_due
from gateway.duty.schedule import Schedule
from gateway.open.security import Security
from gateway.outbox.alerting import Alerter
from gateway.outbox.compose import AlertContent, AlertFacts, Outgoing
from gateway.route import escalate, handover
from gateway.route.escalate import NextStep
from gateway.route.rules import Decision, Facts, route

Detail = dict[str, object]  # an event's detail: never personal data


@dataclass
class Dispatched:
    team: Team
    due_at: datetime
    outgoing: list[Outgoing] = field(default_factory=list)
    events: list[tuple[str, Detail]] = field(default_factory=list)  # (kind, detail)
    next_step: NextStep | None = None
    fired: list[Detail] = field(default_factory=list)  # what each step did (for the deadline row)
    decision: Decision | None = None
    encryption_failed: list[str] = field(default_factory=list)


def chain_by_id(settings: Settings, chain_id: str | None, team: Team, urgency: Urgency | None) -> Escalation:
    """The chain a step row names; if config no longer has it, the team's current chain."""
    found = next((e for e in settings.escalations if e.id == chain_id), None)
    return found or settings.escalation_of(team, urgency)


def decided(settings: Settings, referral: Referral, facts: Facts, at_intake: RoutedAtIntake | None) -> Decision:
    """Where the referral goes: where its sender was already told (an SMS reply names the team),
    or the rules now. Only if config no longer has that route and team are the rules asked again."""
    if at_intake is not None:
        chosen = next((r for r in settings.routes if r.name == at_intake.route), None)
        if chosen is not None and settings.find_team(at_intake.team) is not None:
            return Decision(chosen, (), at_intake.team, at_intake.in_hours, at_intake.hours)
    return route(referral, settings, facts)


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
        security: Security | None,
        content: AlertContent | None,
        at_intake: RoutedAtIntake | None = None,
    ) -> Dispatched:
        decision = decided(self._s, referral, facts, at_intake)
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

    async def hand_over(
        self, *, alert: AlertFacts, out_of_hours: Team, urgency: Urgency | None
    ) -> tuple[Dispatched, datetime]:
        """At office close: alert the out-of-hours team (its members on duty and its mailbox) and
        say the deadline it has, the earlier of its own from now and the referral's original one."""
        due = min(alert.due_at, handover.deadline_after(self._s, out_of_hours, urgency, alert.now))
        why = "out-of-hours (hand-over at close)"
        facts = dataclasses.replace(
            alert, team=out_of_hours, due_at=due, step_notify=why, handed_over_from=alert.team.name
        )
        sends = handover.recipients(self._s, alert.team, out_of_hours, alert.now)
        out = Dispatched(team=alert.team, due_at=due)
        out.outgoing, out.encryption_failed = await self._alerter.alerts("alert", sends, facts, None)
        rule = self._s.deadline_rule(out_of_hours, handover.level(urgency))
        detail: Detail = {
            "to": out_of_hours.id,
            "from": alert.team.id,
            "alerted": sorted({f"{s.recipient.name} ({s.channel})" for s in sends}),
            "deadline": rule.describe(),
            "due_at": due.isoformat(),
            "was_due_at": alert.due_at.isoformat(),
        }
        out.events.append(("handed_over", detail))
        return out, due

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
        content: AlertContent | None,
    ) -> None:
        plan = escalate.plan(self._s, chain, out.team, ooh, start, alert.now, alert.due_at, schedule)
        # The first step that reaches anyone at routing sends the alert (with the content, for
        # those with keys), even when the steps before it were skipped; later ones are reminders.
        first = start == (0, 0)
        for fired in plan.fired:
            detail: Detail = {"chain": chain.id, **fired.describe()}
            out.fired.append(detail)
            out.events.append(("escalation_step", detail))
            if fired.skipped:
                continue
            kind = "alert" if first else "reminder"
            first = False
            facts = dataclasses.replace(alert, step_notify=", ".join(fired.notify))
            messages, failures = await self._alerter.alerts(
                kind, fired.sends, facts, content if kind == "alert" else None
            )
            out.outgoing += messages
            out.encryption_failed += failures
        out.next_step = plan.next_step
