"""Checks across the [[partners]] blocks: each organisation once, each sending address claimed once,
each signing key held once.

Trust is decided per block (gateway.open.identity): a signature counts only for the one block that
claims the sending address and holds the key or CA. Two blocks with one name, or two blocks claiming
one address, would make "which block" a guess, and a guess is how one organisation ends up vouching
for another's staff. So these are refused, not warned about.

Run on the raw TOML (like the duty cross-checks in gateway.config.load), so that they are reported
even when some other field is invalid: an administrator sees every problem in one go.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from gateway.config.errors import ConfigIssue
from gateway.config.settings import Settings


def _ordinal(position: int) -> str:
    """1 -> '1st': the block as an administrator counts them from the top of the file."""
    suffix = "th" if 10 <= position % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(position % 10, "th")
    return f"{position}{suffix}"


def _block(index: int, name: str) -> str:
    return f"partners[{index}] ('{name}', the {_ordinal(index + 1)} [[partners]] block)"


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _claims(block: dict[str, object]) -> list[str]:
    # As gateway.config.sections normalises them: trimmed, lower case (a malformed one is reported there).
    return list(dict.fromkeys(a.strip().lower() for a in _strings(block.get("addresses"))))


def _overlap(first: Sequence[str], second: Sequence[str]) -> list[str]:
    """The addresses and domains both claim: the same entry in both, or an address in one whose
    @domain the other claims (mail from it would belong to both)."""
    shared: list[str] = []
    for claim in first:
        domain = "@" + claim.rpartition("@")[2]
        if claim in second:
            shared.append(claim)
        elif not claim.startswith("@") and domain in second:
            shared.append(f"{claim} (inside {domain})")
    for claim in second:
        domain = "@" + claim.rpartition("@")[2]
        if not claim.startswith("@") and claim not in first and domain in first:
            shared.append(f"{claim} (inside {domain})")
    return shared


def _fingerprint(value: str) -> str:
    return re.sub(r"[\s:]", "", value).upper()


def partner_checks(blocks: Sequence[dict[str, object]], file: Path) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    names = [str(b.get("name", "")) for b in blocks]
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        folded = name.strip().casefold()
        first = seen.setdefault(folded, index)
        if first != index:
            issues.append(
                ConfigIssue(
                    file,
                    f"partners[{index}].name",
                    f"partner name '{name.strip()}' is used by two blocks: {_block(first, names[first])} and "
                    f"{_block(index, name)} (names are compared ignoring case and spaces at the ends)",
                    "keep one [[partners]] block per organisation: if both are the same organisation, merge their "
                    "addresses and keys into one block and delete the other; if not, give each its own name",
                )
            )
    claims = [_claims(b) for b in blocks]
    for second in range(len(blocks)):
        for first in range(second):
            shared = _overlap(claims[first], claims[second])
            if shared:
                issues.append(
                    ConfigIssue(
                        file,
                        f"partners[{second}].addresses",
                        f"{', '.join(shared)} claimed by both {_block(first, names[first])} and "
                        f"{_block(second, names[second])}; mail from there could be vouched for by either "
                        "one's keys",
                        "a sending address belongs to one partner: remove it from the block of the organisation "
                        "that does not own it (list single addresses, not the whole @domain, for a shared domain)",
                    )
                )
    holders: dict[str, int] = {}
    for index, block in enumerate(blocks):
        for value in dict.fromkeys(_fingerprint(v) for v in _strings(block.get("openpgp"))):
            first = holders.setdefault(value, index)
            if first != index:
                issues.append(
                    ConfigIssue(
                        file,
                        f"partners[{index}].openpgp",
                        f"OpenPGP key {value} is listed by both {_block(first, names[first])} and "
                        f"{_block(index, names[index])}",
                        "list each key under the one partner whose member of staff holds it",
                    )
                )
    return issues


def partner_notes(settings: Settings) -> list[str]:
    """What check-config tells an administrator about the policy and the partners, without refusing:
    each is a valid choice, but one that quarantines mail they may not expect to lose to the report."""
    notes: list[str] = []
    keys = settings.keys
    if settings.security.require_encryption and not (keys.development or keys.openpgp_fingerprint or keys.smime_key):
        notes.append(
            "security.require_encryption is on but the gateway has no key of its own ([keys] openpgp_fingerprint "
            "or smime_key), so every email is quarantined; run `referral-gateway keys init` and add the lines it prints"
        )
    if settings.security.require_signature:
        for index, partner in enumerate(settings.partners):
            if not (partner.openpgp or partner.smime_anchors or partner.smime_pinned):
                notes.append(
                    f"{_block(index, partner.name)} has no OpenPGP key and no S/MIME certificate, so with "
                    "security.require_signature its email is quarantined (SMS from its registered professionals is "
                    f'not affected); import its keys: referral-gateway keys import FILE --partner "{partner.name}"'
                )
    return notes
