"""Encrypted and signed referrals over real SMTP, end to end: S/MIME made with the openssl command
line, PGP/MIME made with the gpg command line, against the partner directory and the policy."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.model import Channel
from gateway.core.schema import events, referrals
from gateway.core.sealed import WebEnvelope
from gateway.intake.store import Incoming
from gateway.open.crypto import CryptoKeyError
from gateway.open.crypto.sequoia import SequoiaPGP
from gateway.report import undelivered as report
from tests.conftest import ROOT, maildir_messages, referral_body, smtp_send, write_config
from tests.test_smime import Identity, issue, openssl

MASH = "mash-duty@demo-council.example"
SENDER = "ann.example@nhs.example"


@dataclass
class Setup:
    home: Path
    ca: Identity
    partner: Identity  # Ann at the NHS trust, issued by the trust's CA
    stranger: Identity  # a certificate from a CA the gateway does not trust
    other_ca: Identity  # the stranger's CA (a school's own CA, in one test)
    gateway_cert: Path
    pgp_partner_home: Path
    pgp_partner_fpr: str
    pgp_gateway_fpr: str


def gpg(home: Path, *args: str, stdin: bytes = b"") -> bytes:
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", *args], input=stdin, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    home = tmp_path / "gw"
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = issue(pki, "trust-ca", ca=True)
    partner = issue(pki, "ann", issuer=ca, email_address=SENDER)
    other_ca = issue(pki, "other-ca", ca=True)
    stranger = issue(pki, "stranger", issuer=other_ca, email_address=SENDER)
    gw_id = issue(pki, "gateway", issuer=ca, email_address="referrals@demo-council.example")
    keys = home / "keys"
    (keys / "smime").mkdir(parents=True)
    shutil.copy(gw_id.key_path, keys / "smime" / "gateway.key.pem")
    (keys / "smime" / "gateway.key.pem").chmod(0o600)  # as `keys init` makes it: the gateway insists
    shutil.copy(gw_id.cert_path, keys / "smime" / "gateway.crt.pem")
    (keys / "partners").mkdir()
    shutil.copy(ca.cert_path, keys / "partners" / "trust-ca.pem")
    # OpenPGP: the gateway's key in its key files (the default sequoia backend); the partner's in a GnuPG
    # home, as on their machine.
    short = Path(tempfile.mkdtemp(prefix="gpg"))  # gpg-agent socket paths must be short
    gateway_pgp = SequoiaPGP(keys / "openpgp")
    gateway_fpr = gateway_pgp.generate_key("Demo gateway", "referrals@demo-council.example")
    partner_home = short / "partner"
    partner_home.mkdir(mode=0o700)
    gpg(partner_home, "--passphrase", "", "--quick-gen-key", f"Ann Example <{SENDER}>", "ed25519", "sign", "2y")
    partner_fpr = gpg(partner_home, "--with-colons", "--list-secret-keys").decode().split("fpr:::::::::")[1][:40]
    gpg(partner_home, "--passphrase", "", "--quick-add-key", partner_fpr, "cv25519", "encr", "2y")
    gateway_pgp.import_keys(gpg(partner_home, "--armor", "--export", partner_fpr))
    gpg(partner_home, "--import", stdin=gateway_pgp.export_public(gateway_fpr))
    gateway_pgp.close()
    yield Setup(home, ca, partner, stranger, other_ca, gw_id.cert_path, partner_home, partner_fpr, gateway_fpr)
    subprocess.run(["gpgconf", "--homedir", str(partner_home), "--kill", "gpg-agent"], check=False)
    shutil.rmtree(short, ignore_errors=True)


def config_text(s: Setup, *, strict: bool) -> str:
    return (
        f"[security]\nrequire_encryption = {str(strict).lower()}\nrequire_signature = {str(strict).lower()}\n\n"
        f'[keys]\nsmime_key = "smime/gateway.key.pem"\nsmime_cert = "smime/gateway.crt.pem"\n'
        f'openpgp_fingerprint = "{s.pgp_gateway_fpr}"\n\n'
        f'[[partners]]\nname = "Demo NHS Trust"\naddresses = ["@nhs.example"]\n'
        f'openpgp = ["{s.pgp_partner_fpr}"]\nsmime_anchors = ["keys/partners/trust-ca.pem"]\n'
    )


@pytest.fixture(params=[True], ids=["strict"])
async def gateway(setup: Setup, clock: FakeClock) -> AsyncIterator[Gateway]:
    gw = Gateway(config_mod.load(write_config(setup.home, config_text(setup, strict=True))), clock=clock, workers=False)
    await gw.start()
    yield gw
    await gw.stop()


def inner_entity(body: str) -> bytes:
    return f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}".replace("\n", "\r\n").replace("\r\r", "\r").encode()


def outer(entity: bytes, mid: str, sender: str = SENDER) -> bytes:
    head = (
        f"From: Ann Example <{sender}>\r\nTo: referrals@demo-council.example\r\nSubject: Referral\r\n"
        f"Message-ID: <{mid}@nhs.example>\r\nMIME-Version: 1.0\r\n"
    )
    return head.encode() + entity


def smime_message(signer: Identity, recipient: Path, body: str, *, tamper: bool = False) -> bytes:
    signed = openssl(
        "smime",
        "-sign",
        "-md",
        "sha256",
        "-signer",
        str(signer.cert_path),
        "-inkey",
        str(signer.key_path),
        stdin=inner_entity(body),
    )
    assert signed.returncode == 0, signed.stderr
    data = signed.stdout.replace(b"Zebra-crossing", b"Zebra-crossinG") if tamper else signed.stdout
    encrypted = openssl("smime", "-encrypt", "-aes256", str(recipient), stdin=data)
    assert encrypted.returncode == 0, encrypted.stderr
    return encrypted.stdout


def pgpmime_message(s: Setup, body: str) -> bytes:
    armoured = gpg(
        s.pgp_partner_home,
        "--armor",
        "--trust-model",
        "always",
        "--sign",
        "--encrypt",
        "--local-user",
        s.pgp_partner_fpr,
        "--recipient",
        s.pgp_gateway_fpr,
        stdin=inner_entity(body),
    ).decode()
    return (
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="pgp42"\r\n\r\n'
        "--pgp42\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        "--pgp42\r\nContent-Type: application/octet-stream; name=encrypted.asc\r\n\r\n"
        f"{armoured}\r\n--pgp42--\r\n"
    ).encode()


async def send_and_process(gw: Gateway, raw: bytes, sender: str = SENDER) -> str:
    code, text = await smtp_send(gw.smtp_port, raw, sender=sender)
    assert code == 250, text
    await gw.process_all()
    await gw.deliver_all()
    return text.split()[-1]


async def referral(gw: Gateway, reference: str) -> tuple[str, dict[str, object]]:
    async with gw.engine.connect() as conn:
        row = (await conn.execute(select(referrals).where(referrals.c.reference == reference))).one()
        details = [
            json.loads(e.detail)
            for e in await conn.execute(
                select(events.c.detail).where(
                    events.c.referral_id == row.id, events.c.kind.in_(("parsed", "quarantined"))
                )
            )
        ]
    return row.state, details[0]


async def test_smime_signed_and_encrypted_by_a_partner_is_routed(gateway: Gateway, setup: Setup) -> None:
    reference = await send_and_process(
        gateway, outer(smime_message(setup.partner, setup.gateway_cert, referral_body()), "s1")
    )
    state, detail = await referral(gateway, reference)
    assert state == "alerted"
    assert detail["encrypted"] is True and detail["partner"] == "Demo NHS Trust"
    assert detail["layers"] == ["smime-encrypted", "smime-signed"] and detail["incomplete"] is False
    (alert,) = maildir_messages(setup.home, MASH)
    assert "encrypted, signed by Demo NHS Trust" in alert.get_content()


async def test_pgpmime_signed_and_encrypted_by_a_partner_is_routed(gateway: Gateway, setup: Setup) -> None:
    reference = await send_and_process(gateway, outer(pgpmime_message(setup, referral_body()), "p1"))
    state, detail = await referral(gateway, reference)
    assert state == "alerted" and detail["partner"] == "Demo NHS Trust"
    assert detail["layers"] == ["pgp-encrypted", "pgp-signed"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered", "bad signature (smime)"),
        ("stranger", "no valid signature from a known partner (untrusted certificate)"),
        ("plaintext", "not encrypted, and this gateway requires encryption"),
        ("wrong-address", "signed by a key of Demo NHS Trust, but sent from an address not registered to them"),
        ("not-for-us", "not encrypted for this gateway's certificate"),
    ],
)
async def test_mail_failing_the_policy_is_quarantined_and_the_sender_told(
    gateway: Gateway, setup: Setup, case: str, reason: str
) -> None:
    body = referral_body()
    sender = SENDER
    if case == "tampered":
        raw = outer(smime_message(setup.partner, setup.gateway_cert, body, tamper=True), case)
    elif case == "stranger":
        raw = outer(smime_message(setup.stranger, setup.gateway_cert, body), case)
    elif case == "plaintext":
        raw = outer(inner_entity(body), case)
    elif case == "wrong-address":
        sender = "ann.example@gmail.example"
        raw = outer(smime_message(setup.partner, setup.gateway_cert, body), case, sender=sender)
    else:
        raw = outer(smime_message(setup.partner, setup.partner.cert_path, body), case)
    reference = await send_and_process(gateway, raw, sender=sender)
    state, detail = await referral(gateway, reference)
    assert state == "quarantined" and detail["reason"] == reason
    assert maildir_messages(setup.home, MASH) == []  # nothing reached a team
    (row,) = await report.undelivered(gateway.engine, gateway.config.settings, gateway.clock.now())
    assert row.reference == reference and reason in row.reason
    notice_box = maildir_messages(setup.home, sender)
    (notice,) = [m for m in notice_box if "NOT passed on" in m["Subject"]]
    text = notice.as_string()
    assert reason in notice.get_content() and reference in text
    for secret in ("Sam Testchild", "Zebra-crossing", "W1A", "Example Street"):
        assert secret not in text  # nothing of the referral is echoed back


PDF = b"%PDF-1.4\n% synthetic scanned form\n" + bytes(range(256)) * 40


def with_attachment(body: str) -> bytes:
    """A plain referral with a PDF attached, as a client would compose it."""
    return (
        (
            'Content-Type: multipart/mixed; boundary="mix1"\r\n\r\n'
            f"--mix1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
            "--mix1\r\nContent-Type: application/pdf; name=scan.pdf\r\nContent-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename=scan.pdf\r\n\r\n"
        ).encode()
        + base64.encodebytes(PDF).replace(b"\n", b"\r\n")
        + b"\r\n--mix1--\r\n"
    )


async def start_with_team_key(
    setup: Setup, clock: FakeClock, team_key: str, after: str = 'email = "mash-duty@demo-council.example"'
) -> Gateway:
    """The gateway with `team_key` added after the line `after` (the MASH mailbox, or a member)."""
    text = write_config(setup.home, config_text(setup, strict=False)).read_text()
    assert text.count(after) == 1
    text = text.replace(after, f"{after}\n{team_key}")
    (setup.home / "config" / "gateway.toml").write_text(text)
    gw = Gateway(config_mod.load(setup.home / "config" / "gateway.toml"), clock=clock, workers=False)
    await gw.start()
    return gw


def recipient_key(setup: Setup, home: Path, uid: str) -> str:
    """An OpenPGP key for a recipient in their own GnuPG home, imported into the gateway's; the
    recipient holds the gateway's public key to verify its signature. Returns the fingerprint."""
    home.chmod(0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "2y")
    fpr = gpg(home, "--with-colons", "--list-secret-keys").decode().split("fpr:::::::::")[1][:40]
    gpg(home, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "2y")
    pgp = SequoiaPGP(setup.home / "keys" / "openpgp")
    pgp.import_keys(gpg(home, "--armor", "--export", fpr))
    gpg(home, "--import", stdin=pgp.export_public(setup.pgp_gateway_fpr))
    pgp.close()
    return fpr


