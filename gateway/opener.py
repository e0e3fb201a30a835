"""The open stage: take the security layers off a stored message and judge them by the policy.

Decrypts and verifies (gateway.unwrap), applies the partner directory and policy
(gateway.policy), and returns the content to parse plus what to record about how it was sent.
Raises `Quarantine` when the message cannot be read or fails the policy.
"""

from __future__ import annotations

from typing import Any

from gateway.config import Settings
from gateway.crypto import CryptoError
from gateway.mimebytes import MimeError
from gateway.open import Opened, Outer, looks_protected, open_message
from gateway.outcomes import Quarantine
from gateway.policy import judge
from gateway.protect import Protector
from gateway.unwrap import Unwrapper


class Opener:
    def __init__(self, settings: Settings, unwrapper: Unwrapper, protector: Protector) -> None:
        self._s = settings
        self._unwrapper = unwrapper
        self._protector = protector

    async def open(self, raw: bytes, reply_to: str, outer: Outer) -> tuple[Opened, dict[str, Any]]:
        """Unwrap the security layers and judge them; the content, and what to record about it.
        Raises Quarantine when the message cannot be read or fails the policy."""
        notify = reply_to if reply_to and not outer.automatic else None
        try:
            unwrapped = await self._unwrapper.unwrap(raw)
        except (MimeError, CryptoError) as exc:
            if isinstance(exc, CryptoError) or looks_protected(raw):
                raise Quarantine("open", exc.reason, notify, outer.message_id) from None
            # Plain mail with a broken structure: read what can be read, never bounce a concern.
            return open_message(raw), {"encrypted": False, "layers": [], "flags": [f"malformed MIME ({exc.reason})"]}
        verdict = judge(
            unwrapped.encrypted,
            unwrapped.signatures,
            outer.from_address or reply_to,
            self._s.partners,
            self._s.security,
        )
        if verdict.quarantine is not None:
            raise Quarantine("policy", verdict.quarantine, notify, outer.message_id)
        partner = next((p for p in self._s.partners if p.name == verdict.partner), None)
        reply_key = self._protector.reply_key(unwrapped.signatures, partner)
        security = {
            "encrypted": unwrapped.encrypted,
            "layers": unwrapped.layers,
            "partner": verdict.partner,
            "flags": list(verdict.flags),
            # Replies to the referrer are encrypted to the key they signed with (a fingerprint or
            # a pinned certificate's path: no personal data).
            "reply_key": list(reply_key) if reply_key else None,
        }
        return open_message(unwrapped.entity.raw), security
