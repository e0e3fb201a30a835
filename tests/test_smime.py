"""S/MIME against other implementations' messages (RFC 4134, RFC 9216, Autocrypt, NSS) and against
messages made here with the real openssl command-line tools. Nothing is mocked."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import os
import re
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.open.crypto import CryptoKeyError, DecryptError, VerifyError
from gateway.open.crypto.smime import SMime, make_development_identity

VECTORS = Path("/work/shared/vectors")
RFC9216 = VECTORS / "rfc9216-examples-cms"
RFC4134 = VECTORS / "rfc4134-bc-test-data"
AUTOCRYPT = VECTORS / "autocrypt-protected-headers"
NSS = VECTORS / "thunderbird-nss-smime"
CLIENT = VECTORS / "client-generated"
SAMPLE = b"This is some sample content."
NSS_TEXT = b"This is a test message from Alice to Bob."
REFERRAL = (
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Referral: synthetic test child, suspected neglect.\r\nReferrer: Dr Example\r\n"
)


# ---------- helpers (test-only: MIME cutting with the stdlib, keys with cryptography) ----------


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def pkcs7_body(raw: bytes) -> bytes:
    """The DER of a one-part application/(x-)pkcs7-mime message or entity."""
    msg = parse(raw)
    assert msg.get_content_type() in {"application/pkcs7-mime", "application/x-pkcs7-mime"}
    der = msg.get_payload(decode=True)
    assert isinstance(der, bytes)
    return der


def crlf(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def cut_signed(raw: bytes) -> tuple[bytes, bytes]:
    """multipart/signed -> (the first part's exact bytes between the boundaries, made CRLF; the
    signature DER). Cut from the raw bytes, never re-serialised."""
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/signed"
    delimiter = b"--" + msg.get_boundary("").encode()
    start = re.search(re.escape(delimiter) + rb"[ \t]*\r?\n", raw)
    assert start is not None
    end = raw.index(b"\n" + delimiter, start.end())
    end -= raw[end - 1 : end] == b"\r"  # the CRLF before a delimiter belongs to the delimiter
    part = msg.get_payload(1)
    assert isinstance(part, Message)
    signature = part.get_payload(decode=True)
    assert isinstance(signature, bytes)
    return crlf(raw[start.end() : end]), signature


def copy(tmp: Path, *sources: Path) -> list[Path]:
    """The vectors folder is read-only: work on copies."""
    return [Path(shutil.copy(src, tmp / src.name)) for src in sources]


def write_pem_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def from_p12(p12: Path, password: bytes, tmp: Path, name: str) -> tuple[Path, Path]:
    with warnings.catch_warnings():  # NSS writes BER, which cryptography accepts with a warning
        warnings.filterwarnings("ignore", "PKCS#12 bundle could not be parsed as DER", UserWarning)
        key, cert, _ = pkcs12.load_key_and_certificates(p12.read_bytes(), password)
    assert isinstance(key, rsa.RSAPrivateKey) and cert is not None
    cert_path = tmp / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return write_pem_key(tmp / f"{name}.key", key), cert_path


def roots_9216(tmp: Path) -> Path:
    certs = RFC9216 / "rfc9216-certs-from-certvalidator"
    parts = [
        (certs / f"Sample_LAMPS_{n}_Certification_Authority.selfsigned.pem").read_bytes() for n in ("RSA", "Ed25519")
    ]
    path = tmp / "rfc9216-roots.pem"
    path.write_bytes(b"\n".join(p.strip() for p in parts) + b"\n")  # the files have no final newline
    return path


def openssl(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


@dataclass
class Identity:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    key_path: Path
    cert_path: Path


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)  # 2048: test speed only


def issue(
    tmp: Path,
    name: str,
    *,
    issuer: Identity | None = None,
    ca: bool = False,
    email_address: str | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Identity:
    """A CA (ca=True), a certificate issued by `issuer`, or a self-signed end-entity certificate."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        usage = dict(key_cert_sign=True, crl_sign=True, digital_signature=False, key_encipherment=False)
    else:
        usage = dict(key_cert_sign=False, crl_sign=False, digital_signature=True, key_encipherment=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        if email_address:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email_address)]), False)
    builder = builder.add_extension(
        x509.KeyUsage(
            content_commitment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False, **usage,
        ),
        critical=True,
    )  # fmt: skip
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    cert_path = tmp / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(key, cert, write_pem_key(tmp / f"{name}.key", key), cert_path)


