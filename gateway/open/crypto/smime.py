"""S/MIME (RFC 8551) at the crypto edge: decrypt, verify, sign+encrypt, through `openssl cms`.

python-cryptography cannot verify CMS signatures, so each operation runs openssl as an asyncio
subprocess (the loop never blocks), at most `concurrency` at once. Decryption runs in process where
cryptography opens the message as openssl would (smime_inprocess: RSA PKCS#1 v1.5 and AES-CBC, what most
clients send); openssl decrypts the rest and words every failure. Data goes through pipes; the only files
are those `openssl cms -verify` insists on (detached content, signer certificate), in a fresh mkdtemp()
directory (mode 0700) removed afterwards. The output of a failed run is always discarded:
openssl writes the unauthenticated plaintext of a tampered AES-GCM message before failing.

Callers cut the parts: accept `application/pkcs7-mime` (openssl cms) and `application/x-pkcs7-mime` (openssl
smime), smime-type enveloped-data, authEnveloped-data (AES-GCM) or signed-data; `application/(x-)pkcs7-signature`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.open.crypto import CryptoError, CryptoKeyError, DecryptError, Signature, VerifyError
from gateway.open.crypto.smime_inprocess import InProcess

_E = TypeVar("_E", bound=x509.ExtensionType)
_EMAIL_PROTECTION = ExtendedKeyUsageOID.EMAIL_PROTECTION
_TIMEOUT = 60.0  # seconds; openssl needs milliseconds, so this only catches a hung process
_NOT_FOR_US = "not encrypted for this gateway's certificate"

# `openssl cms -verify` stderr -> Signature.problem. Checked in order; the first match wins.
_SIGNATURE_PROBLEMS: tuple[tuple[str, str], ...] = (
    # The chain is checked before the signature: "certificate verify error: Verify error: <why>".
    ("certificate has expired", "expired certificate"),
    ("certificate is not yet valid", "certificate not yet valid"),
    ("unsupported certificate purpose", "wrong certificate purpose"),
    ("certificate verify error", "untrusted certificate"),  # any other chain error: no path to an anchor
    # ^ chain problems (_CHAIN_PROBLEMS): the signature may still be good; checked again with -noverify.
    ("signer certificate not found", "no signer certificate"),
    ("invalid digest", "unsupported signature algorithm"),  # e.g. Ed25519 SignedData on OpenSSL 3.0
    ("unsupported", "unsupported signature algorithm"),
    ("content verify error", "bad signature"),  # the content's digest does not match
    (":verification failure", "bad signature"),  # the signature over the signed attributes fails
    ("digest failure", "bad signature"),
    ("signature failure", "bad signature"),
)
_CHAIN_PROBLEMS = frozenset(problem for _, problem in _SIGNATURE_PROBLEMS[:4])


@dataclass(frozen=True)
class CertInfo:
    subject: str  # RFC 4514
    emails: tuple[str, ...]  # lower-case: SAN rfc822Name, then subject emailAddress
    fingerprint: str  # SHA-256 of the DER certificate, upper hex, no colons
    not_before: datetime  # aware, UTC
    not_after: datetime


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """PEM (one or a bundle) or DER; ValueError if unreadable."""
    return x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else [x509.load_der_x509_certificate(data)]


def _ext(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _info(cert: x509.Certificate) -> CertInfo:
    san = _ext(cert, x509.SubjectAlternativeName)
    emails = san.get_values_for_type(x509.RFC822Name) if san else []
    emails += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        emails=tuple(dict.fromkeys(e.strip().lower() for e in emails)),  # de-duplicated, order kept
        fingerprint=cert.fingerprint(hashes.SHA256()).hex().upper(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def certificate_info(cert: x509.Certificate) -> CertInfo:
    """What the gateway shows of a parsed certificate (SMime.certificate_info: of its bytes). cryptography
    reads extensions only when asked, so a malformed one fails here: CryptoKeyError, as for unreadable bytes."""
    try:
        return _info(cert)
    except ValueError:
        raise CryptoKeyError("unreadable certificate") from None


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """Whether it may issue certificates (BasicConstraints CA): a partner's anchor rather than a pin."""
    constraints = _ext(cert, x509.BasicConstraints)
    return constraints is not None and constraints.ca


