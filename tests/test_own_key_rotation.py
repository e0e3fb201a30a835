"""`keys rotate openpgp` and `keys rotate smime`: during the overlap, mail a partner encrypted to the
gateway's old key and mail encrypted to its new one both decrypt (real gpg, real openssl); after the
overlap, mail to the old key is refused; `keys list` says which key is current and which in overlap."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from gateway import config as config_mod
from gateway.cli.main import main
from gateway.core.clock import FakeClock, SystemClock
from gateway.open.crypto import DecryptError
from gateway.open.identity import load_identity
from tests.conftest import write_config

FPR = re.compile(r"\b[0-9A-F]{40}\b")
SETTING = re.compile(r"^([a-z_]+) = (.+)$", re.MULTILINE)


def _kill_agents(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gpg"))  # short: gpg-agent's socket path must fit
    yield path
    _kill_agents(path / "keys" / "gnupg")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def partner() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gpg"))
    yield path
    _kill_agents(path)
    shutil.rmtree(path, ignore_errors=True)


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> str:
    capsys.readouterr()
    code = main(["keys", *argv, "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def gpg(home: Path, *args: str, data: bytes = b"") -> bytes:
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--trust-model", "always", *args]
    return subprocess.run(cmd, input=data, capture_output=True, check=True, timeout=60).stdout


def partner_encrypts(partner: Path, exported: str, text: bytes) -> bytes:
    """What a partner does with `keys export`: import the gateway's key, encrypt a referral to it."""
    block = exported[exported.index("-----BEGIN PGP PUBLIC KEY BLOCK") :]
    block = block[: block.index("-----END PGP PUBLIC KEY BLOCK-----") + 34]
    gpg(partner, "--import", data=block.encode())
    fingerprint = FPR.findall(exported)[0]
    return gpg(partner, "--armor", "--encrypt", "-r", fingerprint, data=text)


def smime_encrypts(exported: str, text: bytes, scratch: Path) -> bytes:
    cert = exported[exported.index("-----BEGIN CERTIFICATE-----") :]
    (scratch / "gateway.pem").write_text(cert)
    cmd = ["openssl", "cms", "-encrypt", "-binary", "-aes256", "-outform", "DER", str(scratch / "gateway.pem")]
    return subprocess.run(cmd, input=text, capture_output=True, check=True, timeout=60).stdout


def config_from(outputs: list[str]) -> str:
    """The [keys] settings and [[rotation...]] blocks the commands printed, as one config fragment."""
    keys: dict[str, str] = {}
    blocks: list[str] = []
    for out in outputs:
        section = re.search(r"^\[keys\]\n(?:[a-z_]+ = .+\n)+", out, re.MULTILINE)
        if section:
            keys.update(SETTING.findall(section.group(0)))
        blocks += re.findall(r"^\[\[rotation\.\w+\]\]\n(?:[a-z_]+ = .+\n)+", out, re.MULTILINE)
    return "[keys]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) + "\n" + "\n".join(blocks)


