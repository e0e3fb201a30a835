"""Acknowledgement links: signed, bound to one referral and one recipient, expiring.

token = base64url(payload) "." base64url(HMAC-SHA256(key, payload)); the payload holds the
referral's random id, a keyed hash of the recipient's address and the expiry. No personal data
is in the URL. The link itself only opens a confirm page: recording needs a POST, because mail
scanners follow GET links.

Rotation (gateway.outbox.token_keys): new links carry the signing key's id ("v": 2, "k"); links
made before ids existed ("v": 1) are tried against every key still held. A key id this instance
does not hold makes it read keys/ again, so a rotation made by the CLI or another instance is
picked up without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.core import b64url
from gateway.outbox import token_keys
from gateway.outbox.token_keys import KEY_FILE, PreviousKey, expired_previous, rotate

__all__ = ["KEY_FILE", "AckClaim", "AckSigner", "TokenError", "TokenExpired", "expired_previous", "rotate"]


class TokenError(Exception):
    """Why a link is refused, in words for the person who clicked it."""


class TokenExpired(TokenError):
    pass


@dataclass(frozen=True)
class AckClaim:
    referral_id: str
    recipient_hash: str
    expires: datetime


class AckSigner:
    def __init__(
        self,
        key: bytes,
        previous: tuple[PreviousKey, ...] = (),
        recipient_key: bytes | None = None,
        keys_dir: Path | None = None,
    ) -> None:
        if len(key) < 32:
            raise ValueError("the ack signing key must be at least 32 bytes")
        self._keys_dir = keys_dir
        self._signature = token_keys.signature(keys_dir) if keys_dir else ()
        self._set(key, previous, recipient_key or key)

    def _set(self, key: bytes, previous: tuple[PreviousKey, ...], recipient_key: bytes) -> None:
        self._key = key
        self._kid = token_keys.key_id(key)
        self._recipient_key = recipient_key
        self._previous = {token_keys.key_id(p.key): p for p in previous}

    @classmethod
    def from_keys_dir(cls, keys_dir: Path, may_create: bool = True) -> AckSigner:
        """may_create=False once referrals exist: a lost key would silently void every link sent."""
        keys = token_keys.load(keys_dir, may_create)
        return cls(keys.current, keys.previous, keys.recipient, keys_dir)

    def refresh(self) -> None:
        """Reads keys/ again if a rotation changed it (a stat; the files only when they changed)."""
        if self._keys_dir is None or token_keys.signature(self._keys_dir) == self._signature:
            return
        keys = token_keys.load(self._keys_dir, may_create=False)
        self._signature = token_keys.signature(self._keys_dir)
        self._set(keys.current, keys.previous, keys.recipient)

    def recipient_hash(self, address: str) -> str:
        key = self._recipient_key
        return hmac.new(key, b"recipient\0" + address.strip().lower().encode(), hashlib.sha256).hexdigest()[:32]

    def sign(self, referral_id: str, recipient: str, now: datetime, ttl: timedelta) -> str:
        self.refresh()  # never sign with a key another process has already rotated out
        expires = int((now + ttl).timestamp())
        payload = json.dumps(
            {"v": 2, "k": self._kid, "r": referral_id, "to": self.recipient_hash(recipient), "exp": expires},
            separators=(",", ":"),
        ).encode()
        mac = hmac.new(self._key, b"ack\0" + payload, hashlib.sha256).digest()
        return f"{b64url.encode(payload)}.{b64url.encode(mac)}"

    def _candidates(self, kid: object, now: datetime) -> list[tuple[bytes, datetime | None]]:
        """The keys that may have signed a link with key id `kid` (None: a v1 link, any key)."""
        keys: list[tuple[bytes, datetime | None]] = [(self._key, None)] if kid in (None, self._kid) else []
        keys += [(p.key, p.until) for k, p in self._previous.items() if kid in (None, k)]
        return keys

    def verify(self, token: str, now: datetime) -> AckClaim:
        bad = TokenError(
            "This acknowledgement link is not valid: it may have been copied "
            "incompletely or altered. Open the link from the alert email again, "
            "or call the duty team."
        )
        expired = TokenExpired(
            "This acknowledgement link has expired. The referral is still open: "
            "acknowledge it from the latest alert, or call the duty team."
        )
        try:
            payload_text, mac_text = token.split(".")
            payload, mac = b64url.decode(payload_text), b64url.decode(mac_text)
            data = json.loads(payload)
            kid = data.get("k") if isinstance(data, dict) else None
        except ValueError:  # wrong shape, or not the one spelling we write
            raise bad from None
        candidates = self._candidates(kid, now)
        if not candidates:
            self.refresh()  # a key id we do not hold: perhaps rotated by another process
            candidates = self._candidates(kid, now)
        for key, until in candidates:
            expected = hmac.new(key, b"ack\0" + payload, hashlib.sha256).digest()
            if hmac.compare_digest(mac, expected):
                if until is not None and now >= until:
                    raise expired  # the old key's overlap is over: every link it signed has expired
                break
        else:
            raise bad
        expires = datetime.fromtimestamp(data["exp"], UTC)
        if now >= expires:
            raise expired
        return AckClaim(data["r"], data["to"], expires)
