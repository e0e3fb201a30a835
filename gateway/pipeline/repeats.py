"""Repeats: partner-signed content received again makes no second referral (issue 14).

A message whose signature the partner directory accepted carries proof of what the partner sent
(gateway.open.security.SignedContent). Its digest, an HMAC-SHA256 of the signer and the signed bytes
under a key of the gateway's own, is stored with the referral it made (table signed_content). A later
message with the same digest, whatever its Message-ID or envelope, is closed as a repeat of that
referral: not routed, nobody alerted, both timelines say so, and the report shows it.

Keyed, so that the table cannot be used to test a guess at a referral's content; the key is derived
from keys/throttle.key (every instance holds the same one; `keys init` makes it), so nothing new
has to be made, shared or backed up. Unsigned mail is never a repeat: without a signature nothing
shows that two messages are the same partner's one referral, and a concern is never dropped on a
guess.

Races: the check before routing (`Dedupe`) reads committed rows only, so two instances, or two
messages in one batch, may both find nothing. The write settles it: `claim` inserts the digests
first in the batch's transaction, and the primary key lets exactly one through; a message that lost
is released to be processed again at once, when `Dedupe` finds the winner and makes it a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import audit
from gateway.core.db import Database
from gateway.core.schema import messages, referrals, signed_content
from gateway.open.security import SignedContent
from gateway.pipeline.work import Original, Prepared, Work
from gateway.staff.throttle import address_key

STAGE = "repeat"  # the handler's stage, as the report names it if the check fails


def content_key(keys_dir: Path) -> bytes:
    """The digest key: derived from the address-hashing key with a label of its own, so that a
    digest and an address hash are never comparable."""
    return hmac.new(address_key(keys_dir), b"referral-gateway signed content v1", hashlib.sha256).digest()


def digest(key: bytes, signed: SignedContent) -> str:
    # The signer is part of the digest: the same words signed by two partners are two referrals.
    data = signed.signer.encode() + b"\0" + signed.content
    return hmac.new(key, data, hashlib.sha256).hexdigest()


class Dedupe:
    """After opening: is this signed content a referral already? Then the work is a repeat.
    A batch handler: one read for the whole processing batch's digests (a read per message was a
    tenth of the gateway's CPU per referral: a pool checkout, a transaction and a statement each)."""

    name = STAGE

    def __init__(self, db: Database, key: bytes) -> None:
        self._db = db
        self._key = key

    async def __call__(self, work: Work) -> None:
        await self.batch([work])

    async def batch(self, works: Sequence[Work]) -> None:
        signed = [work for work in works if work.security is not None and work.security.signed is not None]
        for work in signed:
            assert work.security is not None and work.security.signed is not None
            work.digest = digest(self._key, work.security.signed)
        if not signed:
            return
        wanted = sorted({work.digest for work in signed if work.digest is not None})
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(signed_content.c.digest, referrals.c.id, referrals.c.reference, referrals.c.received_at)
                    .join(signed_content, signed_content.c.referral_id == referrals.c.id)
                    .where(signed_content.c.digest.in_(wanted))
                )
            ).all()
        found = {row.digest: row for row in rows}
        for work in signed:
            row = found.get(work.digest)
            # Its own digest (a retry after a write that committed the digest) is no repeat. Two
            # copies in this batch both find nothing here: `claim` settles which is the original.
            if row is None or row.id == work.message.referral_id:
                continue
            work.repeat_of = Original(row.id, row.reference, row.received_at)
            work.event("repeat", {"of": row.reference, "original": row.id})


def _insert(dialect: str, rows: list[dict[str, object]]) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(signed_content).values(rows).on_conflict_do_nothing().returning(signed_content.c.digest)


async def claim(conn: AsyncConnection, batch: Sequence[Prepared], now: datetime) -> set[str]:
    """Insert the batch's digests; returns the message ids that lost theirs to an earlier message
    (another instance's, or one before it in this batch). First in the transaction and in digest
    order, so that two batches waiting on each other's digests always wait in the same order."""
    first: dict[str, Prepared] = {}
    lost: set[str] = set()
    for prep in sorted(batch, key=lambda p: (p.message.received_at, p.message.message_id)):
        if prep.digest is None or prep.repeat_of is not None:
            continue
        if prep.digest in first:
            lost.add(prep.message.message_id)
        else:
            first[prep.digest] = prep
    if not first:
        return lost
    rows = [
        {"digest": d, "referral_id": first[d].message.referral_id, "first_seen": first[d].message.received_at}
        for d in sorted(first)
    ]
    # ON CONFLICT DO NOTHING: on PostgreSQL it waits for another transaction inserting the same
    # digest and then yields to it if that one commits, so exactly one of them wins.
    won = set((await conn.execute(_insert(conn.dialect.name, rows))).scalars())
    return lost | {prep.message.message_id for d, prep in first.items() if d not in won}


async def release(conn: AsyncConnection, message_ids: set[str], owner: str, now: datetime) -> None:
    """Messages whose digest another referral holds: let go, due now, to be processed again (and
    then found to be repeats). Nothing of theirs is written; the claim already counted the try."""
    await conn.execute(
        update(messages)
        .where(
            messages.c.id.in_(sorted(message_ids)), messages.c.lease_owner == owner, messages.c.processed_at.is_(None)
        )
        .values(lease_owner=None, lease_until=None, next_attempt_at=now)
    )


def events(prep: Prepared, now: datetime, actor: str) -> tuple[str, list[audit.Event]]:
    """The earlier referral's event: its content came again, as which reference, and when."""
    assert prep.repeat_of is not None
    m = prep.message
    detail = {"as": m.reference, "repeat": m.referral_id, "received_at": m.received_at.isoformat()}
    return prep.repeat_of.referral_id, [audit.Event(prep.repeat_of.referral_id, now, actor, "received_again", detail)]
