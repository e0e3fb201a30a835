"""Unwrapper.unwrap, the real code path, against messages no one here wrote (the public vectors), over
the exact bytes a client signed, and on malformed input: only MimeError or CryptoError may come out
(the pipeline quarantines on those), never another exception. Real gpg and openssl; nothing mocked.

Keys: the gateway plays Bob. OpenPGP: Bob's secret key (Autocrypt; Thunderbird's Bob is the same key)
and Alice's public key. S/MIME: the Bob of each vector folder, with that folder's CA as the anchor.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import io
import os
import re
import shutil
import subprocess
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.open.crypto import CryptoError, DecryptError, VerifyError
from gateway.open.crypto.openpgp import OpenPGP
from gateway.open.crypto.sequoia import SequoiaPGP
from gateway.open.crypto.smime import SMime
from gateway.open.mimebytes import MimeError, split_multipart
from gateway.open.unwrap import Trust, Unwrapped, Unwrapper

VECTORS = Path("/work/shared/vectors")
AUTOCRYPT = VECTORS / "autocrypt-protected-headers"
THUNDERBIRD = VECTORS / "thunderbird-openpgp"
NSS = VECTORS / "thunderbird-nss-smime"
CLIENT = VECTORS / "client-generated"
RFC9216 = VECTORS / "rfc9216-examples-cms"
RFC4134 = VECTORS / "rfc4134-bc-test-data"

ALICE_PGP = "EB85BB5FA33A75E15E944E63F231550C4F47E38E"
BOB_PGP = "D1A66E1A23B182C9980F788CFBFCC82A015E7330"
NSS_EXPIRED = datetime.now(UTC) >= datetime(2031, 1, 26, 14, 38, tzinfo=UTC)  # expiration.txt


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def pem_or_der(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)


def autocrypt_alice() -> x509.Certificate:
    """The draft-LAMPS Alice is only published inside her signatures: take her certificate from one."""
    msg = email.message_from_bytes(
        (AUTOCRYPT / "smime-multipart-signed.eml").read_bytes(), policy=email.policy.compat32
    )
    signature = msg.get_payload(1)
    assert isinstance(signature, email.message.Message)
    der = signature.get_payload(decode=True)
    assert isinstance(der, bytes)
    certs = pkcs7.load_der_pkcs7_certificates(der)
    return next(c for c in certs if b"alice@smime.example" in c.public_bytes(serialization.Encoding.DER))


SMIME_ALICE_AUTOCRYPT = fingerprint(autocrypt_alice())
SMIME_ALICE_9216 = fingerprint(pem_or_der(RFC9216 / "lamps-alice.crt"))
SMIME_ALICE_NSS = fingerprint(pem_or_der(NSS / "derived/alice.crt.pem"))
SMIME_ALICE_DSS = fingerprint(pem_or_der(RFC4134 / "AliceDSSSignByCarlNoInherit.cer"))


# ---------- keys: copies of the read-only vectors, one GnuPG home per module ----------


@dataclass(frozen=True)
class Identity:
    key: Path
    cert: Path
    anchors: Path


@dataclass(frozen=True)
class Material:
    gnupg: Path  # the gateway's home: Bob's secret key, Alice's public key
    alice_home: Path  # a referrer's home: Alice's secret key, Bob's public key (messages made here)
    smime: dict[str, Identity]  # vector folder -> the gateway's S/MIME identity and anchors for it
    alice_9216: tuple[Path, Path]  # RFC 9216 Alice's key and certificate (S/MIME messages made here)


def gpg(home: Path, *args: str, stdin: bytes = b"") -> bytes:
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--no-tty", "--trust-model", "always", *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def openssl(*args: str, stdin: bytes = b"") -> bytes:
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Material]:
    short = Path(tempfile.mkdtemp(prefix="gpg"))  # gpg-agent socket paths must be short
    tmp = tmp_path_factory.mktemp("unwrap-keys")
    homes = [short / "gw", short / "alice"]
    try:
        gateway = OpenPGP(homes[0])
        gateway.import_keys((AUTOCRYPT / "bob@openpgp.example.sec.asc").read_bytes())
        gateway.import_keys((AUTOCRYPT / "alice@openpgp.example.pub.asc").read_bytes())
        homes[1].mkdir(mode=0o700)
        gpg(homes[1], "--import", str(THUNDERBIRD / "alice@openpgp.example-0xf231550c4f47e38e-secret.asc"))
        gpg(homes[1], "--import", str(THUNDERBIRD / "bob@openpgp.example-0xfbfcc82a015e7330-pub.asc"))

        def copy(src: Path) -> Path:
            return Path(shutil.copy(src, tmp / f"{src.parent.name}-{src.name}"))

        autocrypt = Identity(
            copy(AUTOCRYPT / "derived/bob-smime.key.pem"),
            copy(AUTOCRYPT / "derived/bob-smime.crt.pem"),
            copy(AUTOCRYPT / "sample-ca.pem"),
        )
        with warnings.catch_warnings():  # NSS writes BER, which cryptography reads with a warning
            warnings.filterwarnings("ignore", "PKCS#12 bundle could not be parsed as DER", UserWarning)
            key, cert, _ = pkcs12.load_key_and_certificates((NSS / "Bob.p12").read_bytes(), b"nss")
        assert isinstance(key, rsa.RSAPrivateKey) and cert is not None
        (tmp / "nss-bob.key").write_bytes(pem_key(key))
        (tmp / "nss-bob.crt").write_bytes(pem(cert))
        nss = Identity(tmp / "nss-bob.key", tmp / "nss-bob.crt", copy(NSS / "TestCA.pem"))
        roots = tmp / "rfc9216-roots.pem"  # the RFC 9216 PEM files have no final newline: joined by hand
        roots.write_bytes(
            b"\n".join(
                (
                    RFC9216
                    / "rfc9216-certs-from-certvalidator"
                    / f"Sample_LAMPS_{n}_Certification_Authority.selfsigned.pem"
                )
                .read_bytes()
                .strip()
                for n in ("RSA", "Ed25519")
            )
            + b"\n"
        )
        lamps = Identity(copy(RFC9216 / "lamps-bob.decrypt.p8.pem"), copy(RFC9216 / "lamps-bob.encrypt.crt"), roots)
        bob_4134 = serialization.load_der_private_key((RFC4134 / "BobPrivRSAEncrypt.pri").read_bytes(), None)
        assert isinstance(bob_4134, rsa.RSAPrivateKey)
        (tmp / "rfc4134-bob.key").write_bytes(pem_key(bob_4134))
        (tmp / "rfc4134-bob.crt").write_bytes(pem(pem_or_der(RFC4134 / "BobRSASignByCarl.cer")))
        (tmp / "rfc4134-carl.pem").write_bytes(
            b"".join(pem(pem_or_der(RFC4134 / n)) for n in ("CarlRSASelf.cer", "CarlDSSSelf.cer"))
        )
        rfc4134 = Identity(tmp / "rfc4134-bob.key", tmp / "rfc4134-bob.crt", tmp / "rfc4134-carl.pem")
        yield Material(
            gnupg=homes[0],
            alice_home=homes[1],
            smime={
                "autocrypt": autocrypt,
                "thunderbird": autocrypt,  # OpenPGP only: any S/MIME identity will do
                "nss": nss,
                "client": lamps,
                "rfc4134": rfc4134,
            },
            alice_9216=(copy(RFC9216 / "lamps-alice.p8.pem"), copy(RFC9216 / "lamps-alice.crt")),
        )
    finally:
        for home in homes:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, capture_output=True)
        shutil.rmtree(short, ignore_errors=True)


def unwrapper(m: Material, keys: str = "client") -> Unwrapper:
    ident = m.smime[keys]
    return Unwrapper(OpenPGP(m.gnupg), SMime(ident.key, ident.cert), Trust(anchors=ident.anchors))


# ---------- helpers to read results independently (stdlib email, never gateway.mimebytes) ----------


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def first_signed_part(raw: bytes) -> bytes:
    """The first part of a multipart/signed file, cut by hand: what its signature covers."""
    boundary = email.message_from_bytes(raw, policy=email.policy.compat32).get_boundary()
    assert boundary
    delimiter = b"--" + boundary.encode()
    start = re.search(rb"(?m)^" + re.escape(delimiter) + rb"[ \t]*\r?\n", raw)
    assert start is not None
    end = raw.index(b"\n" + delimiter, start.end())
    return raw[start.end() : end - (raw[end - 1 : end] == b"\r")]


def texts(raw: bytes) -> list[str]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    found = []
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            assert isinstance(part, EmailMessage)
            found.append(part.get_content().replace("\r\n", "\n").strip())
    return found


def subject(raw: bytes) -> str | None:
    value = email.message_from_bytes(raw, policy=email.policy.default)["Subject"]
    return None if value is None else str(value)


# ---------- 1. interoperability: every public vector through Unwrapper.unwrap ----------


@dataclass(frozen=True)
class Vector:
    path: Path
    keys: str  # the S/MIME identity and anchors (Material.smime)
    encrypted: bool = False
    layers: tuple[str, ...] = ()
    signatures: tuple[tuple[bool, str | None, str | None], ...] = ()  # (valid, problem, signer_id)
    addresses: tuple[str, ...] = ()  # of the first signature
    inner: bytes | None = None  # the innermost entity, byte for byte modulo CRLF
    text: str | None = None  # a text/plain part of the innermost entity, exactly (modulo CRLF, outer space)
    marker: str | None = None  # ...or a phrase one of them contains
    subject: str | None = None  # the innermost entity's (protected) Subject
    error: tuple[type[Exception], str] | None = None
    needs_nss_certs: bool = False


ALICE_OK = ((True, None, ALICE_PGP),)
BOB_OK = ((True, None, BOB_PGP),)
PGP_ENC_SIGNED = ("pgp-encrypted", "pgp-signed")
SMIME_ENC_SIGNED = ("smime-encrypted", "smime-signed")
REFERRAL = (CLIENT / "referral-body.txt").read_text().strip()
SAMPLE = "This is some sample content."
NSS_TEXT = "This is a test message from Alice to Bob."
NSS_FAKE = "This is a FAKE message NOT from Alice to Bob."
CALLALOO = "Sundays are nothing without callaloo."
PGP_ADDR = ("alice@openpgp.example",)


def autocrypt(name: str, **kw: Any) -> Vector:
    return Vector(AUTOCRYPT / name, "autocrypt", marker=f"(this is the '{name[:-4]}' message)", **kw)


VECTOR_CASES = [
    # Autocrypt protected-headers (dkg et al.): PGP/MIME in both RFC 3156 shapes, and S/MIME.
    autocrypt(
        "pgpmime-sign+enc.eml",
        encrypted=True,
        layers=PGP_ENC_SIGNED,
        signatures=ALICE_OK,
        addresses=PGP_ADDR,
        inner=(AUTOCRYPT / "pgpmime-sign+enc.inner").read_bytes(),
    ),
    autocrypt(  # encrypt(multipart/signed): the signature is the inner layer's
        "pgpmime-layered.eml",
        encrypted=True,
        layers=PGP_ENC_SIGNED,
        signatures=ALICE_OK,
        addresses=PGP_ADDR,
        inner=first_signed_part((AUTOCRYPT / "pgpmime-layered.inner").read_bytes()),
    ),
    autocrypt(  # encrypted, not signed: no signature at all (policy decides)
        "pgpmime-enc+legacy-disp.eml",
        encrypted=True,
        layers=("pgp-encrypted",),
        inner=(AUTOCRYPT / "pgpmime-enc+legacy-disp.inner").read_bytes(),
    ),
    autocrypt(
        "pgpmime-signed.eml",
        layers=("pgp-signed",),
        signatures=ALICE_OK,
        addresses=PGP_ADDR,
        inner=first_signed_part((AUTOCRYPT / "pgpmime-signed.eml").read_bytes()),
    ),
    autocrypt(
        "unfortunately-complex.eml",
        encrypted=True,
        layers=PGP_ENC_SIGNED,
        signatures=ALICE_OK,
        addresses=PGP_ADDR,
        inner=first_signed_part((AUTOCRYPT / "unfortunately-complex.inner").read_bytes()),
    ),
    autocrypt(
        "smime-sign+enc.eml",
        encrypted=True,
        layers=SMIME_ENC_SIGNED,
        signatures=((True, None, SMIME_ALICE_AUTOCRYPT),),
        addresses=("alice@smime.example",),
        inner=(AUTOCRYPT / "smime-sign+enc.inner.inner").read_bytes(),
    ),
    autocrypt(
        "smime-onepart-signed.eml",
        layers=("smime-signed",),
        signatures=((True, None, SMIME_ALICE_AUTOCRYPT),),
        addresses=("alice@smime.example",),
        inner=(AUTOCRYPT / "smime-onepart-signed.inner").read_bytes(),
    ),
    autocrypt(
        "smime-multipart-signed.eml",
        layers=("smime-signed",),
        signatures=((True, None, SMIME_ALICE_AUTOCRYPT),),
        addresses=("alice@smime.example",),
        inner=first_signed_part((AUTOCRYPT / "smime-multipart-signed.eml").read_bytes()),
    ),
    # Thunderbird-composed PGP/MIME (encrypt(multipart/signed(mixed(...)))).
    Vector(
        THUNDERBIRD / "encrypted-and-signed-alice-to-bob-nonascii.eml",
        "thunderbird",
        encrypted=True,
        layers=PGP_ENC_SIGNED,
        signatures=ALICE_OK,
        addresses=PGP_ADDR,
        text="Detta är krypterat!",
        subject="Re: kod blå",
    ),
    Vector(  # encrypted to Alice and (Thunderbird's copy to self) to Bob, signed by Bob
        THUNDERBIRD / "signed-by-0xfbfcc82a015e7330-encrypted-to-0xf231550c4f47e38e.eml",
        "thunderbird",
        encrypted=True,
        layers=PGP_ENC_SIGNED,
        signatures=BOB_OK,
        addresses=("bob@openpgp.example",),
        text=CALLALOO,
        subject="Signed Encrypted",
    ),
    Vector(
        THUNDERBIRD / "unsigned-encrypted-to-0xf231550c4f47e38e-from-0xfbfcc82a015e7330.eml",
        "thunderbird",
        encrypted=True,
        layers=("pgp-encrypted",),
        text=CALLALOO,
        subject="Unsigned Encrypted",
    ),
    Vector(
        THUNDERBIRD / "signed-by-0xfbfcc82a015e7330-to-0xf231550c4f47e38e-unencrypted.eml",
        "thunderbird",
        layers=("pgp-signed",),
        signatures=BOB_OK,
        addresses=("bob@openpgp.example",),
        text=CALLALOO,
        subject="Signed Unencrypted",
    ),
    Vector(  # the signature's armour is corrupted: gpg CRC error, NODATA
        THUNDERBIRD / "bob-to-alice-signed-damaged-signature.eml",
        "thunderbird",
        error=(VerifyError, "unreadable signature"),
    ),
    # NSS (Thunderbird's S/MIME library).
    *(
        Vector(
            NSS / name,
            "nss",
            encrypted=encrypted,
            layers=layers,
            signatures=((True, None, SMIME_ALICE_NSS),),
            addresses=("alice@example.com",),
            text=NSS_TEXT,
            needs_nss_certs=True,
        )
        for name, encrypted, layers in [
            ("alice.sig.SHA256.opaque.env.eml", True, SMIME_ENC_SIGNED),
            ("alice.dsig.SHA256.multipart.env.eml", True, SMIME_ENC_SIGNED),
            ("alice.dsig.SHA256.multipart.eml", False, ("smime-signed",)),
            ("alice.sig.SHA256.opaque.eml", False, ("smime-signed",)),
            # Cryptographically valid; its outer Date is 6 h after the signingTime. Unwrap does not
            # compare the two (a header-vs-signature check would belong to the policy).
            ("alice.future.dsig.SHA256.multipart.eml", False, ("smime-signed",)),
        ]
    ),
    Vector(NSS / "alice.env.eml", "nss", encrypted=True, layers=("smime-encrypted",), text=NSS_TEXT),
    *(
        # Content altered after signing: "bad signature" (the policy always quarantines it). The content
        # is still handed back so a person can look at it in quarantine.
        Vector(NSS / name, "nss", layers=("smime-signed",), signatures=((False, "bad signature", None),), text=NSS_FAKE)
        for name in ("alice.dsig.SHA256.multipart.bad.eml", "alice.dsig.SHA256.multipart.mismatch-econtent.eml")
    ),
    # Made here with gpg 2.2.40 / OpenSSL 3.0.19 (client-generated/).
    *(
        Vector(
            CLIENT / name,
            "client",
            encrypted=True,
            layers=layers,
            signatures=signatures,
            addresses=addresses,
            text=REFERRAL,
        )
        for name, layers, signatures, addresses in [
            ("pgpmime-combined.eml", PGP_ENC_SIGNED, ALICE_OK, PGP_ADDR),
            ("pgpmime-nested.eml", PGP_ENC_SIGNED, ALICE_OK, PGP_ADDR),
            (
                "smime-sign-then-encrypt.eml",
                SMIME_ENC_SIGNED,
                ((True, None, SMIME_ALICE_9216),),
                ("alice@smime.example",),
            ),
            (
                "smime-sign-then-encrypt-gcm.eml",
                SMIME_ENC_SIGNED,
                ((True, None, SMIME_ALICE_9216),),
                ("alice@smime.example",),
            ),
        ]
    ),
    Vector(CLIENT / "negative/pgpmime-no-mdc.eml", "client", error=(DecryptError, "no integrity protection")),
    Vector(CLIENT / "negative/pgpmime-tampered-ciphertext.eml", "client", error=(DecryptError, "damaged or altered")),
    # RFC 4134 (legacy: DSA/SHA-1 signatures, 3DES). Their content is bare text, not a MIME entity.
    Vector(
        RFC4134 / "4.8.eml",
        "rfc4134",
        layers=("smime-signed",),
        signatures=((True, None, SMIME_ALICE_DSS),),
        addresses=("alicedss@example.com",),
        text=SAMPLE,
    ),
    Vector(
        RFC4134 / "4.9.eml",
        "rfc4134",
        layers=("smime-signed",),
        signatures=((True, None, SMIME_ALICE_DSS),),
        addresses=("alicedss@example.com",),
        text=SAMPLE,
    ),
    Vector(RFC4134 / "5.3.eml", "rfc4134", encrypted=True, layers=("smime-encrypted",), text=SAMPLE),
]


def test_every_vector_message_is_covered() -> None:
    folders = [AUTOCRYPT, THUNDERBIRD, NSS, CLIENT, CLIENT / "negative"]
    every = {p for folder in folders for p in folder.glob("*.eml")}
    every |= {RFC4134 / n for n in ("4.8.eml", "4.9.eml", "5.3.eml")}
    assert {v.path for v in VECTOR_CASES} == every


@pytest.mark.parametrize("vector", VECTOR_CASES, ids=[f"{v.path.parent.name}/{v.path.name}" for v in VECTOR_CASES])
async def test_public_vector(material: Material, vector: Vector) -> None:
    if vector.needs_nss_certs and NSS_EXPIRED:
        pytest.skip("the NSS test certificates expired on 2031-01-26 (expiration.txt): refresh the vectors")
    raw = vector.path.read_bytes()
    if vector.error is not None:
        kind, reason = vector.error
        with pytest.raises(kind) as caught:
            await unwrapper(material, vector.keys).unwrap(raw)
        assert isinstance(caught.value, CryptoError | MimeError) and caught.value.reason == reason
        return
    result = await unwrapper(material, vector.keys).unwrap(raw)
    assert result.encrypted is vector.encrypted
    assert tuple(result.layers) == vector.layers
    assert tuple((s.valid, s.problem, s.signer_id) for s in result.signatures) == vector.signatures
    if vector.signatures:
        assert {s.kind for s in result.signatures} == {"smime" if "smime-signed" in vector.layers else "openpgp"}
        assert result.signatures[0].signer_addresses == vector.addresses
    inner = result.entity.raw
    if vector.inner is not None:
        assert lf(inner) == lf(vector.inner)
    if vector.text is not None:
        assert vector.text in texts(inner)
    if vector.marker is not None:
        assert any(vector.marker in t for t in texts(inner))
    if vector.subject is not None:
        assert subject(inner) == vector.subject


PGP_CASES = [
    v
    for v in VECTOR_CASES
    if v.path.parent == THUNDERBIRD or "pgp" in v.path.name or any(layer.startswith("pgp") for layer in v.layers)
]


@pytest.fixture(scope="module")
def sequoia_keys(material: Material) -> Path:
    """Bob's secret key and Alice's public key as the sequoia backend's key files."""
    home = material.gnupg.parent / "sequoia"
    pgp = SequoiaPGP(home)
    try:
        pgp.import_keys((AUTOCRYPT / "bob@openpgp.example.sec.asc").read_bytes())
        pgp.import_keys((AUTOCRYPT / "alice@openpgp.example.pub.asc").read_bytes())
    finally:
        pgp.close()
    return home


