"""Protect outgoing mail: encrypt to the recipient's key and sign with the gateway's.

A team with a key gets alerts with the referral's content inside: OpenPGP as RFC 3156 combined
sign+encrypt (multipart/encrypted), S/MIME as RFC 8551 signed-then-enveloped. A team without a key
gets the plain alert that holds no personal data; nothing in between.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from pathlib import Path
from typing import Protocol

from gateway.config import Config
from gateway.core.sealed import ReplyKey
from gateway.open.crypto import CryptoError, CryptoKeyError
from gateway.open.identity import Identity
from gateway.outbox.compose import Outgoing

log = logging.getLogger(__name__)


class KeyHolder(Protocol):
    """A team mailbox, a member, a coordinator: anyone who may have a key of their own."""

    @property
    def openpgp(self) -> str | None: ...

    @property
    def smime_cert(self) -> Path | None: ...


class Protector:
    def __init__(self, config: Config, identity: Identity) -> None:
        self._config = config
        self._identity = identity
        settings = config.settings
        holders: list[tuple[str, KeyHolder]] = [(f"team {t.id}", t) for t in settings.teams]
        holders += [(f"member {t.id}/{m.id}", m) for t in settings.teams for m in t.members]
        holders += [(f"coordinator {c.id}", c) for c in settings.coordinators]
        holders += [(f"neighbour '{n.name}'", n) for n in settings.neighbours]  # forwards (issue 15)
        for who, holder in holders:
            self._check(who, holder)

    def _check(self, who: str, holder: KeyHolder) -> None:
        # Refuse to start rather than silently fall back to content-free alerts for someone who
        # was promised encrypted content.
        identity = self._identity
        if holder.openpgp and (identity.pgp is None or identity.openpgp_fingerprint is None):
            raise CryptoKeyError(
                f"{who} has an OpenPGP key but the gateway has none to sign with; "
                "set [keys] openpgp_fingerprint (`referral-gateway keys init`)"
            )
        if holder.smime_cert and identity.smime is None:
            raise CryptoKeyError(
                f"{who} has an S/MIME certificate but the gateway has none; set [keys] smime_key and smime_cert"
            )
        if holder.smime_cert and not self._config.path(holder.smime_cert).is_file():
            raise CryptoKeyError(f"{self._config.path(holder.smime_cert)}: {who}'s certificate is missing")
        if (
            holder.openpgp
            and identity.pgp is not None
            and holder.openpgp not in {k.fingerprint for k in identity.pgp.keys()}
        ):
            raise CryptoKeyError(
                f"{who}'s OpenPGP key {holder.openpgp} is not imported; run `referral-gateway keys import`"
            )

    @staticmethod
    def can_protect(holder: KeyHolder) -> bool:
        return bool(holder.openpgp or holder.smime_cert)

    async def protect(self, holder: KeyHolder, head: bytes, entity: bytes) -> bytes:
        """The complete message: our outer headers, then the entity encrypted and signed."""
        key: ReplyKey = (
            ("openpgp", holder.openpgp)
            if holder.openpgp
            else ("smime", str(self._config.path(holder.smime_cert or Path())))
        )
        return await self.protect_to(key, head, entity)

    async def maybe_protect(self, key: ReplyKey | None, outgoing: Outgoing) -> Outgoing:
        """A receipt or notice encrypted to the referrer's key when it is known; unchanged when it
        is not, or when encryption fails (these messages hold no personal data either way)."""
        if not key:
            return outgoing
        head, entity = split_headers(outgoing.message)
        try:
            message = await self.protect_to(key, head, entity)
        except CryptoError as exc:
            log.warning("protect: %s not encrypted to the referrer (%s); sent as it is", outgoing.kind, exc.reason)
            return outgoing
        return dataclasses.replace(outgoing, message=message)

    async def protect_to(self, key: ReplyKey, head: bytes, entity: bytes) -> bytes:
        kind, ref = key
        if kind == "openpgp":
            assert self._identity.pgp is not None and self._identity.openpgp_fingerprint
            armoured = await self._identity.pgp.encrypt_and_sign(entity, [ref], self._identity.openpgp_fingerprint)
            boundary = f"rg-{uuid.uuid4().hex}"
            body = (
                (
                    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
                    f' boundary="{boundary}"\r\n'
                    "\r\nThis is an OpenPGP/MIME encrypted message (RFC 3156).\r\n"
                    f"--{boundary}\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
                    f"--{boundary}\r\nContent-Type: application/octet-stream; name=encrypted.asc\r\n"
                    "Content-Disposition: inline; filename=encrypted.asc\r\n\r\n"
                ).encode()
                + armoured.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                + f"\r\n--{boundary}--\r\n".encode()
            )
            return head + body
        assert self._identity.smime is not None
        return head + await self._identity.smime.sign_and_encrypt(entity, [Path(ref)])


_CONTENT_HEADER = re.compile(rb"^(?:content-|mime-version:)", re.IGNORECASE)


def split_headers(message: bytes) -> tuple[bytes, bytes]:
    """Our composed message -> (outer headers, MIME entity): the Content-* headers and the body
    are what gets encrypted; From/To/Subject stay outside (they hold no personal data)."""
    message = re.sub(rb"\r?\n", b"\r\n", message)
    header_block, _, body = message.partition(b"\r\n\r\n")
    lines = re.split(rb"\r\n(?![ \t])", header_block)  # unfold-aware: continuation lines stay
    outer = [line for line in lines if not _CONTENT_HEADER.match(line)]
    inner = [line for line in lines if _CONTENT_HEADER.match(line) and not line.lower().startswith(b"mime-version")]
    head = b"\r\n".join([*outer, b"MIME-Version: 1.0"]) + b"\r\n"
    return head, b"\r\n".join(inner) + b"\r\n\r\n" + body
