"""Protect outgoing mail: encrypt to the recipient's key and sign with the gateway's.

A team with a key gets alerts with the referral's content inside: OpenPGP as RFC 3156 combined
sign+encrypt (multipart/encrypted), S/MIME as RFC 8551 signed-then-enveloped. A team without a key
gets the plain alert that holds no personal data; nothing in between.
"""

from __future__ import annotations

import uuid

from gateway.config import Config, Team
from gateway.crypto import CryptoKeyError
from gateway.identity import Identity


class Protector:
    def __init__(self, config: Config, identity: Identity) -> None:
        self._config = config
        self._identity = identity
        keys = config.settings.keys
        for team in config.settings.teams:
            # Refuse to start rather than silently fall back to content-free alerts for a team
            # that was promised encrypted content.
            if team.openpgp and (identity.pgp is None or keys.openpgp_fingerprint is None):
                raise CryptoKeyError(
                    f"team {team.id} has an OpenPGP key but the gateway has none to sign with; "
                    "set [keys] openpgp_fingerprint (`referral-gateway keys init`)"
                )
            if team.smime_cert and identity.smime is None:
                raise CryptoKeyError(
                    f"team {team.id} has an S/MIME certificate but the gateway has none; "
                    "set [keys] smime_key and smime_cert"
                )
            if team.smime_cert and not config.path(team.smime_cert).is_file():
                raise CryptoKeyError(f"{config.path(team.smime_cert)}: team {team.id}'s certificate is missing")
            if (
                team.openpgp
                and identity.pgp is not None
                and team.openpgp not in {k.fingerprint for k in identity.pgp.keys()}
            ):
                raise CryptoKeyError(
                    f"team {team.id}'s OpenPGP key {team.openpgp} is not imported; run `referral-gateway keys import`"
                )

    @staticmethod
    def can_protect(team: Team) -> bool:
        return bool(team.openpgp or team.smime_cert)

    async def protect(self, team: Team, head: bytes, entity: bytes) -> bytes:
        """The complete message: our outer headers, then the entity encrypted and signed."""
        if team.openpgp:
            assert self._identity.pgp is not None and self._config.settings.keys.openpgp_fingerprint
            armoured = await self._identity.pgp.encrypt_and_sign(
                entity, [team.openpgp], self._config.settings.keys.openpgp_fingerprint
            )
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
        assert self._identity.smime is not None and team.smime_cert is not None
        return head + await self._identity.smime.sign_and_encrypt(entity, [self._config.path(team.smime_cert)])