@pytest.mark.parametrize("vector", PGP_CASES, ids=[f"{v.path.parent.name}/{v.path.name}" for v in PGP_CASES])
async def test_public_openpgp_vector_on_sequoia(material: Material, sequoia_keys: Path, vector: Vector) -> None:
    """The OpenPGP vectors through the sequoia backend: the outcomes of test_public_vector (gnupg), the same
    for every vector. Those signed inside compressed data (sign+encrypt in one pass) are decided by the gpg
    fallback (gateway/open/crypto/gpg_fallback.py), as the gateway runs it."""
    ident = material.smime[vector.keys]
    pgp = SequoiaPGP(sequoia_keys, fallback_home=sequoia_keys.with_name("sequoia-fb"))
    try:
        unwrapper = Unwrapper(pgp, SMime(ident.key, ident.cert), Trust(anchors=ident.anchors))
        raw = vector.path.read_bytes()
        if vector.error is not None:
            kind, reason = vector.error
            with pytest.raises(kind) as caught:
                await unwrapper.unwrap(raw)
            assert isinstance(caught.value, CryptoError | MimeError) and caught.value.reason == reason
            return
        result = await unwrapper.unwrap(raw)
    finally:
        pgp.close()
    assert result.encrypted is vector.encrypted
    assert tuple(result.layers) == vector.layers
    assert tuple((s.valid, s.problem, s.signer_id) for s in result.signatures) == vector.signatures
    if vector.signatures:
        assert result.signatures[0].signer_addresses == vector.addresses
    if vector.inner is not None:
        assert lf(result.entity.raw) == lf(vector.inner)
    if vector.text is not None:
        assert vector.text in texts(result.entity.raw)