def _usable_for_signing(cert: x509.Certificate) -> bool:
    """What `-purpose smimesign` would check, for pinned certificates verified with -noverify."""
    usage, eku = _ext(cert, x509.KeyUsage), _ext(cert, x509.ExtendedKeyUsage)
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        return False
    return eku is None or _EMAIL_PROTECTION in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku


def _read_certificates(paths: Sequence[Path]) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for path in paths:
        try:
            certs += load_certificates(path.read_bytes())
        except (OSError, ValueError):
            raise CryptoKeyError(f"certificate {path.name} is missing or unreadable") from None
    return certs


@asynccontextmanager
async def _private_dir() -> AsyncIterator[Path]:
    # mkdtemp makes the directory 0700 whatever the umask: the content in it is never readable by others.
    path = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="smime-"))
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


class SMime:
    def __init__(
        self, key_pem: Path, cert_pem: Path, *, openssl: str = "openssl", concurrency: int = 2, in_process: bool = True
    ) -> None:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
        except (OSError, ValueError):
            raise CryptoKeyError(f"{cert_pem}: S/MIME certificate is missing or unreadable") from None
        try:
            key = serialization.load_pem_private_key(key_pem.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):  # TypeError: the key is password-protected
            raise CryptoKeyError(f"{key_pem}: S/MIME key is missing, unreadable or password-protected") from None
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise CryptoKeyError(f"{key_pem}: S/MIME key does not match its certificate {cert_pem}")
        # An expired certificate is not refused here: mail encrypted to it still decrypts, and
        # refusing would stop alerts going out. `info` lets config checks warn well before expiry.
        self.info = _info(cert)
        self._key, self._cert, self._openssl = key_pem, cert_pem, openssl
        self._slots = asyncio.Semaphore(concurrency)
        # in_process=False: openssl for every message (the tests compare the two paths; the bench, too).
        self._in_process = InProcess() if in_process else None
        # The gateway's replaced keys (`keys rotate smime`): (key, cert, until), tried when mail is
        # not for the current certificate, each until its overlap ends. `now` is the gateway's clock.
        self.previous: list[tuple[Path, Path, datetime]] = []
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def _run(self, *args: str, stdin: bytes) -> tuple[int, bytes, str]:
        async with self._slots:
            try:
                proc = await asyncio.create_subprocess_exec(
                    self._openssl, *args, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
            except OSError:
                raise CryptoError("openssl is not installed or cannot run") from None
            try:
                out, err = await asyncio.wait_for(proc.communicate(stdin), _TIMEOUT)
            except BaseException:
                # Timed out or cancelled (the client hung up): do not leave openssl running.
                with suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
                raise
        return proc.returncode or 0, out, err.decode("utf-8", "replace")

    async def decrypt(self, der: bytes) -> bytes:
        try:
            return await self._decrypt(der, self._key, self._cert)
        except DecryptError as exc:
            if exc.reason != _NOT_FOR_US:
                raise
            for key, cert, until in self.previous:
                if self.now() < until:
                    with suppress(DecryptError):
                        return await self._decrypt(der, key, cert)
            raise

    async def _decrypt(self, der: bytes, key: Path, cert: Path) -> bytes:
        if self._in_process is not None:
            async with self._slots:  # the same bound as openssl's: as many plaintexts in memory at once
                opened = await asyncio.to_thread(self._in_process.decrypt, der, key, cert)
            if opened is not None:
                return opened
        # -recip matters: without it openssl tries the key on every recipient and, by design
        # (Bleichenbacher countermeasure), "decrypts" with a random key, giving garbage and rc 4.
        args = ("cms", "-decrypt", "-binary", "-inform", "DER", "-inkey", str(key), "-recip", str(cert))
        try:
            rc, out, err = await self._run(*args, stdin=der)
        except TimeoutError:
            raise DecryptError("timed out") from None
        if rc == 0:
            return out
        if "for loading" in err:  # "Could not open file or uri for loading private key ..."
            raise CryptoKeyError("S/MIME key or certificate is missing or unreadable")
        if "unknown cipher" in err or "unsupported" in err or "cipher initialisation error" in err:
            raise DecryptError("unsupported cipher")  # ChaCha20-Poly1305 (RFC 9216), RC2 (legacy provider)
        if "content type not enveloped data" in err:
            raise DecryptError("not an encrypted S/MIME message")
        if "no matching recipient" in err or "Error decrypting CMS using private key" in err:
            raise DecryptError(_NOT_FOR_US)
        if "Error reading SMIME Content Info" in err:
            raise DecryptError("unreadable: damaged or not S/MIME")
        # "bad decrypt" (CBC padding; also a tampered RSA-OAEP key, which gives a random key) or a
        # failed AES-GCM tag ("Error decrypting CMS structure" alone).
        raise DecryptError("damaged or altered")

    async def verify_detached(self, content: bytes, signature_der: bytes, anchors: Path | None,
                              pinned: Sequence[Path] = (), at: datetime | None = None) -> Signature:  # fmt: skip
        async with _private_dir() as tmp:
            await asyncio.to_thread(_write_private, tmp / "content", content)
            _, sig = await self._verify(tmp, signature_der, ("-content", str(tmp / "content")), anchors, pinned, at)
            return sig

    async def verify_opaque(
        self, signed_der: bytes, anchors: Path | None, pinned: Sequence[Path] = (), at: datetime | None = None
    ) -> tuple[bytes, Signature]:
        """Returns the content whenever the signature itself is cryptographically good (also when the
        signer is not trusted, so a person can look at it in quarantine), else b"". Trust it only if valid."""
        async with _private_dir() as tmp:
            return await self._verify(tmp, signed_der, (), anchors, pinned, at)

    async def _verify(self, tmp: Path, der: bytes, extra: tuple[str, ...], anchors: Path | None,
                      pinned: Sequence[Path], at: datetime | None) -> tuple[bytes, Signature]:  # fmt: skip
        signer = tmp / "signer.pem"
        # -no-CApath/-no-CAstore: with only -CAfile, openssl *also* trusts the system CA directory
        # (/etc/ssl/certs or $SSL_CERT_DIR); partners must chain to our anchors and nothing else.
        base = ("cms", "-verify", "-binary", "-inform", "DER", *extra, "-signer", str(signer))
        base += ("-no-CApath", "-no-CAstore")
        first: str | None = None
        try:
            if anchors is not None:
                when = ("-attime", str(int(at.timestamp()))) if at is not None else ()
                chain = ("-CAfile", str(anchors), "-purpose", "smimesign", *when)
                rc, out, err = await self._run(*base, *chain, stdin=der)
                if rc == 0:
                    return out, _signature(await _read_signer(signer), True, None)
                first = _classify(err)
                if first not in _CHAIN_PROBLEMS:
                    return b"", Signature(kind="smime", valid=False, signer_id=None, problem=first)
            # The chain failed (or there are no anchors): check the signature alone, then pins.
            rc, out, err = await self._run(*base, "-no-CAfile", "-noverify", stdin=der)
        except TimeoutError:
            raise VerifyError("timed out") from None
        if rc != 0:
            return b"", Signature(kind="smime", valid=False, signer_id=None, problem=_classify(err))
        cert = await _read_signer(signer)
        if pinned:
            fingerprint = _info(cert).fingerprint
            pins = {_info(c).fingerprint for c in await asyncio.to_thread(_read_certificates, pinned)}
            if fingerprint in pins:
                now = at or datetime.now(UTC)
                if now > cert.not_valid_after_utc:
                    first = "expired certificate"
                elif now < cert.not_valid_before_utc:
                    first = "certificate not yet valid"
                elif not _usable_for_signing(cert):
                    first = "wrong certificate purpose"
                else:
                    return out, _signature(cert, True, None)
        return out, _signature(cert, False, first or "untrusted certificate")

    async def sign_and_encrypt(self, entity: bytes, recipient_certs: Sequence[Path]) -> bytes:
        """Sign (multipart/signed, detached, so any client shows it) then envelope with AES-256-CBC,
        which every S/MIME client reads (GCM is not yet universal). Recipients: PEM certificates."""
        if not recipient_certs:
            raise ValueError("no recipient certificates")
        await asyncio.to_thread(_read_certificates, recipient_certs)  # a clear error for a bad path
        sign = ("cms", "-sign", "-binary", "-md", "sha256", "-outform", "DER", "-signer", str(self._cert))
        try:
            rc, signature, _ = await self._run(*sign, "-inkey", str(self._key), stdin=entity)
            if rc != 0:
                raise CryptoKeyError("signing with the gateway's S/MIME key failed")
            boundary = "----=_smime_" + secrets.token_hex(16)
            while ("--" + boundary).encode() in entity:  # cannot happen in practice, but must not
                boundary = "----=_smime_" + secrets.token_hex(16)
            signed = b"".join((
                b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;\r\n',
                f' boundary="{boundary}"\r\n\r\nThis is an S/MIME signed message\r\n\r\n--{boundary}\r\n'.encode(),
                entity,  # signed as is: the CRLF before the next delimiter belongs to the delimiter
                f"\r\n--{boundary}\r\n".encode(),
                b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n",
                b"Content-Transfer-Encoding: base64\r\n",
                b"Content-Disposition: attachment; filename=smime.p7s\r\n\r\n",
                _base64_lines(signature),
                f"--{boundary}--\r\n".encode(),
            ))  # fmt: skip
            encrypt = ("cms", "-encrypt", "-binary", "-aes256", "-outform", "DER", *map(str, recipient_certs))
            rc, enveloped, _ = await self._run(*encrypt, stdin=signed)
        except TimeoutError:
            raise CryptoError("timed out") from None
        if rc != 0:
            raise CryptoKeyError("encrypting to the recipient certificates failed")
        return (
            b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=smime.p7m\r\n\r\n" + _base64_lines(enveloped)
        )

    @staticmethod
    def certificate_info(pem_or_der: bytes) -> CertInfo:
        try:
            return _info(load_certificates(pem_or_der)[0])
        except ValueError:
            raise CryptoKeyError("unreadable certificate") from None


def _classify(stderr: str) -> str:
    for needle, problem in _SIGNATURE_PROBLEMS:
        if needle in stderr:
            return problem
    # Not a SignedData at all (garbage, truncated, enveloped data): nothing to report a signer for.
    raise VerifyError("unreadable S/MIME signature")


async def _read_signer(path: Path) -> x509.Certificate:
    return (await asyncio.to_thread(_read_certificates, [path]))[0]  # of several signers (all checked): the first


def _signature(cert: x509.Certificate, valid: bool, problem: str | None) -> Signature:
    info = _info(cert)
    return Signature("smime", valid, info.fingerprint, info.emails, problem)


def _base64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")  # 76-character lines (RFC 2045)


_SIGN_AND_ENCRYPT_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)  # fmt: skip


def make_development_identity(directory: Path, common_name: str, email: str, days: int = 825) -> tuple[Path, Path]:
    """A self-signed identity for `referral-gateway keys init` (production: a CA-issued one). RSA-3072,
    not EC: RSA key transport is what every S/MIME client can encrypt to."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path = directory / "smime-key.pem", directory / "smime-cert.pem"
    if key_path.exists() or cert_path.exists():  # checked first so a half-made pair cannot result
        raise CryptoKeyError("an S/MIME identity already exists there; not replacing it")
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.EMAIL_ADDRESS, email)
    ])  # fmt: skip
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate small clock skew at the reader
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SIGN_AND_ENCRYPT_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([_EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # O_EXCL with mode 0600: never overwrites a key, and the key is never readable by others.
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        _write_private(key_path, pem)
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))  # (0600 too: harmless)
    except FileExistsError:
        raise CryptoKeyError("an S/MIME identity already exists there; not replacing it") from None
    return key_path, cert_path
