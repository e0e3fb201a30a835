"""Escalation: whom each step of a chain alerts, and when the next step falls due. Pure functions
over config and the clock's instant; the durable rows (gateway.core.schema.deadlines, kind 'step') and
the alerts are written by the pipeline (the first step, at routing) and the tracker (the rest).

A step whose targets have nobody reachable on its channels is skipped at once, not waited out: a
chain that waits an hour on an empty rota is an hour lost for a child.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.config import Settings
from gateway.config.duty import Escalation, EscalationStep, Person, Team
from gateway.duty.deadline_rules import due_at
from gateway.duty.rota import on_duty
from gateway.duty.schedule import ALWAYS_OPEN, Schedule


@dataclass(frozen=True)
class Recipient:
    key: str  # stable id: "mailbox:mash", "member:mash/asha", "coordinator:cora"
    name: str
    team_id: str | None
    email: str | None
    mobile: str | None
    openpgp: str | None = None
    smime_cert: Path | None = None

    @property
    def protectable(self) -> bool:
        return bool(self.openpgp or self.smime_cert)


@dataclass(frozen=True)
class Send:
    recipient: Recipient
    channel: str  # email | sms


@dataclass(frozen=True)
class Fired:
    """One step as it fired: what it sent, or that it was skipped."""

    step: int
    round: int
    notify: tuple[str, ...]
    sends: tuple[Send, ...]

    @property
    def skipped(self) -> bool:
        return not self.sends

    def describe(self) -> dict[str, object]:
        return {
            "step": self.step + 1,
            "round": self.round,
            "notify": list(self.notify),
            "alerted": sorted({f"{s.recipient.name} ({s.channel})" for s in self.sends}),
            **({"skipped": "nobody reachable on duty for this step"} if self.skipped else {}),
        }


@dataclass(frozen=True)
class NextStep:
    """When the chain's next step falls due: a durable `deadlines` row of kind 'step'."""

    chain: str
    step: int  # 0-based
    round: int  # how many times that step has been sent before (repeats)
    due_at: datetime

    def row(self, referral_id: str) -> dict[str, object]:
        """The deadlines row (every key, as an executemany insert takes its columns from the first row)."""
        return {
            "referral_id": referral_id,
            "kind": "step",
            "due_at": self.due_at,
            "chain": self.chain,
            "step": self.step,
            "round": self.round,
        }


@dataclass(frozen=True)
class Plan:
    fired: tuple[Fired, ...]  # in order; skipped steps included
    next_step: NextStep | None  # None: the chain has ended


def mailbox(team: Team) -> Recipient:
    return Recipient(f"mailbox:{team.id}", team.name, team.id, team.email, None, team.openpgp, team.smime_cert)


def person(team: Team | None, someone: Person, kind: str = "member") -> Recipient:
    key = f"{kind}:{team.id}/{someone.id}" if team else f"{kind}:{someone.id}"
    return Recipient(
        key, someone.name, team.id if team else None, someone.email, someone.mobile, someone.openpgp, someone.smime_cert
    )


def on_duty_members(team: Team, at: datetime) -> list[Person]:
    if team.rota is None:
        return []
    return [m for m in (team.member(i) for i in on_duty(team.rota.to_rota(), at)) if m is not None]


def targets(
    settings: Settings, step: EscalationStep, team: Team, out_of_hours: Team | None, at: datetime
) -> list[Send]:
    """Everyone the step names, reachable on its channels, each once per channel."""
    people: list[Recipient] = []
    for target in step.notify:
        if target == "mailbox":
            people.append(mailbox(team))
        elif target == "on-duty":
            people += [person(team, m) for m in on_duty_members(team, at)]
        elif target == "team":
            people += [mailbox(team)] + [person(team, m) for m in team.members]
        elif target == "managers":
            people += [person(team, m) for m in team.members if m.manager]
        elif target == "out-of-hours":
            other = out_of_hours or team
            people += [person(other, m) for m in on_duty_members(other, at)]
        elif target == "coordinators":
            people += [person(None, c, "coordinator") for c in settings.coordinators]
    sends: list[Send] = []
    seen: set[tuple[str, str]] = set()
    for recipient in people:
        for channel in step.channels:
            address = recipient.email if channel == "email" else recipient.mobile
            if address and (address, channel) not in seen:
                seen.add((address, channel))
                sends.append(Send(recipient, channel))
    return sends


def advance(chain: Escalation, step: int, round_: int) -> tuple[int, int] | None:
    """The step after (step, round): a repeat, the next step, the last step again, or the end."""
    current = chain.steps[step]
    if round_ < current.repeat:
        return step, round_ + 1
    if step + 1 < len(chain.steps):
        return step + 1, 0
    if current.until_acknowledged:
        return step, round_ + 1
    return None


def wait_until(step: EscalationStep, fired_at: datetime, deadline: datetime, schedule: Schedule | None) -> datetime:
    """When the step after this one falls due. 'deadline' waits for the acknowledgement deadline
    (or goes on at once if that has passed); working time counts on the team's schedule."""
    rule = step.wait_rule()
    if rule is None:
        return max(deadline, fired_at)
    return due_at(rule, fired_at, schedule or ALWAYS_OPEN)


def plan(
    settings: Settings,
    chain: Escalation,
    team: Team,
    out_of_hours: Team | None,
    start: tuple[int, int],
    now: datetime,
    deadline: datetime,
    schedule: Schedule | None,
) -> Plan:
    """Fire from (step, round) at `now`: skip unreachable steps at once, stop at the first step
    that alerts someone, and say when the next is due."""
    fired: list[Fired] = []
    step, round_ = start
    while True:
        config = chain.steps[step]
        sends = targets(settings, config, team, out_of_hours, now)
        fired.append(Fired(step, round_, config.notify, tuple(sends)))
        last = step + 1 == len(chain.steps)
        if sends:
            following = advance(chain, step, round_)
            if following is None:
                return Plan(tuple(fired), None)
            return Plan(tuple(fired), NextStep(chain.id, *following, wait_until(config, now, deadline, schedule)))
        if last and config.until_acknowledged:
            # Nobody to alert now, but someone may come on duty: look again after the wait.
            again = NextStep(chain.id, step, round_ + 1, wait_until(config, now, deadline, schedule))
            return Plan(tuple(fired), again)
        if last:
            return Plan(tuple(fired), None)
        step, round_ = step + 1, 0  # its repeats would find nobody either
