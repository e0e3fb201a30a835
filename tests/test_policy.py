"""The security policy, as a pure function: what is quarantined, what is accepted and flagged."""

from __future__ import annotations

import pytest

from gateway.config.sections import Partner, SecuritySection
from gateway.open.crypto import Signature
from gateway.open.policy import judge

FPR = "EB85BB5FA33A75E15E944E63F231550C4F47E38E"
TRUST = Partner(name="Demo NHS Trust", addresses=("@nhs.example",), openpgp=(FPR,))
PARTNERS = (TRUST, Partner(name="Demo School", addresses=("head@school.example",)))
GOOD = Signature("openpgp", True, FPR, ("ann@nhs.example",))
SMIME_GOOD = Signature("smime", True, "AB" * 32, ("ann@nhs.example",))
STRICT = SecuritySection(require_encryption=True, require_signature=True)
LENIENT = SecuritySection()


def test_encrypted_and_signed_by_a_known_partner_from_its_own_address_is_accepted_clean() -> None:
    for signature in (GOOD, SMIME_GOOD):
        verdict = judge(True, [signature], "ann@nhs.example", PARTNERS, STRICT)
        assert verdict.quarantine is None and verdict.partner == "Demo NHS Trust" and verdict.flags == ()


@pytest.mark.parametrize("rules", [STRICT, LENIENT], ids=["strict", "lenient"])
@pytest.mark.parametrize("problem", ["bad signature", "expired certificate", "expired key"])
def test_tampered_or_expired_signatures_are_quarantined_whatever_the_policy(
    rules: SecuritySection, problem: str
) -> None:
    bad = Signature("openpgp", False, FPR, (), problem)
    verdict = judge(True, [bad], "ann@nhs.example", PARTNERS, rules)
    assert verdict.quarantine is not None and verdict.quarantine.startswith(problem)


def test_known_partner_signing_from_an_address_not_theirs_is_quarantined() -> None:
    verdict = judge(True, [GOOD], "ann@gmail.example", PARTNERS, LENIENT)
    assert verdict.quarantine == "signed by a key of Demo NHS Trust, but sent from an address not registered to them"


def test_strict_policy_quarantines_plaintext_and_unknown_signers() -> None:
    assert judge(False, [GOOD], "ann@nhs.example", PARTNERS, STRICT).quarantine == (
        "not encrypted, and this gateway requires encryption"
    )
    stranger = Signature("openpgp", False, "1" * 40, (), "unknown signer")
    assert judge(True, [stranger], "x@nhs.example", PARTNERS, STRICT).quarantine == (
        "no valid signature from a known partner (unknown signer)"
    )
    valid_but_unlisted = Signature("openpgp", True, "2" * 40, ())
    assert judge(True, [valid_but_unlisted], "x@nhs.example", PARTNERS, STRICT).quarantine == (
        "no valid signature from a known partner (signer not in the partner directory)"
    )
    assert judge(True, [], "x@nhs.example", PARTNERS, STRICT).quarantine == (
        "no valid signature from a known partner (not signed)"
    )


def test_lenient_policy_accepts_and_flags() -> None:
    verdict = judge(False, [], "someone@mail.example", PARTNERS, LENIENT)
    assert verdict.quarantine is None and verdict.partner is None
    assert verdict.flags == ("not encrypted", "not signed by a known partner")


def test_smime_certificate_speaks_for_the_partner_whose_address_it_carries() -> None:
    other = Signature("smime", True, "CD" * 32, ("head@school.example",))
    verdict = judge(True, [other], "head@school.example", PARTNERS, STRICT)
    assert verdict.partner == "Demo School" and verdict.quarantine is None
    unlisted = Signature("smime", True, "EF" * 32, ("teacher@school.example",))
    assert judge(True, [unlisted], "teacher@school.example", PARTNERS, STRICT).quarantine is not None


def test_a_signature_counts_only_for_the_one_block_that_claims_the_sender() -> None:
    # Config refuses both of these (gateway.config.partner_checks); the policy still never guesses.
    school = Partner(name="Demo School", addresses=("@school.example",), openpgp=(FPR,))
    shared_key = (TRUST, school)
    assert judge(True, [GOOD], "head@school.example", shared_key, STRICT).partner == "Demo School"
    assert judge(True, [GOOD], "ann@nhs.example", shared_key, STRICT).partner == "Demo NHS Trust"
    overlapping = (TRUST, Partner(name="Demo NHS Trust (copy)", addresses=("ann@nhs.example",), openpgp=(FPR,)))
    verdict = judge(True, [GOOD], "ann@nhs.example", overlapping, STRICT)
    assert verdict.partner is None  # claimed twice: vouched for by neither, and the reason says why
    assert verdict.quarantine == (
        "no valid signature from a known partner (signer not in the partner directory; the sending address "
        "belongs to more than one partner in the config)"
    )
