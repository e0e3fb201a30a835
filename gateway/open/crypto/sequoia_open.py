"""Opening incoming OpenPGP with pysequoia, in a worker process (gateway.open.crypto.sequoia runs the pool).

Why a process: pysequoia holds the GIL while it decrypts, and reads the whole plaintext into memory with no
limit, so a compression bomb (a few KB of bzip2 that inflate to gigabytes) would exhaust the gateway's
memory. In a worker, RLIMIT_DATA bounds it: the allocation fails, the worker dies, the pool reports it,
and the message is refused as "message too large".

pysequoia's own error text is never passed on (it can hold paths and sender-chosen bytes): every failure is
mapped here to the reason strings of the gnupg backend. The text is only compared with known phrases.

Where pysequoia cannot decide, the worker says so (`Opened.fallback`, with the reason counted) and the
caller hands that one message to gpg (gateway.open.crypto.gpg_fallback); a message pysequoia decides (a bad
signature, an unknown signer, no integrity protection) is never retried there; only the reason for a bad
signature is asked of gpg (see the last point below).

Where pysequoia differs from gpg, and what is done about it:
- Given a `store`, pysequoia's decrypt checks the message structure and fails the whole decryption unless a
  signature is good ("no valid signatures found") and unless the layers are exactly encryption then
  signatures ("Unexpected message structure", also for an unsigned or a compressed signed message). So it
  is decrypted with a recording store; on those errors the signer is classified from what the store was
  asked and held, and the message is decrypted again without a store for the plaintext.
- A signature inside compressed data inside encryption (gpg's default when signing and encrypting, unless
  the gateway's key prefers Uncompressed) cannot be checked by pysequoia 0.1.35 at all: fallback
  "compressed signature".
- pysequoia 0.1.35 is built without bzip2, and it cannot parse some messages gpg reads ("Malformed
  Message"): fallback "unreadable structure". A truncated or tampered message is decided here.
- valid_sigs lists only good signatures: a signer whose key the store held but who is not among them made
  a bad signature ("bad signature", as gpg's BADSIG beside a GOODSIG); a second, bad signature by the same
  key as a good one is not seen.
- A signature past its own expiry (gpg's EXPSIG) is only "not good" to pysequoia. Inline, its packet is
  read here (verify_inline) and the refusal is worded "expired key"; decrypt shows no signature packet and
  hands back no decrypted packets, so there it stays "bad signature" and the caller
  (gateway.open.crypto.sequoia) asks gpg for the reason of that refusal only.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import resource
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ["RUST_LIB_BACKTRACE"] = "0"  # anyhow's backtraces: slow, and their text holds paths
import pysequoia as sq
from pysequoia.packet import PacketPile, Tag

from gateway.open.crypto.pgp_backend import emails
from gateway.open.crypto.sequoia_keys import KeyFiles, key_ids

_ENCRYPTED = (Tag.SEIP, Tag.AED)
_ESK = (Tag.PKESK, Tag.SKESK)
_SIGNED = (Tag.Literal, Tag.Signature, Tag.OnePassSig, Tag.CompressedData)
_NO_GOOD = "no valid signatures found"
_STRUCTURE = "Unexpected message structure"
_NOT_OURS = "No key to decrypt message"
_MALFORMED = "Malformed Message"  # not "Malformed packet" (truncated, tampered): bzip2, or a structure it lacks
_ARMOUR = re.compile(rb"-----BEGIN PGP (MESSAGE|SIGNATURE)-----\r?\n(.*?)-----END PGP \1-----", re.DOTALL)
_SIGNATURE_BLOCK = re.compile(rb"-----BEGIN PGP SIGNATURE-----\r?\n.*?-----END PGP SIGNATURE-----", re.DOTALL)
_CLEAR = re.compile(
    rb"-----BEGIN PGP SIGNED MESSAGE-----\r?\n(?:[^\r\n]+\r?\n)*\r?\n(.*?)\r?\n-----BEGIN PGP SIGNATURE", re.DOTALL
)


@dataclass(frozen=True)
class SigResult:
    """A Signature's fields, plain (picklable) across the process boundary."""

    valid: bool
    signer_id: str | None
    addresses: tuple[str, ...] = ()
    problem: str | None = None


