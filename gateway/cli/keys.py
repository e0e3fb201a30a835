"""`referral-gateway keys init|import|list|export`: the gateway's own keys and its partners' public ones.

Private keys live only under keys/ (git-ignored): the gateway's OpenPGP key in keys/gnupg (mode 0700) and its
S/MIME key in keys/smime (mode 0600). Partners' certificates go to keys/partners/, which is committed: they are
public, and the config that names them is reviewed with them. Nothing here rewrites the config file: it belongs to
the administrators (comments, order, review), so these commands print the exact lines to put in it instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway import config as config_mod
from gateway.cli.groups import command_group
from gateway.config import Config
from gateway.core.clock import SystemClock
from gateway.open.crypto import CryptoError
from gateway.open.crypto.openpgp import KeyInfo, OpenPGP, read_keyring, scan_keys
from gateway.open.crypto.smime import CertInfo, certificate_info, is_ca_certificate, load_certificates
from gateway.open.dev_keys import DEV_SMIME_CERT, DEV_SMIME_KEY, make_smime_files
from gateway.open.identity import EXPIRY_WARNING

PARTNERS_DIR = "partners"


class KeysError(Exception):
    """A problem the administrator can fix: the message names the file or key and says how."""


# -- helpers --------------------------------------------------------------------------------------------------


def _toml(value: str) -> str:
    # A JSON string is a valid TOML basic string: quotes and backslashes in names are escaped the same way.
    return json.dumps(value, ensure_ascii=False)


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml(v) for v in values) + "]"


def _shown(config: Config, path: Path) -> str:
    """A path as the administrator would type it: relative to the gateway's home when under it."""
    try:
        return str(path.relative_to(config.home))
    except ValueError:
        return str(path)


def _keys_relative(config: Config, path: Path) -> str:
    """A [keys] path: relative to keys_dir (that is how identity.py resolves it) when under it."""
    try:
        return str(path.relative_to(config.keys_dir))
    except ValueError:
        return str(path)


def _status(expires: datetime | None, now: datetime, revoked: bool = False) -> str:
    if revoked:
        return "REVOKED"
    if expires is None:
        return "OK"
    if expires <= now:
        return "EXPIRED"
    if expires - now <= EXPIRY_WARNING:
        # Rounded up: a certificate made "for 10 days" a moment ago has 9.99 days left, and its owner
        # (and anyone counting on a calendar) calls that 10 days.
        days = math.ceil((expires - now).total_seconds() / 86400)
        return f"EXPIRES IN {days} DAY{'' if days == 1 else 'S'}"
    return "OK"


def _subject(info: CertInfo) -> str:
    # RFC 4514 has no short name for emailAddress, so CertInfo shows its OID; administrators know the name.
    return info.subject.replace("1.2.840.113549.1.9.1=", "emailAddress=")


def _date(when: datetime | None) -> str:
    return when.date().isoformat() if when is not None else "never"


