"""S/MIME decryption: in process (python-cryptography) or through `openssl cms -decrypt`, chosen per message.

Every message here is made with the real openssl command line or comes from another implementation
(/work/shared/vectors). Each is opened both ways, SMime(in_process=True) and SMime(in_process=False), and
the outcomes must be identical: the same plaintext, or the same refusal in the same words. Which path a
message took is shown without looking inside the gateway: an SMime whose openssl does not exist can still
open what goes in process, and fails with "openssl is not installed" on anything that goes to openssl.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.open.crypto import CryptoError, CryptoKeyError, DecryptError
from gateway.open.crypto.smime import SMime
from gateway.open.crypto.smime_inprocess import route
from tests.test_smime import (
    AUTOCRYPT,
    CLIENT,
    NSS,
    NSS_TEXT,
    REFERRAL,
    RFC4134,
    RFC9216,
    SAMPLE,
    Identity,
    copy,
    from_p12,
    issue,
    openssl,
    pkcs7_body,
    write_pem_key,
)

NO_OPENSSL = "/nonexistent/openssl"  # an SMime with this runs nothing: what it opens, it opened in process
NOT_FOR_US = "not encrypted for this gateway's certificate"
# Not text: every byte value, CR and LF alone and together, no final newline. Both paths must give it back as is.
BINARY = b"Content-Type: text/plain\r\n\r\nCRLF\r\nLF\nCR\rNUL\x00" + bytes(range(256)) + b"\r\n\n\r"


@dataclass
class Keys:
    tmp: Path
    ca: Identity
    gateway: Identity
    partner: Identity
    ec_cert: Path  # an ECDH recipient (key agreement), beside the gateway in one test


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    tmp = tmp_path_factory.mktemp("paths")
    ca = issue(tmp, "paths-ca", ca=True)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ecdh-recipient")])
    now = datetime.now(UTC)
    ec_cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(ca.cert.subject).public_key(ec_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30)).sign(ca.key, hashes.SHA256())
    )  # fmt: skip
    (tmp / "ecdh.crt").write_bytes(ec_cert.public_bytes(serialization.Encoding.PEM))
    return Keys(
        tmp, ca, issue(tmp, "paths-gateway", issuer=ca), issue(tmp, "paths-partner", issuer=ca), tmp / "ecdh.crt"
    )


def encrypt(*args: str, entity: bytes = REFERRAL) -> bytes:
    made = openssl("cms", "-encrypt", "-binary", "-outform", "DER", *args, stdin=entity)
    assert made.returncode == 0, made.stderr
    return made.stdout


async def outcome(smime: SMime, der: bytes) -> bytes | str:
    """The plaintext, or the refusal's reason: what the pipeline acts on."""
    try:
        return await smime.decrypt(der)
    except CryptoError as exc:
        return f"{type(exc).__name__}: {exc.reason}"


async def both(key: Path, cert: Path, der: bytes) -> bytes | str:
    """The outcome, checked to be the same through both paths."""
    in_process = await outcome(SMime(key, cert), der)
    assert await outcome(SMime(key, cert, in_process=False), der) == in_process
    return in_process


def gateway(keys: Keys, *, openssl: str = "openssl", in_process: bool = True) -> SMime:
    return SMime(keys.gateway.key_path, keys.gateway.cert_path, openssl=openssl, in_process=in_process)


# (openssl cms -encrypt arguments besides the gateway's certificate; in process?; Route.why has this)
CASES: Sequence[tuple[str, tuple[str, ...], bool, str]] = [
    ("aes128-cbc", ("-aes128",), True, "AES-128-CBC"),
    ("aes256-cbc", ("-aes256",), True, "AES-256-CBC"),
    ("aes192-cbc", ("-aes192",), False, "AES-192-CBC"),
    ("3des", ("-des3",), False, "3DES"),
    ("aes128-gcm", ("-aes-128-gcm",), False, "authEnveloped-data"),
    ("aes256-gcm", ("-aes-256-gcm",), False, "authEnveloped-data"),
    ("rsa-oaep", ("-aes256", "-keyopt", "rsa_padding_mode:oaep"), False, "RSAES-OAEP"),
    ("subject-key-id", ("-aes256", "-keyid"), False, "subject key identifier"),
    ("ber-stream", ("-aes256", "-stream"), False, "not DER"),  # indefinite lengths, as NSS writes
]


