"""The public form's signed values: the CSRF cookie and its hidden field, the submission token that
makes one referral per rendered form, and the receipt cookie.

All are HMAC-SHA256 under one key (keys/web-form.key), each message starting with its purpose, so a
value signed for one use never passes for another. Nothing is kept on the server: any instance with
the key checks any value. Why each exists, and what the form answers when one fails, are in
gateway.intake.web_form's decisions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import timedelta

from gateway.core import b64url
from gateway.core.clock import Clock

KEY_FILE = "web-form.key"
RECEIPT_TTL = timedelta(minutes=30)
_COOKIE_VALUE = re.compile("[A-Za-z0-9_-]{43}")
_SUBMISSION = re.compile(r"([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{22})")


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(32)  # 43 characters


def csrf_cookie_ok(cookie: str) -> bool:
    """Only a value of the shape we make is ever signed: anything else gets a new cookie."""
    return _COOKIE_VALUE.fullmatch(cookie) is not None


class FormTokens:
    def __init__(self, key: bytes, clock: Clock) -> None:
        if len(key) < 32:
            raise ValueError("the web form key must be at least 32 bytes")
        self._key = key
        self._clock = clock

    def _mac(self, purpose: str, *parts: str) -> str:
        message = "\0".join((purpose, *parts)).encode()
        return b64url.encode(hmac.new(self._key, message, hashlib.sha256).digest())

    def csrf_field(self, cookie: str) -> str:
        return self._mac("csrf", cookie)

    def csrf_ok(self, cookie: str, sent: str) -> bool:
        """The hidden field matches the cookie, compared in constant time."""
        return csrf_cookie_ok(cookie) and hmac.compare_digest(sent.encode(), self.csrf_field(cookie).encode())

    def new_submission(self, cookie: str) -> str:
        token = secrets.token_urlsafe(16)  # 22 characters
        return f"{token}.{self._mac('submission', cookie, token)[:22]}"

    def submission_token(self, cookie: str, submission: str) -> str | None:
        """The token part of a submission issued to this cookie, else None."""
        match = _SUBMISSION.fullmatch(submission)
        if not match or not hmac.compare_digest(match[2], self._mac("submission", cookie, match[1])[:22]):
            return None
        return match[1]

    def receipt_value(self, reference: str, emailed: bool) -> str:
        expires = int((self._clock.now() + RECEIPT_TTL).timestamp())
        claim = json.dumps({"r": reference, "e": emailed, "x": expires}, separators=(",", ":"))
        payload = b64url.encode(claim.encode())
        return f"{payload}.{self._mac('receipt', payload)}"

    def receipt(self, value: str | None) -> tuple[str, bool] | None:
        """The reference and whether a receipt was emailed, from a receipt cookie still in date."""
        if not value or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac("receipt", payload)):
            return None
        data = json.loads(b64url.decode(payload))
        if self._clock.now().timestamp() >= data["x"]:
            return None
        return str(data["r"]), bool(data["e"])
