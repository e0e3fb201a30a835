"""The gateway's background loops: each runs one step (a batch in one transaction) at a time,
rests until woken or its poll comes round, and ends at a step's end when the gateway stops.

Takes the steps from gateway.app; gives the loop tasks and their stop. Imports core only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.core.clock import Clock
from gateway.core.metrics import Heartbeats

log = logging.getLogger("gateway.app")

# How long stop() lets the loops finish the step they are in before cancelling them.
STOP_GRACE = 15.0


class Loops:
    """The loop tasks of one gateway. Stopping lets each loop finish its step: cancelling one
    mid-transaction could leave an SQLite connection holding the write lock until the garbage
    collector found it (the next start, or a `keys` command, then waited on it and failed)."""

    def __init__(self, clock: Clock, heartbeats: Heartbeats, quiet: Callable[[], Awaitable[None]]) -> None:
        self._clock = clock
        self._heartbeats = heartbeats
        self._quiet = quiet  # waits out a burst of intake before a worker step (see IntakeWriter.quiet)
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, loop: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(loop))

    async def run(self, name: str, step: Callable[[], Awaitable[int]], wake: asyncio.Event, poll: float) -> None:
        # Every loop run through here is watched by /readyz from its first moment: one that
        # never finishes a step is as stuck as one that stopped.
        self._heartbeats.expect(name, self._clock.now(), poll)
        while not self.stopping.is_set():
            wake.clear()
            await self._quiet()
            try:
                busy = await step()
                self._heartbeats.beat(name, self._clock.now())
            except Exception as exc:  # noqa: BLE001
                # A worker loop must outlive a failed step (database briefly locked or gone);
                # the rows stay queued and are retried.
                log.error("%s loop: step failed (%s); retrying in %.0fs", name, type(exc).__name__, poll)
                busy = 0
            if not busy:
                await self.rest(wake, poll)

    async def rest(self, wake: asyncio.Event, seconds: float) -> None:
        """Waits until woken, `seconds` pass, or the gateway stops, whichever comes first."""
        waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(self.stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def stop(self) -> None:
        self.stopping.set()
        if not self._tasks:
            return
        # A step is one batch in one transaction: it ends well within the grace. One that does
        # not (a database gone quiet) is cancelled.
        _, late = await asyncio.wait(self._tasks, timeout=STOP_GRACE)
        for task in late:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