def decrypt_alert(setup: Setup, home: Path, alert: email.message.EmailMessage) -> bytes:
    assert alert.get_content_type() == "multipart/encrypted"
    assert "Sam Testchild" not in alert.as_string()  # nothing readable on the wire
    armoured = alert.get_payload()[1].get_payload(decode=True)  # type: ignore[index,union-attr]
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--status-fd", "2", "--decrypt"],
        input=armoured,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"VALIDSIG {setup.pgp_gateway_fpr}".encode() in done.stderr
    assert b"GOODMDC" in done.stderr or b"DECRYPTION_OKAY" in done.stderr
    return done.stdout


def check_content(plaintext: bytes, reference: str) -> None:
    message = email.message_from_bytes(plaintext, policy=email.policy.default)
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_content()
    assert reference in text and "Sam Testchild" in text and "Zebra-crossing-unique-detail" in text
    assert f"scan.pdf (application/pdf, {len(PDF):,} bytes)" in text
    (pdf,) = [p for p in message.walk() if p.get_filename() == "scan.pdf"]
    assert pdf.get_content() == PDF


async def test_alert_to_a_team_with_an_openpgp_key_carries_the_content_encrypted_and_signed(
    setup: Setup, clock: FakeClock, tmp_path: Path
) -> None:
    team_home = Path(tempfile.mkdtemp(prefix="gpg"))
    try:
        team_fpr = recipient_key(setup, team_home, "MASH duty <mash-duty@demo-council.example>")
        gw = await start_with_team_key(setup, clock, f'openpgp = "{team_fpr}"')
        try:
            reference = await send_and_process(gw, outer(with_attachment(referral_body()), "t1"))
        finally:
            await gw.stop()
        (alert,) = maildir_messages(setup.home, MASH)
        check_content(decrypt_alert(setup, team_home, alert), reference)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(team_home), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(team_home, ignore_errors=True)


