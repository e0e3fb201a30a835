"""`referral-gateway keys init|import|list|export`, run through gateway.cli.main (and once as a real process).

Partners' keys are made with the real gpg command line in their own GnuPG homes and with python-cryptography
for certificates; the gateway that starts with the printed [keys] lines is the real one. Every GnuPG home is a
short mkdtemp() path (gpg-agent's socket must fit in 108 bytes) and its agent is killed at teardown.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.open.crypto import CryptoKeyError
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parent.parent
FPR = re.compile(r"\b[0-9A-F]{40}\b")
# These tests check the gnupg backend's home (keys/gnupg); test_sequoia_keys.py covers the default, sequoia.
GNUPG = '[keys]\nopenpgp_backend = "gnupg"\n'


def write_gnupg(home: Path, extra: str = "", **kwargs: Any) -> Path:
    """write_config on the gnupg backend: its [keys] table (from `keys init`) gets the backend line."""
    extra = extra.replace("[keys]\n", GNUPG, 1) if "[keys]\n" in extra else GNUPG + extra
    return write_config(home, extra, **kwargs)


def _kill_agents(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


@pytest.fixture
def home() -> Iterator[Path]:
    """The gateway's home (config/, keys/, var/): short, because keys/gnupg holds gpg-agent's sockets."""
    path = Path(tempfile.mkdtemp(prefix="gpg"))
    yield path
    _kill_agents(path / "keys" / "gnupg")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(home: Path) -> Path:
    return write_gnupg(home)


@pytest.fixture
def partner_home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gpg"))
    yield path
    _kill_agents(path)
    shutil.rmtree(path, ignore_errors=True)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def init(capsys: pytest.CaptureFixture[str], config: Path) -> str:
    code, out, err = run(capsys, "keys", "init", "--config", str(config))
    assert code == 0, err
    return out


def keys_lines(init_output: str) -> str:
    """The [keys] block `keys init` prints, as printed."""
    block = re.search(r"^\[keys\]\n(?:[a-z_]+ = .+\n)+", init_output, re.MULTILINE)
    assert block is not None, init_output
    return block.group(0)


def gpg(home: Path, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback", *args]
    return subprocess.run(cmd, input=data, capture_output=True, check=True, timeout=60)


def partner_key(home: Path, uid: str = "Ann Example <ann.example@nhs.example>") -> str:
    gpg(home, "--passphrase", "", "--quick-gen-key", uid, "future-default", "default", "1y")
    listing = gpg(home, "--with-colons", "--list-secret-keys").stdout.decode()
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def certificate(path: Path, email: str, not_after: datetime, *, der: bool = False) -> str:
    """A partner's self-signed certificate; returns its SHA-256 fingerprint as CertInfo gives it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Partner {email}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(not_after, datetime.now(UTC)) - timedelta(days=400))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM))
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.startswith("S.")  # gpg-agent sockets come and go
    }


# -- init -----------------------------------------------------------------------------------------------------


def test_init_makes_private_keys_and_a_second_init_changes_nothing(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    written = config.read_text()
    out = init(capsys, config)
    keys = home / "keys"
    assert stat.S_IMODE((keys / "gnupg").stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "smime" / "gateway.key.pem").stat().st_mode) == 0o600
    assert b"BEGIN CERTIFICATE" in (keys / "smime" / "gateway.crt.pem").read_bytes()
    assert not list((keys / "smime").glob(".smime-*")), "the scratch directory is removed"
    # The config has no [keys] yet: the command says so and prints the lines (it does not edit the file).
    assert "has no [keys] values yet" in out
    lines = keys_lines(out)
    fingerprint = FPR.findall(lines)[0]
    assert lines == (
        f'[keys]\nopenpgp_fingerprint = "{fingerprint}"\n'
        'smime_key = "smime/gateway.key.pem"\nsmime_cert = "smime/gateway.crt.pem"\n'
    )
    assert config.read_text() == written  # (its only [keys] line names the backend)

    before = snapshot(keys)
    code, out, err = run(capsys, "keys", "init", "--config", str(config))
    assert code == 2 and out == ""
    assert "already has keys" in err and "keys/smime/gateway.key.pem" in err and fingerprint in err
    assert snapshot(keys) == before


