"""What this process counts for /metrics, and when each background loop last finished a step.

Counters of events that leave no row to count later (the SMTP replies given, the webhooks refused,
the escalation steps fired) live in a `CollectorRegistry` owned by one gateway, never prometheus'
global default: tests start many gateways in one process, and each must count only its own. The
gateway makes one `Counters` and hands it to the stages that count (intake, track), so nothing
imports a global. Gauges that describe the database are not here: gateway.report.metrics reads
them at scrape time, so every instance reports the same truth and a restart loses nothing.

Labels are never personal data: reply codes, webhook kinds and reasons, team ids only.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter


class Counters:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.smtp_replies = Counter(
            "gateway_smtp_replies",
            "SMTP replies this process gave, by reply code (250 accepted, 451 try later, 5xx refused)",
            ["code"],
            registry=self.registry,
        )
        self.webhooks_refused = Counter(
            "gateway_webhooks_refused",
            "Webhook requests this process refused, by webhook (inbound, status) and reason",
            ["webhook", "reason"],
            registry=self.registry,
        )
        self.escalations_fired = Counter(
            "gateway_escalations_fired",
            "Escalation steps this process fired (alerts sent because a referral was not acknowledged), by team",
            ["team"],
            registry=self.registry,
        )

        self.openpgp_fallbacks = Counter(
            "gateway_openpgp_fallback",
            "Messages the sequoia OpenPGP backend could not decide and handed to its gpg fallback, by reason "
            "(compressed signature, unreadable structure, unreadable signature; bad signature reason: a "
            "signature pysequoia refused, shown to gpg only to tell an expired one from a bad one)",
            ["reason"],
            registry=self.registry,
        )

    def openpgp_fallback(self, reason: str) -> None:
        self.openpgp_fallbacks.labels(reason=reason).inc()

    def smtp_reply(self, reply: str | bytes) -> None:
        """Counted by the three-digit code only: the rest of a reply can quote an address."""
        text = reply.decode("ascii", "replace") if isinstance(reply, bytes) else reply
        code = text[:3]
        self.smtp_replies.labels(code=code if code.isdigit() else "other").inc()


class Heartbeats:
    """Each background loop says when it last finished a step and how long it may then sleep (its
    poll); /readyz calls a loop stuck when it is more than a threshold past its next step. The
    poll counts: a loop that polls hourly (retention) is not stuck 5 minutes after its last step.
    Times come from the gateway's injected clock."""

    def __init__(self) -> None:
        self._last: dict[str, datetime] = {}
        self._poll: dict[str, float] = {}
        self._steps: dict[str, int] = {}

    def expect(self, name: str, now: datetime, poll: float = 0.0) -> None:
        """A loop that is starting: it counts as fresh until the threshold has passed."""
        self._last.setdefault(name, now)
        self._poll[name] = poll

    def beat(self, name: str, now: datetime) -> None:
        self._last[name] = now
        self._steps[name] = self._steps.get(name, 0) + 1

    def steps(self) -> dict[str, int]:
        """How many steps each loop has finished (0: started, not stepped yet)."""
        return {name: self._steps.get(name, 0) for name in sorted(self._last)}

    def ages(self, now: datetime) -> dict[str, float]:
        return {name: max((now - at).total_seconds(), 0.0) for name, at in sorted(self._last.items())}

    def overdue(self, now: datetime) -> dict[str, float]:
        """Seconds each loop is past the time it should next have stepped by (0 when not)."""
        return {name: max(age - self._poll.get(name, 0.0), 0.0) for name, age in self.ages(now).items()}