@pytest.mark.parametrize(("args", "in_process", "why"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_each_algorithm_takes_its_path_and_both_paths_agree(
    keys: Keys, args: tuple[str, ...], in_process: bool, why: str
) -> None:
    der = encrypt("-recip", str(keys.gateway.cert_path), *args)  # -keyopt applies to the -recip before it
    plan = route(der)
    assert (plan.in_process, why in plan.why) == (in_process, True), plan.why
    assert await both(keys.gateway.key_path, keys.gateway.cert_path, der) == REFERRAL
    without_openssl = await outcome(gateway(keys, openssl=NO_OPENSSL), der)
    assert without_openssl == (REFERRAL if in_process else "CryptoError: openssl is not installed or cannot run")


async def test_openssl_smime_default_and_aes256(keys: Keys) -> None:
    """`openssl smime -encrypt` (what test_smime's partner sends): 3DES unless told, so openssl opens it."""
    for cipher, in_process in ((), False), (("-aes256",), True):
        made = openssl("smime", "-encrypt", "-binary", "-outform", "DER", *cipher, str(keys.gateway.cert_path),
                       stdin=REFERRAL)  # fmt: skip
        assert route(made.stdout).in_process is in_process
        assert await both(keys.gateway.key_path, keys.gateway.cert_path, made.stdout) == REFERRAL


async def test_other_recipients_beside_the_gateway(keys: Keys) -> None:
    ours = ("-recip", str(keys.gateway.cert_path))
    two = encrypt("-aes256", "-recip", str(keys.partner.cert_path), *ours)
    assert route(two).in_process and len(route(two).recipients) == 2
    # cryptography cannot parse a message with any key-agreement, KEK or password recipient, even beside ours.
    kari = encrypt("-aes256", *ours, "-recip", str(keys.ec_cert))
    kek = encrypt("-aes256", *ours, "-secretkey", "00" * 16, "-secretkeyid", "0102")
    pwri = encrypt("-aes256", *ours, "-pwri_password", "synthetic-test-password")
    for der, why in ((kari, "key agreement"), (kek, "KEK"), (pwri, "password")):
        assert not route(der).in_process and why in route(der).why
    for der in (two, kari, kek, pwri):
        assert await both(keys.gateway.key_path, keys.gateway.cert_path, der) == REFERRAL


async def test_trailing_or_missing_bytes_go_to_openssl(keys: Keys) -> None:
    der = encrypt("-aes256", "-recip", str(keys.gateway.cert_path))
    assert not route(der + b"\x00").in_process  # cryptography refuses what follows; openssl ignores it
    assert await both(keys.gateway.key_path, keys.gateway.cert_path, der + b"\x00") == REFERRAL
    for damaged in (der[:-1], der[:40], b""):
        assert not route(damaged).in_process
        got = await both(keys.gateway.key_path, keys.gateway.cert_path, damaged)
        assert isinstance(got, str) and got.startswith("DecryptError: ")


async def test_content_comes_back_byte_for_byte(keys: Keys) -> None:
    der = encrypt("-aes256", "-recip", str(keys.gateway.cert_path), entity=BINARY)
    assert route(der).in_process
    assert await both(keys.gateway.key_path, keys.gateway.cert_path, der) == BINARY
    assert await outcome(gateway(keys, openssl=NO_OPENSSL), der) == BINARY


@pytest.mark.parametrize("cipher", ["-aes128", "-aes256"])
async def test_tampering_is_worded_by_openssl(keys: Keys, cipher: str) -> None:
    """A failure in process is not reported from there: openssl words it, as it always has."""
    der = encrypt(cipher, "-recip", str(keys.gateway.cert_path))

    def flipped(at: int) -> bytes:
        tampered = bytearray(der)
        tampered[at] ^= 0x01
        assert route(bytes(tampered)).in_process
        return bytes(tampered)

    padding = flipped(len(der) - 1)  # the last padding byte: the padding check fails, always
    assert await both(keys.gateway.key_path, keys.gateway.cert_path, padding) == "DecryptError: damaged or altered"
    assert await outcome(gateway(keys, openssl=NO_OPENSSL), padding) == (
        "CryptoError: openssl is not installed or cannot run"
    )
    # The next-to-last block garbles the last but may leave valid padding: whatever comes out, the same both ways.
    block = flipped(len(der) - 20)
    assert await both(keys.gateway.key_path, keys.gateway.cert_path, block) != REFERRAL
    # The RSA-encrypted content key: each path goes on with a random key (the Bleichenbacher countermeasure
    # of openssl's CMS, implicit rejection in cryptography's OpenSSL), so which failure comes is left to chance.
    key = flipped(der.index(bytes.fromhex("04820100")) + 104)
    for in_process in (True, False):
        assert await outcome(gateway(keys, in_process=in_process), key) != REFERRAL
    assert await both(keys.gateway.key_path, keys.gateway.cert_path, der[:-16]) == (
        "DecryptError: unreadable: damaged or not S/MIME"
    )


async def test_not_for_us_is_worded_by_openssl_too(keys: Keys) -> None:
    """Only a message addressed to the exact bytes of our certificate's issuer and serial is opened in process:
    openssl says whether anything else is not ours or unreadable (it decodes names this reader steps over)."""
    to_partner = encrypt("-aes256", "-recip", str(keys.partner.cert_path))
    assert await both(keys.gateway.key_path, keys.gateway.cert_path, to_partner) == f"DecryptError: {NOT_FOR_US}"
    assert await outcome(gateway(keys, openssl=NO_OPENSSL), to_partner) == (
        "CryptoError: openssl is not installed or cannot run"
    )
    # Another CA's certificate with the gateway's serial number: still not ours, both ways.
    other_ca = issue(keys.tmp, "paths-other-ca", ca=True)
    twin = (
        x509.CertificateBuilder().subject_name(keys.partner.cert.subject).issuer_name(other_ca.cert.subject)
        .public_key(keys.partner.key.public_key()).serial_number(keys.gateway.cert.serial_number)
        .not_valid_before(keys.partner.cert.not_valid_before_utc)
        .not_valid_after(keys.partner.cert.not_valid_after_utc).sign(other_ca.key, hashes.SHA256())
    )  # fmt: skip
    (keys.tmp / "twin.crt").write_bytes(twin.public_bytes(serialization.Encoding.PEM))
    to_twin = encrypt("-aes256", "-recip", str(keys.tmp / "twin.crt"))
    assert await both(keys.gateway.key_path, keys.gateway.cert_path, to_twin) == f"DecryptError: {NOT_FOR_US}"


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "openssl"])
async def test_previous_key_until_its_overlap_ends(keys: Keys, in_process: bool) -> None:
    old = keys.partner  # plays the gateway's replaced identity
    to_old = encrypt("-aes256", "-recip", str(old.cert_path))
    now = datetime.now(UTC)
    smime = gateway(keys, in_process=in_process)
    smime.previous.append((old.key_path, old.cert_path, now + timedelta(days=1)))
    smime.now = lambda: now
    assert await smime.decrypt(to_old) == REFERRAL
    smime.now = lambda: now + timedelta(days=2)
    with pytest.raises(DecryptError) as caught:
        await smime.decrypt(to_old)
    assert caught.value.reason == NOT_FOR_US


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "openssl"])
async def test_a_key_removed_or_replaced_on_disk(tmp_path: Path, keys: Keys, in_process: bool) -> None:
    key, cert = copy(tmp_path, keys.gateway.key_path, keys.gateway.cert_path)
    smime = SMime(key, cert, in_process=in_process)
    der = encrypt("-aes256", "-recip", str(cert))
    assert await smime.decrypt(der) == REFERRAL
    os.replace(key, tmp_path / "elsewhere")
    with pytest.raises(CryptoKeyError) as caught:
        await smime.decrypt(der)
    assert caught.value.reason == "S/MIME key or certificate is missing or unreadable"
    # Another key under the same name is read again: it opens nothing (a wrong RSA key gives a random content
    # key, both ways, so which refusal, or garbage, is left to chance).
    write_pem_key(key, keys.partner.key)
    assert await outcome(smime, der) != REFERRAL


