"""`referral-gateway check-config` on the partner directory: every organisation in one [[partners]]
block, every sending address and signing key claimed by one block; and the shipped config's
commented production [security] section, uncommented as it stands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_check_config import ROOT, SHIPPED, check, errors, shipped_text, write

FPR = "EB85BB5FA33A75E15E944E63F231550C4F47E38E"


def partner(name: str, *addresses: str, openpgp: str = "") -> str:
    keys = f'openpgp = ["{openpgp}"]\n' if openpgp else ""
    return f'\n[[partners]]\nname = "{name}"\naddresses = {list(addresses)!r}\n{keys}'.replace("'", '"')


def test_two_blocks_with_one_name_are_refused_naming_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Compared ignoring case and spaces at the ends: to an administrator these are one organisation.
    text = shipped_text() + partner("Demo NHS Trust", "@nhs.example") + partner("  demo nhs TRUST ", "@school.example")
    path = write(tmp_path, text)
    code, out, err = check(capsys, path)
    assert (code, out) == (2, "")
    (line,) = errors(err)
    assert line.startswith(f"error: {path}: partners[2].name: partner name 'demo nhs TRUST' is used by two blocks: ")
    assert "partners[1] ('Demo NHS Trust', the 2nd [[partners]] block)" in line
    assert "partners[2] ('  demo nhs TRUST ', the 3rd [[partners]] block)" in line
    assert "Fix: keep one [[partners]] block per organisation" in line and "merge" in line


def test_an_address_or_domain_claimed_by_two_blocks_is_refused_saying_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        shipped_text()
        + partner("Demo NHS Trust", "@nhs.example", "ann@school.example")
        + partner("Demo School", "@school.example", "@NHS.example", "bob@elsewhere.example")
    )
    path = write(tmp_path, text)
    code, out, err = check(capsys, path)
    assert (code, out) == (2, "")
    (line,) = errors(err)
    assert line.startswith(
        f"error: {path}: partners[2].addresses: @nhs.example, ann@school.example (inside @school.example) claimed by "
        "both partners[1] ('Demo NHS Trust', the 2nd [[partners]] block) and partners[2] ('Demo School', the 3rd"
    )
    assert "bob@elsewhere.example" not in line  # claimed once: not a problem
    assert "Fix: a sending address belongs to one partner" in line


def test_one_openpgp_key_in_two_blocks_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spaced = " ".join(re.findall("....", FPR))  # as gpg --fingerprint shows it: the same key
    text = (
        shipped_text()
        + partner("Demo NHS Trust", "@nhs.example", openpgp=FPR)
        + partner("Demo School", "@school.example", openpgp=spaced)
    )
    code, _, err = check(capsys, write(tmp_path, text))
    assert code == 2
    (line,) = errors(err)
    assert f"partners[2].openpgp: OpenPGP key {FPR} is listed by both partners[1] ('Demo NHS Trust'" in line


def test_every_partner_problem_is_reported_at_once_with_other_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = shipped_text().replace('link_ttl = "7d"', 'link_ttl = "a week"')
    text += partner("Demo NHS Trust", "@nhs.example") + partner("Demo NHS Trust", "@nhs.example")
    code, _, err = check(capsys, write(tmp_path, text))
    assert code == 2
    keys = [line.split(": ")[2] for line in errors(err)]
    assert sorted(keys) == ["ack.link_ttl", "partners[2].addresses", "partners[2].name"]


def test_distinct_partners_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        shipped_text()
        + partner("Demo NHS Trust", "@nhs.example", openpgp=FPR)
        + partner("Demo School", "head@school.example", "deputy@school.example")
    )
    code, out, err = check(capsys, write(tmp_path, text))
    assert (code, err) == (0, "")
    assert "note:" not in out  # no [security]: nothing to say about them


SECURITY = re.compile(r"^# (\[security\]|require_\w+ = .*)$", re.MULTILINE)


def test_the_shipped_production_security_section_is_valid_uncommented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for shipped in (SHIPPED, SHIPPED.with_name("gateway.example.toml")):
        templates = f'templates_dir = "{ROOT / "templates"}"'
        text = shipped.read_text().replace('templates_dir = "templates"', templates)
        text, count = SECURITY.subn(r"\1", text)
        assert count == 3, f"{shipped}: the commented [security] section changed"
        path = write(tmp_path, text)
        code, out, err = check(capsys, path)
        assert (code, err) == (0, ""), err
        # It is in force: check-config names the shipped partner that would now lose its mail.
        assert (
            "note: partners[0] ('Demo Community Health', the 1st [[partners]] block) has no OpenPGP key and no "
            "S/MIME certificate, so with security.require_signature its email is quarantined"
        ) in out


def test_require_encryption_without_gateway_keys_is_pointed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = shipped_text().replace("[keys]\ndevelopment = true\n", "[security]\nrequire_encryption = true\n")
    code, out, _ = check(capsys, write(tmp_path, text))
    assert code == 0
    assert "security.require_encryption is on but the gateway has no key of its own" in out
