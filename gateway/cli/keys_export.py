"""`referral-gateway keys export`: the gateway's public key and certificate, to send to partners."""

from __future__ import annotations

import argparse
import sys

from cryptography.hazmat.primitives import serialization

from gateway import config as config_mod
from gateway.cli.keys_common import KeysError, date, shown, subject
from gateway.open.crypto.backends import opened, read_keys
from gateway.open.crypto.smime import certificate_info, load_certificates
from gateway.open.dev_keys import DEV_SMIME_CERT


def cmd_export(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    keys = cfg.settings.keys
    home = cfg.keys_dir / keys.openpgp_dir()
    parts: list[str] = []

    secret, _ = read_keys(keys.openpgp_backend, home)
    fingerprint = keys.openpgp_fingerprint
    if fingerprint is None and len(secret) == 1:
        fingerprint = secret[0].fingerprint  # made by `keys init`, config not updated yet: still the one key
        print(f"note: {cfg.file} names no OpenPGP key; exporting the one in {shown(cfg, home)}", file=sys.stderr)
    elif fingerprint is None and secret:
        raise KeysError(
            f"{shown(cfg, home)} holds several secret keys and {cfg.file} names none; set "
            "[keys] openpgp_fingerprint to the gateway's key (see `referral-gateway keys list`)"
        )
    if fingerprint is not None:
        key = next((k for k in secret if k.fingerprint == fingerprint), None)
        if key is None:
            raise KeysError(
                f"the gateway's OpenPGP secret key {fingerprint} is not in {shown(cfg, home)}; restore it from "
                "backup, or run `referral-gateway keys init` and update [keys]"
            )
        with opened(keys.openpgp_backend, home) as pgp:
            armoured = pgp.export_public(fingerprint).decode("ascii")  # gpg --export: public packets only
        if "PRIVATE KEY" in armoured:  # belt and braces: this output is meant to be emailed to partners
            raise KeysError(f"refusing to export {fingerprint}: the export contains secret key material")
        uids = "; ".join(key.uids)
        parts.append(f"# referral-gateway OpenPGP public key {fingerprint} ({uids}), expires {date(key.expires)}\n")
        parts.append(armoured if armoured.endswith("\n") else armoured + "\n")

    cert_rel = keys.smime_cert or DEV_SMIME_CERT
    cert_path = cfg.keys_dir / cert_rel
    if keys.smime_cert is not None or cert_path.is_file():
        try:
            certs = load_certificates(cert_path.read_bytes())
        except FileNotFoundError:
            raise KeysError(
                f"{shown(cfg, cert_path)} (keys.smime_cert) is missing; restore it, or run `keys init`"
            ) from None
        except ValueError:
            raise KeysError(f"{shown(cfg, cert_path)} (keys.smime_cert) is not a PEM certificate") from None
        if keys.smime_cert is None:
            print(f"note: {cfg.file} names no S/MIME certificate; exporting {shown(cfg, cert_path)}", file=sys.stderr)
        info = certificate_info(certs[0])
        # Re-encoded from the parsed certificate, never the file's bytes: an administrator may have put the
        # key into the same PEM file, and this output goes to partners.
        pem = certs[0].public_bytes(serialization.Encoding.PEM).decode("ascii")
        parts.append(
            f"# referral-gateway S/MIME certificate SHA-256 {info.fingerprint} ({subject(info)}), "
            f"expires {date(info.not_after)}\n"
        )
        parts.append(pem)

    if not parts:
        raise KeysError(f"the gateway has no keys under {shown(cfg, cfg.keys_dir)}/; run `referral-gateway keys init`")
    sys.stdout.write("".join(parts))
    return 0
