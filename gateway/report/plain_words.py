"""A referral's state and urgency in plain words for staff: the one mapping every staff page uses
(the dashboard, a referral's page, the coordinators' report and its filter).

The state codes ("alerted", "undeliverable") are the lifecycle's (gateway.core.lifecycle) and stay
in the command's output, CSV and JSON, which scripts read; people read these words. A duty worker
new to the service read "alerted" as "someone has it", when it means the opposite: nobody has
said they are dealing with it yet.
"""

from __future__ import annotations

from gateway.core.lifecycle import State

HELD = "held"  # not a referral's state: a text held over its rate limit (gateway.report.undelivered)

STATE_WORDS: dict[str, str] = {
    State.RECEIVED: "Received, not yet processed",
    State.ROUTED: "Sent to the team, alert not yet delivered",
    State.ALERTED: "Waiting for a named person to acknowledge",
    State.ACKNOWLEDGED: "Acknowledged: a named person is dealing with it",
    State.CLOSED: "Closed with an outcome",
    State.UNDELIVERABLE: "Alerts could not be delivered: phone the team",
    State.QUARANTINED: "Could not be read: held for a person to check",
    State.REPEAT: "A repeat of an earlier referral: nothing to do",
    State.FORWARDING: "Being forwarded to another authority: still ours until delivered",
    State.FORWARDED: "Forwarded to another authority, delivered",
    State.DUPLICATE: "A duplicate of another referral: dealt with there",
    State.REPLY: "More information for an earlier referral: added to it",
    HELD: "Text held over its rate limit",
}


def state_words(state: str) -> str:
    """The words for a state code; an unknown code (a newer gateway's) as it is, not an error."""
    return STATE_WORDS.get(state, state)


# An urgency that was not given is handled as immediate: its deadline (Settings.deadline_rule) and
# its escalation chain (Team.escalation_for) are the immediate ones. "Not given" alone reads as
# "not urgent", the opposite of what the gateway does with it.
NOT_GIVEN = "Not given \N{EM DASH} treated as immediate"


def urgency_words(urgency: str | None) -> str:
    """'Immediate', 'Urgent', 'Standard', or what a missing urgency is treated as."""
    return urgency.capitalize() if urgency else NOT_GIVEN
