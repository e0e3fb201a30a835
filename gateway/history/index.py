"""The child index: rows of keyed hashes (gateway.history.keys) per referral, and looking them up.

Written in the transaction that seals a referral's content (gateway.pipeline.write), deleted in the
one that purges it (gateway.report.retention), so the index never links a child whose content is
gone. Referrals stored before the index existed, or indexed under a key since replaced, are indexed
by `rebuild` (the `referral-gateway reindex` command); `complete` says whether that has been done for
the current key, and until it has, the referral page opens older referrals to find the earlier ones,
as it did before the index (slower, but no child's history is missing meanwhile).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.db import Database
from gateway.core.schema import child_index, child_index_builds, events, referrals
from gateway.core.sealed import Sealed
from gateway.core.transitions import lock
from gateway.history.keys import KINDS, Hasher

log = logging.getLogger(__name__)

REBUILD_BATCH = 500  # referrals opened and indexed per write transaction


def rows(
    hasher: Hasher,
    referral_id: str,
    received_at: datetime,
    digests: Iterable[tuple[str, str]],
    organisation: str | None,
) -> list[dict[str, object]]:
    """The index rows of one referral: one per (kind, digest) its child's details gave."""
    org = hasher.organisation(organisation)
    return [
        {
            "kind": kind,
            "digest": digest,
            "referral_id": referral_id,
            "received_at": received_at,
            "organisation": org,
            "key_id": hasher.key_id,
        }
        for kind, digest in sorted(digests)
    ]


async def insert(conn: AsyncConnection, new: Sequence[dict[str, object]]) -> None:
    """ON CONFLICT DO NOTHING: a rebuild running beside the pipeline, or run twice, makes no twin."""
    if not new:
        return
    statement: Any = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(child_index)
    await conn.execute(statement.on_conflict_do_nothing(), list(new))


async def remove(conn: AsyncConnection, referral_ids: Iterable[str]) -> None:
    ids = sorted(referral_ids)
    if ids:
        await conn.execute(delete(child_index).where(child_index.c.referral_id.in_(ids)))


@dataclass
class Match:
    """Another referral the index links to a child: when it came, from which organisation (a keyed
    hash, or None when not known), and which kinds of identifier matched."""

    referral_id: str
    received_at: datetime
    organisation: str | None
    kinds: set[str] = field(default_factory=set)


async def matches(
    conn: AsyncConnection,
    digests: dict[str, str],
    *,
    exclude: str,
    until: datetime,
    since: datetime | None = None,
    latest: int | None = None,
) -> dict[str, Match]:
    """Referrals other than `exclude` received in [since, until] with a digest in `digests`; with
    `latest`, only the latest that many for each kind of identifier (newest first)."""
    if not digests:
        return {}

    def wanted(*kinds: str) -> Select[Any]:
        pairs = [and_(child_index.c.kind == kind, child_index.c.digest == digests[kind]) for kind in kinds]
        query = select(
            child_index.c.kind, child_index.c.referral_id, child_index.c.received_at, child_index.c.organisation
        ).where(or_(*pairs), child_index.c.referral_id != exclude, child_index.c.received_at <= until)
        return query if since is None else query.where(child_index.c.received_at >= since)

    kinds = [kind for kind in KINDS if kind in digests]
    if latest is None:
        # One statement, an OR of (kind, digest) pairs: each is a range of the primary key, so both
        # databases read only the matching rows (SQLite's OR optimisation, PostgreSQL's bitmap OR).
        queries = [wanted(*kinds)]
    else:
        # One statement per kind, each walking ix_child_index_recent backwards from `until` and
        # stopping after `latest` rows, so a child referred thousands of times costs no more than
        # one referred `latest` times (an OR with ORDER BY ... LIMIT reads every match, then sorts).
        queries = [
            wanted(kind).order_by(child_index.c.received_at.desc(), child_index.c.referral_id).limit(latest)
            for kind in kinds
        ]
    found: dict[str, Match] = {}
    for query in queries:
        for row in await conn.execute(query):
            match = found.setdefault(row.referral_id, Match(row.referral_id, row.received_at, row.organisation))
            match.kinds.add(row.kind)
    return found


