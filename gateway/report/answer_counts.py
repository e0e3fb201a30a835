"""How many structured answers were given (issue 15): "answered not ours: N, more information: N,
duplicate: N", for the daily digest (the last 24 hours) and the report page (the last 7 days).
Counts only: no reference, no reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.schema import answers


@dataclass(frozen=True)
class AnswerCounts:
    not_ours: int = 0  # to another of our teams, or to a neighbouring authority
    more_info: int = 0
    duplicate: int = 0

    def words(self) -> str:
        return f"answered not ours: {self.not_ours}, more information: {self.more_info}, duplicate: {self.duplicate}"


async def answer_counts(conn: AsyncConnection, since: datetime) -> AnswerCounts:
    rows = await conn.execute(
        select(answers.c.kind, func.count()).where(answers.c.answered_at >= since).group_by(answers.c.kind)
    )
    by_kind = {kind: int(count) for kind, count in rows}
    return AnswerCounts(
        not_ours=by_kind.get("not_ours_team", 0) + by_kind.get("not_ours_authority", 0),
        more_info=by_kind.get("more_info", 0),
        duplicate=by_kind.get("duplicate", 0),
    )
