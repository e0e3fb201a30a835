"""Re-sealing: moving every sealed blob from retired keys to the current one, in small batches.

A blob's key id is its bytes 2..9, so the rows still to do are found by the database itself
(`substr(blob, 2, 8) <> current id`, on SQLite and PostgreSQL alike) with no state of our own:
the work is resumable by construction, after a crash or a restart, on any instance. Each row is
opened and sealed again inside one write transaction, and written only if the blob is still the
one read (compare-and-set), so a concurrent writer's newer blob is never overwritten and no blob
is ever lost. Empty (b"", purged) and NULL values are skipped. Rows are walked in primary-key
order with a per-column cursor, so a blob that does not open is counted once a pass, not retried
in a tight loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, LargeBinary, Table, bindparam, func, select, update

from gateway.core.db import Database
from gateway.core.schema import (
    additional_info,
    answers,
    decisions,
    deliveries,
    messages,
    referrals,
    sms_webhooks,
    staff_factors,
)
from gateway.core.sealing import Sealer, SealError, sealed_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealedColumn:
    table: Table
    column: str
    key: str  # the primary key column
    context: Callable[[Any], str]  # the row (with `extra` columns) -> its blob's associated data
    extra: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column}"


# Every sealed column and its associated data, as gateway.core.sealed and gateway.staff.factors
# write them (tests/test_key_rotation.py checks that every LargeBinary column is listed here).
SEALED_COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn(messages, "envelope", "id", lambda r: sealed_context("envelope", r.id)),
    SealedColumn(messages, "raw", "id", lambda r: sealed_context("raw", r.id)),
    SealedColumn(referrals, "content", "id", lambda r: sealed_context("content", r.id)),
    SealedColumn(deliveries, "payload", "id", lambda r: sealed_context("delivery", r.id)),
    SealedColumn(decisions, "note", "id", lambda r: sealed_context("decision_note", r.id)),
    SealedColumn(
        sms_webhooks,
        "payload",
        "id",
        lambda r: f"sms:{r.kind}:{r.message_sid}:{r.status}",
        ("kind", "message_sid", "status"),
    ),
    SealedColumn(sms_webhooks, "reply", "id", lambda r: f"sms:{r.kind}:{r.message_sid}:reply", ("kind", "message_sid")),
    SealedColumn(staff_factors, "secret", "user_id", lambda r: f"totp:{r.user_id}"),
    # Structured answers (gateway.track.answers, gateway.pipeline.replies).
    SealedColumn(answers, "reason", "id", lambda r: sealed_context("answer_reason", r.id)),
    SealedColumn(additional_info, "content", "id", lambda r: sealed_context("additional_info", r.id)),
)


def _stored(col: SealedColumn) -> ColumnElement[bool]:
    blob = col.table.c[col.column]
    return blob.isnot(None) & (func.length(blob) > 0)


def _blob_key(col: SealedColumn) -> ColumnElement[Any]:
    return func.substr(col.table.c[col.column], 2, 8)


async def count_by_key(db: Database) -> dict[str, dict[bytes, int]]:
    """How many stored blobs each column holds under each key id."""
    out: dict[str, dict[bytes, int]] = {}
    async with db.read() as conn:
        for col in SEALED_COLUMNS:
            kid = _blob_key(col).label("kid")
            rows = await conn.execute(select(kid, func.count()).where(_stored(col)).group_by(kid))
            out[col.name] = {bytes(k): int(n) for k, n in rows}
    return out


@dataclass
class BatchResult:
    resealed: int = 0
    unreadable: int = 0
    examined: int = 0
    last_key: Any = None


async def reseal_batch(db: Database, sealer: Sealer, col: SealedColumn, after: Any, limit: int) -> BatchResult:
    """Re-seals up to `limit` blobs of `col` not under the current key, with keys above `after`."""
    table, blob, pk = col.table, col.table.c[col.column], col.table.c[col.key]
    current = bindparam("current", sealer.current_id, type_=LargeBinary)
    query = select(pk, blob, *(table.c[x] for x in col.extra)).where(_stored(col), _blob_key(col) != current)
    if after is not None:
        query = query.where(pk > after)
    result = BatchResult()
    async with db.write() as conn:
        rows = (await conn.execute(query.order_by(pk).limit(limit))).all()
        for row in rows:
            result.examined += 1
            result.last_key = getattr(row, col.key)
            old = bytes(getattr(row, col.column))
            context = col.context(row)
            try:
                plaintext = sealer.open(old, context)
            except SealError:
                # Left exactly as it is: `keys rotation-status` counts it under its key id, and
                # `verify` (or the page that needs it) says which row it is.
                result.unreadable += 1
                continue
            fresh = sealer.seal(plaintext, context)
            done = await conn.execute(
                update(table).where(pk == result.last_key, blob == old).values({col.column: fresh})
            )
            result.resealed += done.rowcount
    return result


class Resealer:
    """The background loop's step: one batch of one column at a time, resumable anywhere.

    Once a whole pass finds no blob under an old key (bar those no key opens), the store is clean:
    every new blob is sealed under the current key, so steps do nothing (no scan, no write
    transaction) until the keys change. The pass that proves it must start `settle` seconds after
    the last change: until then another instance may still be sealing with the key it had.
    """

    def __init__(self, db: Database, sealer: Sealer, batch: int = 50, pause: float = 0.0, settle: float = 0.0) -> None:
        self._db = db
        self._sealer = sealer
        self._batch = batch
        self._pause = pause  # between batches that re-sealed something: gentle on a busy store
        self._settle = settle
        self._position = 0  # index into SEALED_COLUMNS
        self._after: Any = None
        self._unreadable = 0
        self._reported = 0
        self._this_pass = 0
        self._changed = time.monotonic()  # start counts as a change: others may hold older keys
        self._pass_started = self._changed
        self._pass_found = 0  # blobs under an old key that a key opens, in this pass
        self._clean = False
        self.resealed = 0  # since start: for tests and the log

    async def run_once(self) -> int:
        """Re-seals one batch. Returns 0 when a whole pass found nothing more it could re-seal
        (the loop then sleeps), non-zero while there may be more."""
        if self._sealer.refresh():
            log.info("sealing keys reloaded: current key %s", self._sealer.current_id.hex())
            self._position, self._after = 0, None  # a new current key: start a new pass
            self._changed, self._clean, self._pass_found = time.monotonic(), False, 0
            self._pass_started = self._changed
        if self._clean:
            return 0
        if self._position == 0 and self._after is None:
            self._pass_started = time.monotonic()
        col = SEALED_COLUMNS[self._position]
        result = await reseal_batch(self._db, self._sealer, col, self._after, self._batch)
        self._pass_found += result.examined - result.unreadable
        self._unreadable += result.unreadable
        self.resealed += result.resealed
        self._this_pass += result.resealed
        if result.resealed and self._pause:
            await asyncio.sleep(self._pause)
        if result.examined == self._batch:
            self._after = result.last_key
            return result.resealed or 1
        # This column is done for this pass: on to the next, or end the pass.
        self._after = None
        self._position = (self._position + 1) % len(SEALED_COLUMNS)
        if self._position != 0:
            return result.resealed or 1
        if self._this_pass:
            log.info("re-seal: %d blob(s) now under key %s", self._this_pass, self._sealer.current_id.hex())
        if self._unreadable and self._unreadable != self._reported:
            log.error("re-seal: %d blob(s) do not open with any key in keys/ and stay as they are", self._unreadable)
        self._reported, self._unreadable, self._this_pass = self._unreadable, 0, 0
        self._clean = self._pass_found == 0 and self._pass_started - self._changed >= self._settle
        self._pass_found = 0
        return result.resealed
