"""The referral state machine, as a pure function over events (DESIGN.md, "The referral lifecycle").

A referral's state is derived from its append-only events; the `state` column only caches it.
Events that do not move a referral (a receipt sent, an overdue reminder) leave the state alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class State(StrEnum):
    RECEIVED = "received"
    ROUTED = "routed"
    ALERTED = "alerted"
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"
    UNDELIVERABLE = "undeliverable"
    QUARANTINED = "quarantined"
    # Terminal: the same partner-signed content as an earlier referral, received again (a replay,
    # or a client sending twice under a new Message-ID). Not routed and nobody alerted: the
    # earlier referral is the live one, and this one's timeline names it.
    REPEAT = "repeat"
    # Structured answers (issue 15, gateway.track.answers). "Not ours, another authority": the
    # forward is queued (FORWARDING, still ours and on the report) and only its delivery ends our
    # responsibility (FORWARDED, terminal); a forward that fails for good makes it UNDELIVERABLE,
    # back in our duty queue. "Duplicate of REF": terminal, both referrals name each other.
    FORWARDING = "forwarding"
    FORWARDED = "forwarded"
    DUPLICATE = "duplicate"
    # Terminal: an email quoting a referral's reference, from its referrer, while the duty team is
    # waiting for more information: threaded onto that referral as additional information, never
    # routed (gateway.pipeline.replies). Its own reference only names the message.
    REPLY = "reply"


class IllegalTransition(Exception):
    def __init__(self, state: State, kind: str) -> None:
        super().__init__(f"event '{kind}' is not allowed in state '{state}'")
        self.state = state
        self.kind = kind


# Where a duty worker may answer "not ours" or "duplicate": routed to our team and not yet ended.
_ANSWERABLE = frozenset({State.ROUTED, State.ALERTED, State.UNDELIVERABLE, State.ACKNOWLEDGED})

# event kind -> (states it may happen in, state it leads to)
_MOVES: dict[str, tuple[frozenset[State], State]] = {
    "routed": (frozenset({State.RECEIVED}), State.ROUTED),
    "quarantined": (frozenset({State.RECEIVED}), State.QUARANTINED),
    # The alert may be marked sent after a quick worker has already acknowledged: then it is news,
    # not a move (see _INFO), so only these states advance to ALERTED.
    "alerted": (frozenset({State.ROUTED, State.UNDELIVERABLE}), State.ALERTED),
    "undeliverable": (frozenset({State.ROUTED}), State.UNDELIVERABLE),
    "acknowledged": (frozenset({State.ROUTED, State.ALERTED, State.UNDELIVERABLE}), State.ACKNOWLEDGED),
    "closed": (frozenset({State.ACKNOWLEDGED}), State.CLOSED),
    # Decided at processing, before routing, so only from RECEIVED (gateway.pipeline.repeats).
    "repeat": (frozenset({State.RECEIVED}), State.REPEAT),
    # Structured answers (gateway.track.answers): from any state where our team holds it.
    # "Not ours, another team": routed afresh to that team (alerted, deadline restarted).
    "rerouted": (_ANSWERABLE, State.ROUTED),
    "forwarding": (_ANSWERABLE, State.FORWARDING),
    "forwarded": (frozenset({State.FORWARDING}), State.FORWARDED),
    "forward_dead": (frozenset({State.FORWARDING}), State.UNDELIVERABLE),
    "duplicate": (_ANSWERABLE, State.DUPLICATE),
    "reply": (frozenset({State.RECEIVED}), State.REPLY),
}

# Events that record something without moving the referral, allowed in any state except
# where listed in _MOVES above (an "alerted" after acknowledgement is also only news).
_INFO = frozenset(
    {
        "received",
        "parsed",
        "processing_failed",
        "receipt_skipped",
        "delivery_queued",
        "delivery_sent",
        "delivery_failed",
        "delivery_dead",
        "delivery_confirmed",
        "decision",
        "overdue",
        "escalation_step",
        "alerted",
        "undeliverable",
        # The staff dashboard (gateway.web.dashboard): a person read the content or opened an
        # attachment. Every view of content is audited, in any state.
        "viewed",
        "attachment_opened",
        # The stored message of a referral that could not be read, downloaded (gateway.web.unreadable).
        "raw_message_opened",
        # Retention (gateway.report.retention): a coordinator set or lifted a legal hold, and the
        # content of a closed referral was removed. Only a closed referral is purged, but a hold may
        # be set in any state (it is known before the referral is closed).
        "legal_hold",
        "legal_hold_lifted",
        "purged",
        # On the earlier referral: its signed content was received again, as a repeat (any state:
        # a replay may come after it was acknowledged or closed).
        "received_again",
        # Track (gateway.track.deadlines): handed to the out-of-hours team at office close, and the
        # referrer told once that nobody named has it yet. The referral is still not acknowledged.
        "handed_over",
        "referrer_followed_up",
        # Linked history (gateway.history.concern): this referral made several about one child add
        # up to a cumulative concern; its managers and the coordinators were alerted.
        "cumulative_concern",
        # Structured answers: the duty team asked the referrer for more information (the referral
        # stays acknowledged, waiting), the referrer's reply was threaded on, and, on the other
        # referral of a duplicate, that this one was linked to it.
        "information_requested",
        "information_received",
        "duplicate_linked",
    }
)

# FORWARDING is still ours: on the report until the neighbour's mailbox has taken the forward.
TRACKED_OPEN = frozenset(
    {State.RECEIVED, State.ROUTED, State.ALERTED, State.UNDELIVERABLE, State.QUARANTINED, State.FORWARDING}
)


def apply(state: State | None, kind: str) -> State:
    """The state after `kind` happens in `state` (None: before the first event)."""
    if state is None:
        if kind != "received":
            raise IllegalTransition(State.RECEIVED, kind)
        return State.RECEIVED
    move = _MOVES.get(kind)
    if move and state in move[0]:
        return move[1]
    if kind in _INFO:
        return state
    raise IllegalTransition(state, kind)


def derive(kinds: Iterable[str]) -> State:
    state: State | None = None
    for kind in kinds:
        state = apply(state, kind)
    if state is None:
        raise ValueError("a referral with no events has no state")
    return state
