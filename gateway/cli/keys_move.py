"""`referral-gateway keys move-from-gnupg`: the gateway's OpenPGP keys from a GnuPG home to the sequoia
backend's key files (keys/openpgp/), for `[keys] openpgp_backend = "sequoia"`.

gpg exports them (secret keys with --export-secret-keys, every public key with --export): the GnuPG home is
only read, never changed, so going back is setting openpgp_backend = "gnupg" again.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from gateway import config as config_mod
from gateway.cli.keys_common import KeysError, shown, toml_string
from gateway.open.crypto import CryptoError
from gateway.open.crypto.openpgp import stop_components
from gateway.open.crypto.sequoia import SequoiaPGP

_TIMEOUT = 120  # seconds: gpg exports a keyring in well under one; this only catches a hung gpg


def _export(home: Path, *args: str) -> bytes:
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "error", "--armor", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise KeysError("gpg is not installed; install GnuPG 2.2 or later (apt install gnupg)") from None
    if done.returncode != 0:
        # --pinentry-mode error: a key with a passphrase cannot be exported unattended.
        raise KeysError(
            f"gpg could not export the keys from {home} (exit {done.returncode}); if the secret key has a "
            "passphrase, remove it first (gpg --passwd) or export it yourself and use `keys rotate openpgp --import`"
        )
    return done.stdout


def cmd_move_from_gnupg(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    keys = cfg.settings.keys
    source = args.source if args.source is not None else cfg.keys_dir / "gnupg"
    if keys.openpgp_backend == "gnupg" and keys.openpgp_home is not None and args.source is None:
        source = cfg.keys_dir / keys.openpgp_home
    target = cfg.keys_dir / (
        keys.openpgp_home if keys.openpgp_backend == "sequoia" and keys.openpgp_home else "openpgp"
    )
    if not (source / "pubring.kbx").is_file() and not (source / "pubring.gpg").is_file():
        raise KeysError(f"{shown(cfg, source)} is not a GnuPG home (no pubring.kbx); name it with --from")
    try:
        secret = _export(source, "--export-secret-keys")
        public = _export(source, "--export")
    finally:
        stop_components(source)  # the agent gpg started for the export
    if not secret.strip() and not public.strip():
        raise KeysError(f"{shown(cfg, source)} holds no OpenPGP keys; nothing moved")
    try:
        with SequoiaPGP.opened(target) as pgp:
            moved_secret = pgp.import_keys(secret) if secret.strip() else []
            moved_public = pgp.import_keys(public) if public.strip() else []
            listed = {k.fingerprint: k for k in pgp.keys()}
    except CryptoError as exc:
        raise KeysError(
            f"the keys from {shown(cfg, source)} could not be written to {shown(cfg, target)}: {exc.reason}"
        ) from None
    print(f"moved from {shown(cfg, source)}/ (left as it was) to {shown(cfg, target)}/:")
    for fpr in moved_secret:
        uids = "; ".join(listed[fpr].uids) if fpr in listed else ""
        print(f"  secret key  {fpr}  {uids}  -> {shown(cfg, target)}/secret-{fpr}.asc (mode 0600)")
    others = [f for f in moved_public if f not in moved_secret]
    for fpr in others:
        uids = "; ".join(listed[fpr].uids) if fpr in listed else ""
        print(f"  public key  {fpr}  {uids}  -> {shown(cfg, target)}/certs/{fpr}.asc")
    print(f"{len(moved_secret)} secret key(s), {len(others)} other public key(s).")
    print("\nTo use them, set in the config and restart the gateway:\n")
    print(f"[keys]\nopenpgp_backend = {toml_string('sequoia')}")
    if keys.openpgp_home is not None and keys.openpgp_backend == "gnupg":
        print("(and remove openpgp_home, or point it at the new folder)")
    return 0