@dataclass(frozen=True)
class Opened:
    """`reason` set: refused, and nothing else is set (no partial plaintext leaves the worker)."""

    reason: str | None = None
    plaintext: bytes = b""
    signature: SigResult | None = None
    key: str | None = None  # the gateway key that decrypted it (retired keys are refused by the caller)
    fallback: str | None = None  # set (alone): pysequoia cannot decide; the reason the caller counts


COMPRESSED = Opened(fallback="compressed signature")
UNREADABLE = Opened(fallback="unreadable structure")


class _Keys:
    def __init__(self, home: Path) -> None:
        files = KeyFiles(home)
        self.stamp = files.stamp()
        self.secrets = files.secrets()
        self.certs = files.certs()
        self.index = {i: c for c in self.certs.values() for i in key_ids(c)}
        # Made once per load of the keys, not per message; a key that cannot decrypt (no encryption
        # subkey, or a passphrase) is left out.
        self.decryptors = [(fpr, d) for fpr, tsk in self.secrets.items() if (d := _decryptor(tsk)) is not None]


def _decryptor(tsk: sq.Tsk) -> sq.PyDecryptor | None:
    try:
        return tsk.decryptor()
    except Exception:  # noqa: BLE001 - pysequoia's text is not ours
        return None


_loaded: dict[Path, _Keys] = {}


def init_worker(data_limit: int) -> None:
    """Pool initializer: bound this process's heap. Above what the interpreter already uses, so the limit
    is on what one message may take."""
    os.environ["RUST_BACKTRACE"] = "0"  # an allocation failure aborts: one line on stderr, not a backtrace
    used = _vm_data()
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    wanted = used + data_limit
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (wanted, hard))


def _vm_data() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


def _keys(home: Path, stamp: tuple[int, ...]) -> _Keys:
    keys = _loaded.get(home)
    if keys is None or keys.stamp != stamp:
        keys = _loaded[home] = _Keys(home)
    return keys


class _Store:
    """pysequoia's certificate look-up, recording what it was asked for."""

    def __init__(self, keys: _Keys) -> None:
        self.keys = keys
        self.asked: list[str] = []

    def __call__(self, ids: list[str]) -> list[sq.Cert]:
        self.asked += [str(i).lower() for i in ids]
        found = {self.keys.index[i].fingerprint: self.keys.index[i] for i in self.asked if i in self.keys.index}
        return list(found.values())


def _signer(keys: _Keys, cert: sq.Cert, problem: str | None) -> SigResult:
    addresses = emails([str(u) for u in cert.user_ids])
    if problem is None and cert.is_revoked:
        problem = "revoked key"
    if problem is None and (expires := cert.expiration) is not None and expires <= datetime.now(UTC):
        problem = "expired key"  # as gpg's EXPKEYSIG: the key has expired since it signed
    return SigResult(problem is None, cert.fingerprint.upper(), addresses, problem)


def classify(keys: _Keys, asked: list[str], valid: list[Any], sig_expired: bool = False) -> SigResult:
    """One Signature for what the store was asked (each signature's issuer) and what verified."""
    unknown = [i for i in asked if i not in keys.index]
    if unknown:
        return SigResult(False, unknown[0].upper(), (), "unknown signer")
    good = {str(v.certificate).upper() for v in valid}
    # By signer, not by id asked: the store may be asked for one signature's key id and fingerprint both.
    # So a bad signature beside a good one by the same key is not seen (gpg would say BADSIG).
    held = list({keys.index[i].fingerprint.upper(): keys.index[i] for i in asked}.values())
    if not held:
        return SigResult(False, None, (), "unverifiable signature")
    bad = [c for c in held if c.fingerprint.upper() not in good]
    if bad:
        problem = "expired key" if sig_expired else None
        result = _signer(keys, bad[0], problem)
        return result if not result.valid else SigResult(False, result.signer_id, result.addresses, "bad signature")
    if len(held) > 1:
        return SigResult(False, None, (), "multiple signers")
    return _signer(keys, held[0], None)


