"""`referral-gateway keys init`: the gateway's own OpenPGP key and S/MIME identity, for development,
and the secret keys every instance must share (sealing, acknowledgement links, cookies, address
hashes). On SQLite the gateway makes the secret keys itself on first start; on PostgreSQL it never
does (two instances starting together would each make different ones), so this is run once and keys/
copied to every instance.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import config as config_mod
from gateway.cli.database import with_engine
from gateway.cli.keys_common import KeysError, date, keys_relative, shown, subject, toml_string
from gateway.config import Config
from gateway.core import keyfiles, sealing
from gateway.core.schema import messages
from gateway.open.crypto import CryptoError
from gateway.open.crypto.backends import opened, read_keys
from gateway.open.crypto.smime import CertInfo
from gateway.open.dev_keys import DEV_SMIME_CERT, DEV_SMIME_KEY, make_smime_files
from gateway.outbox import token_keys


async def _has_data(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return (await conn.execute(select(messages.c.id).limit(1))).first() is not None


def make_shared_keys(cfg: Config) -> list[Path]:
    """The shared secret keys that are missing, made (O_EXCL: an existing one is never replaced)."""
    lost = [cfg.keys_dir / n for n in (sealing.KEY_FILE, token_keys.KEY_FILE) if not (cfg.keys_dir / n).exists()]
    has_data = False
    if lost:
        # In a thread of its own: with_engine runs its own event loop, and main() may be called
        # where one runs already (an embedding program, or the tests).
        with ThreadPoolExecutor(1) as pool:
            has_data = pool.submit(with_engine, cfg, _has_data).result()
    if has_data:
        # As the gateway's own start: with data stored, a missing key is a lost one, and a new one
        # would hide that until someone needs an old referral.
        raise KeysError(
            f"{', '.join(shown(cfg, p) for p in lost)} missing but the database holds referrals: "
            "restore the keys from backup (data sealed or links signed with them need them); not making new ones"
        )
    from gateway.app import SHARED_KEYS  # here: importing the servers costs the other commands nothing

    made = []
    for name in SHARED_KEYS:
        path = cfg.keys_dir / name
        if not path.exists():
            keyfiles.load_or_create(path)
            made.append(path)
    return made


def cmd_init(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    # First, and even when the OpenPGP and S/MIME keys below exist already: a deployment with its
    # own production keys still needs these, and making them replaces nothing.
    for path in make_shared_keys(cfg):
        print(f"made the secret key {shown(cfg, path)} (mode 0600)")
    configured = cfg.settings.keys
    home = cfg.keys_dir / configured.openpgp_dir()
    backend = configured.openpgp_backend
    key_path = cfg.keys_dir / (configured.smime_key or DEV_SMIME_KEY)
    cert_path = cfg.keys_dir / (configured.smime_cert or DEV_SMIME_CERT)
    email = (args.email or cfg.settings.mail.from_address).strip()
    name = (args.name or f"{cfg.settings.gateway.council} referral gateway").strip()

    # Every check before anything is made, so a refused init leaves keys/ exactly as it was.
    existing = [shown(cfg, p) for p in (key_path, cert_path) if p.exists()]
    secret, _ = read_keys(backend, home)
    if secret:
        existing.append(f"{shown(cfg, home)} (OpenPGP secret key {', '.join(k.fingerprint for k in secret)})")
    if existing:
        raise KeysError(
            "the gateway already has keys: " + "; ".join(existing) + ". Not replacing them: mail encrypted to "
            "them could no longer be read. To see them run `referral-gateway keys list`; to really start again, "
            "move them out of keys/ first (keep a backup)"
        )

    cfg.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with opened(backend, home) as pgp:
            fingerprint = pgp.generate_key(name, email)
            own = next((k for k in pgp.keys(secret=True) if k.fingerprint == fingerprint), None)
    except CryptoError as exc:
        raise KeysError(
            f"making the OpenPGP key in {shown(cfg, home)} failed ({exc.reason}); check --name and --email "
            "(plain text, an address with @) and that gpg 2.2 or later is installed"
        ) from None
    cert = _make_smime(key_path, cert_path, name, email)

    print(f"made the gateway's development keys under {shown(cfg, cfg.keys_dir)}/:")
    print(f"  OpenPGP key   {fingerprint}  {name} <{email}>, expires {date(own.expires if own else None)}")
    print(f"                in {shown(cfg, home)}/ (mode 0700)")
    print(f"  S/MIME key    {shown(cfg, key_path)} (mode 0600)")
    print(f"  S/MIME cert   {shown(cfg, cert_path)}: {subject(cert)}, expires {date(cert.not_after)}")
    print(f"                SHA-256 {cert.fingerprint}")
    print("The S/MIME certificate is self-signed, for development: in production use one issued by a CA.")
    print()
    lines = ["[keys]"]
    if backend != "gnupg":
        lines.append(f"openpgp_backend = {toml_string(backend)}")
    if configured.openpgp_home is not None:
        lines.append(f"openpgp_home = {toml_string(str(configured.openpgp_home))}")
    lines += [
        f"openpgp_fingerprint = {toml_string(fingerprint)}",
        f"smime_key = {toml_string(keys_relative(cfg, key_path))}",
        f"smime_cert = {toml_string(keys_relative(cfg, cert_path))}",
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
