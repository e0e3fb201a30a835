"""Both OpenPGP backends (gnupg: gateway.open.crypto.openpgp, sequoia: gateway.open.crypto.sequoia) against
public vectors and messages made by the real `gpg` command line (nothing mocked): every test runs on each.

Every test gets fresh GnuPG homes in short /tmp paths (gpg-agent socket paths are limited to ~100 chars),
and every home's agent is killed in the fixture finalizer.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from gateway.open.crypto import CryptoKeyError, DecryptError, VerifyError
from gateway.open.crypto.openpgp import OpenPGP
from gateway.open.crypto.pgp_backend import BACKENDS, OpenPGPBackend
from gateway.open.crypto.sequoia import SequoiaPGP

VECTORS = Path("/work/shared/vectors")
AUTOCRYPT = VECTORS / "autocrypt-protected-headers"
THUNDERBIRD = VECTORS / "thunderbird-openpgp"
CLIENT = VECTORS / "client-generated"
ALICE = "EB85BB5FA33A75E15E944E63F231550C4F47E38E"
BOB = "D1A66E1A23B182C9980F788CFBFCC82A015E7330"
BODY = b"Content-Type: text/plain; charset=utf-8\r\n\r\nReferral: synthetic test concern.\r\n"


class Partner:
    """A second GnuPG home driven with the real gpg command line (a referrer or the team)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(mode=0o700)
        self.fpr = ""

    def gpg(self, *args: str, data: bytes = b"", check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", "--pinentry-mode", "loopback"]
        return subprocess.run([*cmd, *args], input=data, capture_output=True, check=check, timeout=60)

    def generate(self, uid: str, *, expire: str = "1y", faked_time: str | None = None) -> str:
        when = ["--faked-system-time", faked_time] if faked_time else []
        self.gpg(*when, "--passphrase", "", "--quick-gen-key", uid, "future-default", "default", expire)
        listing = self.gpg("--with-colons", "--list-secret-keys", uid).stdout.decode()
        self.fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        return self.fpr

    def export(self) -> bytes:
        return self.gpg("--armor", "--export", self.fpr).stdout

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False, capture_output=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gpg"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make(backend: str, home: Path, **kwargs: int) -> OpenPGP | SequoiaPGP:
    """The backend as the gateway runs it: sequoia with its gpg fallback home beside the keys."""
    if backend == "sequoia":
        return SequoiaPGP(home, fallback_home=home.with_name(home.name + "-fb"), **kwargs)
    return OpenPGP(home, **kwargs)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gw(scratch: Path, backend: str) -> Iterator[OpenPGPBackend]:
    gateway = make(backend, scratch / "gw")
    gateway.import_keys((AUTOCRYPT / "bob@openpgp.example.sec.asc").read_bytes())
    gateway.import_keys((AUTOCRYPT / "alice@openpgp.example.pub.asc").read_bytes())
    yield gateway
    gateway.close()


@pytest.fixture
def partner(scratch: Path) -> Iterator[Partner]:
    p = Partner(scratch / "p")
    yield p
    p.close()


def nth_part(msg: Message, n: int) -> Message:
    parts = msg.get_payload()
    assert isinstance(parts, list)
    part = parts[n]
    assert isinstance(part, Message)
    return part


def encrypted_part(eml: Path) -> bytes:
    """The 2nd part of multipart/encrypted (the OpenPGP message), as sent."""
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/encrypted"
    payload = nth_part(msg, 1).get_payload(decode=False)
    assert isinstance(payload, str)
    return payload.encode("ascii")


def split_signed(entity: bytes) -> tuple[bytes, bytes]:
    """Cut a multipart/signed entity: the first part's exact bytes between the boundaries, CRLF canonical
    (RFC 3156 §5), and the signature part's payload. Nothing is re-serialised."""
    msg = email.message_from_bytes(entity, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/signed"
    boundary = msg.get_boundary()
    assert boundary
    crlf = entity.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    body_start = crlf.index(b"\r\n\r\n") + 4
    first = crlf.index(b"--" + boundary.encode() + b"\r\n", body_start - 2)
    start = crlf.index(b"\r\n", first) + 2
    end = crlf.index(b"\r\n--" + boundary.encode(), start)
    signature = nth_part(msg, 1).get_payload(decode=True)
    assert isinstance(signature, bytes)
    return crlf[start:end], signature


def find_signed(entity: bytes) -> bytes:
    """Thunderbird may put the multipart/signed below protected headers: start at its Content-Type."""
    at = entity.lower().index(b"content-type: multipart/signed")
    return entity[at:]


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# -- public vectors ------------------------------------------------------------------------------------------


async def test_autocrypt_sign_and_encrypt_combined(gw: OpenPGPBackend) -> None:
    plaintext, sig = await gw.decrypt(encrypted_part(AUTOCRYPT / "pgpmime-sign+enc.eml"))
    assert lf(plaintext) == lf((AUTOCRYPT / "pgpmime-sign+enc.inner").read_bytes())
    assert sig is not None and sig.valid and sig.problem is None
    assert sig.signer_id == ALICE
    assert sig.signer_addresses == ("alice@openpgp.example",)


async def test_autocrypt_layered_inner_detached_signature(gw: OpenPGPBackend) -> None:
    plaintext, sig = await gw.decrypt(encrypted_part(AUTOCRYPT / "pgpmime-layered.eml"))
    assert sig is None  # the signature is one layer down, in the multipart/signed
    assert lf(plaintext) == lf((AUTOCRYPT / "pgpmime-layered.inner").read_bytes())
    signed, signature = split_signed(plaintext)
    result = await gw.verify_detached(signed, signature)
    assert result.valid and result.signer_id == ALICE
    bad = await gw.verify_detached(signed.replace(b"BarCorp", b"BarC0rp", 1), signature)
    assert not bad.valid and bad.problem == "bad signature"


async def test_autocrypt_encrypted_unsigned(gw: OpenPGPBackend) -> None:
    plaintext, sig = await gw.decrypt(encrypted_part(AUTOCRYPT / "pgpmime-enc+legacy-disp.eml"))
    assert sig is None
    assert lf(plaintext) == lf((AUTOCRYPT / "pgpmime-enc+legacy-disp.inner").read_bytes())


async def test_thunderbird_encrypted_and_signed_nonascii(gw: OpenPGPBackend) -> None:
    plaintext, sig = await gw.decrypt(encrypted_part(THUNDERBIRD / "encrypted-and-signed-alice-to-bob-nonascii.eml"))
    assert sig is None
    signed, signature = split_signed(find_signed(plaintext))
    result = await gw.verify_detached(signed, signature)
    assert result.valid and result.signer_id == ALICE
    texts = [
        part.get_payload(decode=True)
        for part in email.message_from_bytes(signed, policy=email.policy.compat32).walk()
        if part.get_content_type() == "text/plain"
    ]
    assert any(isinstance(t, bytes) and "Detta är krypterat!".encode() in t for t in texts)


async def test_thunderbird_damaged_signature_is_unreadable(gw: OpenPGPBackend) -> None:
    # The signature's armour fails its CRC: gpg reports NODATA and never gets to a signature, so there is
    # nothing to call "bad". VerifyError("unreadable signature") is the honest answer (the caller quarantines).
    gw.import_keys((THUNDERBIRD / "bob@openpgp.example-0xfbfcc82a015e7330-pub.asc").read_bytes())
    raw = (THUNDERBIRD / "bob-to-alice-signed-damaged-signature.eml").read_bytes()
    signed, signature = split_signed(raw)
    with pytest.raises(VerifyError) as err:
        await gw.verify_detached(signed, signature)
    assert err.value.reason == "unreadable signature"


async def test_client_generated_combined_and_nested(gw: OpenPGPBackend) -> None:
    _, sig = await gw.decrypt(encrypted_part(CLIENT / "pgpmime-combined.eml"))
    assert sig is not None and sig.valid and sig.signer_id == ALICE
    plaintext, none = await gw.decrypt(encrypted_part(CLIENT / "pgpmime-nested.eml"))
    assert none is None
    signed, signature = split_signed(find_signed(plaintext))
    inner = await gw.verify_detached(signed, signature)
    assert inner.valid and inner.signer_id == ALICE


async def test_no_mdc_is_refused(gw: OpenPGPBackend) -> None:
    with pytest.raises(DecryptError) as err:
        await gw.decrypt(encrypted_part(CLIENT / "negative" / "pgpmime-no-mdc.eml"))
    assert err.value.reason == "no integrity protection"


async def test_tampered_ciphertext_gives_no_plaintext(gw: OpenPGPBackend) -> None:
    good, _ = await gw.decrypt(encrypted_part(CLIENT / "pgpmime-combined.eml"))
    with pytest.raises(DecryptError) as err:
        await gw.decrypt(encrypted_part(CLIENT / "negative" / "pgpmime-tampered-ciphertext.eml"))
    assert err.value.reason == "damaged or altered"
    # gpg wrote ~600 bytes of partial plaintext here (CHECKS.md); none of it may travel with the error.
    assert all(good[:40] not in (a if isinstance(a, bytes) else str(a).encode()) for a in err.value.args)


# -- made here with the gpg command line -----------------------------------------------------------------------


async def test_partner_encrypt_sign_round_trip(gw: OpenPGPBackend, partner: Partner) -> None:
    fpr = partner.generate("Ann Referrer <Ann.Referrer@NHS.example>")
    assert gw.import_keys(partner.export()) == [fpr]
    partner.gpg("--import", data=gw.export_public(BOB))
    for compress in ("6", "0"):  # gpg's default (ZLIB) and uncompressed
        cmd = ("--armor", "--trust-model", "always", "-z", compress, "-u", fpr, "-r", BOB, "--sign", "--encrypt")
        plaintext, sig = await gw.decrypt(partner.gpg(*cmd, data=BODY).stdout)
        assert plaintext == BODY
        assert sig is not None and sig.valid and sig.signer_id == fpr
        assert sig.signer_addresses == ("ann.referrer@nhs.example",)


async def test_two_signers(gw: OpenPGPBackend, partner: Partner, scratch: Path) -> None:
    # Two good signatures by two held keys: no single signer to judge ("multiple signers"); with one of them
    # unknown, the unknown one is the problem (gpg: ERRSIG beside GOODSIG; pysequoia lists only the good one).
    ann = partner.generate("Ann Referrer <ann@nhs.example>")
    gw.import_keys(partner.export())
    other = Partner(scratch / "other")
    try:
        bea = other.generate("Bea Referrer <bea@nhs.example>")
        partner.gpg("--import", data=other.gpg("--armor", "--export-secret-keys", bea).stdout)
    finally:
        other.close()
    partner.gpg("--import", data=gw.export_public(BOB))
    cmd = ("--trust-model", "always", "-z", "0", "-u", ann, "-u", bea, "-r", BOB, "--sign", "--encrypt")
    message = partner.gpg(*cmd, data=BODY).stdout
    _, unknown = await gw.decrypt(message)
    assert unknown is not None and not unknown.valid and unknown.problem == "unknown signer"
    assert unknown.signer_id == bea
    gw.import_keys(partner.gpg("--armor", "--export", bea).stdout)
    _, both = await gw.decrypt(message)
    assert both is not None and not both.valid and both.problem == "multiple signers"
    # One of the two signatures damaged (its last byte, inside the signature value): pysequoia lists only the
    # good one; both backends say "bad signature", as gpg's BADSIG beside GOODSIG.
    signed = partner.gpg("-z", "0", "-u", ann, "-u", bea, "--sign", data=BODY).stdout
    text, good_pair = await gw.verify_inline(signed)
    assert text == BODY and good_pair.problem == "multiple signers"
    _, bad = await gw.verify_inline(signed[:-1] + bytes([signed[-1] ^ 0x01]))
    assert not bad.valid and bad.problem == "bad signature"


async def test_unknown_signer(gw: OpenPGPBackend, partner: Partner) -> None:
    fpr = partner.generate("Stranger <stranger@example.org>")  # the gateway never imports this key
    partner.gpg("--import", data=gw.export_public(BOB))
    msg = partner.gpg("--armor", "--trust-model", "always", "-u", fpr, "-r", BOB, "--sign", "--encrypt", data=BODY)
    plaintext, sig = await gw.decrypt(msg.stdout)
    assert plaintext == BODY  # decryption itself was sound (MDC good); the signer is the problem
    assert sig is not None and not sig.valid and sig.problem == "unknown signer"
    assert sig.signer_id == fpr  # the issuer fingerprint from the signature: a hint only, never trusted
    detached = partner.gpg("--armor", "-u", fpr, "--detach-sign", data=BODY).stdout
    result = await gw.verify_detached(BODY, detached)
    assert not result.valid and result.problem == "unknown signer"


async def test_tampered_detached_body_is_bad_signature(gw: OpenPGPBackend, partner: Partner) -> None:
    fpr = partner.generate("Ann Referrer <ann@nhs.example>")
    gw.import_keys(partner.export())
    signature = partner.gpg("--armor", "-u", fpr, "--detach-sign", data=BODY).stdout
    good = await gw.verify_detached(BODY, signature)
    assert good.valid and good.signer_id == fpr
    bad = await gw.verify_detached(BODY.replace(b"synthetic", b"synthetiC"), signature)
    assert not bad.valid and bad.problem == "bad signature" and bad.signer_id is not None


async def test_expired_key(gw: OpenPGPBackend, partner: Partner) -> None:
    # A key made "in 2020" with a 1-day life, and a signature made while it was valid (time frozen with `!`).
    # Verified now, gpg reports EXPKEYSIG (and VALIDSIG, exit 0): the key has expired since.
    fpr = partner.generate("Old Partner <old@partner.example>", expire="1d", faked_time="20200101T000000")
    gw.import_keys(partner.export())
    frozen = "20200101T120000!"
    signature = partner.gpg("--faked-system-time", frozen, "--armor", "-u", fpr, "--detach-sign", data=BODY).stdout
    result = await gw.verify_detached(BODY, signature)
    assert not result.valid and result.problem == "expired key" and result.signer_id == fpr
    (key,) = [k for k in gw.keys() if k.fingerprint == fpr]
    assert key.expires is not None and key.expires.year == 2020 and key.expires.tzinfo is not None


async def test_expired_signature(gw: OpenPGPBackend, partner: Partner) -> None:
    # The key is fine; the signature carried a 1-day expiry and was made "in 2020": gpg reports EXPSIG.
    fpr = partner.generate("Ann Referrer <ann@nhs.example>", expire="never", faked_time="20200101T000000")
    gw.import_keys(partner.export())
    when = ("--faked-system-time", "20200101T120000!", "--default-sig-expire", "1d")
    signature = partner.gpg(*when, "--armor", "-u", fpr, "--detach-sign", data=BODY).stdout
    result = await gw.verify_detached(BODY, signature)
    assert not result.valid and result.problem == "expired key" and result.signer_id == fpr


async def test_expired_inline_signature(gw: OpenPGPBackend, partner: Partner) -> None:
    # The same expired signature inline: uncompressed, compressed and cleartext, "expired key" on both; one
    # tampered whose expiry has not passed stays "bad signature".
    fpr = partner.generate("Ann Referrer <ann@nhs.example>", expire="never", faked_time="20200101T000000")
    gw.import_keys(partner.export())
    when = ("--faked-system-time", "20200101T120000!", "--default-sig-expire", "1d")
    text = b"Referral: synthetic test concern.\n"
    for shape in (("-z", "0", "--sign"), ("--sign",), ("--clearsign",)):
        signed, sig = await gw.verify_inline(partner.gpg(*when, "-u", fpr, *shape, data=text).stdout)
        assert signed == text and not sig.valid and sig.problem == "expired key" and sig.signer_id == fpr, shape
    clear = partner.gpg("--default-sig-expire", "1y", "-u", fpr, "--clearsign", data=text).stdout
    _, bad = await gw.verify_inline(clear.replace(b"synthetic", b"synthetiC"))
    assert not bad.valid and bad.problem == "bad signature"


async def test_expired_signature_inside_encryption(gw: OpenPGPBackend, partner: Partner) -> None:
    # Sign+encrypt, uncompressed (what a partner's gpg sends to the gateway's key, which prefers no
    # compression), the signature carrying a 1-day expiry and made "in 2020": "expired key" on both, as
    # gpg's EXPSIG, and refused (not valid) on both. pysequoia shows only a signature that is not good.
    fpr = partner.generate("Ann Referrer <ann@nhs.example>", expire="never", faked_time="20200101T000000")
    gw.import_keys(partner.export())
    partner.gpg("--import", data=gw.export_public(BOB))
    when = ("--faked-system-time", "20200101T120000!", "--default-sig-expire", "1d")
    cmd = ("--trust-model", "always", "-z", "0", "-u", fpr, "-r", BOB, "--sign", "--encrypt")
    plaintext, sig = await gw.decrypt(partner.gpg(*when, *cmd, data=BODY).stdout)
    assert plaintext == BODY
    assert sig is not None and not sig.valid and sig.problem == "expired key" and sig.signer_id == fpr
    # The same signature made without an expiry is good: the expiry, not the faked clock, is what failed.
    _, fresh = await gw.decrypt(partner.gpg("--faked-system-time", "20200101T120000!", *cmd, data=BODY).stdout)
    assert fresh is not None and fresh.valid and fresh.signer_id == fpr


async def test_tampered_signature_inside_encryption_is_bad_signature(gw: OpenPGPBackend, partner: Partner) -> None:
    # A signature whose value was altered before encryption (its last byte, inside the MPI), with and without
    # an expiry that has not passed: still "bad signature" on both, never turned into acceptance. gpg's
    # --no-literal encrypts the signed packets as they are (one-pass signature, literal, signature).
    fpr = partner.generate("Ann Referrer <ann@nhs.example>")
    gw.import_keys(partner.export())
    partner.gpg("--import", data=gw.export_public(BOB))
    for expiry in ((), ("--default-sig-expire", "1y")):
        signed = partner.gpg(*expiry, "-z", "0", "-u", fpr, "--sign", data=BODY).stdout
        tampered = signed[:-1] + bytes([signed[-1] ^ 0x01])
        cmd = ("--trust-model", "always", "-z", "0", "--no-literal", "-r", BOB, "--encrypt")
        plaintext, good = await gw.decrypt(partner.gpg(*cmd, data=signed).stdout)
        assert plaintext == BODY and good is not None and good.valid  # the same shape, untampered
        _, sig = await gw.decrypt(partner.gpg(*cmd, data=tampered).stdout)
        assert sig is not None and not sig.valid and sig.problem == "bad signature" and sig.signer_id == fpr


async def test_revoked_key(gw: OpenPGPBackend, partner: Partner) -> None:
    fpr = partner.generate("Gone Partner <gone@partner.example>")
    signature = partner.gpg("--armor", "-u", fpr, "--detach-sign", data=BODY).stdout
    certificate = (partner.home / "openpgp-revocs.d" / f"{fpr}.rev").read_bytes().replace(b":-----BEGIN", b"-----BEGIN")
    partner.gpg("--import", data=certificate)
    gw.import_keys(partner.export())
    result = await gw.verify_detached(BODY, signature)
    assert not result.valid and result.problem == "revoked key"


async def test_not_encrypted_to_gateway(gw: OpenPGPBackend, partner: Partner) -> None:
    fpr = partner.generate("Ann Referrer <ann@nhs.example>")
    msg = partner.gpg("--armor", "--trust-model", "always", "-r", fpr, "--encrypt", data=BODY).stdout
    with pytest.raises(DecryptError) as err:
        await gw.decrypt(msg)
    assert err.value.reason == "not encrypted to this gateway's key"


async def test_appended_unencrypted_literal_is_refused(gw: OpenPGPBackend, partner: Partner) -> None:
    # An attacker appends (or prepends) an unencrypted literal packet: gpg decrypts the real part with a good
    # MDC, but its output would carry the injected text. Exactly one PLAINTEXT, no ERROR, or nothing.
    fpr = partner.generate("Ann Referrer <ann@nhs.example>")
    partner.gpg("--import", data=gw.export_public(BOB))
    encrypted = partner.gpg("--trust-model", "always", "-r", BOB, "--encrypt", data=BODY).stdout
    injected = partner.gpg("--store", "-z", "0", data=b"INJECTED unsigned text\n").stdout
    for message in (encrypted + injected, injected + encrypted):
        with pytest.raises(DecryptError):
            await gw.decrypt(message)
    signed_only = partner.gpg("--armor", "-u", fpr, "--sign", data=BODY).stdout
    with pytest.raises(DecryptError) as err:
        await gw.decrypt(signed_only)
    assert err.value.reason == "not encrypted"


async def test_inline_signatures(gw: OpenPGPBackend, partner: Partner) -> None:
    fpr = partner.generate("Ann Referrer <ann@nhs.example>")
    gw.import_keys(partner.export())
    text = b"Referral: synthetic test concern.\nSecond line.\n"
    clear = partner.gpg("-u", fpr, "--clearsign", data=text).stdout
    signed, sig = await gw.verify_inline(b"Some unsigned preamble\n" + clear)
    assert signed.replace(b"\r\n", b"\n") == text and sig.valid and sig.signer_id == fpr
    armoured = partner.gpg("-u", fpr, "--armor", "--sign", data=text).stdout
    signed, sig = await gw.verify_inline(armoured)
    assert signed == text and sig.valid
    second = partner.gpg("-u", fpr, "--clearsign", data=b"Another block\n").stdout
    with pytest.raises(VerifyError):  # two signed blocks cannot be returned as one signed text
        await gw.verify_inline(clear + b"UNSIGNED MIDDLE\n" + second)
    tampered = clear.replace(b"Second line.", b"Second lime.")
    _, bad = await gw.verify_inline(tampered)
    assert not bad.valid and bad.problem == "bad signature"


async def test_invalid_utf8_in_signature_does_not_break_status_parsing(gw: OpenPGPBackend, partner: Partner) -> None:
    # gpg copies the signature's signer-UID subpacket raw into its status output; python-gnupg's reader thread
    # died on invalid UTF-8 (an unhandled thread exception: an error under filterwarnings=error).
    fpr = partner.generate("Ann Referrer <ann@nhs.example>")
    gw.import_keys(partner.export())
    signed = partner.gpg("-u", fpr, "--sender", "ann@nhs.example", "-z", "0", "--sign", data=b"hello\n").stdout
    assert b"ann@nhs.example" in signed
    broken = signed.replace(b"ann@nhs", b"\xff\xfen@nhs", 1)
    _, sig = await gw.verify_inline(broken)
    assert not sig.valid and sig.problem == "bad signature"


async def test_plaintext_limit(scratch: Path, partner: Partner, backend: str) -> None:
    small = make(backend, scratch / "small", max_plaintext=100_000)
    try:
        small.import_keys((AUTOCRYPT / "bob@openpgp.example.sec.asc").read_bytes())
        partner.generate("Stranger <stranger@example.org>")
        partner.gpg("--import", data=small.export_public(BOB))
        big = bytes(3_000_000)  # compresses to a few KB: a small decompression bomb
        for extra in ([], ["--sign"]):  # unsigned (exit 2 alone) and unknown signer (exit 2 "explained")
            msg = partner.gpg("--trust-model", "always", "-r", BOB, *extra, "--encrypt", data=big).stdout
            assert len(msg) < 100_000
            with pytest.raises(DecryptError) as err:
                await small.decrypt(msg)
            assert err.value.reason == "message too large"
    finally:
        small.close()


@pytest.mark.parametrize("algo", ["zlib", "bzip2"])
async def test_compression_bomb(scratch: Path, partner: Partner, backend: str, algo: str) -> None:
    # 256 MiB of zeros, compressed by gpg: under 1 MB on the wire. Neither backend may inflate it in the
    # gateway's process: gpg stops at --max-output; Sequoia's worker hits its memory limit and dies, and
    # only this message is refused. The peak RSS of this process shows nothing was inflated here.
    small = make(backend, scratch / "small", max_plaintext=1_000_000)
    try:
        small.import_keys((AUTOCRYPT / "bob@openpgp.example.sec.asc").read_bytes())
        partner.generate("Stranger <stranger@example.org>")
        partner.gpg("--import", data=small.export_public(BOB))
        cmd = ["gpg", "--homedir", str(partner.home), "--batch", "--trust-model", "always", "-r", BOB]
        cmd += ["--compress-algo", algo, "-z", "9", "--encrypt"]
        with subprocess.Popen(["head", "-c", str(256 * 1024 * 1024), "/dev/zero"], stdout=subprocess.PIPE) as zeros:
            bomb = subprocess.run(cmd, stdin=zeros.stdout, capture_output=True, check=True).stdout
        assert zeros.returncode == 0 and len(bomb) < 1_000_000
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with pytest.raises(DecryptError) as err:
            await small.decrypt(bomb)
        # pysequoia 0.1.35 is built without bzip2: on sequoia that one goes to the gpg fallback, which stops at
        # --max-output as the gnupg backend does (a gpg process of its own: nothing inflated in this one).
        assert err.value.reason == "message too large"
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before < 128 * 1024 * 1024
        # The next message is opened as usual (Sequoia: by a new pool of workers).
        message = partner.gpg("-r", BOB, "--trust-model", "always", "--encrypt", data=BODY).stdout
        plaintext, sig = await small.decrypt(message)
        assert plaintext == BODY and sig is None
    finally:
        small.close()


async def test_encrypt_and_sign_interop_with_gpg(scratch: Path, backend: str) -> None:
    gateway = make(backend, scratch / "gw2", concurrency=1)
    team = Partner(scratch / "team")
    try:
        gw_fpr = gateway.generate_key("Referral Gateway", "Gateway@Example.TEST", expire="1y")
        (info,) = gateway.keys(secret=True)
        assert info.fingerprint == gw_fpr and info.emails == ("gateway@example.test",)
        assert info.expires is not None and info.expires.tzinfo is not None and info.expires > info.created
        team_fpr = team.generate("MASH Team <mash@council.example>")
        gateway.import_keys(team.export())
        team.gpg("--import", data=gateway.export_public(gw_fpr))
        alert = await gateway.encrypt_and_sign(BODY, [team_fpr], gw_fpr)
        assert alert.startswith(b"-----BEGIN PGP MESSAGE-----")
        out = team.gpg("--status-fd", "2", "--decrypt", data=alert)
        status = out.stderr.decode("utf-8", "replace")  # Sequoia's signatures carry a binary salt notation
        assert out.stdout == BODY
        assert "[GNUPG:] DECRYPTION_OKAY" in status and "[GNUPG:] GOODMDC" in status
        # VALIDSIG's last field is the primary key (Sequoia's keys sign with a subkey, gpg's with the primary).
        validsig = next(line for line in status.splitlines() if line.startswith("[GNUPG:] VALIDSIG "))
        assert "[GNUPG:] GOODSIG" in status and validsig.split()[-1] == gw_fpr
        with pytest.raises(CryptoKeyError, match="fingerprint"):  # an address could pick the wrong key
            await gateway.encrypt_and_sign(BODY, ["mash@council.example"], gw_fpr)
        with pytest.raises(CryptoKeyError):
            await gateway.encrypt_and_sign(BODY, [ALICE], gw_fpr)  # a key the gateway does not hold
        with pytest.raises(CryptoKeyError):
            gateway.import_keys(b"not a key")
        with pytest.raises(CryptoKeyError):
            gateway.export_public(ALICE)
        with pytest.raises(CryptoKeyError):
            gateway.generate_key("Evil\nName-Email: x@y", "a@b.example")
    finally:
        gateway.close()
        team.close()


GARBAGE = [
    b"",
    b"not an openpgp message at all\r\n",
    bytes(range(256)),
    b"-----BEGIN PGP MESSAGE-----\n\n-----END PGP MESSAGE-----\n",
    encrypted_part(CLIENT / "pgpmime-combined.eml")[:400],  # truncated armour
    encrypted_part(CLIENT / "pgpmime-combined.eml")[:-80],
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nhello\n",
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
async def test_garbage_raises_only_named_errors(gw: OpenPGPBackend, data: bytes) -> None:
    with pytest.raises(DecryptError):
        await gw.decrypt(data)
    with pytest.raises(VerifyError):
        await gw.verify_inline(data)
    with pytest.raises(VerifyError):
        await gw.verify_detached(BODY, data)


async def test_concurrent_calls(gw: OpenPGPBackend) -> None:
    message = encrypted_part(CLIENT / "pgpmime-combined.eml")
    results = await asyncio.gather(*(gw.decrypt(message) for _ in range(6)))
    assert len({r[0] for r in results}) == 1
    assert all(s is not None and s.valid for _, s in results)