# -- keys init ------------------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    configured = cfg.settings.keys
    home = cfg.keys_dir / configured.openpgp_home
    key_path = cfg.keys_dir / (configured.smime_key or DEV_SMIME_KEY)
    cert_path = cfg.keys_dir / (configured.smime_cert or DEV_SMIME_CERT)
    email = (args.email or cfg.settings.mail.from_address).strip()
    name = (args.name or f"{cfg.settings.gateway.council} referral gateway").strip()

    # Every check before anything is made, so a refused init leaves keys/ exactly as it was.
    existing = [_shown(cfg, p) for p in (key_path, cert_path) if p.exists()]
    secret, _ = read_keyring(home)
    if secret:
        existing.append(f"{_shown(cfg, home)} (OpenPGP secret key {', '.join(k.fingerprint for k in secret)})")
    if existing:
        raise KeysError(
            "the gateway already has keys: " + "; ".join(existing) + ". Not replacing them: mail encrypted to "
            "them could no longer be read. To see them run `referral-gateway keys list`; to really start again, "
            "move them out of keys/ first (keep a backup)"
        )

    cfg.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with OpenPGP.opened(home) as pgp:
            fingerprint = pgp.generate_key(name, email)
            own = next((k for k in pgp.keys(secret=True) if k.fingerprint == fingerprint), None)
    except CryptoError as exc:
        raise KeysError(
            f"making the OpenPGP key in {_shown(cfg, home)} failed ({exc.reason}); check --name and --email "
            "(plain text, an address with @) and that gpg 2.2 or later is installed"
        ) from None
    cert = _make_smime(key_path, cert_path, name, email)

    print(f"made the gateway's development keys under {_shown(cfg, cfg.keys_dir)}/:")
    print(f"  OpenPGP key   {fingerprint}  {name} <{email}>, expires {_date(own.expires if own else None)}")
    print(f"                in {_shown(cfg, home)}/ (mode 0700)")
    print(f"  S/MIME key    {_shown(cfg, key_path)} (mode 0600)")
    print(f"  S/MIME cert   {_shown(cfg, cert_path)}: {_subject(cert)}, expires {_date(cert.not_after)}")
    print(f"                SHA-256 {cert.fingerprint}")
    print("The S/MIME certificate is self-signed, for development: in production use one issued by a CA.")
    print()
    lines = ["[keys]"]
    if configured.openpgp_home != Path("gnupg"):
        lines.append(f"openpgp_home = {_toml(str(configured.openpgp_home))}")
    lines += [
        f"openpgp_fingerprint = {_toml(fingerprint)}",
        f"smime_key = {_toml(_keys_relative(cfg, key_path))}",
        f"smime_cert = {_toml(_keys_relative(cfg, cert_path))}",
    ]
    if configured.openpgp_fingerprint is None and configured.smime_key is None and configured.smime_cert is None:
        print(f"{cfg.file} has no [keys] values yet, so the gateway will not use these keys. Add these lines to it:")
    else:
        print(f"{cfg.file} names other keys in [keys]; set these values there:")
    print()
    print("\n".join(lines))
    print()
    print("(The config is not changed for you.) Then send partners `referral-gateway keys export`.")
    return 0


def _make_smime(key_path: Path, cert_path: Path, name: str, email: str) -> CertInfo:
    try:
        return make_smime_files(key_path, cert_path, name, email)
    except CryptoError as exc:
        raise KeysError(f"{exc.reason}; check --name and --email") from None


# -- keys import ----------------------------------------------------------------------------------------------


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
        return _import_certificates(cfg, path, data, certs, args.partner)
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
    home = cfg.keys_dir / cfg.settings.keys.openpgp_home
    try:
        with OpenPGP.opened(home) as pgp:
            fingerprints = pgp.import_keys(data)
            public = {k.fingerprint: k for k in pgp.keys()}
    except CryptoError as exc:
        raise KeysError(f"{path}: gpg could not import it ({exc.reason}); ask the partner to export it again") from None
    now = SystemClock().now()
    imported = [public[f] for f in fingerprints if f in public]
    print(f"imported {len(imported)} OpenPGP public key(s) from {path} into {_shown(cfg, home)}/:")
    for key in imported:
        print(f"  {key.fingerprint}  {', '.join(key.uids) or '(no user id)'}")
        print(f"    expires {_date(key.expires)}: {_status(key.expires, now, key.revoked)}")
    emails = [e for key in imported for e in key.emails]
    name = partner or next((k.uids[0].split("<")[0].strip() for k in imported if k.uids), "") or "PARTNER NAME"
    _print_partner_lines(cfg, name, "openpgp", [k.fingerprint for k in imported], emails)
    return 0


