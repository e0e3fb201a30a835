"""The open stage: take the security layers off a stored message and judge them by the policy.

Decrypts and verifies (gateway.open.unwrap), applies the partner directory and policy
(gateway.open.policy), and returns the content to parse plus what to record about how it was sent.
Raises `Quarantine` when the message cannot be read or fails the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.config import Settings
from gateway.core.outcomes import Quarantine
from gateway.core.sealed import ReplyKey
from gateway.open.crypto import CryptoError, Signature
from gateway.open.identity import Identity, PartnerTrust
from gateway.open.mime import Opened, Outer, looks_protected, open_message
from gateway.open.mimebytes import MimeError, canonical_crlf
from gateway.open.policy import judge
from gateway.open.security import Security, SignedContent
from gateway.open.unwrap import Unwrapped, Unwrapper


class Opener:
    def __init__(self, settings: Settings, identity: Identity) -> None:
        self._s = settings
        self._identity = identity

    async def open(self, raw: bytes, reply_to: str, outer: Outer) -> tuple[Opened, Security]:
        """Unwrap the security layers and judge them; the content, and how it was sent.
        Raises Quarantine when the message cannot be read or fails the policy."""
        notify = reply_to if reply_to and not outer.automatic else None
        # The From header's address (what the signature must belong to); the envelope sender
        # only when there is no From at all. An ambiguous From ("") belongs to no partner.
        sender = reply_to if outer.from_address is None else outer.from_address
        # S/MIME signatures are checked only against the trust of the partner block the sending
        # address belongs to: one partner's CA must not vouch for another partner's staff.
        block = self._identity.block_for(sender)
        unwrapper = self._identity.unwrapper_for(block)
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
            flags = (*verdict.flags, f"malformed MIME ({exc.reason})")
            return self._read(raw, notify, outer), Security(encrypted=False, layers=(), partner=None, flags=flags)
        verdict = judge(unwrapped.encrypted, unwrapped.signatures, sender, self._s.partners, self._s.security)
        if verdict.quarantine is not None:
            reason = await self._name_the_partner(unwrapper, unwrapped, sender) or verdict.quarantine
            raise Quarantine("policy", reason, notify, outer.message_id)
        # The policy accepts a signature only for the sender's own block: that block's keys, then.
        trusted = block if block is not None and verdict.block == block.partner else None
        security = Security(
            encrypted=unwrapped.encrypted,
            layers=tuple(unwrapped.layers),
            partner=verdict.partner,
            flags=(*verdict.flags, *unwrapped.notes),
            reply_key=self._reply_key(unwrapped.signatures, trusted),
            signed=self._signed(verdict.signer, unwrapped),
        )
        return self._read(unwrapped.entity.raw, notify, outer), security

    @staticmethod
    def _signed(signer: Signature | None, unwrapped: Unwrapped) -> SignedContent | None:
        """The content the accepted signature covers: the innermost entity, since every signed
        layer wraps it (text beside an inline PGP block, or an unsigned mixed wrapper, is outside it
        and so outside the proof). Line endings canonical, as signatures are made over them, so a
        relay that rewrote them does not make the same content look new."""
        if signer is None or signer.signer_id is None:
            return None
        return SignedContent(f"{signer.kind}:{signer.signer_id}", canonical_crlf(unwrapped.entity.raw))

    @staticmethod
    def _read(content: bytes, notify: str | None, outer: Outer) -> Opened:
        """The content as a referral is read from it; Quarantine for one too deeply nested to read
        (thousands of levels of parts crashed the stdlib parser; now a reason for the sender)."""
        try:
            return open_message(content)
        except MimeError as exc:
            raise Quarantine("open", exc.reason, notify, outer.message_id) from None

    def _reply_key(self, signatures: Sequence[Signature], block: PartnerTrust | None) -> ReplyKey | None:
        """The key to encrypt replies to a referrer with: the key they signed with, when it is in
        their partner block (an OpenPGP fingerprint, or a pinned S/MIME certificate)."""
        if block is None:
            return None
        identity = self._identity
        for signature in signatures:
            if not signature.valid or signature.signer_id is None:
                continue
            if signature.kind == "openpgp" and signature.signer_id in block.partner.openpgp and identity.pgp:
                return ("openpgp", signature.signer_id)
            pinned: Path | None = block.pinned_by_fingerprint.get(signature.signer_id)
            if signature.kind == "smime" and pinned is not None and identity.smime:
                return ("smime", str(pinned))
        return None

    async def _name_the_partner(self, unwrapper: Unwrapper, unwrapped: Unwrapped, sender: str) -> str | None:
        """For a refused message from an address no partner owns: was it signed by a partner's
        certificate all the same? Then the sender is told exactly that. Its S/MIME signatures are
        checked again against every partner's trust, only to word the reason (it never makes the
        message accepted), and without decrypting it again: the signed bytes were kept."""
        if any(p.covers(sender) for p in self._s.partners):
            return None
        try:
            signatures = await unwrapper.reverify(unwrapped, self._identity.trust)
        except (MimeError, CryptoError):
            return None
        verdict = judge(unwrapped.encrypted, signatures, sender, self._s.partners, self._s.security)
        if verdict.quarantine and "not registered to them" in verdict.quarantine:
            return verdict.quarantine
        return None