async def test_rfc4134_headerless_content_is_read_as_plain_text_byte_for_byte(material: Material) -> None:
    # RFC 4134 §5.3 encrypts the bare 28 bytes (no MIME headers): the body is exactly those bytes.
    result = await unwrapper(material, "rfc4134").unwrap((RFC4134 / "5.3.eml").read_bytes())
    assert result.entity.content_type == "text/plain"
    assert result.entity.body == (RFC4134 / "ExContent.bin").read_bytes()


async def test_the_gateway_without_the_right_key_quarantines_by_name(material: Material) -> None:
    # The RFC 9216 Bob is not the draft-LAMPS Bob the Autocrypt message is encrypted to.
    with pytest.raises(DecryptError) as caught:
        await unwrapper(material, "client").unwrap((AUTOCRYPT / "smime-sign+enc.eml").read_bytes())
    assert caught.value.reason == "not encrypted for this gateway's certificate"
    with pytest.raises(MimeError, match="no OpenPGP key configured"):
        await Unwrapper(None, None, Trust()).unwrap((AUTOCRYPT / "pgpmime-sign+enc.eml").read_bytes())


# ---------- 2. signatures are checked over the exact bytes signed ----------

# Folded headers, white space at line ends and a trailing blank line: any re-serialisation changes these.
SIGNED_PART = (
    b'Content-Type: text/plain;\r\n\tcharset="utf-8";   \r\n  format=flowed\r\n'
    b"X-Referral-Note:   spaced   value \t\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"\r\n"
    b"Referral: synthetic test concern.   \r\n"
    b"Trailing tab\t\r\n"
    b"\r\n"
)


