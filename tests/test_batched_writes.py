"""A batch costs the database a few statements, not a few per row: the outbox records a batch of
sends in one UPDATE and reads what it claimed from the claim itself, and (on PostgreSQL) an INSERT
of many rows is one INSERT ... VALUES (...), (...), not an executemany run row by row. Watched
with SQLAlchemy's cursor events on the gateway's own engine, against real SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine.interfaces import ExecuteStyle

from gateway.app import Gateway
from gateway.core.schema import deliveries, events
from tests.conftest import both_databases, maildir_messages, send_referral

pytestmark = both_databases

MASH = "mash-duty@demo-council.example"


@contextmanager
def statements(gateway: Gateway) -> Iterator[list[tuple[str, ExecuteStyle]]]:
    """Every statement the gateway's engine sends meanwhile (whitespace folded), and its style."""
    seen: list[tuple[str, ExecuteStyle]] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        seen.append((" ".join(statement.split()), context.execute_style))

    event.listen(gateway.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(gateway.engine.sync_engine, "before_cursor_execute", before)


async def test_a_batch_of_sends_is_claimed_and_recorded_in_one_statement_each(gateway: Gateway, home: Path) -> None:
    references = [await send_referral(gateway, f"batch{i}", urgency="urgent") for i in range(5)]
    assert await gateway.process_all() == 5
    with statements(gateway) as seen:
        # The team mailbox, the two on the rota and the receipt, for each: 20, one outbox batch.
        assert await gateway.deliver_all() == 20
    claims = [s for s, _ in seen if s.startswith("UPDATE deliveries SET attempts=")]
    marks = [s for s, _ in seen if s.startswith("UPDATE deliveries SET state=")]
    assert len(claims) == 2  # the batch, then the claim that finds nothing left
    assert len(marks) == 1  # every one sent: one UPDATE for the lot
    assert not [s for s, _ in seen if s.startswith("SELECT deliveries.")]  # the claim returned the rows
    async with gateway.engine.connect() as conn:
        sent = (await conn.execute(select(func.count()).where(deliveries.c.state == "sent"))).scalar_one()
        recorded = (await conn.execute(select(func.count()).where(events.c.kind == "delivery_sent"))).scalar_one()
    assert sent == recorded == 20
    mailbox = {alert["X-Referral-Reference"] for alert in maildir_messages(home, MASH)}
    assert mailbox == set(references)


async def test_a_batch_of_events_is_one_insert(gateway: Gateway) -> None:
    for i in range(5):
        await send_referral(gateway, f"events{i}", urgency="urgent")
    with statements(gateway) as seen:
        assert await gateway.process_all() == 5
    inserts = [style for s, style in seen if s.startswith("INSERT INTO events")]
    assert len(inserts) == 1  # the batch's parsed, routed and delivery_queued events together
    if gateway.engine.dialect.name == "postgresql":
        assert inserts == [ExecuteStyle.INSERTMANYVALUES]
    async with gateway.engine.connect() as conn:
        queued = (await conn.execute(select(func.count()).where(events.c.kind == "delivery_queued"))).scalar_one()
    assert queued == 20
