"""The referral state machine (gateway.lifecycle), as pure functions: no database, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.lifecycle import TRACKED_OPEN, IllegalTransition, State, apply, derive

MOVES = ("received", "routed", "quarantined", "alerted", "undeliverable", "acknowledged", "closed", "repeat")
INFO = (
    "parsed",
    "processing_failed",
    "receipt_skipped",
    "delivery_queued",
    "delivery_sent",
    "delivery_failed",
    "delivery_dead",
    "overdue",
    "received_again",
)
ALL_KINDS = MOVES + INFO


def test_the_legal_path_received_routed_alerted_acknowledged_closed() -> None:
    state = None
    seen = []
    for kind in ("received", "routed", "alerted", "acknowledged", "closed"):
        state = apply(state, kind)
        seen.append(state)
    assert seen == [State.RECEIVED, State.ROUTED, State.ALERTED, State.ACKNOWLEDGED, State.CLOSED]
    assert derive(["received", "routed", "alerted", "acknowledged"]) == State.ACKNOWLEDGED


def test_acknowledged_before_the_alert_was_marked_sent() -> None:
    # A quick worker acknowledges from the alert before the outbox marks it sent: the late
    # "alerted" is news, not a step back to an open state.
    assert derive(["received", "routed", "acknowledged", "alerted"]) == State.ACKNOWLEDGED


def test_undeliverable_then_alerted_on_a_later_try_then_acknowledged() -> None:
    assert derive(["received", "routed", "undeliverable"]) == State.UNDELIVERABLE
    assert derive(["received", "routed", "undeliverable", "alerted"]) == State.ALERTED
    assert derive(["received", "routed", "undeliverable", "acknowledged"]) == State.ACKNOWLEDGED


def test_quarantined_only_from_received() -> None:
    assert derive(["received", "quarantined"]) == State.QUARANTINED
    with pytest.raises(IllegalTransition):
        derive(["received", "routed", "quarantined"])


@pytest.mark.parametrize(
    ("kinds", "state", "kind"),
    [
        (["received", "acknowledged"], State.RECEIVED, "acknowledged"),
        (["received", "routed", "routed"], State.ROUTED, "routed"),
        (["received", "closed"], State.RECEIVED, "closed"),
        (["received", "routed", "alerted", "closed"], State.ALERTED, "closed"),
        (["received", "routed", "alerted", "acknowledged", "acknowledged"], State.ACKNOWLEDGED, "acknowledged"),
        (["received", "routed", "alerted", "acknowledged", "routed"], State.ACKNOWLEDGED, "routed"),
        (["received", "quarantined", "routed"], State.QUARANTINED, "routed"),
        (["received", "made-up-kind"], State.RECEIVED, "made-up-kind"),
    ],
)
def test_illegal_moves_raise_naming_the_state_and_the_event(kinds: list[str], state: State, kind: str) -> None:
    with pytest.raises(IllegalTransition) as caught:
        derive(kinds)
    assert caught.value.state == state
    assert caught.value.kind == kind
    assert f"'{kind}'" in str(caught.value) and f"'{state}'" in str(caught.value)


def test_a_repeat_is_decided_before_routing_and_nothing_moves_it_on() -> None:
    """A repeat of an earlier referral (gateway.pipeline.repeats) is terminal: never routed,
    alerted or acknowledged, and not an open state the report would chase."""
    assert derive(["received", "repeat"]) == State.REPEAT
    assert State.REPEAT not in TRACKED_OPEN
    for kind in ("routed", "acknowledged", "closed", "quarantined", "repeat"):
        with pytest.raises(IllegalTransition):
            derive(["received", "repeat", kind])
    with pytest.raises(IllegalTransition):
        derive(["received", "routed", "repeat"])
    # The earlier referral hears of it in any state, and stays as it was.
    assert derive(["received", "routed", "alerted", "acknowledged", "closed", "received_again"]) == State.CLOSED


def test_the_first_event_must_be_received() -> None:
    with pytest.raises(IllegalTransition):
        apply(None, "routed")
    with pytest.raises(IllegalTransition):
        derive(["acknowledged"])


def test_no_events_has_no_state() -> None:
    with pytest.raises(ValueError, match="no events"):
        derive([])


@pytest.mark.parametrize("kind", INFO)
@pytest.mark.parametrize("state", list(State))
def test_info_events_leave_the_state_alone(state: State, kind: str) -> None:
    assert apply(state, kind) == state


@given(st.lists(st.sampled_from((*ALL_KINDS, "not-a-kind")), min_size=1, max_size=25))
def test_any_sequence_derives_a_state_or_raises_illegal_transition(kinds: list[str]) -> None:
    try:
        result = derive(kinds)
    except IllegalTransition as exc:
        assert exc.kind in kinds
    else:
        assert isinstance(result, State)


@given(st.lists(st.sampled_from(ALL_KINDS), max_size=25))
def test_once_acknowledged_nothing_reopens_it(tail: list[str]) -> None:
    state = derive(["received", "routed", "alerted", "acknowledged"])
    for kind in tail:
        try:
            state = apply(state, kind)
        except IllegalTransition:
            continue  # refused: the state is unchanged
        assert state not in TRACKED_OPEN, f"'{kind}' reopened an acknowledged referral as {state}"
        assert state in (State.ACKNOWLEDGED, State.CLOSED)


@given(st.lists(st.sampled_from(ALL_KINDS), min_size=1, max_size=25))
def test_derive_is_apply_step_by_step(kinds: list[str]) -> None:
    state: State | None = None
    try:
        for kind in kinds:
            state = apply(state, kind)
    except IllegalTransition:
        with pytest.raises(IllegalTransition):
            derive(kinds)
    else:
        assert derive(kinds) == state


@given(st.lists(st.sampled_from(ALL_KINDS), max_size=30))
def test_in_any_history_acknowledged_is_never_followed_by_an_open_state(kinds: list[str]) -> None:
    state: State | None = None
    acknowledged = False
    for kind in ["received", *kinds]:
        try:
            state = apply(state, kind)
        except IllegalTransition:
            break  # the writer refuses the event; derive() would raise for this history
        acknowledged = acknowledged or state == State.ACKNOWLEDGED
        if acknowledged:
            assert state not in TRACKED_OPEN


# --- structured answers (issue 15) ------------------------------------------------------------------

ANSWERS = ("rerouted", "forwarding", "forwarded", "forward_dead", "duplicate", "reply")
ANSWER_INFO = ("information_requested", "information_received", "duplicate_linked")


def test_not_ours_another_team_routes_it_afresh_even_after_acknowledgement() -> None:
    acked = ["received", "routed", "alerted", "acknowledged"]
    assert derive([*acked, "rerouted"]) == State.ROUTED
    assert derive([*acked, "rerouted", "alerted", "acknowledged"]) == State.ACKNOWLEDGED


def test_a_forward_ends_our_part_only_once_delivered_and_a_dead_one_comes_back() -> None:
    forwarding = ["received", "routed", "alerted", "forwarding"]
    assert derive(forwarding) == State.FORWARDING
    assert State.FORWARDING in TRACKED_OPEN  # on the report until it is delivered
    assert derive([*forwarding, "forwarded"]) == State.FORWARDED
    assert State.FORWARDED not in TRACKED_OPEN
    assert derive([*forwarding, "forward_dead"]) == State.UNDELIVERABLE
    for kind in ("acknowledged", "closed", "duplicate", "rerouted"):
        with pytest.raises(IllegalTransition):
            derive([*forwarding, kind])  # nobody acts on it here while it is on its way


def test_a_duplicate_is_terminal_and_answers_need_a_routed_referral() -> None:
    assert derive(["received", "routed", "duplicate"]) == State.DUPLICATE
    for kind in ("acknowledged", "closed", "rerouted", "forwarding", "duplicate"):
        with pytest.raises(IllegalTransition):
            derive(["received", "routed", "duplicate", kind])
    for kind in ("rerouted", "forwarding", "duplicate"):
        with pytest.raises(IllegalTransition):
            derive(["received", kind])  # not routed yet: nothing to answer
        with pytest.raises(IllegalTransition):
            derive(["received", "routed", "alerted", "acknowledged", "closed", kind])


def test_a_reply_is_decided_before_routing_and_more_information_leaves_the_state_alone() -> None:
    assert derive(["received", "reply"]) == State.REPLY
    with pytest.raises(IllegalTransition):
        derive(["received", "reply", "routed"])
    acked = ["received", "routed", "alerted", "acknowledged"]
    assert derive([*acked, *ANSWER_INFO]) == State.ACKNOWLEDGED


@given(st.lists(st.sampled_from(ALL_KINDS + ANSWERS + ANSWER_INFO), max_size=30))
def test_with_answers_an_acknowledged_referral_reopens_only_by_a_persons_answer(kinds: list[str]) -> None:
    """Only "not ours, another team" (a person re-routes it) or a forward that failed for good
    (it comes back to us) make an acknowledged referral open again; nothing else does."""
    state: State | None = None
    acknowledged = False
    for kind in ["received", *kinds]:
        try:
            after = apply(state, kind)
        except IllegalTransition:
            break
        if acknowledged and after in TRACKED_OPEN and after != state:
            assert kind in ("rerouted", "forwarding", "forward_dead"), kind
        state = after
        acknowledged = acknowledged or state == State.ACKNOWLEDGED
