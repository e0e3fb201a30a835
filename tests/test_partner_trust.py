"""Partner trust per [[partners]] block: config refuses blocks that could be confused, and one
organisation's CA never vouches for a certificate carrying another organisation's address.

Real certificates (cryptography), S/MIME messages made with the openssl command line, the real
config loader, key loading and open stage; nothing of ours is mocked."""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import config as config_mod
from gateway.config import Config, ConfigError, Settings
from gateway.core.clock import SystemClock
from gateway.core.outcomes import Quarantine
from gateway.open.identity import Identity, load_identity
from gateway.open.mime import read_outer
from gateway.open.opener import Opener
from tests.conftest import write_config
from tests.test_smime import REFERRAL, issue, smime_sign_encrypt
from tests.test_smime import Identity as Cert

NHS, SCHOOL = "ann.example@nhs.example", "head@school.example"
UNTRUSTED = "no valid signature from a known partner (untrusted certificate)"


@dataclass
class Pki:
    home: Path
    gateway: Cert
    nhs: Cert  # Ann, issued by the NHS trust's CA
    school: Cert  # the head teacher, issued by the school's CA
    nhs_ca_for_school: Cert  # the NHS trust's CA issuing for a school address
    school_ca_for_nhs: Cert  # the school's CA issuing for an NHS address


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Pki]:
    made = tmp_path / "pki"
    made.mkdir()
    nhs_ca, school_ca = issue(made, "nhs-ca", ca=True), issue(made, "school-ca", ca=True)
    home = tmp_path / "gw"
    keys = home / "keys"
    (keys / "smime").mkdir(parents=True)
    (keys / "partners").mkdir()
    gateway = issue(made, "gateway", issuer=nhs_ca, email_address="referrals@demo-council.example")
    shutil.copy(gateway.key_path, keys / "smime" / "gateway.key.pem")
    (keys / "smime" / "gateway.key.pem").chmod(0o600)
    shutil.copy(gateway.cert_path, keys / "smime" / "gateway.crt.pem")
    shutil.copy(nhs_ca.cert_path, keys / "partners" / "nhs-ca.pem")
    shutil.copy(school_ca.cert_path, keys / "partners" / "school-ca.pem")
    yield Pki(
        home,
        gateway,
        issue(made, "ann", issuer=nhs_ca, email_address=NHS),
        issue(made, "head", issuer=school_ca, email_address=SCHOOL),
        issue(made, "fake-head", issuer=nhs_ca, email_address=SCHOOL),
        issue(made, "fake-ann", issuer=school_ca, email_address=NHS),
    )


KEYS = (
    "[security]\nrequire_encryption = true\nrequire_signature = true\n\n"
    '[keys]\nsmime_key = "smime/gateway.key.pem"\nsmime_cert = "smime/gateway.crt.pem"\n\n'
)


def block(name: str, addresses: str, anchor: str) -> str:
    return f'[[partners]]\nname = "{name}"\naddresses = [{addresses}]\nsmime_anchors = ["keys/partners/{anchor}"]\n\n'


TWO_PARTNERS = block("Demo NHS Trust", '"@nhs.example"', "nhs-ca.pem") + block(
    "Demo School", '"@school.example"', "school-ca.pem"
)


def message(signer: Cert, recipient: Path, sender: str) -> bytes:
    head = f"From: {sender}\r\nTo: referrals@demo-council.example\r\nSubject: Referral\r\nMessage-ID: <t@x.example>\r\n"
    return head.encode() + smime_sign_encrypt(signer, recipient, REFERRAL)


async def opened(identity: Identity, config: Config, raw: bytes) -> tuple[str | None, str | None]:
    """(the partner it was accepted as, None) or (None, the quarantine reason)."""
    try:
        _, security = await Opener(config.settings, identity).open(raw, "", read_outer(raw))
    except Quarantine as refused:
        return None, refused.reason
    return security.partner, None


