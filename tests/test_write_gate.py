"""The in-process write gate: one writer at a time, intake first, workers never starved."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from gateway.core.db import WriteGate


async def test_intake_goes_before_queued_workers_and_all_get_their_turn() -> None:
    gate = WriteGate(max_defer=timedelta(seconds=60))
    order: list[str] = []
    inside = 0

    async def writer(name: str, urgent: bool) -> None:
        nonlocal inside
        async with gate.hold(urgent):
            inside += 1
            assert inside == 1  # never two writers at once
            order.append(name)
            await asyncio.sleep(0.01)
            inside -= 1

    first = asyncio.create_task(writer("worker-1", False))
    await asyncio.sleep(0)  # worker-1 holds the gate
    queued = [asyncio.create_task(writer("worker-2", False)), asyncio.create_task(writer("worker-3", False))]
    await asyncio.sleep(0)
    queued.append(asyncio.create_task(writer("intake", True)))
    await asyncio.gather(first, *queued)
    assert order == ["worker-1", "intake", "worker-2", "worker-3"]


async def test_a_worker_waiting_past_max_defer_goes_before_more_intake() -> None:
    gate = WriteGate(max_defer=timedelta(milliseconds=20))
    order: list[str] = []

    async def writer(name: str, urgent: bool, hold: float) -> None:
        async with gate.hold(urgent):
            order.append(name)
            await asyncio.sleep(hold)

    tasks = [asyncio.create_task(writer("intake-1", True, 0.05))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(writer("worker", False, 0)))
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(writer("intake-2", True, 0)))
    await asyncio.gather(*tasks)
    assert order == ["intake-1", "worker", "intake-2"]  # the worker had waited 50 ms > 20 ms


async def test_a_cancelled_waiter_does_not_block_the_gate() -> None:
    gate = WriteGate()
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.hold(False):
            await release.wait()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(gate.hold(True).__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await held
    async with asyncio.timeout(1):
        async with gate.hold(False):
            pass