async def test_a_web_form_referral_to_a_team_with_a_key_carries_its_content_encrypted(
    setup: Setup, clock: FakeClock
) -> None:
    """A referral from the form has no email security to report: its secure alert says nothing of
    how it was sent (it used to fail to compose, and the referral ended quarantined)."""
    team_home = Path(tempfile.mkdtemp(prefix="gpg"))
    try:
        team_fpr = recipient_key(setup, team_home, "MASH duty <mash-duty@demo-council.example>")
        gw = await start_with_team_key(setup, clock, f'openpgp = "{team_fpr}"')
        document = json.loads((ROOT / "config" / "examples" / "complete-referral.json").read_text())
        document["child"]["name"] = "Sam Testchild"
        try:
            accepted = await gw.writer.submit(
                Incoming(Channel.WEB, json.dumps(document).encode(), WebEnvelope(None, "127.0.0.1"), "web:t1w")
            )
            await gw.process_all()
            await gw.deliver_all()
            state, _ = await referral(gw, accepted.reference)
        finally:
            await gw.stop()
        assert state == "alerted"
        (alert,) = maildir_messages(setup.home, MASH)
        text = email.message_from_bytes(decrypt_alert(setup, team_home, alert), policy=email.policy.default)
        body = next(p for p in text.walk() if p.get_content_type() == "text/plain").get_content()
        assert accepted.reference in body and "Sam Testchild" in body and "Sent:" not in body
    finally:
        subprocess.run(["gpgconf", "--homedir", str(team_home), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(team_home, ignore_errors=True)


async def test_a_member_on_duty_with_a_key_gets_the_content_and_the_others_do_not(
    setup: Setup, clock: FakeClock
) -> None:
    # Wednesday morning: Asha and Ben are on the MASH rota. Only Asha has a key.
    asha = "asha.okafor@demo-council.example"
    member_home = Path(tempfile.mkdtemp(prefix="gpg"))
    try:
        fpr = recipient_key(setup, member_home, f"Asha Okafor <{asha}>")
        gw = await start_with_team_key(setup, clock, f'openpgp = "{fpr}"', after=f'email = "{asha}"')
        try:
            reference = await send_and_process(gw, outer(with_attachment(referral_body()), "t1m"))
        finally:
            await gw.stop()
        (alert,) = maildir_messages(setup.home, asha)
        check_content(decrypt_alert(setup, member_home, alert), reference)
        for plain in (
            maildir_messages(setup.home, "ben.carter@demo-council.example")[0],
            *maildir_messages(setup.home, MASH),
        ):
            assert plain.get_content_type() == "text/plain"
            assert reference in plain.get_content() and "Sam Testchild" not in plain.as_string()
    finally:
        subprocess.run(["gpgconf", "--homedir", str(member_home), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(member_home, ignore_errors=True)


async def test_alert_to_a_team_with_an_smime_certificate_decrypts_and_verifies_with_openssl(
    setup: Setup, clock: FakeClock
) -> None:
    team = issue(setup.home / "keys", "mash-team", issuer=setup.ca, email_address=MASH)
    gw = await start_with_team_key(setup, clock, f'smime_cert = "{team.cert_path}"')
    try:
        reference = await send_and_process(gw, outer(with_attachment(referral_body()), "t2"))
    finally:
        await gw.stop()
    (alert,) = maildir_messages(setup.home, MASH)
    raw = alert.as_bytes()
    assert b"Sam Testchild" not in raw
    decrypted = openssl("smime", "-decrypt", "-inkey", str(team.key_path), "-recip", str(team.cert_path), stdin=raw)
    assert decrypted.returncode == 0, decrypted.stderr
    verified = openssl("smime", "-verify", "-CAfile", str(setup.ca.cert_path), stdin=decrypted.stdout)
    assert verified.returncode == 0 and b"Verification successful" in verified.stderr, verified.stderr
    check_content(verified.stdout, reference)


async def test_receipt_and_ack_notice_are_encrypted_to_the_referrers_own_key(
    gateway: Gateway, setup: Setup, clock: FakeClock
) -> None:
    reference = await send_and_process(gateway, outer(pgpmime_message(setup, referral_body()), "r1"))
    (receipt,) = maildir_messages(setup.home, SENDER)
    assert receipt.get_content_type() == "multipart/encrypted" and receipt["X-Referral-Reference"] == reference
    armoured = receipt.get_payload()[1].get_payload(decode=True)
    done = subprocess.run(
        ["gpg", "--homedir", str(setup.pgp_partner_home), "--batch", "--status-fd", "2", "--decrypt"],
        input=armoured,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0 and f"VALIDSIG {setup.pgp_gateway_fpr}".encode() in done.stderr, done.stderr
    assert reference in email.message_from_bytes(done.stdout, policy=email.policy.default).get_content()

    async with gateway.engine.connect() as conn:
        referral_id = (
            await conn.execute(select(referrals.c.id).where(referrals.c.reference == reference))
        ).scalar_one()
    await gateway.tracker.acknowledge(referral_id, gateway.signer.recipient_hash(MASH), "Dee Worker")
    await gateway.deliver_all()
    (notice,) = [m for m in maildir_messages(setup.home, SENDER) if m is not receipt and "acknowledged" in m["Subject"]]
    assert notice.get_content_type() == "multipart/encrypted"
    done = subprocess.run(
        ["gpg", "--homedir", str(setup.pgp_partner_home), "--batch", "--decrypt"],
        input=notice.get_payload()[1].get_payload(decode=True),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0
    assert "Dee Worker" in email.message_from_bytes(done.stdout, policy=email.policy.default).get_content()


async def test_receipt_to_a_referrer_without_a_known_key_holds_only_the_reference(
    gateway: Gateway, setup: Setup
) -> None:
    reference = await send_and_process(
        gateway, outer(smime_message(setup.partner, setup.gateway_cert, referral_body()), "r2")
    )
    (receipt,) = maildir_messages(setup.home, SENDER)
    assert receipt.get_content_type() == "text/plain" and reference in receipt.get_content()
    for secret in ("Sam Testchild", "W1A", "Zebra-crossing", "neglect"):
        assert secret not in receipt.as_string()


async def test_start_warns_of_a_partner_certificate_expiring_within_30_days(
    setup: Setup, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The trust CA made for these tests is valid for 30 days from when it was made: a day later,
    # it expires within the warning period.
    clock.set(datetime.now(UTC) + timedelta(days=1))
    caplog.set_level("WARNING")
    gw = Gateway(config_mod.load(write_config(setup.home, config_text(setup, strict=True))), clock=clock, workers=False)
    await gw.start()
    await gw.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("partner Demo NHS Trust's certificate keys/partners/trust-ca.pem expires on" in w for w in warnings)
    assert not any("gateway's OpenPGP key" in w for w in warnings)  # it is valid for two years


async def test_one_partners_ca_cannot_vouch_for_another_partners_staff(setup: Setup, clock: FakeClock) -> None:
    """The NHS trust's CA issues a certificate for a school address: mail signed with it and sent
    from that school address must not count as signed by the school."""
    extra = config_text(setup, strict=True) + '\n[[partners]]\nname = "Demo School"\naddresses = ["@school.example"]\n'
    gw = Gateway(config_mod.load(write_config(setup.home, extra)), clock=clock, workers=False)
    await gw.start()
    try:
        forged = issue(setup.home / "keys", "fake-head", issuer=setup.ca, email_address="head@school.example")
        raw = outer(smime_message(forged, setup.gateway_cert, referral_body()), "x1", sender="head@school.example")
        reference = await send_and_process(gw, raw, sender="head@school.example")
        state, detail = await referral(gw, reference)
    finally:
        await gw.stop()
    assert state == "quarantined"
    assert detail["reason"] == "no valid signature from a known partner (untrusted certificate)"


async def test_a_partner_with_its_own_ca_cannot_vouch_for_another_partners_address(
    setup: Setup, clock: FakeClock
) -> None:
    """The school has a CA of its own in its [[partners]] block. A certificate it issued for an NHS
    trust address, used from that address, is not the NHS trust's signature: trust is per block,
    and the school's CA is not in the NHS trust's. Its own staff's mail is accepted as the school's."""
    shutil.copy(setup.other_ca.cert_path, setup.home / "keys" / "partners" / "school-ca.pem")
    extra = config_text(setup, strict=True) + (
        '\n[[partners]]\nname = "Demo School"\naddresses = ["@school.example"]\n'
        'smime_anchors = ["keys/partners/school-ca.pem"]\n'
    )
    gw = Gateway(config_mod.load(write_config(setup.home, extra)), clock=clock, workers=False)
    await gw.start()
    try:
        # setup.stranger: ann.example@nhs.example, issued by the school's CA.
        forged = await send_and_process(
            gw, outer(smime_message(setup.stranger, setup.gateway_cert, referral_body()), "v1")
        )
        head = issue(setup.home / "keys", "head", issuer=setup.other_ca, email_address="head@school.example")
        raw = outer(smime_message(head, setup.gateway_cert, referral_body()), "v2", sender="head@school.example")
        genuine = await send_and_process(gw, raw, sender="head@school.example")
        forged_state, forged_detail = await referral(gw, forged)
        genuine_state, genuine_detail = await referral(gw, genuine)
    finally:
        await gw.stop()
    assert forged_state == "quarantined"
    assert forged_detail["reason"] == "no valid signature from a known partner (untrusted certificate)"
    assert genuine_state == "alerted" and genuine_detail["partner"] == "Demo School"


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
async def test_plain_mail_with_a_broken_structure_still_meets_the_policy(
    setup: Setup, clock: FakeClock, strict: bool
) -> None:
    gw = Gateway(
        config_mod.load(write_config(setup.home, config_text(setup, strict=strict))), clock=clock, workers=False
    )
    await gw.start()
    try:
        truncated = (
            'Content-Type: multipart/mixed; boundary="cut"\r\n\r\n--cut\r\nContent-Type: text/plain\r\n\r\n'
            + referral_body()
        ).encode()  # no closing boundary
        reference = await send_and_process(gw, outer(truncated, "m1"))
        state, detail = await referral(gw, reference)
    finally:
        await gw.stop()
    if strict:
        assert state == "quarantined" and detail["reason"] == "not encrypted, and this gateway requires encryption"
    else:
        assert state == "alerted"
        assert "malformed MIME (the multipart has no closing boundary (truncated?))" in detail["flags"]
        (alert,) = maildir_messages(setup.home, MASH)
        assert "Flag: malformed MIME" in alert.get_content()


async def test_gateway_refuses_to_start_with_a_private_key_others_can_read(setup: Setup, clock: FakeClock) -> None:
    (setup.home / "keys" / "smime" / "gateway.key.pem").chmod(0o644)
    gw = Gateway(config_mod.load(write_config(setup.home, config_text(setup, strict=True))), clock=clock, workers=False)
    with pytest.raises(CryptoKeyError, match="readable by others; run: chmod 600"):
        await gw.start()
    await gw.engine.dispose()


async def test_a_from_header_dressed_up_as_the_partner_does_not_pass(gateway: Gateway, setup: Setup) -> None:
    raw = outer(pgpmime_message(setup, referral_body()), "f1").replace(
        f"From: Ann Example <{SENDER}>".encode(), f"From: {SENDER} <someone@attacker.example>".encode()
    )
    reference = await send_and_process(gateway, raw)
    state, detail = await referral(gateway, reference)
    assert state == "quarantined"
    assert detail["reason"] == "signed by a key of Demo NHS Trust, but sent from an address not registered to them"


def test_the_from_address_must_be_exactly_one_plain_address() -> None:
    from gateway.open.mime import read_outer

    def sender(from_header: str) -> str | None:
        return read_outer(f"From: {from_header}\r\nSubject: x\r\n\r\nbody".encode()).from_address

    assert sender("Ann Example <Ann.Example@NHS.example>") == "ann.example@nhs.example"
    assert sender("ann@nhs.example <evil@attacker.example>") == ""
    assert sender("ann@nhs.example, other@nhs.example") == ""
    assert sender("a@b@nhs.example") == ""
    assert read_outer(b"Subject: no from\r\n\r\nbody").from_address is None


async def test_inline_signed_text_is_read_as_signed_and_unsigned_text_beside_it_is_flagged(
    setup: Setup, clock: FakeClock
) -> None:
    gw = Gateway(
        config_mod.load(write_config(setup.home, config_text(setup, strict=False))), clock=clock, workers=False
    )
    await gw.start()
    try:
        signed = gpg(
            setup.pgp_partner_home, "--clearsign", "--local-user", setup.pgp_partner_fpr, stdin=referral_body().encode()
        )
        # The outer charset is not signed: a sender could claim utf-7 to change how the signed
        # bytes read. The unsigned preamble is not part of the referral either.
        body = b"Unsigned words someone added in transit.\r\n\r\n" + signed
        raw = outer(b"Content-Type: text/plain; charset=utf-7\r\n\r\n" + body, "i1")
        reference = await send_and_process(gw, raw)
        state, detail = await referral(gw, reference)
    finally:
        await gw.stop()
    assert state == "alerted" and detail["partner"] == "Demo NHS Trust"
    assert detail["layers"] == ["pgp-inline-signed"] and detail["incomplete"] is False
    assert "text outside the PGP block was ignored" in detail["flags"]