@pytest.mark.parametrize(
    ("signer", "sender", "accepted_as"),
    [
        ("nhs", NHS, "Demo NHS Trust"),
        ("school", SCHOOL, "Demo School"),
        ("nhs_ca_for_school", SCHOOL, None),  # the NHS trust's CA cannot vouch for the school's head
        ("school_ca_for_nhs", NHS, None),  # nor the school's CA for the NHS trust's staff
    ],
)
async def test_each_partners_ca_vouches_only_for_its_own_addresses(
    pki: Pki, signer: str, sender: str, accepted_as: str | None
) -> None:
    config = config_mod.load(write_config(pki.home, KEYS + TWO_PARTNERS))
    identity = load_identity(config, SystemClock().now())
    try:
        raw = message(getattr(pki, signer), pki.gateway.cert_path, sender)
        partner, reason = await opened(identity, config, raw)
    finally:
        identity.close()
    assert (partner, reason) == ((accepted_as, None) if accepted_as else (None, UNTRUSTED))


# The defect as reported: two blocks with one name. By name, the last block's anchors (the school's
# CA) were used for the first block's addresses, so the school's CA could vouch for NHS staff.
SAME_NAME = block("Demo NHS Trust", '"@nhs.example"', "nhs-ca.pem") + block(
    "Demo NHS Trust", '"@school.example"', "school-ca.pem"
)


def test_config_refuses_two_blocks_with_one_name(pki: Pki) -> None:
    with pytest.raises(ConfigError) as refused:
        config_mod.load(write_config(pki.home, KEYS + SAME_NAME))
    (issue_,) = refused.value.issues
    assert issue_.key == "partners[2].name"  # partners[0] is the shipped config's own
    assert "partners[1] ('Demo NHS Trust', the 2nd [[partners]] block)" in issue_.message
    assert "partners[2] ('Demo NHS Trust', the 3rd [[partners]] block)" in issue_.message
    assert "merge" in issue_.fix


async def test_trust_is_per_block_even_if_two_blocks_share_a_name(pki: Pki) -> None:
    """Past the config check (built straight from the TOML), the open stage still keeps each block's
    trust apart: the school's CA does not vouch for an NHS address, the NHS CA still does."""
    file = write_config(pki.home, KEYS + SAME_NAME)
    config = Config(Settings.model_validate(tomllib.loads(file.read_text())), file, pki.home)
    identity = load_identity(config, SystemClock().now())
    try:
        forged = await opened(identity, config, message(pki.school_ca_for_nhs, pki.gateway.cert_path, NHS))
        genuine = await opened(identity, config, message(pki.nhs, pki.gateway.cert_path, NHS))
        school = await opened(identity, config, message(pki.school, pki.gateway.cert_path, SCHOOL))
    finally:
        identity.close()
    assert forged == (None, UNTRUSTED)
    assert genuine == ("Demo NHS Trust", None)
    assert school == ("Demo NHS Trust", None)


async def test_a_ca_shared_by_two_partners_vouches_for_each_only_at_its_own_addresses(pki: Pki) -> None:
    """One CA may issue for several organisations (an NHS-wide CA): both blocks name it, and its
    certificate for the school's address is accepted as the school's, never as the NHS trust's."""
    shared = block("Demo NHS Trust", '"@nhs.example"', "nhs-ca.pem") + block(
        "Demo School", '"@school.example"', "nhs-ca.pem"
    )
    config = config_mod.load(write_config(pki.home, KEYS + shared))
    identity = load_identity(config, SystemClock().now())
    try:
        as_school = await opened(identity, config, message(pki.nhs_ca_for_school, pki.gateway.cert_path, SCHOOL))
        from_nhs = await opened(identity, config, message(pki.nhs_ca_for_school, pki.gateway.cert_path, NHS))
    finally:
        identity.close()
    assert as_school == ("Demo School", None)
    assert from_nhs == (None, "signed by a key of Demo School, but sent from an address not registered to them")