def test_init_refuses_when_only_the_certificate_exists(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    cert = home / "keys" / "smime" / "gateway.crt.pem"
    cert.parent.mkdir(parents=True)
    cert.write_text("kept\n")
    code, _, err = run(capsys, "keys", "init", "--config", str(config))
    assert code == 2 and "keys/smime/gateway.crt.pem" in err
    assert cert.read_text() == "kept\n"
    assert not (home / "keys" / "gnupg").exists() and not (home / "keys" / "smime" / "gateway.key.pem").exists()


# -- export ---------------------------------------------------------------------------------------------------


def test_export_prints_the_public_parts_and_nothing_secret(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path, partner_home: Path
) -> None:
    fingerprint = FPR.findall(keys_lines(init(capsys, config)))[0]
    code, out, _ = run(capsys, "keys", "export", "--config", str(config))
    assert code == 0
    assert "PRIVATE" not in out and "PRIVATE KEY" not in out
    pgp = re.search(r"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----\n", out, re.DOTALL)
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", out, re.DOTALL)
    assert pgp is not None and pem is not None
    headers = [line for line in out.splitlines() if line.startswith("#")]
    assert len(headers) == 2 and fingerprint in headers[0] and "S/MIME certificate" in headers[1]

    # What gpg itself sees in the exported block: public key packets, no secret ones.
    packets = gpg(partner_home, "--list-packets", data=pgp.group(0).encode()).stdout.decode()
    assert ":public key packet:" in packets and ":public sub key packet:" in packets
    assert "secret" not in packets
    gpg(partner_home, "--import", data=pgp.group(0).encode())
    assert gpg(partner_home, "--list-secret-keys").stdout == b""
    assert fingerprint in gpg(partner_home, "--with-colons", "--list-keys").stdout.decode()

    exported = x509.load_pem_x509_certificate(pem.group(0).encode())
    ours = x509.load_pem_x509_certificate((home / "keys" / "smime" / "gateway.crt.pem").read_bytes())
    assert exported == ours


def test_export_without_keys_says_to_run_init(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, err = run(capsys, "keys", "export", "--config", str(config))
    assert code == 2 and out == "" and "keys init" in err


# -- import ---------------------------------------------------------------------------------------------------


def test_import_partner_openpgp_key_then_list_shows_it(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path, partner_home: Path
) -> None:
    init(capsys, config)
    fingerprint = partner_key(partner_home)
    exported = home / "ann.asc"
    exported.write_bytes(gpg(partner_home, "--armor", "--export", fingerprint).stdout)

    code, out, err = run(
        capsys, "keys", "import", str(exported), "--partner", "Demo NHS Trust", "--config", str(config)
    )
    assert code == 0, err
    assert fingerprint in out and "Ann Example <ann.example@nhs.example>" in out
    assert "[[partners]]" in out and 'name = "Demo NHS Trust"' in out
    assert f'openpgp = ["{fingerprint}"]' in out and 'addresses = ["ann.example@nhs.example"]' in out

    code, out, _ = run(capsys, "keys", "list", "--config", str(config))
    assert code == 0
    row = next(line for line in out.splitlines() if fingerprint in line)
    assert row.startswith("(not in config)") and " OK " in row

    # With the printed lines in the config, the key is listed under its partner.
    partner = f'[[partners]]\nname = "Demo NHS Trust"\naddresses = ["@nhs.example"]\nopenpgp = ["{fingerprint}"]\n'
    write_gnupg(home, partner)
    code, out, _ = run(capsys, "keys", "list", "--config", str(config))
    row = next(line for line in out.splitlines() if fingerprint in line)
    assert row.startswith("Demo NHS Trust") and "OpenPGP" in row and " OK " in row


def test_import_binary_openpgp_key(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path, partner_home: Path
) -> None:
    fingerprint = partner_key(partner_home)
    exported = home / "ann.gpg"
    exported.write_bytes(gpg(partner_home, "--export", fingerprint).stdout)
    code, out, err = run(capsys, "keys", "import", str(exported), "--config", str(config))
    assert code == 0, err
    assert f'openpgp = ["{fingerprint}"]' in out and 'name = "Ann Example"' in out


@pytest.mark.parametrize("armour", [True, False])
def test_import_refuses_a_secret_key(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path, partner_home: Path, armour: bool
) -> None:
    init(capsys, config)
    fingerprint = partner_key(partner_home)
    secret = home / "ann-secret.asc"
    secret.write_bytes(gpg(partner_home, *(["--armor"] if armour else []), "--export-secret-keys", fingerprint).stdout)
    code, out, err = run(capsys, "keys", "import", str(secret), "--config", str(config))
    assert code == 2 and out == ""
    assert str(secret) in err and "secret key" in err and "nothing was imported" in err
    _, out, _ = run(capsys, "keys", "list", "--config", str(config))
    assert fingerprint not in out


def test_import_refuses_a_pem_private_key_and_garbage(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    key = home / "partner.key"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    code, _, err = run(capsys, "keys", "import", str(key), "--config", str(config))
    assert code == 2 and "private key" in err and str(key) in err
    garbage = home / "notes.txt"
    garbage.write_bytes(b"hello, this is not a key\n")
    code, _, err = run(capsys, "keys", "import", str(garbage), "--config", str(config))
    assert code == 2 and str(garbage) in err and "public key" in err
    assert not (home / "keys" / "partners").exists() or not list((home / "keys" / "partners").iterdir())
    code, _, err = run(capsys, "keys", "import", str(home / "absent.pem"), "--config", str(config))
    assert code == 2 and "absent.pem" in err


def test_import_certificate_copies_it_under_keys_partners(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    der = home / "trust.cer"
    fingerprint = certificate(der, "duty@trust.example", datetime.now(UTC) + timedelta(days=365), der=True)
    code, out, err = run(capsys, "keys", "import", str(der), "--partner", "Demo Trust", "--config", str(config))
    assert code == 0, err
    copied = home / "keys" / "partners" / "demo-trust.pem"
    assert x509.load_pem_x509_certificate(copied.read_bytes()).fingerprint(hashes.SHA256()).hex().upper() == fingerprint
    assert stat.S_IMODE(copied.stat().st_mode) == 0o644  # public, and committed with the config
    assert fingerprint in out and "CN=Partner duty@trust.example" in out and "duty@trust.example" in out
    assert 'smime_pinned = ["keys/partners/demo-trust.pem"]' in out and 'name = "Demo Trust"' in out

    # The same certificate again: nothing new; a different one with the same name: never replaces the first.
    code, out, _ = run(capsys, "keys", "import", str(der), "--partner", "Demo Trust", "--config", str(config))
    assert code == 0 and "already imported as keys/partners/demo-trust.pem" in out
    other = home / "other.pem"
    other_fpr = certificate(other, "duty@trust.example", datetime.now(UTC) + timedelta(days=365))
    code, out, _ = run(capsys, "keys", "import", str(other), "--partner", "Demo Trust", "--config", str(config))
    assert code == 0 and f"keys/partners/demo-trust-{other_fpr[:8].lower()}.pem" in out
    assert x509.load_pem_x509_certificate(copied.read_bytes()).fingerprint(hashes.SHA256()).hex().upper() == fingerprint


# -- list -----------------------------------------------------------------------------------------------------


def test_list_shows_expiry_status(capsys: pytest.CaptureFixture[str], home: Path, config: Path) -> None:
    init(capsys, config)
    soon, old = home / "soon.pem", home / "old.pem"
    soon_fpr = certificate(soon, "soon@trust.example", datetime.now(UTC) + timedelta(days=10))
    old_fpr = certificate(old, "old@trust.example", datetime.now(UTC) - timedelta(days=1))
    for path, name in ((soon, "soon"), (old, "old")):
        assert run(capsys, "keys", "import", str(path), "--partner", name, "--config", str(config))[0] == 0
    missing_fpr = "AB" * 20
    write_gnupg(
        home,
        '[[partners]]\nname = "Demo Trust"\naddresses = ["@trust.example"]\n'
        f'openpgp = ["{missing_fpr}"]\n'
        'smime_pinned = ["keys/partners/soon.pem", "keys/partners/old.pem", "keys/partners/gone.pem"]\n',
    )
    code, out, _ = run(capsys, "keys", "list", "--config", str(config))
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == ["OWNER", "TYPE", "EXPIRES", "STATUS", "FINGERPRINT", "NAME"]

    def row(needle: str) -> str:
        return next(line for line in rows if needle in line)

    assert "EXPIRES IN 10 DAYS" in row(soon_fpr)
    assert "EXPIRED" in row(old_fpr) and "EXPIRES IN" not in row(old_fpr)
    assert "MISSING" in row("keys/partners/gone.pem") and row("keys/partners/gone.pem").startswith("Demo Trust")
    assert "MISSING" in row(missing_fpr)
    gateway_rows = [line for line in rows if line.startswith("gateway")]
    assert len(gateway_rows) == 2 and all(" OK " in line for line in gateway_rows)
    assert any("keys import" in line for line in rows if line.startswith("note:"))


def test_list_as_a_real_process(capsys: pytest.CaptureFixture[str], home: Path, config: Path) -> None:
    fingerprint = FPR.findall(keys_lines(init(capsys, config)))[0]
    python = ROOT / ".venv" / "bin" / "python"
    result = subprocess.run(
        [str(python if python.exists() else sys.executable), "-m", "gateway", "keys", "list", "--config", str(config)],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OWNER") and fingerprint in result.stdout
    assert "S/MIME cert" in result.stdout


# -- the gateway uses what init made ----------------------------------------------------------------------------


async def _start_and_stop(config: Path) -> None:
    gateway = Gateway(config_mod.load(config), workers=False)
    try:
        await gateway.start()
    except BaseException:
        await gateway.engine.dispose()  # start() opened the database before it refused
        raise
    await gateway.stop()


async def test_gateway_starts_with_the_printed_lines_and_refuses_without_the_smime_key(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    write_gnupg(home, keys_lines(init(capsys, config)))
    await _start_and_stop(config)

    key = home / "keys" / "smime" / "gateway.key.pem"
    key.unlink()
    with pytest.raises(CryptoKeyError, match="S/MIME key is missing"):
        await _start_and_stop(config)
    _, out, _ = run(capsys, "keys", "list", "--config", str(config))
    assert "MISSING" in next(line for line in out.splitlines() if "keys/smime/gateway.key.pem" in line)


async def test_start_refusal_names_the_missing_key_file(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    write_gnupg(home, keys_lines(init(capsys, config)))
    (home / "keys" / "smime" / "gateway.key.pem").unlink()
    with pytest.raises(CryptoKeyError, match=re.escape("gateway.key.pem")):
        await _start_and_stop(config)


# -- what import suggests: a partner's CA, a council mailbox's key ---------------------------------------------


def ca_certificate(path: Path, *, email: str | None = None, permitted: tuple[str, ...] = ()) -> None:
    """A partner organisation's CA: optionally with its own address, and name constraints (RFC 5280 4.2.1.10)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Demo Trust CA")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if email:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    if permitted:
        subtrees: list[x509.GeneralName] = [x509.RFC822Name(p) for p in permitted]
        subtrees.append(x509.DNSName("trust.example"))  # constrains servers, not mailboxes: not an address
        builder = builder.add_extension(x509.NameConstraints(subtrees, None), critical=True)
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def partners_block(out: str) -> str:
    """The [[partners]] block `keys import` printed, comments and all, as printed."""
    block = re.search(r"^\[\[partners\]\]\n(?:(?:#.*|[a-z_]+ = .+)\n)+", out, re.MULTILINE)
    assert block is not None, out
    return block.group(0)


def test_import_of_a_ca_suggests_the_domains_its_name_constraints_permit(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    ca = home / "trust-ca.pem"
    ca_certificate(
        ca, email="pki@ca-operator.example", permitted=("trust.example", "duty@school.example", ".nhs.example")
    )
    code, out, err = run(capsys, "keys", "import", str(ca), "--partner", "Demo Trust", "--config", str(config))
    assert code == 0, err
    block = partners_block(out)
    assert 'addresses = ["@trust.example", "duty@school.example"]' in block
    assert "it also permits any domain under nhs.example" in block  # said, not guessed as an address
    assert 'smime_anchors = ["keys/partners/demo-trust.pem"]' in block
    assert "partner.example" not in out and "ca-operator.example" not in block
    # What it printed is a config the gateway accepts, as printed.
    write_gnupg(home, block)
    assert run(capsys, "check-config", "--config", str(config))[0] == 0


def test_import_of_a_ca_without_constraints_suggests_its_own_domain_and_says_to_check(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    ca = home / "ca.pem"
    ca_certificate(ca, email="PKI@Trust.Example")
    code, out, err = run(capsys, "keys", "import", str(ca), "--partner", "Demo Trust", "--config", str(config))
    assert code == 0, err
    block = partners_block(out)
    assert 'addresses = ["@trust.example"]' in block and "check with the partner" in block


def test_import_of_a_ca_naming_no_address_says_to_fill_them_in_and_check_config_insists(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    ca = home / "bare-ca.pem"
    ca_certificate(ca)
    code, out, err = run(capsys, "keys", "import", str(ca), "--partner", "Demo Trust", "--config", str(config))
    assert code == 0, err
    block = partners_block(out)
    assert "# FILL IN: the key names no address or domain" in block and "addresses = []" in block
    assert "@partner.example" not in out
    # Pasted unfilled, the config is refused at exactly that line: no made-up domain slips through.
    write_gnupg(home, block)
    code, _, err = run(capsys, "check-config", "--config", str(config))
    assert code == 2 and "partners[1].addresses: the partner has no sending addresses. Fix: use the addresses" in err


async def test_import_of_a_team_mailbox_openpgp_key_suggests_the_team_line_and_the_gateway_uses_it(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path, partner_home: Path
) -> None:
    write_gnupg(home, keys_lines(init(capsys, config)))
    mailbox = partner_key(partner_home, "MASH duty <mash-duty@demo-council.example>")
    member_home = partner_home / "asha"
    member_home.mkdir(mode=0o700)
    member = partner_key(member_home, "Asha Okafor <Asha.Okafor@demo-council.example>")
    exported = home / "council.asc"
    exported.write_bytes(
        gpg(partner_home, "--armor", "--export", mailbox).stdout
        + gpg(member_home, "--armor", "--export", member).stdout
    )
    code, out, err = run(capsys, "keys", "import", str(exported), "--config", str(config))
    _kill_agents(member_home)
    assert code == 0, err
    assert "[[partners]]" not in out and "it is not a partner's key" in out
    assert (
        "in the [[teams]] entry with id = \"mash\" (team 'mash', mash-duty@demo-council.example):\n"
        f'openpgp = "{mailbox}"' in out
    )
    assert "in the [[teams.members]] entry with id = \"asha\" (member 'asha' of team 'mash', " in out
    assert f'openpgp = "{member}"' in out

    # The printed lines, in those entries: the gateway starts with them (it refuses a team key it cannot use).
    text = config.read_text()
    text = text.replace(
        'email = "mash-duty@demo-council.example"', f'email = "mash-duty@demo-council.example"\nopenpgp = "{mailbox}"'
    )
    text = text.replace(
        'email = "asha.okafor@demo-council.example"',
        f'email = "asha.okafor@demo-council.example"\nopenpgp = "{member}"',
    )
    config.write_text(text)
    loaded = config_mod.load(config)
    assert loaded.settings.teams[0].openpgp == mailbox and loaded.settings.teams[0].members[0].openpgp == member
    await _start_and_stop(config)
    _, out, _ = run(capsys, "keys", "list", "--config", str(config))
    assert next(line for line in out.splitlines() if mailbox in line).startswith("team mash ")
    assert next(line for line in out.splitlines() if member in line).startswith("member mash/asha ")
    code, out, _ = run(capsys, "keys", "import", str(exported), "--config", str(config))
    assert code == 0 and "team 'mash' (mash-duty@demo-council.example) in" in out and "already names it" in out


def test_import_of_a_team_mailbox_certificate_goes_to_keys_teams(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    cert = home / "edt.pem"
    fingerprint = certificate(cert, "edt@demo-council.example", datetime.now(UTC) + timedelta(days=365))
    code, out, err = run(capsys, "keys", "import", str(cert), "--config", str(config))
    assert code == 0, err
    copied = home / "keys" / "teams" / "edt.pem"
    assert x509.load_pem_x509_certificate(copied.read_bytes()).fingerprint(hashes.SHA256()).hex().upper() == fingerprint
    assert "[[partners]]" not in out and not (home / "keys" / "partners").exists()
    assert 'in the [[teams]] entry with id = "edt"' in out and 'smime_cert = "keys/teams/edt.pem"' in out
    _, out, _ = run(capsys, "keys", "list", "--config", str(config))
    assert next(line for line in out.splitlines() if fingerprint in line).startswith("(not in config) ")
    text = config.read_text().replace(
        'email = "edt@demo-council.example"', 'email = "edt@demo-council.example"\nsmime_cert = "keys/teams/edt.pem"'
    )
    config.write_text(text)
    _, out, _ = run(capsys, "keys", "list", "--config", str(config))
    assert next(line for line in out.splitlines() if fingerprint in line).startswith("team edt ")


def test_import_of_the_gateways_own_certificate_suggests_nothing_to_add(
    capsys: pytest.CaptureFixture[str], home: Path, config: Path
) -> None:
    cert = home / "own.pem"
    certificate(cert, "referrals@demo-council.example", datetime.now(UTC) + timedelta(days=365))
    code, out, err = run(capsys, "keys", "import", str(cert), "--config", str(config))
    assert code == 0, err
    assert "is the gateway's own address" in out and "keys init" in out and "[[partners]]" not in out
