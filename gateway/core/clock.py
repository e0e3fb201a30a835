"""Time, injected: every stage asks a Clock, so tests move time instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

# UK wall-clock time: what rotas, office hours, deadlines and the people reading them mean.
LONDON = ZoneInfo("Europe/London")


def uk_time(when: datetime) -> str:
    """Times as a duty worker in England reads them, whatever the server's zone."""
    local = when.astimezone(LONDON)
    return local.strftime("%A %d %B %Y, %H:%M ") + ("GMT" if not local.dst() else "BST")


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told to (tests, and `route --explain --at`)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, when: datetime) -> None:
        self._now = when.astimezone(UTC)
