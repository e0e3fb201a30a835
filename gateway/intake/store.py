"""Store raw: the durable commit that must happen before any channel says yes.

Concurrent SMTP sessions share commits (group commit): each session hands its message to one
writer task and waits; the writer takes everything queued, writes it in one transaction and
answers every waiter after the single fsync. Under load, batches grow by themselves while a
commit is in flight, so no timer adds latency when the gateway is idle.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import audit
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.model import Channel
from gateway.core.reference import new_reference
from gateway.core.schema import messages, referrals
from gateway.core.sealed import Envelope, Sealed
from gateway.core.transitions import NewReferral, create

log = logging.getLogger(__name__)

_MAX_BATCH = 256
BURST_WINDOW = 0.2  # seconds
BURST_RATE = 100  # messages a second: above it, intake goes before processing
# A session waits for its commit at most busy_timeout and this (the write and its fsync, once the
# lock is had). Past it the session answers 451, even if the commit is still in flight: a server
# that stopped answering (a hung host, a stalled pooled connection) would otherwise hold every
# sender with no reply at all. Should the commit land after all, the sender's retry has the same
# dedupe key and gets a 250 for the same referral: never a yes without a commit, and no twin.
COMMIT_GRACE = 10.0  # seconds


@dataclass(frozen=True)
class Incoming:
    channel: Channel
    raw: bytes
    envelope: Envelope  # sealed before storage: holds the sender's address
    dedupe_key: str  # same key, same message: a retry by the sender makes no twin


@dataclass(frozen=True)
class Accepted:
    reference: str
    referral_id: str
    duplicate: bool


class IntakeWriter:
    def __init__(
        self,
        db: Database,
        sealed: Sealed,
        clock: Clock,
        on_committed: Callable[[], None] = lambda: None,
        window: float = 0.0,
    ) -> None:
        self._db = db
        self._sealed = sealed
        self._clock = clock
        self._on_committed = on_committed
        # Each with its arrival (the loop's time): its wait for the lock is counted from then.
        self._queue: asyncio.Queue[tuple[Incoming, asyncio.Future[Accepted], float]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._arrivals: deque[float] = deque()  # arrival times within the last BURST_WINDOW
        self._window = window
        self._writing: list[asyncio.Future[Accepted]] = []  # the batch being committed now

    @property
    def db(self) -> Database:
        """The database it writes to (the web form counts its attempts there too)."""
        return self._db

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="intake-writer")

    async def stop(self, grace: float = 5.0) -> None:
        """Commit what is queued (up to `grace` seconds), then stop. Anyone still waiting is told
        it failed, so their session answers 451 and the sender retries."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + grace
        while (self._queue.qsize() or self._writing) and loop.time() < give_up:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        waiting = list(self._writing)
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait()[1])
        for fut in waiting:
            if not fut.done():
                fut.set_exception(ConnectionAbortedError("gateway stopping"))

    async def quiet(self, max_wait: float, idle: float = 0.01) -> None:
        """Wait while a burst of mail is arriving (checked every `idle` / 2 seconds), but never
        longer than `max_wait`.

        The workers call this before each step: under a burst, saying yes to senders (whose
        servers time out and retry) goes first, and alerts follow within `max_wait`.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max_wait
        # A timestamp checked a few times per `idle`, rather than an Event set on every arrival:
        # the sessions' hot path stays one assignment.
        while loop.time() < give_up and self._busy(loop.time(), idle):  # noqa: ASYNC110
            await asyncio.sleep(idle / 2)

    def _busy(self, now: float, idle: float) -> bool:
        # A burst is on while sessions are waiting or committing, or while messages arrive
        # faster than BURST_RATE. A steady trickle (20 a second, the busiest real duty day is far
        # less) does not hold the workers up: its alerts go out within milliseconds.
        while self._arrivals and now - self._arrivals[0] > BURST_WINDOW:
            self._arrivals.popleft()
        return bool(self._queue.qsize() or self._writing) or len(self._arrivals) >= BURST_RATE * BURST_WINDOW

    async def submit(self, item: Incoming) -> Accepted:
        """Returns once the message and its `received` event are committed; raises if not."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        self._arrivals.append(arrived)
        fut: asyncio.Future[Accepted] = loop.create_future()
        await self._queue.put((item, fut, arrived))
        # shield: aiosmtpd cancels the handler when the client hangs up, but the commit must
        # finish or fail as a whole; the writer owns it, not the session.
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self._db.busy_timeout + COMMIT_GRACE)
        except TimeoutError:
            # Nobody will read the late outcome: take it, so asyncio does not log it as lost.
            fut.add_done_callback(lambda done: done.cancelled() or done.exception())
            log.error("intake commit did not finish in time; answered as failed")
            raise

    async def _run(self) -> None:
        busy = False
        while True:
            batch = [await self._queue.get()]
            self._writing = [batch[0][1]]  # stop() answers it if we are cancelled while waiting
            if busy and self._window > 0:
                # Under load (the last batch shared a commit), wait a moment for more sessions
                # to join this one: fewer, larger commits. Idle, a lone message goes at once.
                await asyncio.sleep(self._window)
            while not self._queue.empty() and len(batch) < _MAX_BATCH:
                batch.append(self._queue.get_nowait())
            busy = len(batch) > 1
            live = [(item, fut) for item, fut, _ in batch if not fut.cancelled()]
            self._writing = [fut for _, fut in live]
            # The batch's wait for the lock ends busy_timeout after its first session arrived, so
            # a sender queued behind a failing commit still hears 451 within one busy_timeout.
            await self._commit(live, min(arrived for _, _, arrived in batch))
            self._writing = []

    async def _commit(self, live: list[tuple[Incoming, asyncio.Future[Accepted]]], since: float) -> None:
        """Write a batch and answer each waiter: its result, or the error (its session says 451)."""
        try:
            results = await self._write_batch([item for item, _ in live], since)
        except IntegrityError:
            # A duplicate raced in from another instance, or a reference collided: write each
            # message alone so one conflict cannot fail the others.
            for item, fut in live:
                await self._write_one(item, fut)
            self._on_committed()
            return
        except Exception as exc:  # noqa: BLE001
            # Every waiter must hear: their senders get 451 and retry.
            log.error("intake commit failed for %d messages: %s", len(live), type(exc).__name__)
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)
        self._on_committed()

    async def _write_one(self, item: Incoming, fut: asyncio.Future[Accepted]) -> None:
        try:
            (result,) = await self._write_batch([item])
        except Exception as exc:  # noqa: BLE001 - reported to this sender only (451)
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(result)

    async def _write_batch(self, items: Sequence[Incoming], since: float | None = None) -> list[Accepted]:
        now = self._clock.now()
        async with self._db.write(urgent=True, since=since) as conn:
            known = await _existing(conn, {i.dedupe_key for i in items})
            results: list[Accepted] = []
            new_messages: list[dict[str, object]] = []
            new_referrals: list[NewReferral] = []
            new_events: list[audit.Event] = []
            for item in items:
                if item.dedupe_key in known:
                    results.append(known[item.dedupe_key])
                    continue
                message_id, referral_id = uuid.uuid4().hex, uuid.uuid4().hex
                reference = new_reference()
                new_messages.append(
                    {
                        "id": message_id,
                        "channel": item.channel.value,
                        "dedupe_key": item.dedupe_key,
                        "received_at": now,
                        "size": len(item.raw),
                        "attempts": 0,
                        "next_attempt_at": now,
                        "envelope": self._sealed.seal_envelope(message_id, item.envelope),
                        "raw": self._sealed.seal_raw(message_id, item.raw),
                    }
                )
                new_referrals.append(NewReferral(referral_id, message_id, reference, item.channel.value, now))
                new_events.append(
                    audit.Event(referral_id, now, f"intake:{item.channel.value}", "received", {"size": len(item.raw)})
                )
                accepted = Accepted(reference, referral_id, duplicate=False)
                known[item.dedupe_key] = Accepted(reference, referral_id, duplicate=True)
                results.append(accepted)
            if new_messages:
                await conn.execute(messages.insert(), new_messages)
                await create(conn, new_referrals, new_events)
        return results


async def _existing(conn: AsyncConnection, keys: set[str]) -> dict[str, Accepted]:
    rows = await conn.execute(
        select(messages.c.dedupe_key, referrals.c.reference, referrals.c.id)
        .join(referrals, referrals.c.message_id == messages.c.id)
        .where(messages.c.dedupe_key.in_(keys))
    )
    return {r.dedupe_key: Accepted(r.reference, r.id, duplicate=True) for r in rows}
