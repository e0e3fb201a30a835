"""The open stage: take the security layers off a stored message and judge them by the policy.

Decrypts and verifies (gateway.open.unwrap), applies the partner directory and policy
(gateway.open.policy), and returns the content to parse plus what to record about how it was sent.
Raises `Quarantine` when the message cannot be read or fails the policy.
"""

from __future__ import annotations

from typing import Any

from gateway.config import Settings
from gateway.core.outcomes import Quarantine
from gateway.open.crypto import CryptoError
from gateway.open.identity import Identity
from gateway.open.mime import Opened, Outer, looks_protected, open_message
from gateway.open.mimebytes import MimeError
from gateway.open.policy import judge
from gateway.outbox.protect import Protector


class Opener:
    def __init__(self, settings: Settings, identity: Identity, protector: Protector) -> None:
        self._s = settings
        self._identity = identity
        self._protector = protector

    async def open(self, raw: bytes, reply_to: str, outer: Outer) -> tuple[Opened, dict[str, Any]]:
        """Unwrap the security layers and judge them; the content, and what to record about it.
        Raises Quarantine when the message cannot be read or fails the policy."""
        notify = reply_to if reply_to and not outer.automatic else None
        # The From header's address (what the signature must belong to); the envelope sender
        # only when there is no From at all. An ambiguous From ("") belongs to no partner.
        sender = reply_to if outer.from_address is None else outer.from_address
        # S/MIME signatures are checked only against the trust of the partners the sending
        # address belongs to: one partner's CA must not vouch for another partner's staff.
        unwrapper = self._identity.unwrapper_for(sender, self._s.partners)
        try:
            unwrapped = await unwrapper.unwrap(raw)
        except (MimeError, CryptoError) as exc:
            if isinstance(exc, CryptoError) or looks_protected(raw):
                raise Quarantine("open", exc.reason, notify, outer.message_id) from None
            # Plain mail with a broken structure: read what can be read, never bounce a concern;
            # but it is still plain, unsigned mail as far as the policy is concerned.
            verdict = judge(False, [], sender, self._s.partners, self._s.security)
            if verdict.quarantine is not None:
                raise Quarantine("policy", verdict.quarantine, notify, outer.message_id) from None
            flags = [*verdict.flags, f"malformed MIME ({exc.reason})"]
            return open_message(raw), {
                "encrypted": False,
                "layers": [],
                "partner": None,
                "flags": flags,
                "reply_key": None,
            }
        verdict = judge(unwrapped.encrypted, unwrapped.signatures, sender, self._s.partners, self._s.security)
        if verdict.quarantine is not None:
            reason = await self._name_the_partner(raw, sender) or verdict.quarantine
            raise Quarantine("policy", reason, notify, outer.message_id)
        partner = next((p for p in self._s.partners if p.name == verdict.partner), None)
        reply_key = self._protector.reply_key(unwrapped.signatures, partner)
        security = {
            "encrypted": unwrapped.encrypted,
            "layers": unwrapped.layers,
            "partner": verdict.partner,
            "flags": [*verdict.flags, *unwrapped.notes],
            # Replies to the referrer are encrypted to the key they signed with (a fingerprint or
            # a pinned certificate's path: no personal data).
            "reply_key": list(reply_key) if reply_key else None,
        }
        return open_message(unwrapped.entity.raw), security

    async def _name_the_partner(self, raw: bytes, sender: str) -> str | None:
        """For a refused message from an address no partner owns: was it signed by a partner's
        certificate all the same? Then the sender is told exactly that (it is checked against
        every partner's trust only to word the reason; it never makes the message accepted)."""
        if any(p.covers(sender) for p in self._s.partners):
            return None
        try:
            wider = await self._identity.unwrapper().unwrap(raw)
        except (MimeError, CryptoError):
            return None
        verdict = judge(wider.encrypted, wider.signatures, sender, self._s.partners, self._s.security)
        if verdict.quarantine and "not registered to them" in verdict.quarantine:
            return verdict.quarantine
        return None
