"""S/MIME decryption in process, with python-cryptography's pkcs7_decrypt_der, for the messages it opens
exactly as `openssl cms -decrypt` does; smime.py runs openssl for everything else.

What cryptography 50 opens (checked against openssl-made messages, tests/test_smime_paths.py): EnvelopedData
with key transport (ktri) by issuer and serial number, RSA PKCS#1 v1.5 (rsaEncryption), content AES-128-CBC or
AES-256-CBC. It refuses RSA-OAEP, AES-192-CBC, 3DES or any other cipher (UnsupportedAlgorithm) and AuthEnvelopedData
(AES-GCM, ChaCha20-Poly1305); it cannot parse a message with any key-agreement (ECDH), KEK, password or
subject-key-identifier recipient, even beside ours, nor BER (indefinite lengths). So `route` reads the outer
DER first and picks the path before anything is decrypted, instead of learning it from cryptography's errors.

The reader here only routes: it decides nothing about security. Whatever it sends in process, cryptography parses
again strictly; whatever it cannot place goes to openssl, which today's reasons come from. No refusal is decided
here, not even "not for us": a failure in process (a tampered key or ciphertext, something cryptography rejects)
and a message not addressed to these exact certificate bytes go to openssl for the verdict, so every refusal keeps
the reason it has always had, and only a message that opens is spared the subprocess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.open.crypto import CryptoKeyError

# DER contents of the object identifiers that matter here (the bytes after the 06 tag and length).
_ENVELOPED = bytes.fromhex("2a864886f70d010703")  # 1.2.840.113549.1.7.3
_AUTH_ENVELOPED = bytes.fromhex("2a864886f70d0109100117")  # 1.2.840.113549.1.9.16.1.23
_RSA = bytes.fromhex("2a864886f70d010101")  # rsaEncryption: PKCS#1 v1.5 key transport
_AES_CBC = {bytes.fromhex("608648016503040102"): "AES-128-CBC", bytes.fromhex("60864801650304012a"): "AES-256-CBC"}
_KNOWN = {  # named in `Route.why`, for tests and the bench; anything else is "content cipher <oid hex>"
    bytes.fromhex("2a864886f70d010107"): "RSAES-OAEP",
    bytes.fromhex("608648016503040116"): "AES-192-CBC",
    bytes.fromhex("2a864886f70d0307"): "3DES",
    bytes.fromhex("2a864886f70d0302"): "RC2",
}
_OTHER_RECIPIENTS = {0xA1: "key agreement (kari)", 0xA2: "KEK (kekri)", 0xA3: "password (pwri)", 0xA4: "other (ori)"}


class _NotDer(Exception):
    """Not strict DER of the expected shape: openssl reads it (it also reads BER), not cryptography."""


@dataclass(frozen=True)
class Route:
    in_process: bool
    why: str  # what decided it: the algorithms in process, else what sends it to openssl
    recipients: frozenset[tuple[bytes, bytes]] = frozenset()  # (issuer Name, serial INTEGER) DER of each ktri


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start, end) of the value at `pos`: definite, minimal lengths only (DER), inside `end`."""
    if pos + 2 > end or data[pos] & 0x1F == 0x1F:  # high tag numbers occur nowhere in these structures
        raise _NotDer
    tag, length, pos = data[pos], data[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > end or data[pos] == 0:  # 0: indefinite length (BER)
            raise _NotDer
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
        if length < 0x80:
            raise _NotDer  # a long form where the short one fits is BER
    if pos + length > end:
        raise _NotDer
    return tag, pos, pos + length


def _items(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The TLVs from `start` to exactly `end`: (tag, value start, value end, TLV start)."""
    found = []
    while start < end:
        tag, value, after = _tlv(data, start, end)
        found.append((tag, value, after, start))
        start = after
    return found


def _expect(item: tuple[int, int, int, int], tag: int) -> tuple[int, int]:
    if item[0] != tag:
        raise _NotDer
    return item[1], item[2]


def route(der: bytes) -> Route:
    """Which path decrypts `der`: in process, or `openssl cms -decrypt` (and why)."""
    try:
        return _route(der)
    except (_NotDer, IndexError, ValueError):  # fewer or more fields than the structure has
        return Route(False, "not DER of an enveloped-data (BER, as NSS writes, or damaged)")


def _route(der: bytes) -> Route:
    [info] = _items(der, 0, len(der))  # nothing, or bytes after it: ValueError
    content_type, explicit = _items(der, *_expect(info, 0x30))
    oid = der[slice(*_expect(content_type, 0x06))]
    if oid == _AUTH_ENVELOPED:
        return Route(False, "authEnveloped-data (AES-GCM or ChaCha20-Poly1305)")
    if oid != _ENVELOPED:
        return Route(False, "not enveloped-data")
    [enveloped] = _items(der, *_expect(explicit, 0xA0))
    fields = _items(der, *_expect(enveloped, 0x30))
    if len(fields) != 3 or fields[1][0] != 0x31:  # version, recipientInfos, encryptedContentInfo; nothing else
        return Route(False, "originator info or unprotected attributes")
    recipients: set[tuple[bytes, bytes]] = set()
    for recipient in _items(der, fields[1][1], fields[1][2]):
        if recipient[0] in _OTHER_RECIPIENTS:
            return Route(False, f"a {_OTHER_RECIPIENTS[recipient[0]]} recipient")
        version, rid, algorithm, key = _items(der, *_expect(recipient, 0x30))
        if rid[0] != 0x30:
            return Route(False, "a recipient named by subject key identifier")
        issuer, serial = _items(der, rid[1], rid[2])
        for item, tag in ((version, 0x02), (issuer, 0x30), (serial, 0x02), (key, 0x04)):
            _expect(item, tag)
        algorithm_oid = der[slice(*_expect(_items(der, *_expect(algorithm, 0x30))[0], 0x06))]
        if algorithm_oid != _RSA:
            return Route(False, f"key transport {_KNOWN.get(algorithm_oid, algorithm_oid.hex())}")
        recipients.add((der[issuer[3] : issuer[2]], der[serial[3] : serial[2]]))
    content = _items(der, *_expect(fields[2], 0x30))
    cipher = _items(der, *_expect(content[1], 0x30))
    cipher_oid = der[slice(*_expect(cipher[0], 0x06))]
    if cipher_oid not in _AES_CBC:
        return Route(False, f"content cipher {_KNOWN.get(cipher_oid, cipher_oid.hex())}")
    if len(cipher) != 2 or cipher[1][0] != 0x04 or cipher[1][2] - cipher[1][1] != 16:
        return Route(False, "an unusual IV")
    if len(content) != 3 or content[2][0] != 0x80:  # [0] IMPLICIT OCTET STRING, primitive (DER)
        return Route(False, "no encrypted content, or in BER chunks")
    if not recipients:
        return Route(False, "no recipients")
    return Route(True, f"RSA PKCS#1 v1.5, {_AES_CBC[cipher_oid]}", frozenset(recipients))


def recipient_id(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """(issuer Name, serial INTEGER) DER as in the certificate, to compare with `Route.recipients`."""
    tbs = cert.tbs_certificate_bytes
    [whole] = _items(tbs, 0, len(tbs))
    fields = _items(tbs, whole[1], whole[2])
    fields = fields[1:] if fields[0][0] == 0xA0 else fields  # [0] version
    serial, issuer = fields[0], fields[2]  # serialNumber, signature algorithm, issuer
    return tbs[issuer[3] : issuer[2]], tbs[serial[3] : serial[2]]


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[int, ...]  # the files' identity and mtime: a replaced file is read again
    key: rsa.RSAPrivateKey | None  # None: not RSA, so openssl decides
    cert: x509.Certificate
    rid: tuple[bytes, bytes]


def _stamp(*paths: Path) -> tuple[int, ...]:
    stats = [os.stat(p) for p in paths]
    return tuple(n for s in stats for n in (s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size))


class InProcess:
    """Keys read once per file version (openssl reads them on every call; so does this, up to a stat)."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, Path], _Loaded] = {}

    def _load(self, key_path: Path, cert_path: Path) -> _Loaded:
        try:
            stamp = _stamp(key_path, cert_path)
            cached = self._loaded.get((key_path, cert_path))
            if cached is not None and cached.stamp == stamp:
                return cached
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):  # the words openssl's "for loading" failure gets in smime.py
            raise CryptoKeyError("S/MIME key or certificate is missing or unreadable") from None
        loaded = _Loaded(stamp, key if isinstance(key, rsa.RSAPrivateKey) else None, cert, recipient_id(cert))
        self._loaded[(key_path, cert_path)] = loaded
        return loaded

    def decrypt(self, der: bytes, key_path: Path, cert_path: Path) -> bytes | None:
        """The plaintext, or None: openssl decides (and words the refusal, if it refuses)."""
        plan = route(der)
        if not plan.in_process:
            return None
        loaded = self._load(key_path, cert_path)
        # Not addressed to us by these exact bytes: openssl says so ("no matching recipient"), or that
        # the message is unreadable (it decodes the names this reader only steps over), or, comparing
        # names in their canonical form, that it is ours after all. Fuzzed messages showed the first two.
        if loaded.key is None or loaded.rid not in plan.recipients:
            return None
        try:
            # No options: cryptography returns the content as it is, as `openssl cms -decrypt -binary` does.
            return pkcs7.pkcs7_decrypt_der(der, loaded.cert, loaded.key, [])
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # A tampered key or ciphertext (bad padding; with PKCS#1 v1.5 implicit rejection, a random key
            # of the wrong size), or a shape the router let through that cryptography refuses: openssl
            # says which, in today's words.
            return None