def make_signed(m: Material, kind: str, part: bytes = SIGNED_PART) -> bytes:
    """A multipart/signed message over `part` (CRLF), its signature made over exactly those bytes."""
    if kind == "pgp":
        signature = gpg(m.alice_home, "--armor", "--detach-sign", "--local-user", ALICE_PGP, stdin=part)
        return signed_message(kind, part, signature)
    key, cert = m.alice_9216
    der = openssl("cms", "-sign", "-binary", "-md", "sha256", "-outform", "DER", "-signer", str(cert),
                  "-inkey", str(key), stdin=part)  # fmt: skip
    return signed_message(kind, part, der)


def signed_message(kind: str, part: bytes, signature: bytes) -> bytes:
    """multipart/signed around `part`; `signature` is gpg's armour or CMS DER (base64-encoded here)."""
    if kind == "pgp":
        protocol, sig_headers, sig_body = "application/pgp-signature", b"", signature
    else:
        protocol = "application/pkcs7-signature"
        sig_headers = b"; name=smime.p7s\r\nContent-Transfer-Encoding: base64"
        sig_body = base64.encodebytes(signature).replace(b"\n", b"\r\n")
    return (
        b"From: Alice Lovelace <alice@example.org>\r\nTo: referrals@example.org\r\nSubject: Referral\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/signed; micalg=sha-256; protocol="' + protocol.encode() + b'";\r\n'
        b' boundary="sig-b0und"\r\n\r\n'
        b"This is an OpenPGP/MIME or S/MIME signed message.\r\n"
        b"--sig-b0und\r\n" + part + b"\r\n--sig-b0und\r\n"
        b"Content-Type: " + protocol.encode() + sig_headers + b"\r\n\r\n" + sig_body + b"\r\n--sig-b0und--\r\n"
    )


