"""Unwrap: peel the encryption and signature layers off a stored message, byte-exact.

Walks what real clients send (RFC 3156 PGP/MIME in both shapes, inline armour, RFC 8551 S/MIME
enveloped / authEnveloped / signed-data / multipart/signed, in any nesting order) and returns the
innermost entity plus what was found on the way: was it encrypted, who signed which layer.
Trust is not decided here (see gateway.open.policy); every structural problem is a `MimeError` or a
`CryptoError` with a reason safe to show, so the caller quarantines instead of crashing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from gateway.open.crypto import CryptoError, DecryptError, Signature, VerifyError
from gateway.open.mimebytes import MAX_DEPTH, Entity, MimeError, canonical_crlf, parse_entity, split_multipart

_PGP_MESSAGE = (b"-----BEGIN PGP MESSAGE-----", b"-----END PGP MESSAGE-----")
_PGP_SIGNED = (b"-----BEGIN PGP SIGNED MESSAGE-----", b"-----END PGP SIGNATURE-----")


def _armour_block(body: bytes, markers: tuple[bytes, bytes]) -> bytes | None:
    """The first armoured block, found with two linear searches: a lazy regex here was quadratic,
    and a body of repeated BEGIN lines with no END froze the event loop for minutes."""
    start = body.find(markers[0])
    if start < 0:
        return None
    end = body.find(markers[1], start)
    if end < 0:
        raise MimeError("an armoured PGP block with no END line (truncated?)")
    return body[start : end + len(markers[1])]


_PKCS7_MIME = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_PKCS7_SIGNATURE = ("application/pkcs7-signature", "application/x-pkcs7-signature")


class OpenPGPEngine(Protocol):
    async def decrypt(self, data: bytes) -> tuple[bytes, Signature | None]: ...
    async def verify_detached(self, signed: bytes, signature: bytes) -> Signature: ...
    async def verify_inline(self, data: bytes) -> tuple[bytes, Signature]: ...


class SMimeEngine(Protocol):
    async def decrypt(self, der: bytes) -> bytes: ...
    async def verify_detached(
        self,
        content: bytes,
        signature_der: bytes,
        anchors: Path | None,
        pinned: tuple[Path, ...] = (),
        at: datetime | None = None,
    ) -> Signature: ...
    async def verify_opaque(
        self, signed_der: bytes, anchors: Path | None, pinned: tuple[Path, ...] = (), at: datetime | None = None
    ) -> tuple[bytes, Signature]: ...


@dataclass(frozen=True)
class Trust:
    """What S/MIME signatures are checked against: every partner's anchors and pinned certs."""

    anchors: Path | None = None  # one PEM file holding all partner trust anchors
    pinned: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SmimeSigned:
    """What an S/MIME signature covered, kept so that it can be checked against another trust
    without decrypting the message again (see Unwrapper.reverify)."""

    content: bytes | None  # detached: the exact bytes signed; None: opaque signed-data
    signature: bytes  # the detached signature, or the whole signed-data DER


@dataclass
class Unwrapped:
    entity: Entity  # the innermost content: what the referral is read from
    encrypted: bool = False
    signatures: list[Signature] = field(default_factory=list)
    smime_signed: list[SmimeSigned | None] = field(default_factory=list)  # one per signature; None: OpenPGP

    def signed_by(self, signature: Signature, smime: SmimeSigned | None = None) -> None:
        self.signatures.append(signature)
        self.smime_signed.append(smime)

    layers: list[str] = field(default_factory=list)  # e.g. ["pgp-encrypted", "pgp-signed"], for the audit trail
    notes: list[str] = field(default_factory=list)  # what a person should know (shown as flags)


