"""The keyed hashes a referral is indexed by: what identifies a child, normalised, then HMAC-SHA256
under keys/history-index.key, a key of its own (never the sealing or address-hashing key, so a leak
of one does not open the other's data).

Three kinds, each with its own label inside the HMAC, so that equal text of two kinds never gives
one digest: the NHS number (digits only, check digit valid), name + date of birth, and date of birth
+ postcode. Keyed, so that a copy of the table cannot be tested against a guess (the NHS numbers of
a town are few enough to try every one of them against a plain hash).
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from gateway.core import keyfiles
from gateway.core.model import Child
from gateway.parse.nhs import normalise_nhs_number
from gateway.parse.postcode import normalise_postcode

KEY_FILE = "history-index.key"

NHS = "nhs"
NAME_DOB = "name_dob"
DOB_POSTCODE = "dob_postcode"
KINDS = (NHS, NAME_DOB, DOB_POSTCODE)

# What the referral page says matched, per kind.
WHY = {
    NHS: "same NHS number",
    NAME_DOB: "same name and date of birth",
    DOB_POSTCODE: "same date of birth and postcode",
}

_LABELS = {
    NHS: b"referral-gateway child index v1: nhs",
    NAME_DOB: b"referral-gateway child index v1: name+dob",
    DOB_POSTCODE: b"referral-gateway child index v1: dob+postcode",
}
_ORGANISATION = b"referral-gateway child index v1: organisation"


def load_key(keys_dir: Path) -> bytes:
    """The index key (made on first use, mode 0600, as the other shared keys are)."""
    return keyfiles.load_or_create(keys_dir / KEY_FILE)


def key_id(key: bytes) -> str:
    """Names the key an index row was made with (not secret: a hash), so that rows made with a
    replaced key can be told apart and rebuilt."""
    return hashlib.sha256(b"referral-gateway history index key id" + key).hexdigest()[:16]


def folded_name(text: str | None) -> str:
    """NFKC, case folded, single spaces: 'SAM  Testchild' and 'sam testchild' are one name."""
    return " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def identifiers(child: Child) -> dict[str, str]:
    """The normalised identifier of each kind the child's details give (none may be given)."""
    found: dict[str, str] = {}
    nhs = normalise_nhs_number(child.nhs_number) if child.nhs_number else None
    if nhs:
        found[NHS] = nhs
    name = folded_name(child.name)
    dob = child.date_of_birth.isoformat() if child.date_of_birth else ""
    if name and dob:
        found[NAME_DOB] = f"{name}\0{dob}"
    postcode = normalise_postcode(child.postcode) if child.postcode else None
    if dob and postcode:
        found[DOB_POSTCODE] = f"{dob}\0{postcode}"
    return found


@dataclass(frozen=True)
class Hasher:
    """Digests under one index key."""

    key: bytes

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    def digests(self, child: Child) -> dict[str, str]:
        """kind -> hex digest, for every identifier the child's details give."""
        return {
            kind: hmac.new(self.key, _LABELS[kind] + b"\0" + value.encode(), hashlib.sha256).hexdigest()
            for kind, value in identifiers(child).items()
        }

    def organisation(self, name: str | None) -> str | None:
        """The referrer's organisation as a keyed hash: enough to count organisations, nothing to
        read. Folded like names, so 'Demo NHS Trust' and 'demo nhs trust' count as one."""
        folded = folded_name(name)
        if not folded:
            return None
        return hmac.new(self.key, _ORGANISATION + b"\0" + folded.encode(), hashlib.sha256).hexdigest()
