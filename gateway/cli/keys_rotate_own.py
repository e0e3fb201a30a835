"""`referral-gateway keys rotate openpgp|smime`: a new key for the gateway itself, the old one kept for an overlap.

The new key (made here, or imported with --import) becomes current once the administrator puts the printed
[keys] lines in the config and restarts: it signs what the gateway sends, and `keys export` gives it to partners
to encrypt to. The old key stays in keys/ and, listed under [[rotation.previous_openpgp]] /
[[rotation.previous_smime]] with an `until`, still decrypts mail partners encrypted to it until then. As every
`keys` command, this prints config lines and never rewrites the config (it belongs to the administrators).
"""

from __future__ import annotations

import argparse
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.cli.keys_common import KeysError, date, keys_relative, shown, toml_string
from gateway.config import Config
from gateway.core.clock import SystemClock
from gateway.open.crypto import CryptoError
from gateway.open.crypto.backends import opened
from gateway.open.crypto.smime import SMime
from gateway.open.dev_keys import make_smime_files

DEFAULT_OVERLAP = timedelta(days=30)  # time for every partner to import the new key


def _until(text: str | None) -> datetime:
    if text is None:
        return SystemClock().now() + DEFAULT_OVERLAP
    try:
        given = datetime.fromisoformat(text)
    except ValueError:
        raise KeysError(f"--until {text!r} is not a date; use one like 2027-01-31") from None
    return given if given.tzinfo else given.replace(tzinfo=UTC)


def rotate_own(cfg: Config, args: argparse.Namespace) -> int:
    until = _until(args.until)
    if until <= SystemClock().now():
        raise KeysError(f"--until {args.until} is in the past: the old key would stop decrypting at once")
    if args.which == "openpgp":
        return _rotate_openpgp(cfg, args.import_file, until)
    return _rotate_smime(cfg, args.import_file, args.cert, until)


def _until_line(until: datetime) -> str:
    return f"until = {until.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def _rotate_openpgp(cfg: Config, import_file: Path | None, until: datetime) -> int:
    keys = cfg.settings.keys
    old = keys.openpgp_fingerprint
    if old is None:
        raise KeysError(f"{cfg.file} names no OpenPGP key in [keys] to replace; run `referral-gateway keys init`")
    home = cfg.keys_dir / keys.openpgp_dir()
    try:
        with opened(keys.openpgp_backend, home) as pgp:
            if import_file is not None:
                found = pgp.import_keys(import_file.read_bytes())
                secret = {k.fingerprint for k in pgp.keys(secret=True)}
                new = next((f for f in found if f in secret), None)
                if new is None:
                    raise KeysError(f"{import_file} holds no OpenPGP secret key: export it with --export-secret-keys")
            else:
                name = f"{cfg.settings.gateway.council} referral gateway"
                new = pgp.generate_key(name, cfg.settings.mail.from_address)
    except CryptoError as exc:
        raise KeysError(
            f"making or importing the new OpenPGP key in {shown(cfg, home)} failed ({exc.reason})"
        ) from None
    print(f"new OpenPGP key {new} in {shown(cfg, home)}; {old} still decrypts until {date(until)}")
    print("\nPut these lines in the config (replacing openpgp_fingerprint), then restart the gateway:\n")
    print(f"[keys]\nopenpgp_fingerprint = {toml_string(new)}\n")
    print(f"[[rotation.previous_openpgp]]\nfingerprint = {toml_string(old)}\n{_until_line(until)}\n")
    print("Then send partners the new public key: `referral-gateway keys export`.")
    return 0


def _rotate_smime(cfg: Config, import_file: Path | None, cert_file: Path | None, until: datetime) -> int:
    keys = cfg.settings.keys
    if keys.smime_key is None or keys.smime_cert is None:
        raise KeysError(f"{cfg.file} names no S/MIME key and certificate in [keys] to replace; run `keys init`")
    stamp = SystemClock().now().strftime("%Y%m%d%H%M%S")
    key_path = cfg.keys_dir / "smime" / f"gateway-{stamp}.key.pem"
    cert_path = cfg.keys_dir / "smime" / f"gateway-{stamp}.crt.pem"
    if import_file is not None:
        if cert_file is None:
            raise KeysError("--import for smime needs --cert: the certificate of that private key (PEM)")
        try:
            SMime(import_file, cert_file)  # readable, unprotected, and the key matches the certificate
        except CryptoError as exc:
            raise KeysError(f"{exc.reason}") from None
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(import_file, key_path)
        key_path.chmod(0o600)
        shutil.copyfile(cert_file, cert_path)
    else:
        try:
            make_smime_files(key_path, cert_path, f"{cfg.settings.gateway.council} referral gateway",
                             cfg.settings.mail.from_address)  # fmt: skip
        except CryptoError as exc:
            raise KeysError(exc.reason) from None
        print("The new S/MIME certificate is self-signed, for development: in production import one a CA issued.")
    info = SMime(key_path, cert_path).info
    print(
        f"new S/MIME certificate {shown(cfg, cert_path)} (SHA-256 {info.fingerprint}), expires {date(info.not_after)}"
    )
    print(f"{keys.smime_cert} still decrypts until {date(until)}")
    print("\nPut these lines in the config (replacing smime_key and smime_cert), then restart the gateway:\n")
    print(f"[keys]\nsmime_key = {toml_string(keys_relative(cfg, key_path))}")
    print(f"smime_cert = {toml_string(keys_relative(cfg, cert_path))}\n")
    print(f"[[rotation.previous_smime]]\nkey = {toml_string(str(keys.smime_key))}")
    print(f"cert = {toml_string(str(keys.smime_cert))}\n{_until_line(until)}\n")
    print("Then send partners the new certificate: `referral-gateway keys export`.")
    return 0