# ---------- other implementations' messages: the same outcome both ways ----------


def _rfc4134_bob(tmp: Path) -> tuple[Path, Path]:
    key = serialization.load_der_private_key((RFC4134 / "BobPrivRSAEncrypt.pri").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = x509.load_der_x509_certificate((RFC4134 / "BobRSASignByCarl.cer").read_bytes())
    (tmp / "bob.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return write_pem_key(tmp / "bob.key", key), tmp / "bob.crt"


def _rfc9216_bob(tmp: Path) -> tuple[Path, Path]:
    key, cert = copy(tmp, RFC9216 / "lamps-bob.decrypt.p8.pem", RFC9216 / "lamps-bob.encrypt.crt")
    return key, cert


def _autocrypt_bob(tmp: Path) -> tuple[Path, Path]:
    key, cert = copy(tmp, AUTOCRYPT / "derived/bob-smime.key.pem", AUTOCRYPT / "derived/bob-smime.crt.pem")
    return key, cert


def _nss_bob(tmp: Path) -> tuple[Path, Path]:
    return from_p12(NSS / "Bob.p12", b"nss", tmp, "bob")


def _eml(path: Path) -> bytes:
    return pkcs7_body(path.read_bytes())


UNSUPPORTED = "DecryptError: unsupported cipher"
VECTORS = [  # (id, whose key, message, expected: plaintext, bytes in it, or the refusal)
    ("rfc4134-5.1-3des", _rfc4134_bob, lambda: (RFC4134 / "5.1.bin").read_bytes(), SAMPLE),
    ("rfc4134-5.2-rc2", _rfc4134_bob, lambda: (RFC4134 / "5.2.bin").read_bytes(), UNSUPPORTED),
    ("rfc4134-5.3-3des-eml", _rfc4134_bob, lambda: _eml(RFC4134 / "5.3.eml"), SAMPLE),
    ("rfc9216-oaep", _rfc9216_bob, lambda: (RFC9216 / "encryptedForBobRSAOaep.p7m").read_bytes(), SAMPLE),
    ("rfc9216-bob-and-dana", _rfc9216_bob, lambda: (RFC9216 / "encryptedForBobAndDana.p7m").read_bytes(), SAMPLE),
    ("rfc9216-chacha20", _rfc9216_bob, lambda: (RFC9216 / "authEnvelopedForBobChaCha20Poly1305.p7m").read_bytes(),
     UNSUPPORTED),
    ("rfc9216-signed-only", _rfc9216_bob, lambda: (RFC9216 / "signedByAliceRSA.p7m").read_bytes(),
     "DecryptError: not an encrypted S/MIME message"),
    ("rfc9216-for-another-bob", _autocrypt_bob, lambda: (RFC9216 / "encryptedForBobRSAOaep.p7m").read_bytes(),
     f"DecryptError: {NOT_FOR_US}"),
    ("client-aes256-cbc", _rfc9216_bob, lambda: _eml(CLIENT / "smime-sign-then-encrypt.eml"), b"multipart/signed"),
    ("client-aes-gcm", _rfc9216_bob, lambda: _eml(CLIENT / "smime-sign-then-encrypt-gcm.eml"), b"multipart/signed"),
    ("client-aes256-cbc-not-for-us", _autocrypt_bob, lambda: _eml(CLIENT / "smime-sign-then-encrypt.eml"),
     f"DecryptError: {NOT_FOR_US}"),
    ("autocrypt-sign-enc", _autocrypt_bob, lambda: _eml(AUTOCRYPT / "smime-sign+enc.eml"), b"signed-data"),
    ("nss-opaque-env", _nss_bob, lambda: _eml(NSS / "alice.sig.SHA256.opaque.env.eml"), b"Content-Type: "),
    ("nss-multipart-env", _nss_bob, lambda: _eml(NSS / "alice.dsig.SHA256.multipart.env.eml"), b"Content-Type: "),
    ("nss-env", _nss_bob, lambda: _eml(NSS / "alice.env.eml"), NSS_TEXT),
    ("garbage", _rfc9216_bob, lambda: b"not cms at all", "DecryptError: unreadable: damaged or not S/MIME"),
]  # fmt: skip


@pytest.mark.parametrize(("identity", "message", "expected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
async def test_vectors_give_the_same_outcome_both_ways(
    tmp_path: Path, identity: object, message: object, expected: bytes | str
) -> None:
    assert callable(identity) and callable(message)
    key, cert = identity(tmp_path)
    got = await both(key, cert, message())
    if isinstance(expected, bytes) and isinstance(got, bytes):
        assert expected in got
    else:
        assert got == expected