def _import_certificates(
    cfg: Config, path: Path, data: bytes, certs: list[x509.Certificate], partner: str | None
) -> int:
    infos = [certificate_info(c) for c in certs]
    leaf = infos[0]
    common_names = certs[0].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    label = partner or (str(common_names[0].value) if common_names else "") or (leaf.emails or (path.stem,))[0]
    base = re.sub(r"[^a-z0-9._-]+", "-", label.lower()).strip("-.") or "partner"
    # Re-encoded from the parsed certificates: whatever else the file held (text, a stray key) is not copied.
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    directory = cfg.keys_dir / PARTNERS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    target, already = _place_public(directory, base, leaf.fingerprint, pem)
    now = SystemClock().now()
    print(("already imported as " if already else f"copied {path} to ") + _shown(cfg, target))
    for info in infos:
        print(f"  subject  {_subject(info)}")
        print(f"  emails   {', '.join(info.emails) or '(none)'}")
        print(f"  SHA-256  {info.fingerprint}")
        print(f"  expires  {info.not_after.isoformat(sep=' ', timespec='minutes')}: {_status(info.not_after, now)}")
    # A CA certificate vouches for every certificate it issued (anchor); anything else is trusted as it is (pin).
    key = "smime_anchors" if is_ca_certificate(certs[0]) else "smime_pinned"
    emails = [e for info in infos for e in info.emails]
    _print_partner_lines(cfg, partner or label, key, [_shown(cfg, target)], emails)
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


def _print_partner_lines(cfg: Config, name: str, key: str, values: list[str], emails: list[str]) -> None:
    existing = next((p for p in cfg.settings.partners if p.name == name), None)
    print()
    if existing is not None:
        before = [str(v) for v in getattr(existing, key)]
        merged = before + [v for v in values if v not in before]
        if merged == before:
            print(f"partner {_toml(name)} in {cfg.file} already names it.")
            return
        print(f"partner {_toml(name)} is in {cfg.file}; set in its [[partners]] entry (the config is not changed):")
        print()
        print(f"{key} = {_toml_list(merged)}")
        return
    print(f"add this partner to {cfg.file} (the config is not changed for you; check the addresses):")
    print()
    print("[[partners]]")
    print(f"name = {_toml(name)}")
    print(f"addresses = {_toml_list(list(dict.fromkeys(emails)) or ['@partner.example'])}")
    print(f"{key} = {_toml_list(values)}")


# -- keys list ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    owner: str
    kind: str
    expires: str
    status: str
    ident: str  # fingerprint, or the path of a file that is missing
    who: str  # user ids, or subject and emails


