"""`route --explain`: the routing decision, who is on duty, the deadline and the escalation steps
with their times, for a referral as if it arrived at a given moment and nobody acknowledged it."""

from __future__ import annotations

from datetime import datetime

from gateway.config import Settings
from gateway.core.clock import uk_time
from gateway.core.model import Referral
from gateway.duty.deadline_rules import due_at
from gateway.route import escalate, handover
from gateway.route.rules import Facts, age_band_of, local_authority_of, route


def _who(sends: tuple[escalate.Send, ...]) -> str:
    return ", ".join(f"{s.recipient.name} ({s.channel})" for s in sends) or "nobody reachable: skipped at once"


def explain(referral: Referral, settings: Settings, facts: Facts) -> list[str]:
    at = facts.at
    child = referral.child
    unborn, years = age_band_of(referral, at.date())
    lines = [
        f"referral: urgency {referral.urgency or 'not given'}, category {referral.category or 'not given'}, "
        f"postcode district {child.postcode.split()[0] if child.postcode else 'not given'}, "
        f"local authority {local_authority_of(settings, child.postcode) or 'unknown'}, "
        f"age {unborn or (f'{years} years' if years is not None else 'unknown')}, channel {facts.channel}, "
        f"organisation {facts.organisation or 'not given'}",
        f"received: {uk_time(at)}",
    ]
    if referral.problems:
        lines.append("incomplete:")
        lines += [f"  - {p.field}: {p.message}" for p in referral.problems]
    decision = route(referral, settings, facts)
    lines.append("rules, first match wins:")
    lines += [f"  {'MATCH' if c.matched else 'no   '}  {c.route}: {c.why}" for c in decision.checks]
    team = settings.team(decision.team_id)
    lines.append(f"hours: {decision.hours}")
    lines.append(f"routed to: {team.name} ({team.id}, {team.email}) by route '{decision.route.name}'")
    on_duty = escalate.on_duty_members(team, at)
    lines.append(
        "on duty now: "
        + (", ".join(f"{m.name}{' (manager)' if m.manager else ''}" for m in on_duty) or "nobody on the rota")
    )
    schedule = settings.schedule_for(team)
    rule = settings.deadline_rule(team, referral.urgency)
    due = due_at(rule, at, schedule)
    lines.append(f"acknowledge within {rule.describe()}: by {uk_time(due)}")
    close = handover.hand_over_at(settings, team, decision.route.name, referral.urgency, at)
    taker = handover.out_of_hours_team(settings, decision.route.name)
    handed: tuple[datetime, datetime] | None = None  # (close, the deadline from then), as the tracker does
    if close is not None and taker is not None:
        then = handover.deadline_after(settings, taker, referral.urgency, close)
        text = f"hand-over at close: at {uk_time(close)} to {taker.name} (alerted then)"
        if then < due:
            handed = (close, then)
            text += f"; acknowledge by {uk_time(then)} from then, and steps due later come forward to that"
        lines.append(text)
    chain = settings.escalation_of(team, referral.urgency)
    ooh = settings.find_team(decision.route.out_of_hours) if decision.route.out_of_hours else None
    lines.append(f"escalation chain '{chain.id}' if nobody acknowledges:")
    position: tuple[int, int] | None = (0, 0)
    when: datetime = at
    shown = 0
    limit = sum(step.repeat + 1 for step in chain.steps) + 1  # the whole chain, one repeat of the last
    while position is not None and shown < limit:
        deadline = handed[1] if handed and when >= handed[0] else due
        planned = escalate.plan(settings, chain, team, ooh, position, when, deadline, schedule)
        for fired in planned.fired:
            step = chain.steps[fired.step]
            repeat = f" (repeat {fired.round})" if fired.round else ""
            lines.append(
                f"  step {fired.step + 1}{repeat} at {uk_time(when)}: {', '.join(step.notify)} "
                f"by {', '.join(step.channels)} -> {_who(fired.sends)}"
            )
            shown += 1
        if planned.next_step is None:
            lines.append("  then the chain ends; the referral stays on the coordinators' report until acknowledged")
            break
        # A step row written before the close and due after the hand-over's deadline comes forward to it.
        moved = handed and when < handed[0] and planned.next_step.due_at > handed[1]
        when = handed[1] if handed and moved else planned.next_step.due_at
        position = (planned.next_step.step, planned.next_step.round)
    else:
        if position is not None:
            lines.append(f"  ... and step {position[0] + 1} again every {chain.steps[-1].wait} until acknowledged")
    return lines
