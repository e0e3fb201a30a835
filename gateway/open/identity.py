"""The gateway's own keys and its partners' trust material, loaded from config and keys/.

The gateway refuses to start when a configured key is missing or unreadable: running without it
would quarantine every encrypted referral, which is worse than not running (systemd restarts us
and the administrator sees why in the journal).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from gateway.config import Config
from gateway.config.sections import Partner
from gateway.open.crypto import CryptoKeyError
from gateway.open.crypto.backends import open_backend
from gateway.open.crypto.pgp_backend import OpenPGPBackend
from gateway.open.crypto.smime import SMime
from gateway.open.dev_keys import development_keys, refuse_gnupg_only
from gateway.open.policy import home_block
from gateway.open.unwrap import Trust, Unwrapper

log = logging.getLogger(__name__)
EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class PartnerTrust:
    """One [[partners]] block's own S/MIME trust: its anchors and pinned certificates, and no other
    block's. Kept per block, not by name, so that a signature is accepted for an address only when
    the block that claims the address also holds the CA or certificate that vouches for it."""

    position: int  # the block's index: partners[N], as config errors name it
    partner: Partner
    trust: Trust
    # Its pinned certificates by SHA-256 fingerprint: replies to their holders are encrypted to them.
    pinned_by_fingerprint: dict[str, Path] = field(default_factory=dict)


@dataclass
class Identity:
    pgp: OpenPGPBackend | None
    smime: SMime | None
    trust: Trust  # every partner's, together: only to read attachments and to word a refusal
    partners: tuple[PartnerTrust, ...] = ()
    openpgp_fingerprint: str | None = None  # the gateway's own key: signs what it sends

    def unwrapper(self) -> Unwrapper:
        return Unwrapper(self.pgp, self.smime, self.trust)

    def block_for(self, sender: str) -> PartnerTrust | None:
        """The one partner block that claims `sender` (gateway.open.policy.home_block decides)."""
        home = home_block(sender, [b.partner for b in self.partners])
        return next((b for b in self.partners if b.partner is home), None)

    def unwrapper_for(self, block: PartnerTrust | None) -> Unwrapper:
        """An unwrapper whose S/MIME trust is that block's alone (no block: no S/MIME signature is
        trusted, and the policy says so)."""
        return Unwrapper(self.pgp, self.smime, block.trust if block is not None else Trust())

    def close(self) -> None:
        if self.pgp is not None:
            self.pgp.close()


def _partner_trust(config: Config, position: int, partner: Partner, now: datetime) -> PartnerTrust:
    anchors = [config.path(a) for a in partner.smime_anchors]
    pinned = tuple(config.path(c) for c in partner.smime_pinned)
    for shown, path in zip((*partner.smime_anchors, *partner.smime_pinned), (*anchors, *pinned), strict=True):
        if not path.is_file():
            raise CryptoKeyError(f"{path}: partner {partner.name}'s certificate named in config is missing")
        info = SMime.certificate_info(path.read_bytes())
        _warn_expiry(f"partner {partner.name}'s certificate {shown}", info.not_after, now)
    # The bundle is made now: an unreadable file stops the start, not the first message from them.
    trust = Trust(_bundle(config.data_dir / "trust", anchors), pinned)
    by_fingerprint = {SMime.certificate_info(path.read_bytes()).fingerprint: path for path in pinned}
    return PartnerTrust(position, partner, trust, by_fingerprint)


FALLBACK_HOME = "gpg-fallback"  # under data_dir: the sequoia backend's private GnuPG home (gpg_fallback.py)


def load_identity(
    config: Config,
    now: datetime,
    clock: Callable[[], datetime] | None = None,
    on_fallback: Callable[[str], None] | None = None,
) -> Identity:
    """`clock` (the gateway's) decides when a replaced key's overlap ends; without it, `now` does.
    `on_fallback` counts the messages the sequoia backend hands to gpg."""
    keys = config.settings.keys
    refuse_gnupg_only(config)  # before development keys: a new key would hide the old one
    if keys.development:
        fingerprint, key_path, cert_path = development_keys(config)
        keys = keys.model_copy(
            update={"openpgp_fingerprint": fingerprint, "smime_key": key_path, "smime_cert": cert_path}
        )
    smime = None
    if keys.smime_key is not None or keys.smime_cert is not None:
        if keys.smime_key is None or keys.smime_cert is None:
            raise CryptoKeyError("keys.smime_key and keys.smime_cert must be given together")
        key_path = config.keys_dir / keys.smime_key
        if key_path.exists() and key_path.stat().st_mode & 0o077:
            raise CryptoKeyError(f"{key_path}: the S/MIME private key is readable by others; run: chmod 600 {key_path}")
        smime = SMime(key_path, config.keys_dir / keys.smime_cert)
        _warn_expiry("the gateway's S/MIME certificate", smime.info.not_after, now)
        _previous_smime(config, smime, now, clock)
    pgp = None
    if keys.openpgp_fingerprint is not None:
        pgp = open_backend(
            keys.openpgp_backend, config.keys_dir / keys.openpgp_dir(), config.data_dir / FALLBACK_HOME, on_fallback
        )
        secret = {k.fingerprint: k for k in pgp.keys(secret=True)}
        own = secret.get(keys.openpgp_fingerprint)
        if own is None:
            pgp.close()
            raise CryptoKeyError(
                f"the OpenPGP secret key {keys.openpgp_fingerprint} is not in {config.keys_dir / keys.openpgp_dir()}; "
                "run `referral-gateway keys init` or restore the key"
            )
        if own.expires is not None:
            _warn_expiry("the gateway's OpenPGP key", own.expires, now)
        _previous_openpgp(config, pgp, set(secret), now, clock)
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
    blocks = tuple(_partner_trust(config, i, p, now) for i, p in enumerate(config.settings.partners))
    everyone = Trust(
        _bundle(config.data_dir / "trust", [config.path(a) for b in blocks for a in b.partner.smime_anchors]),
        tuple(c for b in blocks for c in b.trust.pinned),
    )
    return Identity(pgp, smime, everyone, blocks, keys.openpgp_fingerprint)


def _previous_openpgp(
    config: Config, pgp: OpenPGPBackend, secret: set[str], now: datetime, clock: Callable[[], datetime] | None
) -> None:
    for previous in config.settings.rotation.previous_openpgp:
        if previous.fingerprint not in secret:
            log.warning(
                "rotation: previous OpenPGP key %s is not in keys/; mail to it cannot be read", previous.fingerprint
            )
        elif previous.until <= now:
            log.warning(
                "rotation: previous OpenPGP key %s: its overlap ended; mail to it is refused", previous.fingerprint
            )
        pgp.retired[previous.fingerprint] = previous.until
    pgp.now = clock or (lambda: now)


def _previous_smime(config: Config, smime: SMime, now: datetime, clock: Callable[[], datetime] | None) -> None:
    for previous in config.settings.rotation.previous_smime:
        key, cert = config.keys_dir / previous.key, config.keys_dir / previous.cert
        SMime(key, cert)  # a missing or mismatched pair stops the start, as the current one does
        if previous.until <= now:
            log.warning("rotation: previous S/MIME certificate %s: its overlap ended; mail to it is refused", cert)
        smime.previous.append((key, cert, previous.until))
    smime.now = clock or (lambda: now)


def _bundle(directory: Path, anchors: Sequence[Path]) -> Path | None:
    """One PEM file of these anchors for `openssl cms -CAfile`, named by its content (so every
    combination is written once and reused)."""
    if not anchors:
        return None
    data = b"\n".join(path.read_bytes().strip() for path in anchors) + b"\n"
    path = directory / f"anchors-{hashlib.sha256(data).hexdigest()[:16]}.pem"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def _warn_expiry(what: str, expires: datetime, now: datetime) -> None:
    if expires <= now:
        log.error("%s expired on %s: renew it now", what, expires.date().isoformat())
    elif expires - now <= EXPIRY_WARNING:
        log.warning("%s expires on %s: renew it", what, expires.date().isoformat())
