"""/livez and /readyz against the running gateway over real HTTP: ready when the database answers,
every background loop is finishing steps and processing keeps up; 503 with the failing check named
when the PostgreSQL server is stopped, when the loops stop stepping, when processing lags; and 200
again once each is put right. Time moves only by the FakeClock."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from tests.conftest import send_referral, write_config
from tests.postgres import Server, create_database
from tests.test_metrics import parse, value


async def get(gw: Gateway, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.http_port}{path}") as response:
        return response.status, await response.json()


async def until_ready(gw: Gateway, attempts: int = 200) -> dict[str, Any]:
    """Ask again until ready (the loops step on their own time); fail with the last answer."""
    for _ in range(attempts):
        status, body = await get(gw, "/readyz")
        if status == 200:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"never ready: {body}")


async def start(home: Path, clock: FakeClock, *, workers: bool, database_url: str = "", extra: str = "") -> Gateway:
    path = write_config(home, extra, database_url=database_url)
    gw = Gateway(config_mod.load(path), clock=clock, workers=workers)
    await gw.start()
    return gw


async def test_livez_answers_and_readyz_is_ready_with_each_check(home: Path, clock: FakeClock) -> None:
    gw = await start(home, clock, workers=True)
    try:
        assert await get(gw, "/livez") == (200, {"status": "ok"})
        body = await until_ready(gw)
        assert body["status"] == "ok"
        checks = body["checks"]
        assert checks["database"] == {"ok": True}
        loops = {"processing", "outbox", "deadlines", "retention", "reseal"}
        assert set(checks["workers"]["last_step_age_seconds"]) == loops
        assert checks["processing_lag"] == {"ok": True, "seconds": 0.0, "max_seconds": 300.0}
    finally:
        await gw.stop()


async def test_loops_that_stop_stepping_make_it_not_ready_until_they_step_again(home: Path, clock: FakeClock) -> None:
    gw = await start(home, clock, workers=True)
    try:
        await until_ready(gw)
        # Every loop past its first step (the deadline loop's first also makes the day's digest),
        # so none steps late, after the clock has moved.
        for _ in range(200):
            if all(gw.heartbeats.steps().values()):
                break
            await asyncio.sleep(0.05)
        assert all(gw.heartbeats.steps().values()), gw.heartbeats.steps()
        # Six minutes in which no loop finished a step (as when each hangs on a dead connection):
        # past health.worker_stale_after (5m) beyond its own poll, every loop is named, but not
        # retention, whose poll is an hour: it is not due to step yet.
        clock.advance(timedelta(minutes=6))
        status, body = await get(gw, "/readyz")
        assert status == 503 and body["status"] == "fail"
        workers = body["checks"]["workers"]
        # Loops also step on their own polls of real time (the outbox's, the re-seal loop's 10 s), so
        # one may have stepped since the clock moved: those that have not are the ones named.
        stale = workers["stale"]
        assert workers["ok"] is False and stale and "retention" not in stale, body
        assert all(workers["last_step_age_seconds"][name] >= 360 for name in stale), body
        assert body["checks"]["database"] == {"ok": True}
        # A referral arrives: processing wakes, then the outbox and the deadline loop; the re-seal
        # loop steps on its own poll (rotation.key_check, 10 s); all step.
        await send_referral(gw, "r1", urgency="urgent")
        body = await until_ready(gw)
        assert body["checks"]["workers"]["ok"] is True and "stale" not in body["checks"]["workers"]
        assert (await get(gw, "/livez"))[0] == 200
    finally:
        await gw.stop()


async def test_processing_lag_over_the_threshold_is_not_ready(home: Path, clock: FakeClock) -> None:
    gw = await start(home, clock, workers=False)  # nothing processes until the test says so
    try:
        await send_referral(gw, "lag1", urgency="urgent")
        status, body = await get(gw, "/readyz")
        assert status == 200
        assert body["checks"]["workers"]["note"] == "no background loops run in this process"
        clock.advance(timedelta(minutes=6))
        status, body = await get(gw, "/readyz")
        assert status == 503
        assert body["checks"]["processing_lag"] == {"ok": False, "seconds": 360.0, "max_seconds": 300.0}
        assert await gw.process_all() == 1
        status, body = await get(gw, "/readyz")
        assert status == 200 and body["checks"]["processing_lag"]["seconds"] == 0.0
    finally:
        await gw.stop()


async def test_a_stopped_database_server_is_not_ready_and_back_when_it_returns(
    home: Path, clock: FakeClock, own_postgres: Server
) -> None:
    url = create_database(own_postgres.url, f"t{uuid.uuid4().hex[:16]}")
    gw = await start(home, clock, workers=True, database_url=url, extra='[metrics]\nlisten = "127.0.0.1:0"\n')
    try:
        await until_ready(gw)
        own_postgres.stop()
        # /metrics still answers, from this process: not ready, because of the database.
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.metrics_port}/metrics") as r:
            assert r.status == 200
            samples = parse(await r.text())
        assert value(samples, "gateway_ready") == 0
        assert value(samples, "gateway_ready_check", check="database") == 0
        assert value(samples, "gateway_ready_check", check="workers") == 1
        status, body = await get(gw, "/readyz")
        assert status == 503 and body["status"] == "fail"
        database = body["checks"]["database"]
        assert database["ok"] is False and database["error"]  # the error's type, never its text
        assert "127.0.0.1" not in database["error"] and "postgres" not in database["error"]
        assert body["checks"]["processing_lag"]["ok"] is False
        assert (await get(gw, "/livez"))[0] == 200  # the process answers: a restart would not help
        own_postgres.start()
        body = await until_ready(gw)
        assert body["checks"]["database"] == {"ok": True}
        # And it works again: a referral is accepted and processed by the running loops.
        await send_referral(gw, "pg1", urgency="urgent")
    finally:
        await gw.stop()
