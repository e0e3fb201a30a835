"""The processing driver: claim stored messages, run each through its channel's pipeline, write.

Each claimed message runs its pipeline in memory (gateway.pipeline.channels); then a whole batch is
written in one transaction: referral content, events, outbox rows, deadlines, and the messages
marked processed. Either all of that is committed or none of it, so a crash at any point only means
the message is claimed again when its lease runs out and processed from scratch; nothing is twinned.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy import RowMapping, and_, select
from sqlalchemy.exc import DBAPIError

from gateway.config import Settings
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.outcomes import Quarantine, describe
from gateway.core.queue import claim
from gateway.core.schema import messages, referrals
from gateway.pipeline.channels import REPEAT_STAGES, Pipelines
from gateway.pipeline.handlers import BatchHandler, Handler
from gateway.pipeline.work import Claimed, Loaded, Prepared, Work
from gateway.pipeline.write import BatchWriter

log = logging.getLogger(__name__)
PREPARE_TIMEOUT = 120.0  # seconds; a timed-out message is retried, then quarantined

_CLAIMED = (
    messages.c.id.label("message_id"),
    messages.c.attempts,
    messages.c.channel,
    referrals.c.id.label("referral_id"),
    referrals.c.reference,
    referrals.c.received_at,
)


class Processor:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        pipelines: Pipelines,
        writer: BatchWriter,
        clock: Clock,
        owner: str,
    ) -> None:
        self._s = settings
        self._db = db
        self._pipelines = pipelines
        self._writer = writer
        self._clock = clock
        self._owner = owner
        self._batched: dict[int, BatchHandler | None] = {}  # by id(): the pipelines' handlers live as long

    async def run_once(self) -> int:
        """Claim and process one batch; returns how many messages were claimed."""
        now = self._clock.now()
        ready = and_(messages.c.processed_at.is_(None), messages.c.next_attempt_at <= now)
        leased = (messages.c.id, messages.c.attempts)
        claimed = await claim(
            self._db, messages, ready, messages.c.received_at, self._owner, now, self._s.processing, leased
        )
        if not claimed:
            return 0
        ids = await self._quarantine_exhausted([(row.id, row.attempts) for row in claimed], now)
        if not ids:
            return 1
        rows, unloadable = await self._load(ids)
        for bad in unloadable:
            final = bad.attempts >= self._s.processing.max_attempts
            await self._writer.fail(bad, now, "load", "the stored message cannot be read from the database", final)
        prepared = await self._prepare_all([Work(row, now, actor=f"worker:{self._owner}") for row in rows], now)
        if prepared:
            await self._writer.write(prepared, now)
        return len(claimed)

    async def _prepare_all(self, works: list[Work], now: datetime) -> list[Prepared]:
        """Every message through its pipeline. Concurrently: gpg and openssl run in threads and
        subprocesses (bounded by their own semaphores), so one message's decryption overlaps
        another's parsing. A batch handler (the repeats check) is a meeting point: each message
        runs up to it, then it runs once for all that got there, then each runs on."""
        done: list[Prepared] = []
        at = dict.fromkeys((id(work) for work in works), 0)  # each work's next handler
        going = works
        while going:
            stops = await asyncio.gather(*(self._advance(work, at, now) for work in going))
            done += [stop for stop in stops if isinstance(stop, Prepared)]
            waiting: dict[int, tuple[BatchHandler, list[Work]]] = {}
            for work, stop in zip(going, stops, strict=True):
                if isinstance(stop, BatchHandler):
                    waiting.setdefault(id(stop), (stop, []))[1].append(work)
            going = []
            for handler, group in waiting.values():
                going += await self._batch_or_fail(handler, group, at, now)
        return done

    async def _advance(self, work: Work, at: dict[int, int], now: datetime) -> Prepared | BatchHandler | None:
        """Run `work` on to its next batch handler (returned, not run) or to the end (its Prepared);
        None if it failed (written as such)."""
        try:
            # A bound per message: one pathological message (gpg grinding through thousands of
            # bogus key packets) must not hold up the referrals claimed with it.
            return await asyncio.wait_for(self._run(work, at), PREPARE_TIMEOUT)
        except Quarantine as outcome:
            await self._writer.fail(work.message, now, outcome.stage, outcome.reason, final=True, outcome=outcome)
        except Exception as exc:  # noqa: BLE001
            # Mailman's shunt: a bug in any handler must not lose the message; it is retried, then
            # quarantined for a person to see, with the stage of the handler that failed.
            final = work.message.attempts >= self._s.processing.max_attempts
            await self._writer.fail(work.message, now, work.stage, describe(exc), final=final)
        return None

    async def _run(self, work: Work, at: dict[int, int]) -> Prepared | BatchHandler:
        handlers = self._pipelines.of(work.message.channel)
        while at[id(work)] < len(handlers):
            handler = handlers[at[id(work)]]
            if work.repeat_of is not None and handler.name not in REPEAT_STAGES:
                at[id(work)] += 1
                continue
            if work.reply is not None:
                break  # threaded onto a waiting referral (gateway.pipeline.replies): nothing more to do
            work.stage = handler.name
            batch = self._batch_handler(handler)
            if batch is not None:
                return batch
            await handler(work)
            at[id(work)] += 1
        return work.prepared()

    def _batch_handler(self, handler: Handler) -> BatchHandler | None:
        # Remembered per handler: a runtime Protocol check costs microseconds, on every step.
        key = id(handler)
        if key not in self._batched:
            self._batched[key] = handler if isinstance(handler, BatchHandler) else None
        return self._batched[key]

    async def _batch_or_fail(
        self, handler: BatchHandler, works: list[Work], at: dict[int, int], now: datetime
    ) -> list[Work]:
        """`handler` once for `works`; returns them to run on. If it fails, each fails (retried,
        then quarantined) as it would have alone."""
        try:
            await asyncio.wait_for(handler.batch(works), PREPARE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            # As in _advance: the failure of one handler's stage, for every message it held.
            for work in works:
                if isinstance(exc, Quarantine):
                    await self._writer.fail(work.message, now, exc.stage, exc.reason, final=True, outcome=exc)
                else:
                    final = work.message.attempts >= self._s.processing.max_attempts
                    await self._writer.fail(work.message, now, work.stage, describe(exc), final=final)
            return []
        for work in works:
            at[id(work)] += 1
        return works

    async def _quarantine_exhausted(self, claimed: list[tuple[str, int]], now: datetime) -> list[str]:
        """Claims count attempts, so a message that crashed its worker (or failed its batch's
        write) max_attempts times is quarantined here without being opened again; it cannot hold
        up the queue behind it. `claimed`: (id, attempts) as the claim returned them, so a batch
        with none over the limit costs no statement here."""
        limit = self._s.processing.max_attempts
        over = [message_id for message_id, attempts in claimed if attempts > limit]
        if not over:
            return [message_id for message_id, _ in claimed]
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(*_CLAIMED)
                    .join(referrals, referrals.c.message_id == messages.c.id)
                    .where(messages.c.id.in_(over))
                )
            ).all()
        exhausted = [Claimed(**row._mapping) for row in rows]
        for message in exhausted:
            why = f"gave up after {limit} attempts that did not finish"
            await self._writer.fail(message, now, "process", why, final=True)
        gone = {message.message_id for message in exhausted}
        return [message_id for message_id, _ in claimed if message_id not in gone]

    async def _load(self, ids: list[str]) -> tuple[list[Loaded], list[Claimed]]:
        """The claimed rows; any that cannot even be read come back apart (id columns only), so
        one damaged row cannot block its batch forever."""
        query = select(*_CLAIMED, messages.c.raw, messages.c.envelope).join(
            referrals, referrals.c.message_id == messages.c.id
        )

        def loaded(m: RowMapping) -> Loaded:
            return Loaded(Claimed(*(m[c.name] for c in _CLAIMED)), m["raw"], m["envelope"])

        async with self._db.read() as conn:
            try:
                return [loaded(row._mapping) for row in await conn.execute(query.where(messages.c.id.in_(ids)))], []
            except DBAPIError:
                pass
        rows: list[Loaded] = []
        bad: list[Claimed] = []
        for message_id in ids:
            # A fresh connection per row: after an error PostgreSQL refuses the rest of a transaction.
            async with self._db.read() as conn:
                try:
                    rows.append(loaded((await conn.execute(query.where(messages.c.id == message_id))).one()._mapping))
                    continue
                except DBAPIError:
                    pass
            async with self._db.read() as conn:
                only_ids = select(*_CLAIMED).join(referrals, referrals.c.message_id == messages.c.id)
                row = (await conn.execute(only_ids.where(messages.c.id == message_id))).one()
                bad.append(Claimed(**row._mapping))
        return rows, bad
