"""Acknowledgement links: signed, bound to one referral and one recipient, expiring.

token = base64url(payload) "." base64url(HMAC-SHA256(key, payload)); the payload holds the
referral's random id, a keyed hash of the recipient's address and the expiry. No personal data
is in the URL. The link itself only opens a confirm page: recording needs a POST, because mail
scanners follow GET links.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.core import b64url, keyfiles

KEY_FILE = "ack-signing.key"


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
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the ack signing key must be at least 32 bytes")
        self._key = key

    @classmethod
    def from_keys_dir(cls, keys_dir: Path, may_create: bool = True) -> AckSigner:
        """may_create=False once referrals exist: a lost key would silently void every link sent."""
        path = keys_dir / KEY_FILE
        return cls(keyfiles.load_or_create(path) if may_create else keyfiles.load(path, 32))

    def recipient_hash(self, address: str) -> str:
        return hmac.new(self._key, b"recipient\0" + address.strip().lower().encode(), hashlib.sha256).hexdigest()[:32]

    def sign(self, referral_id: str, recipient: str, now: datetime, ttl: timedelta) -> str:
        expires = int((now + ttl).timestamp())
        payload = json.dumps(
            {"v": 1, "r": referral_id, "to": self.recipient_hash(recipient), "exp": expires},
            separators=(",", ":"),
        ).encode()
        mac = hmac.new(self._key, b"ack\0" + payload, hashlib.sha256).digest()
        return f"{b64url.encode(payload)}.{b64url.encode(mac)}"

    def verify(self, token: str, now: datetime) -> AckClaim:
        bad = TokenError(
            "This acknowledgement link is not valid: it may have been copied "
            "incompletely or altered. Open the link from the alert email again, "
            "or call the duty team."
        )
        try:
            payload_text, mac_text = token.split(".")
            payload, mac = b64url.decode(payload_text), b64url.decode(mac_text)
        except ValueError:  # wrong shape, or not the one spelling we write
            raise bad from None
        expected = hmac.new(self._key, b"ack\0" + payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise bad
        data = json.loads(payload)
        expires = datetime.fromtimestamp(data["exp"], UTC)
        if now >= expires:
            raise TokenExpired(
                "This acknowledgement link has expired. The referral is still open: "
                "acknowledge it from the latest alert, or call the duty team."
            )
        return AckClaim(data["r"], data["to"], expires)