def _text(error: BaseException) -> str:
    return str(error)


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armour_intact(data: bytes) -> bool:
    """Whether every armoured block's CRC-24 (RFC 4880 6.1) matches. Sequoia ignores the checksum, as RFC 9580
    allows; gpg refuses a block whose checksum fails (NODATA), and so does this backend."""
    for match in _ARMOUR.finditer(data):
        lines = match.group(2).replace(b"\r", b"").split(b"\n")
        try:
            blank = lines.index(b"")
        except ValueError:
            return False
        body = [line.strip() for line in lines[blank + 1 :] if line.strip()]
        checksum = [line for line in body if line.startswith(b"=")]
        payload = b"".join(line for line in body if not line.startswith(b"="))
        try:
            decoded = base64.b64decode(payload, validate=True)
            if checksum and int.from_bytes(base64.b64decode(checksum[0][1:], validate=True), "big") != _crc24(decoded):
                return False
        except (binascii.Error, ValueError):
            return False
    return True


def _cleartext(data: bytes) -> bytes:
    """The text of a cleartext-signed message, dash-escaping undone (RFC 4880 7.1): pysequoia gives no text
    when the signature is bad, and gpg does."""
    match = _CLEAR.search(data)
    if match is None:
        return b""
    lines = match.group(1).split(b"\n")
    return b"\n".join(line[2:] if line.startswith(b"- ") else line for line in lines)


def decrypt(home: Path, stamp: tuple[int, ...], data: bytes, max_plaintext: int) -> Opened:
    keys = _keys(home, stamp)
    if not armour_intact(data):
        return Opened("damaged or altered")
    try:
        packets = [p.tag for p in PacketPile.from_bytes(data)]
    except Exception:  # noqa: BLE001 - pysequoia raises bare RuntimeError; a damaged or foreign message
        looks_pgp = b"-----BEGIN PGP MESSAGE" in data or (bool(data) and data[0] & 0x80 != 0)
        return Opened("damaged or altered" if looks_pgp else "not an OpenPGP message")
    if Tag.SED in packets:
        return Opened("no integrity protection")
    if not any(t in _ENCRYPTED or t in _ESK for t in packets):
        return Opened("not encrypted" if any(t in _SIGNED for t in packets) else "not an OpenPGP message")
    body = [t for t in packets if t != Tag.Marker]
    # Session keys, then exactly one encrypted container, then nothing: anything else (an unencrypted
    # literal packet before or after it) would mix unencrypted text into the output.
    if body[-1] not in _ENCRYPTED or any(t not in _ESK for t in body[:-1]):
        return Opened("damaged or altered")
    if Tag.PKESK not in body:
        return Opened("not encrypted to this gateway's key")  # a password (SKESK) only
    for fpr, decryptor in keys.decryptors:
        store = _Store(keys)
        try:
            result = sq.decrypt(data, decryptor=decryptor, store=store)
        except Exception as exc:  # noqa: BLE001 - mapped to our reasons below, its text never passed on
            text = _text(exc)
            if _NOT_OURS in text:
                continue
            if _MALFORMED in text:
                return UNREADABLE
            if _NO_GOOD not in text and _STRUCTURE not in text:
                return Opened("damaged or altered")
            try:
                again = sq.decrypt(data, decryptor=decryptor)
            except Exception as second:  # noqa: BLE001
                return UNREADABLE if _MALFORMED in _text(second) else Opened("damaged or altered")
            plaintext = again.bytes or b""
            if not store.asked:
                signature = None  # unsigned: pysequoia reports that as a structure error
            elif _STRUCTURE in text and all(i in keys.index for i in store.asked):
                return COMPRESSED  # signed by keys we hold, in a structure pysequoia cannot check: see above
            else:
                signature = classify(keys, store.asked, [])
            return _bounded(plaintext, signature, fpr, max_plaintext)
        return _bounded(result.bytes or b"", classify(keys, store.asked, result.valid_sigs), fpr, max_plaintext)
    return Opened("not encrypted to this gateway's key")


