"""How an email referral was sent, as the open stage judged it: the typed verdict that the pipeline
records (the `parsed` event), the alerts show ("Sent: encrypted, signed by ...") and replies use
(the referrer's own key). Web and SMS referrals have none: their transport is judged elsewhere
(the form's TLS and CSRF, Twilio's signature and the registered number)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.sealed import ReplyKey


@dataclass(frozen=True)
class SignedContent:
    """What a signature the partner directory accepted covers: the proof a replay is recognised by
    (gateway.pipeline.repeats keeps only a keyed digest of it). In memory only, never logged."""

    signer: str  # "openpgp:<fingerprint>" or "smime:<certificate SHA-256>"
    content: bytes = field(repr=False)  # the innermost entity (inside every signed layer), CRLF


@dataclass(frozen=True)
class Security:
    encrypted: bool
    layers: tuple[str, ...]  # e.g. ("pgp-encrypted", "pgp-signed"), outermost first
    partner: str | None  # the partner whose known key signed it, if any
    flags: tuple[str, ...]  # accepted, but a person should know (shown in the alert)
    # Replies to the referrer are encrypted to the key they signed with: a fingerprint or a pinned
    # certificate's path, no personal data.
    reply_key: ReplyKey | None = None
    # Set only when a known partner's signature was accepted: unsigned or unknown-signer mail is no
    # proof of who sent it, so it is never taken for a repeat. Not in detail(): content.
    signed: SignedContent | None = None

    def detail(self) -> dict[str, object]:
        """For the `parsed` event (the audit log holds no personal data: none here)."""
        return {
            "encrypted": self.encrypted,
            "layers": list(self.layers),
            "partner": self.partner,
            "flags": list(self.flags),
            "reply_key": list(self.reply_key) if self.reply_key else None,
        }
