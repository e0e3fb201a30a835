"""The crypto edge: OpenPGP (pysequoia with a gpg fallback, or gpg through python-gnupg) and S/MIME (openssl cms).

Narrow, named errors (SecureDrop's style): each says what failed in words safe to show a sender
and a coordinator, never the message's content. Trust is not decided here: these modules report
who signed (a fingerprint, the certificate's addresses) and whether the signature is
cryptographically good; the partner directory decides whether that signer is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Signature:
    kind: Literal["openpgp", "smime"]
    valid: bool  # the signature verifies over the exact bytes signed (and, for S/MIME, chains to an anchor)
    # OpenPGP: the signing key's primary-key fingerprint, upper-case hex, no spaces.
    # S/MIME: SHA-256 fingerprint of the signer's certificate, upper-case hex, no colons.
    signer_id: str | None
    signer_addresses: tuple[str, ...] = ()  # lower-case email addresses in the key's user ids / the certificate
    problem: str | None = None  # when not valid: "bad signature", "unknown signer", "expired certificate", ...


class CryptoError(Exception):
    """Base: `reason` is short, for reports and sender notices; never message content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecryptError(CryptoError):
    """Cannot decrypt: not for our key, damaged, no integrity protection, unsupported cipher."""


class VerifyError(CryptoError):
    """The signature structure cannot be read at all (as opposed to a signature that is bad)."""


class CryptoKeyError(CryptoError):
    """A configured key is missing, unreadable or expired."""