class Unwrapper:
    def __init__(self, pgp: OpenPGPEngine | None, smime: SMimeEngine | None, trust: Trust) -> None:
        self._pgp = pgp
        self._smime = smime
        self._trust = trust

    async def unwrap(self, raw: bytes) -> Unwrapped:
        result = Unwrapped(entity=parse_entity(raw))
        # MAX_DEPTH layers peeled, plus one look to see that what is left is content: with range(MAX_DEPTH)
        # a message of exactly MAX_DEPTH layers was refused as having "more than" that many.
        for _ in range(MAX_DEPTH + 1):
            inner = await self._peel(result.entity, result)
            if inner is None:
                return result
            result.entity = _content_entity(inner)
        raise MimeError(f"more than {MAX_DEPTH} nested encryption or signature layers")

    async def reverify(self, unwrapped: Unwrapped, trust: Trust) -> list[Signature]:
        """The signatures found by `unwrap`, with each S/MIME one checked again against `trust`
        (OpenPGP signatures do not depend on it). Only the signatures: nothing is decrypted again."""
        out: list[Signature] = []
        for signature, signed in zip(unwrapped.signatures, unwrapped.smime_signed, strict=True):
            if signed is None:
                out.append(signature)
            elif signed.content is not None:
                out.append(
                    await self._need_smime().verify_detached(
                        signed.content, signed.signature, trust.anchors, trust.pinned
                    )
                )
            else:
                _, again = await self._need_smime().verify_opaque(signed.signature, trust.anchors, trust.pinned)
                out.append(again)
        return out

    def _need_pgp(self) -> OpenPGPEngine:
        if self._pgp is None:
            raise MimeError("OpenPGP message, but this gateway has no OpenPGP key configured")
        return self._pgp

    def _need_smime(self) -> SMimeEngine:
        if self._smime is None:
            raise MimeError("S/MIME message, but this gateway has no S/MIME certificate configured")
        return self._smime

    async def _peel(self, entity: Entity, result: Unwrapped) -> bytes | None:
        """One layer off, or None when `entity` is plain content."""
        ctype = entity.content_type
        if ctype == "multipart/encrypted":
            parts = split_multipart(entity)
            if (entity.param("protocol") or "").lower() != "application/pgp-encrypted" or len(parts) != 2:
                raise MimeError("multipart/encrypted that is not PGP/MIME (RFC 3156 needs two parts)")
            with _gpg_gave_up(DecryptError):
                plaintext, signature = await self._need_pgp().decrypt(parse_entity(parts[1]).decoded_body())
            result.encrypted = True
            result.layers.append("pgp-encrypted")
            if signature is not None:
                result.signed_by(signature)
                result.layers.append("pgp-signed")
            return plaintext
        if ctype == "multipart/signed":
            return await self._signed(entity, result)
        if ctype in _PKCS7_MIME or (ctype == "application/octet-stream" and _p7m_name(entity)):
            return await self._pkcs7(entity, result)
        if ctype == "text/plain":
            return await self._inline(entity, result)
        if ctype == "multipart/mixed":
            # Some clients put the encrypted or signed part inside a mixed wrapper with an empty
            # text part: follow it only when there is exactly one protected part.
            members = [parse_entity(p) for p in split_multipart(entity)]
            protected = [m for m in members if m.content_type in ("multipart/encrypted", *_PKCS7_MIME)]
            if len(protected) == 1 and all(m is protected[0] or not m.body.strip() for m in members):
                return protected[0].raw
        return None

    async def _signed(self, entity: Entity, result: Unwrapped) -> bytes:
        parts = split_multipart(entity)
        if len(parts) != 2:
            raise MimeError("multipart/signed must have exactly two parts")
        protocol = (entity.param("protocol") or "").lower()
        signed = canonical_crlf(parts[0])  # the exact bytes the client signed (RFC 3156 §5, RFC 8551 §3.1.1)
        signature_bytes = parse_entity(parts[1]).decoded_body()
        if protocol == "application/pgp-signature":
            with _gpg_gave_up(VerifyError):
                signature = await self._need_pgp().verify_detached(signed, signature_bytes)
            result.layers.append("pgp-signed")
            result.signed_by(signature)
        elif protocol in _PKCS7_SIGNATURE:
            signature = await self._need_smime().verify_detached(
                signed, signature_bytes, self._trust.anchors, self._trust.pinned
            )
            result.layers.append("smime-signed")
            result.signed_by(signature, SmimeSigned(signed, signature_bytes))
        else:
            raise MimeError("multipart/signed with an unknown signature protocol")
        return parts[0]

    async def _pkcs7(self, entity: Entity, result: Unwrapped) -> bytes:
        smime_type = (entity.param("smime-type") or "").lower()
        der = entity.decoded_body()
        if smime_type == "signed-data":
            content, signature = await self._need_smime().verify_opaque(der, self._trust.anchors, self._trust.pinned)
            if not signature.valid and not content:
                # No content comes back when the signature cannot be checked at all: that is an
                # unreadable message for a person to look at, never an empty referral.
                raise VerifyError(f"the signature could not be checked ({signature.problem})")
            result.signed_by(signature, SmimeSigned(None, der))
            result.layers.append("smime-signed")
            return content
        if smime_type in ("enveloped-data", "authenveloped-data", ""):
            plaintext = await self._need_smime().decrypt(der)
            result.encrypted = True
            result.layers.append("smime-encrypted")
            return plaintext
        raise MimeError("application/pkcs7-mime of an unsupported smime-type")

    async def _inline(self, entity: Entity, result: Unwrapped) -> bytes | None:
        body = entity.decoded_body()
        if (block := _armour_block(body, _PGP_MESSAGE) or _armour_block(body, _PGP_SIGNED)) is None:
            return None
        # The outer part's charset is not covered by the signature: read what was signed as the
        # armour says (its Charset header) or as UTF-8, never as an unsigned header says.
        charset = _armour_charset(block)
        if body.replace(block, b"").strip():
            result.notes.append("text outside the PGP block was ignored")
        if block.startswith(_PGP_MESSAGE[0]):
            with _gpg_gave_up(DecryptError):
                plaintext, signature = await self._need_pgp().decrypt(block)
            result.encrypted = True
            result.layers.append("pgp-inline-encrypted")
            if signature is not None:
                result.signed_by(signature)
            return _text_entity(plaintext, charset)
        if block.startswith(_PGP_SIGNED[0]):
            with _gpg_gave_up(VerifyError):
                text, signature = await self._need_pgp().verify_inline(block)
            result.signed_by(signature)
            result.layers.append("pgp-inline-signed")
            return _text_entity(text, charset)
        return None


