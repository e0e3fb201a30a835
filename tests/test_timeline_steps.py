"""gateway.report.timeline_steps: an alert step's messages folded into one line that says how many
were sent and which failed, the lines it replaces kept as its details."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.report.timeline_steps import group

AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
STEP = {"step": 1, "notify": ["on-duty", "mailbox"], "alerted": ["Asha Okafor (email)", "Ben Carter (sms)"]}


def test_a_step_with_a_retry_and_a_failure_for_good() -> None:
    later = AT + timedelta(minutes=2)
    lines = [
        (AT, "routed", {}, "Routed to MASH duty team"),
        (AT, "escalation_step", STEP, "Escalation step 1 (on-duty, mailbox): alerted ..."),
        (AT, "delivery_queued", {"delivery": "a", "kind": "alert"}, "The alert was queued"),
        (AT, "delivery_queued", {"delivery": "b", "kind": "alert"}, "The alert was queued"),
        (AT, "delivery_queued", {"delivery": "r", "kind": "receipt"}, "The receipt to the referrer was queued"),
        (AT, "delivery_sent", {"delivery": "a"}, "The alert was sent by email (attempt 1)"),
        (AT, "alerted", {"channel": "email"}, "Alerted MASH duty team by email"),
        (AT, "delivery_failed", {"delivery": "b"}, "The alert failed by sms (attempt 1); trying again"),
        (later, "delivery_dead", {"delivery": "b", "reason": "21211 invalid number"}, "The alert failed for good"),
        (later, "delivery_sent", {"delivery": "r"}, "The receipt to the referrer was sent by email (attempt 1)"),
    ]
    entries = group(lines, {"a": "email", "b": "sms", "r": "email"})
    assert [e.what for e in entries] == [
        "Routed to MASH duty team",
        "Alert step 1 (on-duty, mailbox): email to 1 (Asha Okafor), SMS to 1 (Ben Carter) \N{EM DASH} "
        "sent 1 of 2 at 10:00; 1 failed for good (21211 invalid number)",
        "The receipt to the referrer was queued",
        "The alert failed for good",  # also at its own time: a person must act on it
        "The receipt to the referrer was sent by email (attempt 1)",
    ]
    assert entries[1].details == [
        "The alert was queued",
        "The alert was queued",
        "The alert was sent by email (attempt 1)",
        "Alerted MASH duty team by email",
        "The alert failed by sms (attempt 1); trying again",
        "The alert failed for good",
    ]


def test_a_message_still_being_retried_says_so() -> None:
    lines = [
        (AT, "escalation_step", STEP, "step"),
        (AT, "delivery_queued", {"delivery": "a", "kind": "alert"}, "queued"),
        (AT, "delivery_failed", {"delivery": "a"}, "failed once"),
    ]
    (entry,) = group(lines, {"a": "email"})
    assert entry.what.endswith("\N{EM DASH} sent 0 of 1; 1 failed once, being tried again")


def test_a_skipped_step_and_plain_events_stay_as_they_were() -> None:
    lines = [
        (AT, "escalation_step", {"step": 1, "skipped": True}, "Escalation step 1: skipped, nobody reachable"),
        (AT, "viewed", {}, "Viewed by Cora Jones"),
    ]
    assert [(e.what, e.details) for e in group(lines, {})] == [
        ("Escalation step 1: skipped, nobody reachable", []),
        ("Viewed by Cora Jones", []),
    ]