@dataclass
class Pki:
    tmp: Path
    ca: Identity
    other_ca: Identity
    partner: Identity  # Alice at a referring agency, issued by `ca`
    gateway: Identity  # the gateway itself, issued by `ca`
    team: Identity  # the safeguarding team's mailbox, issued by `ca`


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = issue(tmp, "test-ca", ca=True)
    return Pki(
        tmp=tmp,
        ca=ca,
        other_ca=issue(tmp, "other-ca", ca=True),
        partner=issue(tmp, "partner", issuer=ca, email_address="Alice@Agency.Example"),
        gateway=issue(tmp, "gateway", issuer=ca, email_address="referrals@council.example"),
        team=issue(tmp, "team", issuer=ca, email_address="mash@council.example"),
    )


def gateway_for(pki: Pki, in_process: bool = True) -> SMime:
    return SMime(pki.gateway.key_path, pki.gateway.cert_path, in_process=in_process)


# Decryption runs in process where cryptography can (smime_inprocess), else through openssl: tests that
# decrypt run both ways (tests/test_smime_paths.py checks which messages take which path).
BOTH_PATHS = pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "openssl"])


def smime_sign_encrypt(signer: Identity, recipient: Path, entity: bytes = REFERRAL, *, cms: bool = False) -> bytes:
    """What a referrer's client sends: `openssl smime -sign | openssl smime -encrypt` (x-pkcs7-mime,
    detached signature) or, with cms=True, `openssl cms -sign -nodetach | openssl cms -encrypt -aes256`."""
    tool = "cms" if cms else "smime"
    sign = [tool, "-sign", "-md", "sha256", "-signer", str(signer.cert_path), "-inkey", str(signer.key_path)]
    signed = openssl(*sign, *(["-nodetach"] if cms else []), stdin=entity)
    assert signed.returncode == 0, signed.stderr
    encrypted = openssl(tool, "-encrypt", "-aes256", str(recipient), stdin=signed.stdout)
    assert encrypted.returncode == 0, encrypted.stderr
    return encrypted.stdout


# ---------- decryption: other implementations' messages ----------


async def test_decrypts_rfc9216_rsa_oaep(tmp_path: Path) -> None:
    key, cert, p7m = copy(
        tmp_path,
        RFC9216 / "lamps-bob.decrypt.p8.pem",
        RFC9216 / "lamps-bob.encrypt.crt",
        RFC9216 / "encryptedForBobRSAOaep.p7m",
    )
    assert await SMime(key, cert).decrypt(p7m.read_bytes()) == SAMPLE