async def test_old_and_new_keys_both_decrypt_during_the_overlap(
    home: Path, partner: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(home)
    made = run(capsys, config, "init")
    write_config(home, config_from([made]))
    before = run(capsys, config, "export")
    old_fpr = FPR.findall(before)[0]
    to_old_pgp = partner_encrypts(partner, before, b"Referral: to the old OpenPGP key")
    to_old_smime = smime_encrypts(before, b"Referral: to the old S/MIME certificate", partner)

    until = (SystemClock().now() + timedelta(days=10)).date().isoformat()
    rotated_pgp = run(capsys, config, "rotate", "openpgp", "--until", until)
    rotated_smime = run(capsys, config, "rotate", "smime", "--until", until)
    assert f"{old_fpr} still decrypts until {until}" in rotated_pgp
    write_config(home, config_from([made, rotated_pgp, rotated_smime]))

    after = run(capsys, config, "export")
    new_fpr = FPR.findall(after)[0]
    assert new_fpr != old_fpr and old_fpr not in after  # partners are sent the new key only
    assert after.count("BEGIN CERTIFICATE") == 1 and after[after.index("BEGIN CERTIFICATE") :] not in before
    to_new_pgp = partner_encrypts(partner, after, b"Referral: to the new OpenPGP key")
    to_new_smime = smime_encrypts(after, b"Referral: to the new S/MIME certificate", partner)

    listing = run(capsys, config, "list").splitlines()

    def row(needle: str) -> str:
        return next(line for line in listing if needle in line)

    assert row(new_fpr).startswith("gateway (current)")
    assert row(old_fpr).startswith(f"gateway (previous, decrypts until {until})")
    smime_rows = [line for line in listing if "S/MIME cert" in line and line.startswith("gateway")]
    assert [r.split(")")[0] for r in smime_rows] == ["gateway (current", f"gateway (previous, decrypts until {until}"]

    clock = FakeClock(SystemClock().now())
    identity = load_identity(config_mod.load(config), clock.now(), clock.now)
    try:
        assert identity.openpgp_fingerprint == new_fpr  # what the gateway signs with now
        assert identity.pgp is not None and identity.smime is not None
        assert (await identity.pgp.decrypt(to_old_pgp))[0] == b"Referral: to the old OpenPGP key"
        assert (await identity.pgp.decrypt(to_new_pgp))[0] == b"Referral: to the new OpenPGP key"
        assert await identity.smime.decrypt(to_old_smime) == b"Referral: to the old S/MIME certificate"
        assert await identity.smime.decrypt(to_new_smime) == b"Referral: to the new S/MIME certificate"

        clock.advance(timedelta(days=11))  # the overlap is over
        with pytest.raises(DecryptError, match="overlap has ended"):
            await identity.pgp.decrypt(to_old_pgp)
        with pytest.raises(DecryptError, match="not encrypted for this gateway's certificate"):
            await identity.smime.decrypt(to_old_smime)
        assert (await identity.pgp.decrypt(to_new_pgp))[0] == b"Referral: to the new OpenPGP key"
        assert await identity.smime.decrypt(to_new_smime) == b"Referral: to the new S/MIME certificate"
    finally:
        identity.close()
    assert row(old_fpr)  # still listed: the key stays in keys/ (a backup may hold mail to it)


def pgp_mime(armoured: bytes, mid: str) -> bytes:
    """A partner's PGP/MIME referral (RFC 3156), from a partner's mail client."""
    return (
        "From: Ann Example <ann.example@nhs.example>\r\nTo: referrals@demo-council.example\r\n"
        f"Subject: Referral\r\nMessage-ID: <{mid}@nhs.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="pgp42"\r\n\r\n'
        "--pgp42\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        "--pgp42\r\nContent-Type: application/octet-stream; name=encrypted.asc\r\n\r\n"
        f"{armoured.decode()}\r\n--pgp42--\r\n"
    ).encode()


async def test_the_running_gateway_takes_mail_to_both_keys_then_quarantines_the_old(
    home: Path, partner: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy import select

    from gateway.app import Gateway
    from gateway.core.schema import events, referrals
    from tests.conftest import referral_body, smtp_send

    config = write_config(home, all_hours=True)
    made = run(capsys, config, "init")
    write_config(home, config_from([made]), all_hours=True)
    entity = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{referral_body()}".replace("\n", "\r\n").encode()
    entity = entity.replace(b"\r\r", b"\r")
    to_old = partner_encrypts(partner, run(capsys, config, "export"), entity)
    until = (SystemClock().now() + timedelta(days=10)).date().isoformat()
    rotated = run(capsys, config, "rotate", "openpgp", "--until", until)
    write_config(home, config_from([made, rotated]), all_hours=True)
    to_new = partner_encrypts(partner, run(capsys, config, "export"), entity)

    clock = FakeClock(SystemClock().now())
    gw = Gateway(config_mod.load(config), clock=clock, workers=False)
    await gw.start()
    try:

        async def send(raw: bytes) -> tuple[str, list[str]]:
            code, text = await smtp_send(gw.smtp_port, raw)
            assert code == 250, text
            await gw.process_all()
            await gw.deliver_all()
            async with gw.engine.connect() as conn:
                row = (await conn.execute(select(referrals).where(referrals.c.reference == text.split()[-1]))).one()
                details = [
                    e for (e,) in await conn.execute(select(events.c.detail).where(events.c.referral_id == row.id))
                ]
            return row.state, details

        for n, raw in enumerate((to_old, to_new)):
            state, details = await send(pgp_mime(raw, f"overlap-{n}"))
            assert state == "alerted" and not any("quarantine" in d for d in details)
        clock.advance(timedelta(days=11))
        state, details = await send(pgp_mime(to_old, "after-overlap"))
        assert state == "quarantined" and any("overlap has ended" in d for d in details)
        state, _ = await send(pgp_mime(to_new, "after-overlap-new"))
        assert state == "alerted"
    finally:
        await gw.stop()
