"""Stopping a gateway whose loops are at work: each loop ends at a step's end, so no transaction is
left open (on SQLite, an open one holds the write lock: the next start, or `referral-gateway keys`,
would wait on it and fail), and nothing accepted is lost."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from sqlalchemy import func, select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.schema import messages
from tests.conftest import send_referral, write_config


def write_lock_is_free(db: Path) -> bool:
    """What the next process to start would try first: take the write lock, briefly."""
    conn = sqlite3.connect(db, timeout=0.5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


async def test_stopping_mid_work_leaves_no_lock_and_loses_nothing(home: Path, clock: FakeClock) -> None:
    path = write_config(home)
    sent = 0
    for round_ in range(6):
        gw = Gateway(config_mod.load(path), clock=clock, workers=True)
        await gw.start()
        try:
            for n in range(4):
                await send_referral(gw, f"stop-{round_}-{n}", urgency="routine")
                sent += 1
            # Stop at varying points of the work the 250s set going.
            await asyncio.sleep(0.01 * round_)
        finally:
            await gw.stop()
        assert write_lock_is_free(home / "var" / "gateway.db"), f"write lock held after stop (round {round_})"

    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    try:
        await gw.process_all()
        async with gw.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(messages))).scalar_one()
            pending = (
                await conn.execute(select(func.count()).select_from(messages).where(messages.c.processed_at.is_(None)))
            ).scalar_one()
        assert (total, pending) == (sent, 0)
    finally:
        await gw.stop()
