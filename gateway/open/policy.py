"""Policy: is this message's transport security good enough, and who vouched for it?

A pure function over what `unwrap` found, the sender's address and the partner directory. Trust is
per [[partners]] block: a signature vouches only for the one block that claims the sending address.
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
    block: Partner | None = None  # that partner's [[partners]] block (names are for people)
    signer: Signature | None = None  # the signature that block vouches for (what a repeat is judged by)


def home_block(sender: str, partners: Sequence[Partner]) -> Partner | None:
    """The one partner block that claims the sending address. Config refuses two blocks claiming one
    address (gateway.config.partner_checks); were it ever so, the answer is none, not a guess: a
    wrong guess lets one organisation's keys vouch for another's staff."""
    claims = [p for p in partners if sender and p.covers(sender)]
    return claims[0] if len(claims) == 1 else None


def _speaks_for(signature: Signature, partner: Partner) -> bool:
    """Whether a valid signature is one this block vouches for: an OpenPGP key it lists, or an S/MIME
    certificate carrying one of its addresses. The S/MIME chain was checked against the trust of the
    sending address's block only (gateway.open.identity), so with the address check here the same
    block both claims the address and holds the anchor."""
    if not signature.valid or signature.signer_id is None:
        return False
    if signature.kind == "openpgp":
        return signature.signer_id in partner.openpgp
    return signature.kind == "smime" and any(partner.covers(a) for a in signature.signer_addresses)


def judge(
    encrypted: bool, signatures: Sequence[Signature], sender: str, partners: Sequence[Partner], rules: SecuritySection
) -> Verdict:
    flags: list[str] = []
    for signature in signatures:
        if not signature.valid and signature.problem in _ALWAYS_QUARANTINE:
            return Verdict(f"{signature.problem} ({signature.kind})", None, ())
    home = home_block(sender, partners)
    signer = next((s for s in signatures if _speaks_for(s, home)), None) if home is not None else None
    partner = home if signer is not None else None
    ambiguous = sum(1 for p in partners if sender and p.covers(sender)) > 1
    if partner is None and not ambiguous:
        # A known key of some other partner, used from an address that is not theirs.
        other = next((p for s in signatures for p in partners if _speaks_for(s, p)), None)
        if other is not None:
            reason = f"signed by a key of {other.name}, but sent from an address not registered to them"
            return Verdict(reason, None, ())
    if not encrypted:
        if rules.require_encryption:
            return Verdict("not encrypted, and this gateway requires encryption", None, ())
        flags.append("not encrypted")
    if partner is None:
        problems = sorted(
            {s.problem or "signer not in the partner directory" for s in signatures if not s.valid}
            | {"signer not in the partner directory" for s in signatures if s.valid}
            | ({"the sending address belongs to more than one partner in the config"} if ambiguous else set())
        )
        if rules.require_signature:
            why = "; ".join(problems) if problems else "not signed"
            return Verdict(f"no valid signature from a known partner ({why})", None, ())
        flags.append("not signed by a known partner" + (f" ({'; '.join(problems)})" if problems else ""))
    return Verdict(None, partner.name if partner else None, tuple(flags), partner, signer)