async def test_decrypts_rfc4134_triple_des_with_a_der_pkcs8_key(tmp_path: Path) -> None:
    key = serialization.load_der_private_key((RFC4134 / "BobPrivRSAEncrypt.pri").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = x509.load_der_x509_certificate((RFC4134 / "BobRSASignByCarl.cer").read_bytes())
    (tmp_path / "bob.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    smime = SMime(write_pem_key(tmp_path / "bob.key", key), tmp_path / "bob.crt")
    assert await smime.decrypt((RFC4134 / "5.1.bin").read_bytes()) == SAMPLE


@pytest.fixture(params=[True, False], ids=["in-process", "openssl"])
def bob9216(tmp_path: Path, request: pytest.FixtureRequest) -> SMime:
    key, cert = copy(tmp_path, RFC9216 / "lamps-bob.decrypt.p8.pem", RFC9216 / "lamps-bob.encrypt.crt")
    return SMime(key, cert, in_process=request.param)


async def test_chacha20_poly1305_is_an_unsupported_cipher(bob9216: SMime) -> None:
    with pytest.raises(DecryptError) as caught:
        await bob9216.decrypt((RFC9216 / "authEnvelopedForBobChaCha20Poly1305.p7m").read_bytes())
    assert caught.value.reason == "unsupported cipher"


async def test_rc2_is_an_unsupported_cipher(tmp_path: Path) -> None:
    key = serialization.load_der_private_key((RFC4134 / "BobPrivRSAEncrypt.pri").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = x509.load_der_x509_certificate((RFC4134 / "BobRSASignByCarl.cer").read_bytes())
    (tmp_path / "bob.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    smime = SMime(write_pem_key(tmp_path / "bob.key", key), tmp_path / "bob.crt")
    with pytest.raises(DecryptError) as caught:  # RC2 needs the legacy provider, which we do not load
        await smime.decrypt((RFC4134 / "5.2.bin").read_bytes())
    assert caught.value.reason == "unsupported cipher"


async def test_message_for_someone_else_is_refused_by_name(tmp_path: Path) -> None:
    # The draft LAMPS Bob (Autocrypt) is not the RFC 9216 Bob this message was encrypted to.
    key, cert = copy(tmp_path, AUTOCRYPT / "derived/bob-smime.key.pem", AUTOCRYPT / "derived/bob-smime.crt.pem")
    with pytest.raises(DecryptError) as caught:
        await SMime(key, cert).decrypt((RFC9216 / "encryptedForBobRSAOaep.p7m").read_bytes())
    assert caught.value.reason == "not encrypted for this gateway's certificate"


async def test_autocrypt_signed_then_enveloped(tmp_path: Path) -> None:
    key, cert, ca = copy(
        tmp_path,
        AUTOCRYPT / "derived/bob-smime.key.pem",
        AUTOCRYPT / "derived/bob-smime.crt.pem",
        AUTOCRYPT / "sample-ca.pem",
    )
    inner = await SMime(key, cert).decrypt(pkcs7_body((AUTOCRYPT / "smime-sign+enc.eml").read_bytes()))
    assert crlf(inner) == crlf((AUTOCRYPT / "smime-sign+enc.inner").read_bytes())
    assert parse(inner).get_param("smime-type") == "signed-data"
    content, signature = await SMime(key, cert).verify_opaque(pkcs7_body(inner), ca)
    assert signature.valid and signature.problem is None and signature.kind == "smime"
    assert crlf(content) == crlf((AUTOCRYPT / "smime-sign+enc.inner.inner").read_bytes())


# ---------- NSS (Thunderbird's S/MIME library) ----------


@pytest.fixture(params=[True, False], ids=["in-process", "openssl"])
def nss_bob(tmp_path: Path, request: pytest.FixtureRequest) -> SMime:
    return SMime(*from_p12(NSS / "Bob.p12", b"nss", tmp_path, "bob"), in_process=request.param)


NSS_ALICE_FINGERPRINT = (
    x509.load_pem_x509_certificate((NSS / "derived/alice.crt.pem").read_bytes())
    .fingerprint(hashes.SHA256())
    .hex()
    .upper()
)


async def test_nss_opaque_signed_then_enveloped(nss_bob: SMime, tmp_path: Path) -> None:
    [anchors] = copy(tmp_path, NSS / "TestCA.pem")
    inner = await nss_bob.decrypt(pkcs7_body((NSS / "alice.sig.SHA256.opaque.env.eml").read_bytes()))
    content, signature = await nss_bob.verify_opaque(pkcs7_body(inner), anchors)
    assert signature.valid, signature.problem
    assert signature.signer_id == NSS_ALICE_FINGERPRINT
    assert signature.signer_addresses == ("alice@example.com",)
    assert NSS_TEXT in content


async def test_nss_multipart_signed_then_enveloped(nss_bob: SMime, tmp_path: Path) -> None:
    [anchors] = copy(tmp_path, NSS / "TestCA.pem")
    inner = await nss_bob.decrypt(pkcs7_body((NSS / "alice.dsig.SHA256.multipart.env.eml").read_bytes()))
    content, signature_der = cut_signed(inner)
    signature = await nss_bob.verify_detached(content, signature_der, anchors)
    assert (signature.valid, signature.signer_id) == (True, NSS_ALICE_FINGERPRINT)
    assert NSS_TEXT in content


@pytest.mark.parametrize(
    "name", ["alice.dsig.SHA256.multipart.bad.eml", "alice.dsig.SHA256.multipart.mismatch-econtent.eml"]
)
async def test_nss_altered_content_is_a_bad_signature(nss_bob: SMime, tmp_path: Path, name: str) -> None:
    [anchors] = copy(tmp_path, NSS / "TestCA.pem")
    signature = await nss_bob.verify_detached(*cut_signed((NSS / name).read_bytes()), anchors)
    assert (signature.valid, signature.problem) == (False, "bad signature")


async def test_nss_signer_checked_at_a_given_time(nss_bob: SMime, tmp_path: Path) -> None:
    """`at` is passed as -attime: after 2031-01-26 the NSS certificates have expired."""
    [anchors] = copy(tmp_path, NSS / "TestCA.pem")
    content, signature_der = cut_signed((NSS / "alice.dsig.SHA256.multipart.eml").read_bytes())
    good = await nss_bob.verify_detached(content, signature_der, anchors, at=datetime(2030, 1, 1, tzinfo=UTC))
    late = await nss_bob.verify_detached(content, signature_der, anchors, at=datetime(2032, 1, 1, tzinfo=UTC))
    assert good.valid
    assert (late.valid, late.problem, late.signer_id) == (False, "expired certificate", NSS_ALICE_FINGERPRINT)


# ---------- client-generated: RFC 9216 Alice -> Bob with openssl (CBC, x-pkcs7-mime; and GCM) ----------


@pytest.mark.parametrize("name", ["smime-sign-then-encrypt.eml", "smime-sign-then-encrypt-gcm.eml"])
async def test_client_generated_sign_then_encrypt(bob9216: SMime, tmp_path: Path, name: str) -> None:
    raw = (CLIENT / name).read_bytes()
    assert parse(raw).get_param("smime-type") in {"enveloped-data", "authEnveloped-data"}
    content, signature_der = cut_signed(await bob9216.decrypt(pkcs7_body(raw)))
    signature = await bob9216.verify_detached(content, signature_der, roots_9216(tmp_path))
    assert signature.valid, signature.problem
    assert signature.signer_addresses == ("alice@smime.example",)
    assert parse(content).get_payload(decode=True) == (CLIENT / "referral-body.txt").read_bytes()


@pytest.mark.parametrize("name", ["smime-sign-then-encrypt.eml", "smime-sign-then-encrypt-gcm.eml"])
async def test_tampered_ciphertext_is_damaged(bob9216: SMime, name: str) -> None:
    der = bytearray(pkcs7_body((CLIENT / name).read_bytes()))
    der[-3] ^= 1  # GCM: the authentication tag; CBC: the last block (padding)
    with pytest.raises(DecryptError) as caught:
        await bob9216.decrypt(bytes(der))
    assert caught.value.reason == "damaged or altered"  # and no unauthenticated plaintext comes back


# ---------- made here with the real command-line tools ----------


@BOTH_PATHS
@pytest.mark.parametrize("cms", [False, True], ids=["smime-detached", "cms-opaque"])
async def test_partner_message_made_with_openssl(pki: Pki, cms: bool, in_process: bool) -> None:
    gateway = gateway_for(pki, in_process)
    raw = smime_sign_encrypt(pki.partner, pki.gateway.cert_path, cms=cms)
    assert parse(raw).get_content_type() == ("application/pkcs7-mime" if cms else "application/x-pkcs7-mime")
    inner = await gateway.decrypt(pkcs7_body(raw))
    if cms:
        content, signature = await gateway.verify_opaque(pkcs7_body(inner), pki.ca.cert_path)
    else:
        content, signature_der = cut_signed(inner)
        signature = await gateway.verify_detached(content, signature_der, pki.ca.cert_path)
    assert signature.valid, signature.problem
    assert signature.signer_id == pki.partner.cert.fingerprint(hashes.SHA256()).hex().upper()
    assert signature.signer_addresses == ("alice@agency.example",)
    assert crlf(content) == REFERRAL


@BOTH_PATHS
async def test_aes_gcm_auth_enveloped_made_with_openssl(pki: Pki, in_process: bool) -> None:
    signed = openssl(
        "cms", "-sign", "-signer", str(pki.partner.cert_path), "-inkey", str(pki.partner.key_path), stdin=REFERRAL
    )
    raw = openssl("cms", "-encrypt", "-aes-256-gcm", "-recip", str(pki.gateway.cert_path), stdin=signed.stdout).stdout
    assert parse(raw).get_param("smime-type") == "authEnveloped-data"
    gateway = gateway_for(pki, in_process)
    content, signature_der = cut_signed(await gateway.decrypt(pkcs7_body(raw)))
    assert (await gateway.verify_detached(content, signature_der, pki.ca.cert_path)).valid


async def test_altered_content_is_a_bad_signature(pki: Pki) -> None:
    gateway = gateway_for(pki)
    content, signature_der = cut_signed(
        await gateway.decrypt(pkcs7_body(smime_sign_encrypt(pki.partner, pki.gateway.cert_path)))
    )
    altered = content.replace(b"neglect", b"neglecT")
    signature = await gateway.verify_detached(altered, signature_der, pki.ca.cert_path)
    assert (signature.valid, signature.problem) == (False, "bad signature")
    assert signature.signer_id is None  # nobody is named for a signature that does not verify


async def test_altered_opaque_content_is_a_bad_signature_and_gives_no_content(pki: Pki) -> None:
    signed = openssl("cms", "-sign", "-nodetach", "-outform", "DER", "-signer", str(pki.partner.cert_path),
                     "-inkey", str(pki.partner.key_path), stdin=REFERRAL).stdout  # fmt: skip
    altered = signed.replace(b"neglect", b"neglecT")
    assert altered != signed
    content, signature = await gateway_for(pki).verify_opaque(altered, pki.ca.cert_path)
    assert (content, signature.valid, signature.problem) == (b"", False, "bad signature")


async def test_signer_outside_the_anchors_is_untrusted(pki: Pki) -> None:
    gateway = gateway_for(pki)
    content, signature_der = cut_signed(
        await gateway.decrypt(pkcs7_body(smime_sign_encrypt(pki.partner, pki.gateway.cert_path)))
    )
    signature = await gateway.verify_detached(content, signature_der, pki.other_ca.cert_path)
    assert (signature.valid, signature.problem) == (False, "untrusted certificate")
    # Still says who signed (the signature itself is good), for the coordinator's report.
    assert signature.signer_id == pki.partner.cert.fingerprint(hashes.SHA256()).hex().upper()
    no_anchors = await gateway.verify_detached(content, signature_der, None)
    assert (no_anchors.valid, no_anchors.problem) == (False, "untrusted certificate")


async def test_system_trust_store_is_not_used(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """openssl trusts its default CA directory as well as -CAfile unless told not to: put our CA
    there (SSL_CERT_DIR) and check that only the configured anchors count."""
    system = tmp_path / "system-certs"
    system.mkdir()
    shutil.copy(pki.ca.cert_path, system / "test-ca.pem")
    assert openssl("rehash", str(system)).returncode == 0
    monkeypatch.setenv("SSL_CERT_DIR", str(system))
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert_path))
    gateway = gateway_for(pki)
    content, signature_der = cut_signed(
        await gateway.decrypt(pkcs7_body(smime_sign_encrypt(pki.partner, pki.gateway.cert_path)))
    )
    signature = await gateway.verify_detached(content, signature_der, pki.other_ca.cert_path)
    assert (signature.valid, signature.problem) == (False, "untrusted certificate")


async def test_expired_signer_certificate(pki: Pki) -> None:
    now = datetime.now(UTC)
    old_ca = issue(pki.tmp, "old-ca", ca=True, not_before=now - timedelta(days=800))
    expired = issue(pki.tmp, "expired-partner", issuer=old_ca, email_address="old@agency.example",
                    not_before=now - timedelta(days=400), not_after=now - timedelta(days=1))  # fmt: skip
    gateway = gateway_for(pki)
    raw = smime_sign_encrypt(expired, pki.gateway.cert_path)  # openssl signs with an expired certificate
    content, signature_der = cut_signed(await gateway.decrypt(pkcs7_body(raw)))
    signature = await gateway.verify_detached(content, signature_der, old_ca.cert_path)
    assert (signature.valid, signature.problem) == (False, "expired certificate")
    assert signature.signer_addresses == ("old@agency.example",)
    earlier = await gateway.verify_detached(content, signature_der, old_ca.cert_path, at=now - timedelta(days=10))
    assert earlier.valid, earlier.problem


async def test_pinned_self_signed_partner(pki: Pki) -> None:
    """A partner with a self-signed certificate, trusted by pinning that exact certificate."""
    partner = issue(pki.tmp, "self-signed-partner", email_address="gp@surgery.example")
    now = datetime.now(UTC)
    lookalike = issue(pki.tmp, "self-signed-partner-2", email_address="gp@surgery.example")
    gateway = gateway_for(pki)
    content, signature_der = cut_signed(
        await gateway.decrypt(pkcs7_body(smime_sign_encrypt(partner, pki.gateway.cert_path)))
    )
    pinned = await gateway.verify_detached(
        content, signature_der, None, pinned=[lookalike.cert_path, partner.cert_path]
    )
    assert pinned.valid and pinned.signer_addresses == ("gp@surgery.example",)
    with_anchors = await gateway.verify_detached(content, signature_der, pki.ca.cert_path, pinned=[partner.cert_path])
    assert with_anchors.valid
    not_pinned = await gateway.verify_detached(content, signature_der, pki.ca.cert_path, pinned=[lookalike.cert_path])
    assert (not_pinned.valid, not_pinned.problem) == (False, "untrusted certificate")
    later = await gateway.verify_detached(
        content, signature_der, None, [partner.cert_path], at=now + timedelta(days=60)
    )
    assert (later.valid, later.problem) == (False, "expired certificate")  # pins do not outlive the certificate
    altered = await gateway.verify_detached(content + b"x", signature_der, None, pinned=[partner.cert_path])
    assert (altered.valid, altered.problem) == (False, "bad signature")


# ---------- outgoing alerts ----------


def decrypt_and_verify_with_openssl(
    alert: bytes, team: Identity, anchors: Path, tmp: Path
) -> subprocess.CompletedProcess[bytes]:
    """What the team's own tools do: `openssl smime -decrypt ... | openssl smime -verify -CAfile`."""
    decrypted = openssl("smime", "-decrypt", "-inkey", str(team.key_path), "-recip", str(team.cert_path), stdin=alert)
    if decrypted.returncode != 0:
        return decrypted
    return openssl("smime", "-verify", "-CAfile", str(anchors), "-no-CApath", "-no-CAstore", stdin=decrypted.stdout)


async def test_alert_decrypts_and_verifies_with_openssl(pki: Pki) -> None:
    alert = await gateway_for(pki).sign_and_encrypt(REFERRAL, [pki.team.cert_path])
    headers = alert.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert headers == [
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
        b"Content-Transfer-Encoding: base64",
        b"Content-Disposition: attachment; filename=smime.p7m",
    ]
    result = decrypt_and_verify_with_openssl(alert, pki.team, pki.ca.cert_path, pki.tmp)
    assert result.returncode == 0, result.stderr
    assert b"Verification successful" in result.stderr
    assert crlf(result.stdout) == REFERRAL
    # AES-256-CBC, as promised to the clients that cannot do GCM.
    assert b"aes-256-cbc" in openssl("cms", "-cmsout", "-print", "-inform", "DER", stdin=pkcs7_body(alert)).stdout


async def test_alert_reaches_several_recipients_and_our_own_reader(pki: Pki) -> None:
    alert = await gateway_for(pki).sign_and_encrypt(REFERRAL, [pki.team.cert_path, pki.partner.cert_path])
    for reader in (pki.team, pki.partner):
        assert decrypt_and_verify_with_openssl(alert, reader, pki.ca.cert_path, pki.tmp).returncode == 0
    team = SMime(pki.team.key_path, pki.team.cert_path)
    content, signature_der = cut_signed(await team.decrypt(pkcs7_body(alert)))
    assert content == REFERRAL  # signed exactly as given
    signature = await team.verify_detached(content, signature_der, pki.ca.cert_path)
    assert signature.valid and signature.signer_addresses == ("referrals@council.example",)


async def test_tampered_alert_fails_with_openssl(pki: Pki) -> None:
    alert = await gateway_for(pki).sign_and_encrypt(REFERRAL, [pki.team.cert_path])
    head, _ = alert.split(b"\r\n\r\n", 1)
    der = bytearray(pkcs7_body(alert))
    der[-20] ^= 0x01  # in the encrypted content
    tampered = head + b"\r\n\r\n" + base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")
    assert decrypt_and_verify_with_openssl(tampered, pki.team, pki.ca.cert_path, pki.tmp).returncode != 0


async def test_development_identity(tmp_path: Path, pki: Pki) -> None:
    key_path, cert_path = make_development_identity(
        tmp_path / "keys", "Demo Council referrals", "Referrals@Demo.Example"
    )
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    info = SMime.certificate_info(cert_path.read_bytes())
    assert info.emails == ("referrals@demo.example",)
    assert info.not_after - info.not_before > timedelta(days=824)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    with pytest.raises(CryptoKeyError):
        make_development_identity(tmp_path / "keys", "again", "x@demo.example")  # never replaces a key
    # The team pins the self-signed certificate (it is its own anchor for openssl).
    alert = await SMime(key_path, cert_path).sign_and_encrypt(REFERRAL, [pki.team.cert_path])
    result = decrypt_and_verify_with_openssl(alert, pki.team, cert_path, tmp_path)
    assert result.returncode == 0, result.stderr


# ---------- narrow errors ----------


@BOTH_PATHS
async def test_garbage_raises_narrow_errors(pki: Pki, in_process: bool) -> None:
    gateway = gateway_for(pki, in_process)
    for garbage in (b"", b"not cms at all", bytes(range(256)) * 4):
        with pytest.raises(DecryptError):
            await gateway.decrypt(garbage)
        with pytest.raises(VerifyError):
            await gateway.verify_opaque(garbage, pki.ca.cert_path)
        with pytest.raises(VerifyError):
            await gateway.verify_detached(REFERRAL, garbage, pki.ca.cert_path)
        with pytest.raises(VerifyError):
            await gateway.verify_detached(REFERRAL, garbage, None)
    with pytest.raises(DecryptError) as caught:
        await gateway.decrypt((RFC9216 / "signedByAliceRSA.p7m").read_bytes())
    assert caught.value.reason == "not an encrypted S/MIME message"
    with pytest.raises(VerifyError):  # enveloped data handed to the verifier
        await gateway.verify_opaque((RFC9216 / "encryptedForBobRSAOaep.p7m").read_bytes(), pki.ca.cert_path)


async def test_signature_without_certificates_and_unsupported_algorithms(pki: Pki, tmp_path: Path) -> None:
    gateway = gateway_for(pki)
    roots = roots_9216(tmp_path)
    _, no_certs = await gateway.verify_opaque((RFC9216 / "signedByAliceAndCarlosNoCerts.p7m").read_bytes(), roots)
    assert (no_certs.valid, no_certs.problem) == (False, "no signer certificate")
    _, ed25519 = await gateway.verify_opaque((RFC9216 / "signedByCarlosEd25519.p7m").read_bytes(), roots)
    assert (ed25519.valid, ed25519.problem) == (False, "unsupported signature algorithm")


def test_configuration_errors(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(CryptoKeyError):
        SMime(tmp_path / "missing.key", pki.gateway.cert_path)
    with pytest.raises(CryptoKeyError):
        SMime(pki.gateway.key_path, tmp_path / "missing.crt")
    with pytest.raises(CryptoKeyError, match="does not match"):
        SMime(pki.team.key_path, pki.gateway.cert_path)
    with pytest.raises(CryptoKeyError):
        SMime.certificate_info(b"not a certificate")


def test_certificate_info_reads_pem_and_der() -> None:
    der = SMime.certificate_info((RFC4134 / "BobRSASignByCarl.cer").read_bytes())
    assert der.emails == ("bobrsa@example.com",) and len(der.fingerprint) == 64
    pem = SMime.certificate_info((RFC9216 / "lamps-bob.encrypt.crt").read_bytes())
    assert pem.emails == ("bob@smime.example",) and pem.not_before.tzinfo is not None


async def test_temporary_files_are_private_and_removed(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[int] = []
    original: Callable[..., str] = tempfile.mkdtemp

    def spy(*args: object, **kwargs: object) -> str:
        path = original(*args, **kwargs)
        seen.append(stat.S_IMODE(Path(path).stat().st_mode))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    gateway = gateway_for(pki)
    content, signature_der = cut_signed(
        await gateway.decrypt(pkcs7_body(smime_sign_encrypt(pki.partner, pki.gateway.cert_path)))
    )
    assert (await gateway.verify_detached(content, signature_der, pki.ca.cert_path)).valid
    assert seen == [0o700]
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


@BOTH_PATHS
async def test_many_messages_at_once(pki: Pki, in_process: bool) -> None:
    gateway = SMime(pki.gateway.key_path, pki.gateway.cert_path, concurrency=2, in_process=in_process)
    raw = pkcs7_body(smime_sign_encrypt(pki.partner, pki.gateway.cert_path))
    results = await asyncio.gather(*(gateway.decrypt(raw) for _ in range(20)))
    assert len({bytes(r) for r in results}) == 1
