"""A limit on events per client, kept in memory: the public form's flood guard.

Per instance and lost on restart, on purpose: enough to blunt a flood, not an accounting, and with
nothing to store or share. What the form answers over the limit, and the reverse-proxy caveat, are in
gateway.intake.web_form's decisions.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from datetime import timedelta

from gateway.core.clock import Clock


class RateLimiter:
    """At most `limit` events per `window` per client, in memory. Remembers at most `clients`
    clients (the least recently seen are forgotten), so many addresses cannot exhaust memory."""

    def __init__(self, clock: Clock, limit: int, window: timedelta, clients: int = 10_000) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window.total_seconds()
        self._clients = clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, client: str) -> float | None:
        """Count one event; None if allowed, else the seconds until the next one would be."""
        now = self._clock.now().timestamp()
        times = self._seen.pop(client, None) or deque()
        while times and now - times[0] >= self._window:
            times.popleft()
        self._seen[client] = times  # now the most recently seen
        while len(self._seen) > self._clients:
            self._seen.popitem(last=False)
        if len(times) >= self._limit:
            return max(times[0] + self._window - now, 1.0)
        times.append(now)
        return None
