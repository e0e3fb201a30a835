"""The gateway's own keys and its partners' trust material, loaded from config and keys/.

The gateway refuses to start when a configured key is missing or unreadable: running without it
would quarantine every encrypted referral, which is worse than not running (systemd restarts us
and the administrator sees why in the journal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from gateway.config import Config
from gateway.crypto import CryptoKeyError
from gateway.crypto.openpgp import OpenPGP
from gateway.crypto.smime import SMime
from gateway.unwrap import Trust, Unwrapper

log = logging.getLogger(__name__)
EXPIRY_WARNING = timedelta(days=30)


@dataclass
class Identity:
    pgp: OpenPGP | None
    smime: SMime | None
    trust: Trust
    # Pinned partner certificates by SHA-256 fingerprint: replies to their holders are encrypted.
    pinned_by_fingerprint: dict[str, Path] = field(default_factory=dict)

    def unwrapper(self) -> Unwrapper:
        return Unwrapper(self.pgp, self.smime, self.trust)

    def close(self) -> None:
        if self.pgp is not None:
            self.pgp.close()


def _trust(config: Config) -> Trust:
    """One anchors file for `openssl cms -CAfile`, written under var/ from every partner's CAs."""
    anchors = [config.path(p) for partner in config.settings.partners for p in partner.smime_anchors]
    pinned = tuple(config.path(p) for partner in config.settings.partners for p in partner.smime_pinned)
    for path in (*anchors, *pinned):
        if not path.is_file():
            raise CryptoKeyError(f"{path}: partner certificate named in config is missing")
    if not anchors:
        return Trust(None, pinned)
    bundle = config.data_dir / "partner-anchors.pem"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_bytes(b"\n".join(path.read_bytes().strip() for path in anchors) + b"\n")
    return Trust(bundle, pinned)


def load_identity(config: Config, now: datetime) -> Identity:
    keys = config.settings.keys
    smime = None
    if keys.smime_key is not None or keys.smime_cert is not None:
        if keys.smime_key is None or keys.smime_cert is None:
            raise CryptoKeyError("keys.smime_key and keys.smime_cert must be given together")
        smime = SMime(config.keys_dir / keys.smime_key, config.keys_dir / keys.smime_cert)
        _warn_expiry("the gateway's S/MIME certificate", smime.info.not_after, now)
    pgp = None
    if keys.openpgp_fingerprint is not None:
        pgp = OpenPGP(config.keys_dir / keys.openpgp_home)
        secret = {k.fingerprint: k for k in pgp.keys(secret=True)}
        own = secret.get(keys.openpgp_fingerprint)
        if own is None:
            pgp.close()
            raise CryptoKeyError(
                f"the OpenPGP secret key {keys.openpgp_fingerprint} is not in {config.keys_dir / keys.openpgp_home}; "
                "run `referral-gateway keys init` or restore the key"
            )
        if own.expires is not None:
            _warn_expiry("the gateway's OpenPGP key", own.expires, now)
        public = {k.fingerprint: k for k in pgp.keys()}
        for partner in config.settings.partners:
            for fingerprint in partner.openpgp:
                if fingerprint not in public:
                    log.warning(
                        "partner %s: OpenPGP key %s is not imported; run `referral-gateway keys import`",
                        partner.name,
                        fingerprint,
                    )
                elif (expires := public[fingerprint].expires) is not None:
                    _warn_expiry(f"partner {partner.name}'s OpenPGP key {fingerprint}", expires, now)
    trust = _trust(config)
    for partner in config.settings.partners:
        for path in (*partner.smime_anchors, *partner.smime_pinned):
            info = SMime.certificate_info(config.path(path).read_bytes())
            _warn_expiry(f"partner {partner.name}'s certificate {path}", info.not_after, now)
    pinned = {SMime.certificate_info(path.read_bytes()).fingerprint: path for path in trust.pinned}
    return Identity(pgp, smime, trust, pinned)


def _warn_expiry(what: str, expires: datetime, now: datetime) -> None:
    if expires <= now:
        log.error("%s expired on %s: renew it now", what, expires.date().isoformat())
    elif expires - now <= EXPIRY_WARNING:
        log.warning("%s expires on %s: renew it", what, expires.date().isoformat())