async def complete(conn: AsyncConnection, hasher: Hasher) -> bool:
    """Whether every stored referral is in the index under the current key: `rebuild` has run for
    it, or it was recorded at a start with nothing stored (`mark_if_empty`)."""
    built = await conn.execute(select(child_index_builds.c.key_id).where(child_index_builds.c.key_id == hasher.key_id))
    return built.first() is not None


async def mark_if_empty(db: Database, hasher: Hasher, now: datetime) -> bool:
    """At start: with no referral content stored and no index rows under another key, the index is
    complete as it is (every referral from now on is indexed as it is written), so no rebuild is
    needed. Returns whether the index is complete for the current key."""
    async with db.write() as conn:
        if await complete(conn, hasher):
            return True
        stored = await conn.execute(select(referrals.c.id).where(referrals.c.content.is_not(None)).limit(1))
        other = await conn.execute(select(child_index.c.key_id).where(child_index.c.key_id != hasher.key_id).limit(1))
        if stored.first() is not None or other.first() is not None:
            return False
        statement: Any = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(child_index_builds)
        await conn.execute(statement.values(key_id=hasher.key_id, built_at=now, referrals=0).on_conflict_do_nothing())
    return True


def _partners(detail_rows: Iterable[Any]) -> dict[str, str]:
    """referral id -> the verified partner its `parsed` event names (email signed by a partner)."""
    out: dict[str, str] = {}
    for row in detail_rows:
        partner = json.loads(row.detail).get("partner")
        if partner:
            out[row.referral_id] = str(partner)
    return out


async def _rebuild_batch(db: Database, sealed: Sealed, hasher: Hasher, after: str) -> tuple[int, str | None]:
    """Index the next batch of referrals with content (in id order, after `after`); returns how many
    and the last id (None: no more)."""
    async with db.write() as conn:
        ids = list(
            (
                await conn.execute(
                    select(referrals.c.id)
                    .where(referrals.c.id > after, referrals.c.content.is_not(None))
                    .order_by(referrals.c.id)
                    .limit(REBUILD_BATCH)
                )
            ).scalars()
        )
        if not ids:
            return 0, None
        # Locked, then read again: a referral purged meanwhile (on another instance) must not be
        # indexed again after its purge deleted its rows.
        await lock(conn, ids)
        found = (
            await conn.execute(
                select(referrals.c.id, referrals.c.received_at, referrals.c.content).where(
                    referrals.c.id.in_(ids), referrals.c.content.is_not(None)
                )
            )
        ).all()
        partners = _partners(
            await conn.execute(
                select(events.c.referral_id, events.c.detail).where(
                    events.c.referral_id.in_(ids), events.c.kind == "parsed"
                )
            )
        )
        new: list[dict[str, object]] = []
        for row in found:
            referral = sealed.content(row.id, row.content).referral
            organisation = partners.get(row.id) or referral.referrer.organisation
            new += rows(hasher, row.id, row.received_at, hasher.digests(referral.child).items(), organisation)
        await conn.execute(
            delete(child_index).where(child_index.c.referral_id.in_(ids), child_index.c.key_id != hasher.key_id)
        )
        await insert(conn, new)
    return len(found), ids[-1]


async def rebuild(
    db: Database, sealed: Sealed, hasher: Hasher, now: Callable[[], datetime], progress: Callable[[int], None]
) -> int:
    """Index every stored referral with content under the current key, drop rows made with any other
    key, and record the build. Resumable and idempotent: run again, it only repeats work. Returns how
    many referrals were indexed."""
    total, after = 0, ""
    while True:
        count, last = await _rebuild_batch(db, sealed, hasher, after)
        if last is None:
            break
        total, after = total + count, last
        progress(total)
    async with db.write() as conn:
        # Rows of a purged referral are gone already; what is left under another key is stale.
        await conn.execute(delete(child_index).where(child_index.c.key_id != hasher.key_id))
        await conn.execute(delete(child_index_builds))
        await conn.execute(child_index_builds.insert().values(key_id=hasher.key_id, built_at=now(), referrals=total))
    log.info("history: index rebuilt for %d referrals", total)
    return total


async def size(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(child_index))).scalar_one())
