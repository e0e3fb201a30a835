"""Sign-in throttling per client address: password spraying (one guess at each of many usernames)
never trips the per-account lockout, so failures are also counted per address.

After ADDRESS_FAILURES failed sign-ins (wrong password, unknown user, wrong code) from one address
within ADDRESS_WINDOW, every further attempt from it is refused unchecked, whatever the username,
until the oldest of those failures is older than the window. Refused attempts are not counted, so
the address is let in again at the time the refusal names.

Durable and shared: the failures are rows in the database, so several instances behind one
balancer see the same count and a restart forgets nothing. The address is stored only as a keyed
hash (keys/throttle.key): the table holds nothing that identifies anyone. Rows older than the
window are deleted as new ones are written.

Which address: the caller's (gateway.web.forwarded): the peer's, or behind a reverse proxy in
`[http] trusted_proxies` the client's from X-Forwarded-For, as for the public form's flood guard.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select

from gateway.core import keyfiles
from gateway.core.db import Database
from gateway.core.schema import sign_in_failures

ADDRESS_FAILURES = 20  # failed sign-ins from one address in the window before it is refused
ADDRESS_WINDOW = timedelta(minutes=15)
KEY_FILE = "throttle.key"


def throttled_message(minutes: int) -> str:
    return (
        "There have been too many failed sign-in attempts from your network. Try again in "
        f"{minutes} minute{'s' if minutes != 1 else ''}. If you need help now, ask an administrator."
    )


def address_key(keys_dir: Path) -> bytes:
    """The key client addresses are hashed with (here and for the public form's flood guard)."""
    return keyfiles.load_or_create(keys_dir / KEY_FILE)


def address_hash(key: bytes, address: str) -> str:
    """What is stored instead of a client address: nothing in it identifies anyone without the key."""
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()


class AddressThrottle:
    def __init__(
        self, db: Database, key: bytes, limit: int = ADDRESS_FAILURES, window: timedelta = ADDRESS_WINDOW
    ) -> None:
        self._db = db
        self._key = key
        self._limit = limit
        self._window = window

    @classmethod
    def from_keys_dir(cls, db: Database, keys_dir: Path) -> AddressThrottle:
        return cls(db, address_key(keys_dir))

    @property
    def limit(self) -> int:
        return self._limit

    def _client(self, address: str) -> str:
        return address_hash(self._key, address)

    async def refused_for(self, address: str, now: datetime) -> int | None:
        """None if `address` may try to sign in now; else the whole minutes until it may."""
        client = self._client(address)
        async with self._db.read() as conn:
            count, oldest = (
                await conn.execute(
                    select(func.count(), func.min(sign_in_failures.c.at)).where(
                        sign_in_failures.c.client == client, sign_in_failures.c.at > now - self._window
                    )
                )
            ).one()
        if count < self._limit or oldest is None:
            return None
        # The count drops below the limit once enough of the oldest failures leave the window; the
        # oldest's leaving is the earliest that can happen, and the answer is never under a minute.
        wait: datetime = oldest
        return max(1, math.ceil((wait + self._window - now).total_seconds() / 60))

    async def failed(self, address: str, now: datetime) -> bool:
        """Count a failed sign-in; True if it is the one that reaches the limit (the caller audits
        that once, not every refused attempt after it, which a flood could make millions of)."""
        client = self._client(address)
        async with self._db.write() as conn:
            await conn.execute(delete(sign_in_failures).where(sign_in_failures.c.at <= now - self._window))
            await conn.execute(sign_in_failures.insert().values(client=client, at=now))
            count = (
                await conn.execute(
                    select(func.count()).where(
                        sign_in_failures.c.client == client, sign_in_failures.c.at > now - self._window
                    )
                )
            ).scalar_one()
        return int(count) == self._limit