def _bounded(plaintext: bytes, signature: SigResult | None, key: str, max_plaintext: int) -> Opened:
    if len(plaintext) > max_plaintext:
        return Opened("message too large")
    return Opened(None, plaintext, signature, key)


def verify_inline(home: Path, stamp: tuple[int, ...], data: bytes, max_plaintext: int) -> Opened:
    keys = _keys(home, stamp)
    if data.count(b"-----BEGIN PGP SIGNATURE") + data.count(b"-----BEGIN PGP MESSAGE") > 1 or not armour_intact(data):
        # Several signed blocks (or signed and unsigned ones): they cannot be returned as one signed text.
        return Opened("unreadable signature")
    clear = b"-----BEGIN PGP SIGNED MESSAGE-----" in data
    pile: list[Any] = []
    if not clear:
        try:
            pile = list(PacketPile.from_bytes(data))
        except Exception:  # noqa: BLE001
            return Opened("unreadable signature")
        packets = [p.tag for p in pile]
        if any(t in _ENCRYPTED or t in _ESK for t in packets):
            return Opened("encrypted, not inline-signed")
        if Tag.CompressedData in packets and Tag.Literal not in packets:
            return UNREADABLE  # compressed data PacketPile cannot open (bzip2): gpg can
        if packets.count(Tag.Literal) != 1:  # PacketPile lists what compressed data holds, too
            return Opened("unreadable signature")
    store = _Store(keys)
    try:
        result = sq.verify(bytes=data, store=store)
        plaintext, valid = result.bytes or b"", result.valid_sigs
    except Exception as exc:  # noqa: BLE001 - mapped to our reasons, its text never passed on
        if _MALFORMED in _text(exc):
            return UNREADABLE
        if _NO_GOOD not in _text(exc) or not store.asked:
            return Opened("unreadable signature")
        try:
            plaintext, valid = (_cleartext(data) if clear else sq.decrypt(data, passwords=["-"]).bytes or b""), []
        except Exception:  # noqa: BLE001
            return Opened("unreadable signature")
    if clear and plaintext and not plaintext.endswith(b"\n"):
        plaintext += b"\n"  # gpg prints the cleartext with its last line ending; Sequoia drops it
    if len(plaintext) > max_plaintext:
        return Opened("message too large")
    expired = _expired([p for p in pile if p.tag == Tag.Signature] if not clear else _clear_signatures(data))
    return Opened(None, plaintext, classify(keys, store.asked, valid, sig_expired=expired))


def _clear_signatures(data: bytes) -> list[Any]:
    """The signature packets of a cleartext-signed message's armoured block (none if it cannot be read)."""
    match = _SIGNATURE_BLOCK.search(data)
    try:
        return list(PacketPile.from_bytes(match.group(0))) if match is not None else []
    except Exception:  # noqa: BLE001 - unreadable: no expiry to report, the refusal stays "bad signature"
        return []


def _expired(signatures: list[Any]) -> bool:
    """Whether the one signature has passed its own expiry (RFC 9580 5.2.3.18), as gpg's EXPSIG. pysequoia's
    verify says only "not good" for it; read from the packet it was given. Only the reason of a refusal
    follows from this (classify uses it for a signature that did not verify); with several signatures it is
    not told which one expired, so it says nothing."""
    if len(signatures) != 1:
        return False
    expires = signatures[0].signature_expiration_time
    return expires is not None and expires <= datetime.now(UTC)