def test_the_signed_part_is_one_a_reserialisation_would_change() -> None:
    for policy in (email.policy.SMTP, email.policy.compat32.clone(linesep="\r\n")):
        assert email.message_from_bytes(SIGNED_PART, policy=policy).as_bytes() != SIGNED_PART


@pytest.mark.parametrize("kind", ["pgp", "smime"])
async def test_signature_over_folded_headers_and_trailing_white_space_verifies(material: Material, kind: str) -> None:
    result = await unwrapper(material).unwrap(make_signed(material, kind))
    (signature,) = result.signatures
    assert (signature.valid, signature.problem) == (True, None)
    assert signature.signer_id == (ALICE_PGP if kind == "pgp" else SMIME_ALICE_9216)
    assert result.layers == [f"{kind}-signed"] and result.encrypted is False
    assert result.entity.raw == SIGNED_PART  # handed on byte for byte, not re-serialised


@pytest.mark.parametrize("kind", ["pgp", "smime"])
@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"synthetic test", b"synthetiC test"),  # one byte of the body
        (b'"utf-8";   \r\n', b'"utf-8";  \r\n'),  # one trailing space of a folded header line
        (b"Trailing tab\t", b"Trailing tab "),  # a tab for a space at a line end
    ],
    ids=["body-byte", "header-white-space", "trailing-tab"],
)
async def test_one_byte_changed_after_signing_is_a_bad_signature(
    material: Material, kind: str, before: bytes, after: bytes
) -> None:
    raw = make_signed(material, kind)
    assert raw.count(before) == 1
    result = await unwrapper(material).unwrap(raw.replace(before, after))
    (signature,) = result.signatures
    assert (signature.valid, signature.problem) == (False, "bad signature")


@pytest.mark.parametrize("kind", ["pgp", "smime"])
async def test_a_crlf_signed_message_stored_with_bare_lf_still_verifies(material: Material, kind: str) -> None:
    stored = make_signed(material, kind).replace(b"\r\n", b"\n")  # e.g. a Maildir on Unix
    assert b"\r" not in stored
    result = await unwrapper(material).unwrap(stored)
    (signature,) = result.signatures
    assert (signature.valid, signature.problem) == (True, None)
    assert result.entity.raw == SIGNED_PART.replace(b"\r\n", b"\n")


# ---------- 3. malformed input ends in MimeError or CryptoError, with a reason ----------


async def expect_refused(u: Unwrapper, raw: bytes) -> MimeError | CryptoError:
    try:
        result = await u.unwrap(raw)
    except (MimeError, CryptoError) as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return exc
    raise AssertionError(f"unwrapped instead of refused: {result.layers}")


