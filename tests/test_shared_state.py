"""Issue 13: several instances on one PostgreSQL database. State that changes an answer lives in
the database (the public form's rate limit), and no instance makes the keys every instance must
share: two real gateways on one real throwaway PostgreSQL, driven over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core.clock import FakeClock
from gateway.core.keyfiles import KeyFileError
from gateway.core.schema import form_attempts, messages
from tests.conftest import START, write_config

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
LIMIT = 30  # ReferralForm's default: what from_config, so every instance, uses


@pytest.fixture
async def two(home: Path, clock: FakeClock, database_url: str) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two instances sharing one database and one keys/ (as copied from `keys init`), each on its own ports."""
    config = config_mod.load(write_config(home, database_url=database_url))
    first = Gateway(config, clock=clock, workers=False)
    second = Gateway(config, clock=clock, workers=False)
    await first.start()
    try:
        await second.start()
        yield first, second
    finally:
        await second.stop()
        await first.stop()


async def _post(session: aiohttp.ClientSession, gw: Gateway) -> int:
    # No CSRF token: a 403, but counted first (a flood need not be valid).
    async with session.post(f"http://127.0.0.1:{gw.http_port}/refer", data={"x": "1"}) as response:
        await response.read()
        return response.status


async def test_two_instances_share_the_forms_rate_limit(two: tuple[Gateway, Gateway], clock: FakeClock) -> None:
    first, second = two
    async with aiohttp.ClientSession() as session:
        statuses = [await _post(session, (first, second)[i % 2]) for i in range(LIMIT)]
        assert statuses == [403] * LIMIT  # split 15 and 15: each instance alone is under its limit
        assert await _post(session, first) == 429 and await _post(session, second) == 429
        async with first.engine.connect() as conn:
            [(client, attempts)] = (await conn.execute(select(form_attempts.c.client, form_attempts.c.attempts))).all()
        assert attempts == LIMIT + 2 and "127.0.0.1" not in client  # counted once for both; only a keyed hash
        clock.advance(timedelta(minutes=15))
        assert await _post(session, second) == 403  # the next window: let through again


async def test_concurrent_posts_at_both_instances_are_counted_exactly(two: tuple[Gateway, Gateway]) -> None:
    """The upsert is atomic: 40 POSTs at once, 20 at each instance, let exactly LIMIT through."""
    first, second = two
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(_post(session, (first, second)[i % 2]) for i in range(LIMIT + 10)))
    assert sorted(statuses) == [403] * LIMIT + [429] * 10


async def test_on_postgresql_start_never_makes_keys_until_keys_init(
    home: Path, clock: FakeClock, database_url: str
) -> None:
    path = write_config(home, database_url=database_url)
    config = config_mod.load(path)
    shutil.rmtree(config.keys_dir)  # write_config made them, as keys init would: take them away
    gw = Gateway(config, clock=clock, workers=False)
    with pytest.raises(KeyFileError) as refused:
        await gw.start()
    await gw.stop()
    message = str(refused.value)
    assert (
        "data-at-rest.key, ack-signing.key, web-form.key, session.key, throttle.key, history-index.key missing"
        in message
    )
    assert "Run `referral-gateway keys init` once" in message
    assert not config.keys_dir.exists() or not any(config.keys_dir.rglob("*"))  # nothing made

    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "init", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "made the secret key keys/data-at-rest.key" in done.stdout
    made = {p.name: p.read_bytes() for p in config.keys_dir.glob("*.key")}
    shared = {"data-at-rest.key", "ack-signing.key", "web-form.key", "session.key", "throttle.key", "history-index.key"}
    assert shared <= set(made)

    gw = Gateway(config, clock=clock, workers=False)
    await gw.start()
    try:
        assert {p.name: p.read_bytes() for p in config.keys_dir.glob("*.key")} == made  # used, not replaced
    finally:
        await gw.stop()


async def test_keys_init_never_makes_a_sealing_key_the_stored_referrals_lost(
    home: Path, clock: FakeClock, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(home, database_url=database_url)
    config = config_mod.load(path)
    gw = Gateway(config, clock=clock, workers=False)
    await gw.start()
    try:
        async with gw.db.write() as conn:
            await conn.execute(
                messages.insert().values(
                    id="m" * 32, channel="email", dedupe_key="d", received_at=START, size=1, envelope=b"e", raw=b"r",
                    attempts=0, next_attempt_at=START,
                )
            )  # fmt: skip
    finally:
        await gw.stop()
    (config.keys_dir / "data-at-rest.key").unlink()
    assert main(["keys", "init", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "keys/data-at-rest.key missing but the database holds referrals: restore the keys from backup" in err
    assert not (config.keys_dir / "data-at-rest.key").exists()
