"""Policy: is this message's transport security good enough, and who vouched for it?

A pure function over what `unwrap` found, the sender's address and the partner directory.
Quarantine reasons and flags are phrases safe to show the sender and coordinators: they name
what failed, never the content.

Always quarantined, whatever the policy: a signature that does not verify (the content changed
after it was signed, or the signer's certificate expired) - accepting tampered content and
calling it "flagged" would let anyone alter a referral in transit. Decryption failures never reach
this function: the message cannot be read at all and is quarantined by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config.sections import Partner, SecuritySection
from gateway.open.crypto import Signature

_ALWAYS_QUARANTINE = ("bad signature", "expired certificate", "expired key", "revoked key")


@dataclass(frozen=True)
class Verdict:
    quarantine: str | None  # the reason, when the message must not be processed
    partner: str | None  # the partner whose known key signed it, if any
    flags: tuple[str, ...]  # accepted, but a person should know (shown in the alert and events)


def _partner_for(signature: Signature, partners: Sequence[Partner]) -> Partner | None:
    if not signature.valid or signature.signer_id is None:
        return None
    for partner in partners:
        if signature.kind == "openpgp" and signature.signer_id in partner.openpgp:
            return partner
        # An S/MIME certificate that chains to a partner's anchors (or is pinned) speaks for the
        # partner whose addresses it carries: a CA may issue for several organisations.
        if signature.kind == "smime" and any(partner.covers(a) for a in signature.signer_addresses):
            return partner
    return None


def judge(
    encrypted: bool, signatures: Sequence[Signature], sender: str, partners: Sequence[Partner], rules: SecuritySection
) -> Verdict:
    flags: list[str] = []
    for signature in signatures:
        if not signature.valid and signature.problem in _ALWAYS_QUARANTINE:
            return Verdict(f"{signature.problem} ({signature.kind})", None, ())
    known = [(s, p) for s in signatures if (p := _partner_for(s, partners)) is not None]
    partner = known[0][1] if known else None
    if partner is not None and not partner.covers(sender):
        return Verdict(f"signed by a key of {partner.name}, but sent from an address not registered to them", None, ())
    if not encrypted:
        if rules.require_encryption:
            return Verdict("not encrypted, and this gateway requires encryption", None, ())
        flags.append("not encrypted")
    if partner is None:
        problems = sorted(
            {s.problem or "signer not in the partner directory" for s in signatures if not s.valid}
            | {"signer not in the partner directory" for s in signatures if s.valid}
        )
        if rules.require_signature:
            why = "; ".join(problems) if problems else "not signed"
            return Verdict(f"no valid signature from a known partner ({why})", None, ())
        flags.append("not signed by a known partner" + (f" ({'; '.join(problems)})" if problems else ""))
    return Verdict(None, partner.name if partner else None, tuple(flags))
