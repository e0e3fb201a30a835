"""One timeline line per alert step, not one per message queued and one per message sent.

A step that alerts three people by email and text made seven lines (the step, three "queued",
three "sent", each sent with its own "alerted"), and a duty worker could not see at a glance
whether everyone was reached. Here the step's line says it: "Alert step 1 (on-duty, mailbox):
email to 2 (Emergency Duty Team, Gus Lindqvist), SMS to 1 (Gus Lindqvist) — sent 3 of 3, the last
at 10:02", with failures named, and the lines it replaces kept as its details.

Which messages belong to a step: the alerts and reminders queued with it, in the same
transaction (the same time), right after it (gateway.outbox.dispatch writes the step, then its
messages). A step and its messages are matched by the delivery ids in the events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gateway.core.clock import LONDON

# (at, kind, detail, the event's own line) for each event, in order.
Line = tuple[datetime, str, Mapping[str, object], str]

_STEP_MESSAGES = frozenset({"alert", "reminder"})
_OUTCOMES = frozenset({"delivery_sent", "delivery_failed", "delivery_dead", "delivery_confirmed"})
_CHANNEL_WORDS = {"email": "email", "sms": "SMS", "webhook": "webhook"}


@dataclass
class Grouped:
    """A timeline entry: a line, and the lines it stands for (empty for a plain event)."""

    at: datetime
    what: str
    details: list[str] = field(default_factory=list)


@dataclass
class _Step:
    entry: Grouped
    detail: Mapping[str, object]
    channels: dict[str, str] = field(default_factory=dict)  # delivery id -> channel
    sent: dict[str, datetime] = field(default_factory=dict)
    retrying: set[str] = field(default_factory=set)
    dead: dict[str, str] = field(default_factory=dict)  # delivery id -> reason

    def summary(self) -> str:
        step = self.detail.get("step", "?")
        notify = _list(self.detail, "notify")
        head = f"Alert step {step}" + (f" ({', '.join(notify)})" if notify else "")
        names = _list(self.detail, "alerted")
        return f"{head}: {', '.join(self._by_channel(names))} \N{EM DASH} {self._outcome()}"

    def _by_channel(self, names: list[str]) -> list[str]:
        """'email to 2 (A, B)' per channel, in the order the channels first appear."""
        counts: dict[str, int] = {}
        for channel in self.channels.values():
            counts[channel] = counts.get(channel, 0) + 1
        parts = []
        for channel, count in counts.items():
            # The step's names are "Name (channel)" (gateway.route.escalate): shown by channel.
            who = [n.removesuffix(f" ({channel})") for n in names if n.endswith(f" ({channel})")]
            parts.append(f"{_CHANNEL_WORDS.get(channel, channel)} to {count}" + (f" ({', '.join(who)})" if who else ""))
        return parts or ["nobody"]

    def _outcome(self) -> str:
        total = len(self.channels)
        words = f"sent {len(self.sent)} of {total}"
        if self.sent:
            words += (", the last at " if len(self.sent) > 1 else " at ") + _hhmm(max(self.sent.values()))
        retrying = self.retrying - self.sent.keys() - self.dead.keys()
        if retrying:
            words += f"; {len(retrying)} failed once, being tried again"
        if self.dead:
            reasons = sorted(set(self.dead.values()))
            words += f"; {len(self.dead)} failed for good ({'; '.join(reasons)})"
        return words


def _list(detail: Mapping[str, object], key: str) -> list[str]:
    value = detail.get(key)
    return [str(item) for item in value] if isinstance(value, list) else []


def _hhmm(at: datetime) -> str:
    return at.astimezone(LONDON).strftime("%H:%M")


def group(lines: list[Line], channels: Mapping[str, str]) -> list[Grouped]:
    """The timeline's entries: each alert step's messages folded into the step's line.
    `channels` is each delivery's channel (from the deliveries table)."""
    out: list[Grouped] = []
    steps: dict[str, _Step] = {}  # delivery id -> its step
    open_step: _Step | None = None  # the step whose messages may follow
    folded_sent: _Step | None = None  # the step whose message the previous event reported sent
    for at, kind, detail, text in lines:
        delivery = str(detail.get("delivery", ""))
        if kind == "escalation_step" and "step" in detail and not detail.get("skipped"):
            open_step = _Step(Grouped(at, text), detail)
            out.append(open_step.entry)
            folded_sent = None
            continue
        if kind == "delivery_queued" and open_step is not None and at == open_step.entry.at:
            if str(detail.get("kind", "")) in _STEP_MESSAGES and delivery in channels:
                open_step.channels[delivery] = channels[delivery]
                steps[delivery] = open_step
                open_step.entry.details.append(text)
                continue
            out.append(Grouped(at, text))  # a receipt queued in the same batch: its own line
            continue
        open_step = None
        step = steps.get(delivery)
        if kind in _OUTCOMES and step is not None:
            step.entry.details.append(text)
            if kind == "delivery_sent":
                step.sent[delivery] = at
            elif kind == "delivery_failed":
                step.retrying.add(delivery)
            elif kind == "delivery_dead":
                step.dead[delivery] = str(detail.get("reason") or "no reason given")
                out.append(Grouped(at, text))  # also at its own time: a person must act on it
            folded_sent = step if kind == "delivery_sent" else None
            continue
        if kind == "alerted" and folded_sent is not None:
            folded_sent.entry.details.append(text)  # the sent message's "Alerted ... by ..."
            folded_sent = None
            continue
        folded_sent = None
        out.append(Grouped(at, text))
    for entry_step in {id(s): s for s in steps.values()}.values():
        entry_step.entry.what = entry_step.summary()
    return out
