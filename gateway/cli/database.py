"""The store for the commands that read or write it (report, verify, users): one run, one engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Config
from gateway.core import db

_T = TypeVar("_T")


async def _run(cfg: Config, work: Callable[[AsyncEngine], Awaitable[_T]]) -> _T:
    engine = db.make_engine(cfg.database_url, cfg.settings.database.busy_timeout)
    try:
        # Migrated first, as `serve` does at start: a command run before the first `serve` (adding the first
        # administrator) or after an upgrade meets the schema this code expects.
        await db.upgrade(engine)
        return await work(engine)
    finally:
        await engine.dispose()  # its pooled connections are closed inside this loop, before asyncio.run ends it


def with_engine(cfg: Config, work: Callable[[AsyncEngine], Awaitable[_T]]) -> _T:
    """Runs `work` on the configured database, in an event loop of its own (the commands are synchronous)."""
    return asyncio.run(_run(cfg, work))


def with_database(cfg: Config, work: Callable[[db.Database], Awaitable[_T]]) -> _T:
    """`with_engine`, handing `work` the store's one way to read and write."""
    return with_engine(cfg, lambda engine: work(db.Database(engine)))
