"""What an OpenPGP key file holds, read without importing it (`referral-gateway keys import` checks it first).

Apart from openpgp.py because it is gpg's command line, not python-gnupg: `--show-keys` in a throwaway home.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.open.crypto import CryptoError
from gateway.open.crypto.openpgp import stop_components

_SCAN_TIMEOUT = 60  # seconds; gpg needs milliseconds to list a key, so this only catches a hung process


@dataclass(frozen=True)
class ScannedKey:
    """A key in a file, as `scan_keys` saw it without importing it."""

    fingerprint: str  # primary key, upper-case hex
    secret: bool  # the file holds secret material of it (primary key or a subkey)
    uids: tuple[str, ...]


def scan_keys(data: bytes) -> list[ScannedKey]:
    """What an OpenPGP file holds, without importing it: `gpg --show-keys` in a throwaway home.

    The throwaway home matters: showing a secret key makes gpg start an agent and talk to it, and the
    gateway's own keyring must never see a partner's secret key, not even briefly.
    """
    home = Path(tempfile.mkdtemp(prefix="gpg"))  # short: gpg-agent's socket path must fit in 108 bytes
    try:
        run = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--with-colons", "--show-keys"],
            input=data,
            capture_output=True,
            timeout=_SCAN_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise CryptoError("gpg is not installed; install GnuPG 2.2 or later (apt install gnupg)") from None
    finally:
        stop_components(home)
        shutil.rmtree(home, ignore_errors=True)
    keys: list[ScannedKey] = []
    kind, fpr, secret = "", "", False
    uids: list[str] = []
    for line in run.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] in {"pub", "sec"}:
            if fpr:
                keys.append(ScannedKey(fpr, secret, tuple(uids)))
            kind, fpr, uids, secret = fields[0], "", [], fields[0] == "sec"
        elif fields[0] == "ssb":
            secret = True
        elif fields[0] == "fpr" and kind and not fpr:  # the first after pub/sec is the primary's; then subkeys
            fpr = fields[9].upper()
        elif fields[0] == "uid" and len(fields) > 9:
            uids.append(fields[9])
    if fpr:
        keys.append(ScannedKey(fpr, secret, tuple(uids)))
    return keys