def pgp_mime(payload: bytes, *, extra: bytes = b"") -> bytes:
    """RFC 3156 multipart/encrypted around `payload`; `extra` headers for its octet-stream part."""
    return (
        b"From: alice@example.org\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="enc-b"'
        b"\r\n\r\n--enc-b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        b"--enc-b\r\nContent-Type: application/octet-stream\r\n" + extra + b"\r\n" + payload + b"\r\n--enc-b--\r\n"
    )


def smime_entity(der: bytes, smime_type: str = "enveloped-data") -> bytes:
    return (
        b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type="
        + smime_type.encode()
        + b'; name="smime.p7m"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.encodebytes(der).replace(b"\n", b"\r\n")
    )


def pgp_encrypt(m: Material, data: bytes) -> bytes:
    return gpg(m.alice_home, "--armor", "--sign", "--local-user", ALICE_PGP, "--encrypt", "--recipient", BOB_PGP,
               stdin=data)  # fmt: skip


def smime_encrypt(m: Material, data: bytes) -> bytes:
    """openssl smime -encrypt: a whole application/x-pkcs7-mime entity (headers, base64 body)."""
    return openssl("smime", "-encrypt", "-aes256", str(m.smime["client"].cert), stdin=data)


async def test_truncated_armour(material: Material) -> None:
    armour = pgp_encrypt(material, b"Content-Type: text/plain\r\n\r\nReferral\r\n")
    cut = armour[: len(armour) // 2]  # no END line, half the packets
    error = await expect_refused(unwrapper(material), pgp_mime(cut))
    assert isinstance(error, DecryptError) and error.reason in ("not an OpenPGP message", "damaged or altered")
    # Inline: the middle of the armour gone, BEGIN and END kept.
    lines = armour.splitlines(keepends=True)
    inline = b"Content-Type: text/plain\r\n\r\n" + b"".join(lines[:4] + lines[-3:])
    error = await expect_refused(unwrapper(material), inline)
    assert isinstance(error, CryptoError)
    # The stored message itself cut short: the multipart has no closing delimiter.
    raw = (CLIENT / "pgpmime-combined.eml").read_bytes()
    error = await expect_refused(unwrapper(material), raw[: len(raw) * 2 // 3])
    assert isinstance(error, MimeError) and error.reason == "the multipart has no closing boundary (truncated?)"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda raw: raw.replace(b'boundary="enc-b"', b'boundary="other"'), "the multipart boundary never appears"),
        (lambda raw: raw.replace(b"--enc-b--", b"--enc-x--"), "the multipart has no closing boundary"),
        (lambda raw: raw.replace(b'; boundary="enc-b"', b""), "multipart without a boundary"),
        (lambda raw: raw.replace(b'boundary="enc-b"', b'boundary="' + b"b" * 71 + b'"'), "boundary longer"),
        (lambda raw: raw.replace(b'boundary="enc-b"', b'boundary="\xff\xfe"'), "boundary with characters"),
        (lambda raw: raw.replace(b"--enc-b\r\nContent-Type: application/octet", b"--enc-c\r\nContent-Type: x"), "two"),
    ],
    ids=["wrong-boundary", "no-close", "no-boundary", "too-long", "8-bit-boundary", "one-part"],
)
async def test_wrong_mime_boundaries(material: Material, mutate: Callable[[bytes], bytes], reason: str) -> None:
    armour = pgp_encrypt(material, b"Content-Type: text/plain\r\n\r\nReferral\r\n")
    raw = mutate(pgp_mime(armour))
    error = await expect_refused(unwrapper(material), raw)
    assert isinstance(error, MimeError) and reason in error.reason


async def test_a_ten_megabyte_base64_blob_as_the_encrypted_part(material: Material) -> None:
    # 0xFF first: gpg gives up at once, with most of the 7.5 MB still unread (python-gnupg's writer thread
    # then got a BrokenPipeError, which escaped unwrap before the fix).
    blob = b"\xff" + os.urandom(7_500_000)
    encoded = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    assert len(encoded) > 10_000_000
    error = await expect_refused(unwrapper(material), pgp_mime(encoded, extra=b"Content-Transfer-Encoding: base64\r\n"))
    assert isinstance(error, DecryptError)
    error = await expect_refused(unwrapper(material), pgp_mime(encoded))  # the base64 text itself as "armour"
    assert isinstance(error, DecryptError)
    inline = b"Content-Type: text/plain\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\n" + encoded
    error = await expect_refused(unwrapper(material), inline + b"-----END PGP MESSAGE-----\r\n")
    assert isinstance(error, DecryptError)
    error = await expect_refused(unwrapper(material), smime_entity(blob))
    assert isinstance(error, DecryptError) and error.reason == "unreadable: damaged or not S/MIME"


@pytest.mark.parametrize("kind", ["pgp", "smime"])
async def test_a_ten_megabyte_signed_part_with_a_junk_signature(material: Material, kind: str) -> None:
    part = b"Content-Type: text/plain\r\n\r\n" + b"Referral line.\r\n" * 700_000
    junk = b"\xff\x00 not a signature" if kind == "smime" else b"\xff\x00 not a signature\r\n"
    error = await expect_refused(unwrapper(material), signed_message(kind, part, junk))
    assert isinstance(error, VerifyError)


async def test_ten_nested_encryption_layers(material: Material) -> None:
    raw = b"Content-Type: text/plain\r\n\r\nReferral at the bottom\r\n"
    for level in range(10):  # S/MIME and PGP/MIME alternately, as a relaying chain might
        raw = smime_encrypt(material, raw) if level % 2 else pgp_mime(pgp_encrypt(material, raw))
    error = await expect_refused(unwrapper(material), raw)
    assert isinstance(error, MimeError)
    assert error.reason == "more than 8 nested encryption or signature layers"


