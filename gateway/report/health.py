"""Is this instance ready to take referrals? What /readyz answers, with the reason for each check.

Ready means: the database answers within a short timeout (a query on the messages table, which
on SQLite also proves the file is readable, where `SELECT 1` would not touch it); every background
loop of this process has finished a step recently (a loop stuck on a hung connection or a bug
stops beating); and the oldest stored message waiting to be processed is not too old (referrals
are arriving but nobody would be alerted). Details carry counts, ages and error types only.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config.monitoring import HealthSection
from gateway.core.metrics import Heartbeats
from gateway.core.schema import messages


def _kind(exc: BaseException) -> str:
    """The type and errno name only: an OS error's words can quote the address it tried."""
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code) if isinstance(code, int) else None
    return f"{type(exc).__name__} [{name}]" if name else type(exc).__name__


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"status": "ok" if self.ready else "fail", "checks": self.checks}


async def _oldest_unprocessed(engine: AsyncEngine) -> datetime | None:
    async with engine.connect() as conn:
        await conn.execute(select(1))
        # The queue index (processed_at, next_attempt_at) serves this: the unprocessed rows only.
        oldest: datetime | None = await conn.scalar(
            select(func.min(messages.c.received_at)).where(messages.c.processed_at.is_(None))
        )
        return oldest


async def check(engine: AsyncEngine, health: HealthSection, heartbeats: Heartbeats, now: datetime) -> Readiness:
    checks: dict[str, dict[str, Any]] = {}
    limit = health.database_timeout.total_seconds()
    oldest: datetime | None = None
    try:
        oldest = await asyncio.wait_for(_oldest_unprocessed(engine), limit)
        checks["database"] = {"ok": True}
    except TimeoutError:
        checks["database"] = {"ok": False, "error": f"no answer within {limit:g}s"}
    except Exception as exc:  # noqa: BLE001
        # Whatever the driver raised (refused, reset, locked, unreadable file), the answer is
        # "not ready" with the error's type: its text could hold a URL or a query's values.
        checks["database"] = {"ok": False, "error": _kind(exc)}

    stale_after = health.worker_stale_after.total_seconds()
    loop_ages = heartbeats.ages(now)
    stale = sorted(name for name, late in heartbeats.overdue(now).items() if late > stale_after)
    checks["workers"] = {
        "ok": not stale,
        "last_step_age_seconds": {name: round(age, 3) for name, age in loop_ages.items()},
        "stale_after_seconds": stale_after,
        **({"stale": stale} if stale else {}),
        **({} if loop_ages else {"note": "no background loops run in this process"}),
    }

    max_lag = health.max_processing_lag.total_seconds()
    if checks["database"]["ok"]:
        lag = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        checks["processing_lag"] = {"ok": lag <= max_lag, "seconds": round(lag, 3), "max_seconds": max_lag}
    else:
        checks["processing_lag"] = {"ok": False, "error": "unknown: the database did not answer"}
    return Readiness(all(c["ok"] for c in checks.values()), checks)