def cmd_list(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    now = SystemClock().now()
    keys = cfg.settings.keys
    home = cfg.keys_dir / keys.openpgp_home
    secret, public = read_keyring(home)
    public_by_fpr = {k.fingerprint: k for k in public}
    rows: list[_Row] = []
    notes: list[str] = []
    shown_fprs: set[str] = set()
    shown_files: set[Path] = set()

    def pgp_row(owner: str, key: KeyInfo) -> _Row:
        shown_fprs.add(key.fingerprint)
        status = _status(key.expires, now, key.revoked)
        return _Row(owner, "OpenPGP", _date(key.expires), status, key.fingerprint, "; ".join(key.uids))

    def cert_rows(owner: str, kind: str, path: Path) -> list[_Row]:
        shown_files.add(path.resolve())
        try:
            certs = load_certificates(path.read_bytes())
        except FileNotFoundError:
            notes.append(f"{_shown(cfg, path)} is named in config but missing: restore it, or import it again")
            return [_Row(owner, kind, "-", "MISSING", _shown(cfg, path), "(configured, not found)")]
        except (OSError, ValueError) as exc:
            notes.append(f"{_shown(cfg, path)} cannot be read ({exc}): replace it with the PEM certificate")
            return [_Row(owner, kind, "-", "UNREADABLE", _shown(cfg, path), "(configured, unreadable)")]
        out = []
        for info in map(certificate_info, certs):
            who = _subject(info) + (f" <{', '.join(info.emails)}>" if info.emails else "")
            out.append(_Row(owner, kind, _date(info.not_after), _status(info.not_after, now), info.fingerprint, who))
        return out

    # The gateway's own keys: those in config, then any made by `keys init` but not yet named in config.
    own = {k.fingerprint: k for k in secret}
    if keys.openpgp_fingerprint is not None:
        found = own.get(keys.openpgp_fingerprint)
        if found is not None:
            rows.append(pgp_row("gateway", found))
        else:
            shown_fprs.add(keys.openpgp_fingerprint)
            rows.append(_Row("gateway", "OpenPGP", "-", "MISSING", keys.openpgp_fingerprint, "(configured)"))
            notes.append(
                f"the gateway's OpenPGP secret key {keys.openpgp_fingerprint} is not in {_shown(cfg, home)}: "
                "restore keys/gnupg from backup (the gateway will not start without it)"
            )
    for key in secret:
        if key.fingerprint not in shown_fprs:
            rows.append(pgp_row("gateway (not in config)", key))
            notes.append(f"OpenPGP key {key.fingerprint} is not in config: `keys init` printed the [keys] lines")
    if keys.smime_cert is not None:
        rows += cert_rows("gateway", "S/MIME cert", cfg.keys_dir / keys.smime_cert)
    elif (cfg.keys_dir / DEV_SMIME_CERT).is_file():
        rows += cert_rows("gateway (not in config)", "S/MIME cert", cfg.keys_dir / DEV_SMIME_CERT)
    if keys.smime_key is not None and not (cfg.keys_dir / keys.smime_key).is_file():
        path = cfg.keys_dir / keys.smime_key
        rows.append(_Row("gateway", "S/MIME key", "-", "MISSING", _shown(cfg, path), "(configured, not found)"))
        notes.append(f"{_shown(cfg, path)} is missing: restore it from backup (the gateway will not start without it)")

    for partner in cfg.settings.partners:
        for fpr in partner.openpgp:
            if fpr in public_by_fpr:
                rows.append(pgp_row(partner.name, public_by_fpr[fpr]))
            else:
                shown_fprs.add(fpr)
                rows.append(_Row(partner.name, "OpenPGP", "-", "MISSING", fpr, "(configured, not in keyring)"))
                notes.append(f"partner {partner.name}: OpenPGP key {fpr} is not imported: run `keys import FILE`")
        for path in partner.smime_anchors:
            rows += cert_rows(partner.name, "S/MIME CA", cfg.path(path))
        for path in partner.smime_pinned:
            rows += cert_rows(partner.name, "S/MIME cert", cfg.path(path))

    # Imported but named by no partner: listed so that nothing trusted-looking hides in keys/.
    for key in public:
        if key.fingerprint not in shown_fprs:
            rows.append(pgp_row("(not in config)", key))
    partners_dir = cfg.keys_dir / PARTNERS_DIR
    for path in sorted(partners_dir.glob("*.pem")) if partners_dir.is_dir() else []:
        if path.resolve() not in shown_files:
            rows += cert_rows("(not in config)", "S/MIME cert", path)

    _print_table(rows)
    for note in notes:
        print(f"note: {note}")
    if any(r.status.startswith(("EXPIRE", "REVOKED")) for r in rows):
        print(f"note: renew or replace what is EXPIRED or EXPIRES IN N DAYS (warned from {EXPIRY_WARNING.days} days)")
    return 0


def _print_table(rows: list[_Row]) -> None:
    if not rows:
        print("no keys: run `referral-gateway keys init`, then `keys import` for each partner's key")
        return
    header = _Row("OWNER", "TYPE", "EXPIRES", "STATUS", "FINGERPRINT", "NAME")
    fields = ("owner", "kind", "expires", "status", "ident")
    widths = {f: max(len(getattr(r, f)) for r in [header, *rows]) for f in fields}
    for row in [header, *rows]:
        print("  ".join(getattr(row, f).ljust(widths[f]) for f in fields) + "  " + row.who)


# -- keys export ----------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    keys = cfg.settings.keys
    home = cfg.keys_dir / keys.openpgp_home
    parts: list[str] = []

    secret, _ = read_keyring(home)
    fingerprint = keys.openpgp_fingerprint
    if fingerprint is None and len(secret) == 1:
        fingerprint = secret[0].fingerprint  # made by `keys init`, config not updated yet: still the one key
        print(f"note: {cfg.file} names no OpenPGP key; exporting the one in {_shown(cfg, home)}", file=sys.stderr)
    elif fingerprint is None and secret:
        raise KeysError(
            f"{_shown(cfg, home)} holds several secret keys and {cfg.file} names none; set "
            "[keys] openpgp_fingerprint to the gateway's key (see `referral-gateway keys list`)"
        )
    if fingerprint is not None:
        key = next((k for k in secret if k.fingerprint == fingerprint), None)
        if key is None:
            raise KeysError(
                f"the gateway's OpenPGP secret key {fingerprint} is not in {_shown(cfg, home)}; restore it from "
                "backup, or run `referral-gateway keys init` and update [keys]"
            )
        with OpenPGP.opened(home) as pgp:
            armoured = pgp.export_public(fingerprint).decode("ascii")  # gpg --export: public packets only
        if "PRIVATE KEY" in armoured:  # belt and braces: this output is meant to be emailed to partners
            raise KeysError(f"refusing to export {fingerprint}: the export contains secret key material")
        uids = "; ".join(key.uids)
        parts.append(f"# referral-gateway OpenPGP public key {fingerprint} ({uids}), expires {_date(key.expires)}\n")
        parts.append(armoured if armoured.endswith("\n") else armoured + "\n")

    cert_rel = keys.smime_cert or DEV_SMIME_CERT
    cert_path = cfg.keys_dir / cert_rel
    if keys.smime_cert is not None or cert_path.is_file():
        try:
            certs = load_certificates(cert_path.read_bytes())
        except FileNotFoundError:
            raise KeysError(
                f"{_shown(cfg, cert_path)} (keys.smime_cert) is missing; restore it, or run `keys init`"
            ) from None
        except ValueError:
            raise KeysError(f"{_shown(cfg, cert_path)} (keys.smime_cert) is not a PEM certificate") from None
        if keys.smime_cert is None:
            print(f"note: {cfg.file} names no S/MIME certificate; exporting {_shown(cfg, cert_path)}", file=sys.stderr)
        info = certificate_info(certs[0])
        # Re-encoded from the parsed certificate, never the file's bytes: an administrator may have put the
        # key into the same PEM file, and this output goes to partners.
        pem = certs[0].public_bytes(serialization.Encoding.PEM).decode("ascii")
        parts.append(
            f"# referral-gateway S/MIME certificate SHA-256 {info.fingerprint} ({_subject(info)}), "
            f"expires {_date(info.not_after)}\n"
        )
        parts.append(pem)

    if not parts:
        raise KeysError(f"the gateway has no keys under {_shown(cfg, cfg.keys_dir)}/; run `referral-gateway keys init`")
    sys.stdout.write("".join(parts))
    return 0


# -- registration ---------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path) -> None:
    """Adds `keys` and its subcommands to the `referral-gateway` parser."""
    command = command_group(
        sub, "keys", "make, import, list and export keys and certificates", default_config, KeysError
    )

    p = command("init", "make the gateway's OpenPGP key and S/MIME certificate (development)", cmd_init)
    p.add_argument("--email", help="address in the key and certificate (default: mail.from_address)")
    p.add_argument("--name", help="name in the key and certificate (default: '<council> referral gateway')")
    p = command("import", "add a partner's OpenPGP public key or S/MIME certificate", cmd_import)
    p.add_argument("file", type=Path, help="armoured or binary OpenPGP public key; PEM or DER certificate")
    p.add_argument("--partner", help="the partner's name in config (and the certificate's file name)")
    command("list", "show the gateway's and partners' keys with their expiry and status", cmd_list)
    command("export", "print the gateway's public key and certificate, to send to partners", cmd_export)