@contextmanager
def _gpg_gave_up(error: type[CryptoError]) -> Iterator[None]:
    """gpg stops reading its input as soon as it sees garbage (a 10 MB blob starting 0xFF; a large part with
    a junk signature), and python-gnupg 0.5.7 re-raises its writer thread's BrokenPipeError. That escaped
    as a crash on sender-controlled input instead of a reason the caller quarantines on. (The source is
    gateway.open.crypto.openpgp; this keeps the walker's promise of MimeError/CryptoError only.)"""
    try:
        yield
    except BrokenPipeError:
        raise error("unreadable: damaged or not OpenPGP") from None


_HEADER_OR_BLANK = re.compile(rb"[!-9;-~]+:|\r?\n")
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _content_entity(content: bytes) -> Entity:
    """What a layer decrypted or verified to, as an entity. RFC 8551 content is a MIME entity, but
    older clients (the RFC 4134 §5.3 example) encrypt or sign bare text with no headers at all:
    parse_entity refused it ("no headers"), so such a message could never be read. Text is read as
    RFC 2045's default, text/plain, its body the content byte for byte; headerless binary is still a
    MimeError (quarantined)."""
    if content and not _HEADER_OR_BLANK.match(content) and _is_text(content):
        content = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + content
    return parse_entity(content)


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _BINARY.search(data) is None


def _armour_charset(block: bytes) -> str:
    header = block.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    match = re.search(rb"^Charset:[ \t]*([A-Za-z0-9_.:-]{1,40})[ \t]*\r?$", header, re.MULTILINE | re.IGNORECASE)
    return match.group(1).decode() if match else "utf-8"


def _p7m_name(entity: Entity) -> bool:
    name = (entity.param("name") or entity.headers.get_filename() or "").lower()
    return name.endswith(".p7m")


def _text_entity(text: bytes, charset: str) -> bytes:
    """Inline PGP decrypts to text, not to a MIME entity: wrap it as one. A decrypted text that is
    itself a MIME entity (some clients encrypt the whole entity inline) is kept as it is."""
    if re.match(rb"^(?:[!-9;-~]+:[^\r\n]*\r?\n)+\r?\n", text) and b"content-type:" in text[:2000].lower():
        return text
    safe = charset if re.fullmatch(r"[A-Za-z0-9_.:-]{1,40}", charset) else "utf-8"
    return f"Content-Type: text/plain; charset={safe}\r\n\r\n".encode() + text