@pytest.mark.parametrize(("depth", "refused"), [(8, False), (9, True)])
async def test_the_nesting_limit_is_eight_layers(material: Material, depth: int, refused: bool) -> None:
    raw = b"Content-Type: text/plain\r\n\r\nReferral at the bottom\r\n"
    for _ in range(depth):
        raw = smime_encrypt(material, raw)
    if refused:
        error = await expect_refused(unwrapper(material), raw)
        assert error.reason == "more than 8 nested encryption or signature layers"
    else:  # exactly 8 was refused as "more than 8" before the fix
        result = await unwrapper(material).unwrap(raw)
        assert result.layers == ["smime-encrypted"] * 8 and result.entity.body.endswith(b"at the bottom\r\n")


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(zipfile.ZipInfo("referral.docx", date_time=(2020, 1, 1, 0, 0, 0)), b"synthetic " * 50)
    data = out.getvalue()
    assert data.startswith(b"PK\x03\x04")
    return data


async def test_a_zip_attachment_inside_an_encrypted_message_is_content(material: Material) -> None:
    data = zip_bytes()
    entity = (
        b'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
        b"--mix\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        b'--mix\r\nContent-Type: application/zip; name="referral.zip"\r\nContent-Transfer-Encoding: base64\r\n'
        b'Content-Disposition: attachment; filename="referral.zip"\r\n\r\n'
        + base64.encodebytes(data).replace(b"\n", b"\r\n")
        + b"--mix--\r\n"
    )
    for raw in (smime_encrypt(material, entity), pgp_mime(pgp_encrypt(material, entity))):
        result = await unwrapper(material).unwrap(raw)
        assert result.encrypted and result.entity.raw == entity  # an attachment is content, not a layer
        (attachment,) = [p for p in email.message_from_bytes(result.entity.raw).walk() if p.get_filename()]
        assert attachment.get_payload(decode=True) == data


async def test_bare_zip_bytes_as_the_decrypted_content(material: Material) -> None:
    data = zip_bytes()
    # Not a MIME entity, and not text: a MimeError, as for any headerless binary (quarantined).
    for raw in (smime_encrypt(material, data), pgp_mime(pgp_encrypt(material, data))):
        error = await expect_refused(unwrapper(material), raw)
        assert isinstance(error, MimeError) and error.reason == "no headers at the start of a MIME part"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n\r\nAAAA", "unsupported smime-type"),
        (b"Content-Type: multipart/encrypted; boundary=x\r\n\r\n--x\r\n\r\na\r\n--x--\r\n", "not PGP/MIME"),
        (
            b'Content-Type: multipart/signed; boundary=x; protocol="a/b"\r\n\r\n'
            b"--x\r\n\r\na\r\n--x\r\n\r\nb\r\n--x--\r\n",
            "unknown signature protocol",
        ),
        (b"Content-Type: multipart/signed; boundary=x\r\n\r\n--x\r\n\r\na\r\n--x--\r\n", "exactly two parts"),
        (
            b"Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin",
            "transfer encoding",
        ),
        (
            b"Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: base64\xff\r\n\r\nAA",
            "transfer encoding",
        ),
    ],
    ids=["certs-only", "not-pgp-mime", "unknown-protocol", "one-signed-part", "uuencode", "8-bit-cte"],
)
async def test_structural_errors_have_reasons(material: Material, raw: bytes, reason: str) -> None:
    error = await expect_refused(unwrapper(material), raw)
    assert isinstance(error, MimeError) and reason in error.reason


@pytest.mark.parametrize(
    "raw",
    [
        smime_entity(b"\x30\x80garbage"),
        smime_entity(b"\x30\x03\x02\x01\x00", "signed-data"),
        b"Content-Type: application/octet-stream; name=referral.p7m\r\n\r\n\x00\x01junk",
        b"Content-Type: text/plain\r\n\r\n"
        b"-----BEGIN PGP MESSAGE-----\r\n\r\nnot base64 !!\r\n-----END PGP MESSAGE-----\r\n",
        b"Content-Type: text/plain\r\n\r\n-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\nhi\r\n"
        b"-----BEGIN PGP SIGNATURE-----\r\n\r\nAAAA\r\n-----END PGP SIGNATURE-----\r\n",
        b'Content-Type: multipart/signed; boundary=x; protocol="application/pgp-signature"\r\n\r\n'
        b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x\r\nContent-Type: application/pgp-signature\r\n\r\n"
        b"\x00\xff\x10garbage\r\n--x--\r\n",
        b'Content-Type: multipart/signed; boundary=x; protocol="application/pkcs7-signature"\r\n\r\n'
        b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x\r\nContent-Type: application/pkcs7-signature\r\n\r\n"
        b"MIIB garbage\r\n--x--\r\n",
    ],
    ids=[
        "garbage-enveloped",
        "empty-signed-data",
        "p7m-by-name",
        "inline-junk",
        "clearsigned-junk",
        "pgp-sig-junk",
        "pkcs7-sig-junk",
    ],
)
async def test_garbage_where_crypto_is_expected_is_a_crypto_error(material: Material, raw: bytes) -> None:
    error = await expect_refused(unwrapper(material), raw)
    assert isinstance(error, CryptoError)


# ---------- 4. fuzz: generated MIME structures, only MimeError/CryptoError (or a result) ----------

BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
ARMOUR = [
    b"-----BEGIN PGP MESSAGE-----\r\n",
    b"-----END PGP MESSAGE-----\r\n",
    b"-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\n",
    b"-----BEGIN PGP SIGNATURE-----\r\n",
    b"-----END PGP SIGNATURE-----\r\n",
    b"hQEMA+vDD0kBrGBNAQf/Yo1xu7rTTWC5\r\n",
    b"=njUN\r\n",
    b"\r\n",
    b"Version: 1\r\n",
    b"MIIBHgYJKoZIhvcNAQcDoIIBDzCCAQsCAQAx\r\n",
]
CONTENT_TYPES = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/octet-stream",
    'application/octet-stream; name="x.p7m"',
    "application/pgp-encrypted",
    "application/pgp-signature",
    "application/pkcs7-signature",
    "application/x-pkcs7-signature",
    "application/zip",
    "message/rfc822",
]
SMIME_TYPES = ["enveloped-data", "authEnveloped-data", "signed-data", "certs-only", "", "garbage"]
PROTOCOLS = ["application/pgp-encrypted", "application/pgp-signature", "application/pkcs7-signature", "x/y", ""]


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(extra headers, body): random bytes, base64 of random bytes, armour fragments, a real vector's body."""
    kind = draw(st.sampled_from(["binary", "base64", "armour", "der", "vector"]))
    cte = draw(st.sampled_from([b"", b"base64", b"quoted-printable", b"7bit", b"x-junk", b"base64\xff"]))
    if kind == "binary":
        body = draw(st.binary(max_size=300))
    elif kind == "base64":
        body = base64.encodebytes(draw(st.binary(max_size=300))).replace(b"\n", b"\r\n")
    elif kind == "armour":
        body = b"".join(draw(st.lists(st.sampled_from(ARMOUR) | st.binary(max_size=40), max_size=8)))
    elif kind == "der":  # something that starts like CMS
        body = b"\x30\x82" + draw(st.binary(max_size=200))
    else:
        vectors = [
            *sorted((CLIENT / "negative").glob("*.eml")),
            CLIENT / "smime-sign-then-encrypt.eml",
            CLIENT / "pgpmime-combined.eml",
        ]
        raw = draw(st.sampled_from(vectors))
        body = raw.read_bytes().split(b"\n\n", 1)[-1]
        body = body[: draw(st.integers(0, len(body)))]
    return (b"Content-Transfer-Encoding: " + cte + b"\r\n" if cte else b""), body


@st.composite
def leaves(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        ctype = f"application/{draw(st.sampled_from(['pkcs7-mime', 'x-pkcs7-mime']))}"
        ctype += f"; smime-type={draw(st.sampled_from(SMIME_TYPES))}"
    else:
        ctype = draw(st.sampled_from(CONTENT_TYPES))
    headers, body = draw(bodies())
    return b"Content-Type: " + ctype.encode() + b"\r\n" + headers + b"\r\n" + body


@st.composite
def multiparts(draw: st.DrawFn, children: st.SearchStrategy[bytes]) -> bytes:
    subtype = draw(st.sampled_from(["mixed", "signed", "encrypted", "alternative"]))
    boundary = draw(st.text(BCHARS, min_size=1, max_size=72).filter(lambda b: not b.endswith(" ")))
    params = f'; boundary="{boundary}"'
    count = draw(st.integers(1, 3))
    if subtype in ("signed", "encrypted") and draw(st.integers(0, 4)):
        # Mostly well-formed enough to reach gpg/openssl: the right protocol and two parts.
        protocol = "application/pgp-encrypted" if subtype == "encrypted" else draw(st.sampled_from(PROTOCOLS[1:3]))
        params += f'; protocol="{protocol}"'
        count = 2
    elif draw(st.booleans()):
        params += f'; protocol="{draw(st.sampled_from(PROTOCOLS))}"'
    used = boundary if draw(st.integers(0, 9)) else draw(st.text(BCHARS, min_size=1, max_size=10))  # wrong 1 in 10
    body = draw(st.sampled_from([b"", b"preamble\r\n"]))
    for _ in range(count):
        body += b"--" + used.encode() + b"\r\n" + draw(children) + b"\r\n"
    if draw(st.integers(0, 9)):  # a missing close delimiter 1 in 10
        body += b"--" + used.encode() + b"--\r\n"
    return f"Content-Type: multipart/{subtype}{params}\r\n\r\n".encode() + body


messages = st.recursive(leaves(), lambda inner: multiparts(inner), max_leaves=6)


def unwrap_sync(u: Unwrapper, raw: bytes) -> Unwrapped | None:
    try:
        return asyncio.run(u.unwrap(raw))
    except (MimeError, CryptoError) as exc:
        assert exc.reason
        return None


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=messages, bare_lf=st.booleans())
def test_fuzz_unwrap_with_real_engines(material: Material, raw: bytes, bare_lf: bool) -> None:
    raw = b"From: fuzz@example.org\r\nMIME-Version: 1.0\r\n" + raw
    result = unwrap_sync(unwrapper(material), raw.replace(b"\r\n", b"\n") if bare_lf else raw)
    if result is not None:  # what was found agrees with itself
        assert result.encrypted == any(layer.endswith("-encrypted") for layer in result.layers)
        assert len(result.signatures) >= sum(layer.endswith("-signed") for layer in result.layers)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=messages | st.binary(max_size=500))
def test_fuzz_unwrap_structure_only(raw: bytes) -> None:
    # No engines: every crypto layer is a MimeError ("no key configured"), so this runs the MIME
    # walker alone, many more times than the real engines allow.
    unwrap_sync(Unwrapper(None, None, Trust()), raw)


def test_plain_multipart_is_returned_as_it_is() -> None:
    # The structure fuzz's "success" branch: a plain multipart is content, with no layers.
    raw = b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\nContent-Type: text/plain\r\n\r\nhi\r\n--q--\r\n'
    result = unwrap_sync(Unwrapper(None, None, Trust()), raw)
    assert result is not None and result.layers == [] and split_multipart(result.entity)


async def test_many_begin_lines_without_an_end_are_refused_not_searched_for_ever() -> None:
    """A plain message can carry a body of BEGIN lines and no END; finding the block must be linear
    (a lazy regex took 11 s for 280 KB and froze the event loop)."""
    body = b"-----BEGIN PGP MESSAGE-----\r\n" * 40000  # 1.1 MB
    raw = b"Content-Type: text/plain\r\n\r\n" + body
    with pytest.raises(MimeError, match="no END line"):
        await Unwrapper(None, None, Trust()).unwrap(raw)
