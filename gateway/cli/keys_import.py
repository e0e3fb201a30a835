"""`referral-gateway keys import FILE`: a partner's or a council mailbox's OpenPGP public key or S/MIME
certificate, never a secret key.

OpenPGP keys go into the gateway's keyring; certificates are copied to keys/partners/, or keys/teams/ when they
belong to the council's own team mailboxes, members or coordinators. The config is not changed: the command
prints the lines to put in it (gateway.cli.keys_suggest decides which).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway import config as config_mod
from gateway.cli.keys_common import (
    PARTNERS_DIR,
    TEAMS_DIR,
    KeysError,
    date,
    expiry_status,
    shown,
    subject,
    toml_list,
    toml_string,
)
from gateway.cli.keys_suggest import (
    ca_addresses,
    council_holders,
    gateway_addresses,
    print_holder_lines,
    print_partner_block,
)
from gateway.config import Config
from gateway.core.clock import SystemClock
from gateway.open.crypto import CryptoError
from gateway.open.crypto.backends import opened
from gateway.open.crypto.openpgp_scan import scan_keys
from gateway.open.crypto.smime import certificate_info, is_ca_certificate, load_certificates


def cmd_import(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    path: Path = args.file
    data = path.read_bytes()
    if b"-----BEGIN PGP PRIVATE KEY BLOCK-----" in data:
        raise KeysError(_secret_refusal(path, "an OpenPGP secret key"))
    if re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", data):
        raise KeysError(_secret_refusal(path, "a private key"))
    if b"-----BEGIN PGP" in data:
        return _import_openpgp(cfg, path, data, args.partner)
    try:
        certs = load_certificates(data)
    except ValueError:
        certs = []
    if certs:
        return _import_certificates(cfg, path, certs, args.partner)
    if b"-----BEGIN" not in data:  # binary and not a DER certificate: perhaps a binary OpenPGP key
        return _import_openpgp(cfg, path, data, args.partner)
    raise KeysError(
        f"{path}: not an OpenPGP public key or an X.509 certificate (PEM or DER); ask the partner for their "
        "public key (gpg --export --armor) or their certificate (.pem/.crt/.cer, not a .p12/.pfx)"
    )


def _secret_refusal(path: Path, what: str) -> str:
    return (
        f"{path} holds {what}; nothing was imported. Partners send only their public key or certificate "
        "(gpg --export --armor FINGERPRINT, or the .crt/.pem). Ask them for it, and tell them this file was sent: "
        "a private key that has left its owner should be replaced"
    )


def _import_openpgp(cfg: Config, path: Path, data: bytes, partner: str | None) -> int:
    scanned = scan_keys(data)
    if not scanned:
        raise KeysError(
            f"{path}: no OpenPGP key or X.509 certificate found in it; ask the partner for their public key "
            "(gpg --export --armor FINGERPRINT) or their certificate"
        )
    if any(k.secret for k in scanned):  # checked before anything reaches the gateway's keyring
        raise KeysError(_secret_refusal(path, "an OpenPGP secret key"))
    home = cfg.keys_dir / cfg.settings.keys.openpgp_dir()
    try:
        with opened(cfg.settings.keys.openpgp_backend, home) as pgp:
            fingerprints = pgp.import_keys(data)
            public = {k.fingerprint: k for k in pgp.keys()}
    except CryptoError as exc:
        raise KeysError(
            f"{path}: the OpenPGP key could not be imported ({exc.reason}); ask the partner to export it again"
        ) from None
    now = SystemClock().now()
    imported = [public[f] for f in fingerprints if f in public]
    print(f"imported {len(imported)} OpenPGP public key(s) from {path} into {shown(cfg, home)}/:")
    for key in imported:
        print(f"  {key.fingerprint}  {', '.join(key.uids) or '(no user id)'}")
        print(f"    expires {date(key.expires)}: {expiry_status(key.expires, now, key.revoked)}")
    if _the_gateways_own(cfg, [e for key in imported for e in key.emails]):
        return 0
    partner_keys = []
    for key in imported:
        holders = council_holders(cfg, key.emails)
        if holders:  # one of the council's mailboxes: alerts are encrypted to it, it signs no referral
            print_holder_lines(cfg, holders, "openpgp", key.fingerprint)
        else:
            partner_keys.append(key)
    if partner_keys:
        emails = [e for key in partner_keys for e in key.emails]
        name = partner or next((k.uids[0].split("<")[0].strip() for k in partner_keys if k.uids), "") or "PARTNER NAME"
        _print_partner_lines(cfg, name, "openpgp", [k.fingerprint for k in partner_keys], emails, [])
    return 0


def _the_gateways_own(cfg: Config, emails: list[str]) -> bool:
    own = gateway_addresses(cfg, emails)
    if own:
        print()
        print(
            f"{', '.join(own)} is the gateway's own address: nothing to add to the config. The gateway's keys are "
            "made by `referral-gateway keys init` and named in [keys] (openpgp_fingerprint, smime_key, smime_cert)."
        )
    return bool(own)


def _import_certificates(cfg: Config, path: Path, certs: list[x509.Certificate], partner: str | None) -> int:
    infos = [certificate_info(c) for c in certs]
    leaf = infos[0]
    common_names = certs[0].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    label = partner or (str(common_names[0].value) if common_names else "") or (leaf.emails or (path.stem,))[0]
    is_ca = is_ca_certificate(certs[0])
    # A council mailbox's certificate (never a CA's): alerts are encrypted to it. Kept apart from partners'.
    holders = [] if is_ca else council_holders(cfg, leaf.emails)
    if holders and not partner:
        label = holders[0].entry_id
    base = re.sub(r"[^a-z0-9._-]+", "-", label.lower()).strip("-.") or "partner"
    # Re-encoded from the parsed certificates: whatever else the file held (text, a stray key) is not copied.
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    directory = cfg.keys_dir / (TEAMS_DIR if holders else PARTNERS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    target, already = _place_public(directory, base, leaf.fingerprint, pem)
    now = SystemClock().now()
    print(("already imported as " if already else f"copied {path} to ") + shown(cfg, target))
    for info in infos:
        print(f"  subject  {subject(info)}")
        print(f"  emails   {', '.join(info.emails) or '(none)'}")
        print(f"  SHA-256  {info.fingerprint}")
        print(
            f"  expires  {info.not_after.isoformat(sep=' ', timespec='minutes')}: {expiry_status(info.not_after, now)}"
        )
    emails = [e for info in infos for e in info.emails]
    if _the_gateways_own(cfg, emails):
        return 0
    if holders:
        print_holder_lines(cfg, holders, "smime_cert", shown(cfg, target))
        return 0
    # A CA certificate vouches for every certificate it issued (anchor); anything else is trusted as it is (pin).
    # An anchor's partner is every address it may issue for, so the addresses are domains; a pin's are its own.
    addresses, notes = ca_addresses(certs[0], emails) if is_ca else (emails, [])
    _print_partner_lines(
        cfg, partner or label, "smime_anchors" if is_ca else "smime_pinned", [shown(cfg, target)], addresses, notes
    )
    return 0


def _place_public(directory: Path, base: str, fingerprint: str, pem: bytes) -> tuple[Path, bool]:
    """keys/partners/<name>.pem, or <name>-<fingerprint>.pem when a different certificate has that name: a
    partner's certificate already named in config is never replaced by another one."""
    for name in (f"{base}.pem", f"{base}-{fingerprint[:8].lower()}.pem"):
        target = directory / name
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # public: readable is fine
        except FileExistsError:
            if target.read_bytes() == pem:
                return target, True
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        return target, False
    raise KeysError(f"{directory}: {base}.pem and {base}-{fingerprint[:8].lower()}.pem exist; pass --partner NAME")


def _print_partner_lines(
    cfg: Config, name: str, key: str, values: list[str], addresses: list[str], notes: list[str]
) -> None:
    # As check-config compares names: the same organisation whatever its case or spacing.
    existing = next((p for p in cfg.settings.partners if p.name.strip().casefold() == name.strip().casefold()), None)
    print()
    if existing is not None:
        before = [str(v) for v in getattr(existing, key)]
        merged = before + [v for v in values if v not in before]
        if merged == before:
            print(f"partner {toml_string(existing.name)} in {cfg.file} already names it.")
            return
        print(
            f"partner {toml_string(existing.name)} is in {cfg.file}; set in its [[partners]] entry "
            "(the config is not changed):"
        )
        print()
        print(f"{key} = {toml_list(merged)}")
        return
    print(f"add this partner to {cfg.file} (the config is not changed for you; check the addresses):")
    print()
    print_partner_block(name, key, values, addresses, notes)
