"""`referral-gateway keys list`: the gateway's, partners' and council mailboxes' keys, with expiry and status, and
what is missing."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway import config as config_mod
from gateway.cli.keys_common import PARTNERS_DIR, TEAMS_DIR, date, expiry_status, shown, subject
from gateway.core.clock import SystemClock
from gateway.open.crypto.backends import preference_lines, read_keys
from gateway.open.crypto.pgp_backend import KeyInfo
from gateway.open.crypto.smime import certificate_info, load_certificates
from gateway.open.dev_keys import DEV_SMIME_CERT
from gateway.open.identity import EXPIRY_WARNING


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
    home = cfg.keys_dir / keys.openpgp_dir()
    secret, public = read_keys(keys.openpgp_backend, home)
    public_by_fpr = {k.fingerprint: k for k in public}
    rows: list[_Row] = []
    notes: list[str] = []
    shown_fprs: set[str] = set()
    shown_files: set[Path] = set()

    def pgp_row(owner: str, key: KeyInfo) -> _Row:
        shown_fprs.add(key.fingerprint)
        status = expiry_status(key.expires, now, key.revoked)
        return _Row(owner, "OpenPGP", date(key.expires), status, key.fingerprint, "; ".join(key.uids))

    def cert_rows(owner: str, kind: str, path: Path) -> list[_Row]:
        shown_files.add(path.resolve())
        try:
            certs = load_certificates(path.read_bytes())
        except FileNotFoundError:
            notes.append(f"{shown(cfg, path)} is named in config but missing: restore it, or import it again")
            return [_Row(owner, kind, "-", "MISSING", shown(cfg, path), "(configured, not found)")]
        except (OSError, ValueError) as exc:
            notes.append(f"{shown(cfg, path)} cannot be read ({exc}): replace it with the PEM certificate")
            return [_Row(owner, kind, "-", "UNREADABLE", shown(cfg, path), "(configured, unreadable)")]
        out = []
        for info in map(certificate_info, certs):
            who = subject(info) + (f" <{', '.join(info.emails)}>" if info.emails else "")
            out.append(
                _Row(owner, kind, date(info.not_after), expiry_status(info.not_after, now), info.fingerprint, who)
            )
        return out

    # The gateway's own keys: those in config, then any made by `keys init` but not yet named in config.
    own = {k.fingerprint: k for k in secret}
    if keys.openpgp_fingerprint is not None:
        found = own.get(keys.openpgp_fingerprint)
        if found is not None:
            rows.append(pgp_row("gateway (current)", found))
        else:
            shown_fprs.add(keys.openpgp_fingerprint)
            rows.append(_Row("gateway", "OpenPGP", "-", "MISSING", keys.openpgp_fingerprint, "(configured)"))
            notes.append(
                f"the gateway's OpenPGP secret key {keys.openpgp_fingerprint} is not in {shown(cfg, home)}: "
                "restore keys/gnupg from backup (the gateway will not start without it)"
            )
    rotation = cfg.settings.rotation
    for prev in rotation.previous_openpgp:  # replaced by `keys rotate openpgp`: decrypting until `until`
        if prev.fingerprint in own:
            rows.append(pgp_row(_previous(prev.until, now), own[prev.fingerprint]))
    for key in secret:
        if key.fingerprint not in shown_fprs:
            rows.append(pgp_row("gateway (not in config)", key))
            notes.append(f"OpenPGP key {key.fingerprint} is not in config: `keys init` printed the [keys] lines")
    if keys.smime_cert is not None:
        rows += cert_rows("gateway (current)", "S/MIME cert", cfg.keys_dir / keys.smime_cert)
    elif (cfg.keys_dir / DEV_SMIME_CERT).is_file():
        rows += cert_rows("gateway (not in config)", "S/MIME cert", cfg.keys_dir / DEV_SMIME_CERT)
    for prev_cert in rotation.previous_smime:
        rows += cert_rows(_previous(prev_cert.until, now), "S/MIME cert", cfg.keys_dir / prev_cert.cert)
    if keys.smime_key is not None and not (cfg.keys_dir / keys.smime_key).is_file():
        path = cfg.keys_dir / keys.smime_key
        rows.append(_Row("gateway", "S/MIME key", "-", "MISSING", shown(cfg, path), "(configured, not found)"))
        notes.append(f"{shown(cfg, path)} is missing: restore it from backup (the gateway will not start without it)")

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

    # The council's own mailboxes and people with a key: alerts to them are encrypted to it.
    s = cfg.settings
    holders = [(f"team {t.id}", t) for t in s.teams] + [
        (f"member {t.id}/{m.id}", m) for t in s.teams for m in t.members
    ]
    for owner, holder in [*holders, *((f"coordinator {c.id}", c) for c in s.coordinators)]:
        if holder.openpgp is not None and holder.openpgp in public_by_fpr:
            rows.append(pgp_row(owner, public_by_fpr[holder.openpgp]))
        elif holder.openpgp is not None:
            shown_fprs.add(holder.openpgp)
            rows.append(_Row(owner, "OpenPGP", "-", "MISSING", holder.openpgp, "(configured, not in keyring)"))
            notes.append(f"{owner}: OpenPGP key {holder.openpgp} is not imported: run `keys import FILE`")
        if holder.smime_cert is not None:
            rows += cert_rows(owner, "S/MIME cert", cfg.path(holder.smime_cert))

    # Imported but named by nobody: listed so that nothing trusted-looking hides in keys/.
    for key in public:
        if key.fingerprint not in shown_fprs:
            rows.append(pgp_row("(not in config)", key))
    for directory in (cfg.keys_dir / PARTNERS_DIR, cfg.keys_dir / TEAMS_DIR):
        for path in sorted(directory.glob("*.pem")) if directory.is_dir() else []:
            if path.resolve() not in shown_files:
                rows += cert_rows("(not in config)", "S/MIME cert", path)

    _print_table(rows)
    prefs, warnings = preference_lines(keys.openpgp_backend, home, [k.fingerprint for k in secret])
    for note in [*notes, *prefs]:
        print(f"note: {note}")
    for warning in warnings:
        print(f"warning: {warning}")
    if any(r.status.startswith(("EXPIRE", "REVOKED")) for r in rows):
        print(f"note: renew or replace what is EXPIRED or EXPIRES IN N DAYS (warned from {EXPIRY_WARNING.days} days)")
    return 0


def _previous(until: datetime, now: datetime) -> str:
    """The OWNER of a replaced key of the gateway's: in its overlap (still decrypts) or past it."""
    return f"gateway (previous, {'decrypts until' if now < until else 'overlap ended'} {date(until)})"


def _print_table(rows: list[_Row]) -> None:
    if not rows:
        print("no keys: run `referral-gateway keys init`, then `keys import` for each partner's key")
        return
    header = _Row("OWNER", "TYPE", "EXPIRES", "STATUS", "FINGERPRINT", "NAME")
    fields = ("owner", "kind", "expires", "status", "ident")
    widths = {f: max(len(getattr(r, f)) for r in [header, *rows]) for f in fields}
    for row in [header, *rows]:
        print("  ".join(getattr(row, f).ljust(widths[f]) for f in fields) + "  " + row.who)
