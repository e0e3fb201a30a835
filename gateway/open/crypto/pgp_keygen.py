"""The gateway's own OpenPGP key, made the same way on both backends, and the preferences a key advertises.

The key says which algorithms it prefers (RFC 4880 5.2.3.7-9), and a partner's gpg follows them when it
encrypts to the gateway: `AES256 AES SHA512 SHA256 Uncompressed` makes gpg send sign+encrypt without a
compressed layer. That matters for the sequoia backend: pysequoia 0.1.35 cannot check a signature inside
compressed data inside the encryption, and such a message costs a second pass through gpg (sequoia.py).

gpg's `--quick-gen-key` cannot set preferences, so the key is made from a `--gen-key` parameter file; the
sequoia backend has it made by gpg in a throwaway home and imports the armoured secret key (pysequoia's
Tsk.generate cannot set them either).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.open.crypto import CryptoKeyError
from gateway.open.crypto.pgp_backend import check_new_key

PREFERENCES = "AES256 AES SHA512 SHA256 Uncompressed"
_TIMEOUT = 120  # seconds: making an ed25519/cv25519 key takes well under one; this only catches a hung gpg
_ZIP = {"0": "Uncompressed", "1": "ZIP", "2": "ZLIB", "3": "BZIP2"}
_SYM = {"7": "AES", "8": "AES192", "9": "AES256", "2": "3DES", "10": "TWOFISH", "11": "CAMELLIA128",
        "12": "CAMELLIA192", "13": "CAMELLIA256", "3": "CAST5"}  # fmt: skip
_HASH = {"2": "SHA1", "8": "SHA256", "9": "SHA384", "10": "SHA512", "11": "SHA224", "3": "RIPEMD160"}
_PREF = re.compile(r"\((pref-sym-algos|pref-hash-algos|pref-zip-algos): ([0-9 ]*)\)")


def stop_components(home: Path) -> None:
    # The throwaway home's gpg-agent would outlive it (as openpgp.stop_components, which imports this module).
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True, timeout=30)


def key_parameters(name: str, email: str, expire: str) -> str:
    """gpg's parameter file for the gateway's key: ed25519 signing, cv25519 encryption, no passphrase (the
    key's folder is the protection: the gateway decrypts unattended), and our algorithm preferences."""
    check_new_key(name, email, expire)  # the values go into gpg's parameter file, one per line
    return (
        "Key-Type: EDDSA\nKey-Curve: ed25519\nKey-Usage: sign\n"
        "Subkey-Type: ECDH\nSubkey-Curve: cv25519\nSubkey-Usage: encrypt\n"
        f"Name-Real: {name}\nName-Email: {email}\nExpire-Date: {expire}\n"
        f"Preferences: {PREFERENCES}\n"
        "%no-protection\n%commit\n"
    )


def _gpg(home: Path, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "error", *args]
    try:
        return subprocess.run(cmd, input=data, capture_output=True, timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise CryptoKeyError("gpg is not installed; install GnuPG 2.2 or later (apt install gnupg)") from None


def generate_armoured(name: str, email: str, expire: str) -> bytes:
    """A new key made by gpg in a throwaway home: its armoured secret key (what --export-secret-keys writes)."""
    params = key_parameters(name, email, expire)
    home = Path(tempfile.mkdtemp(prefix="gpg"))  # short: gpg-agent's socket path must fit in 108 bytes
    try:
        made = _gpg(home, "--gen-key", data=params.encode())
        listing = _gpg(home, "--with-colons", "--list-secret-keys").stdout.decode("ascii", "replace")
        fprs = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
        if made.returncode != 0 or not fprs:
            raise CryptoKeyError("key generation failed")
        secret = _gpg(home, "--armor", "--export-secret-keys", fprs[0])
        if secret.returncode != 0 or b"BEGIN PGP PRIVATE KEY BLOCK" not in secret.stdout:
            raise CryptoKeyError("key generation failed")
        return secret.stdout
    finally:
        stop_components(home)
        shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class Preferences:
    """What a key's latest self-signature asks senders to use, by name, most preferred first."""

    ciphers: tuple[str, ...]
    hashes: tuple[str, ...]
    compression: tuple[str, ...]

    def shown(self) -> str:
        return " ".join((*self.ciphers, *self.hashes, *self.compression)) or "(none stated)"

    def allows_compression(self) -> bool:
        """A key with no compression preference gets gpg's default (ZLIB/ZIP): only a list of
        Uncompressed alone makes senders leave it out."""
        return not self.compression or any(c != "Uncompressed" for c in self.compression)


def preferences(public: bytes) -> Preferences:
    """The preferences in an exported public key, read with `gpg --list-packets` (a throwaway home: nothing
    is imported). The last self-signature listed wins, as it does for senders."""
    home = Path(tempfile.mkdtemp(prefix="gpg"))
    try:
        out = _gpg(home, "--list-packets", data=public).stdout.decode("ascii", "replace")
    finally:
        stop_components(home)
        shutil.rmtree(home, ignore_errors=True)
    found: dict[str, list[str]] = {}
    for kind, values in _PREF.findall(out):
        found[kind] = values.split()
    return Preferences(
        tuple(_SYM.get(v, f"S{v}") for v in found.get("pref-sym-algos", [])),
        tuple(_HASH.get(v, f"H{v}") for v in found.get("pref-hash-algos", [])),
        tuple(_ZIP.get(v, f"Z{v}") for v in found.get("pref-zip-algos", [])),
    )


def compression_advice(fingerprint: str, prefs: Preferences) -> str | None:
    """What to tell an administrator whose gateway key still invites compressed mail (a warning, not an
    error: such mail is still read, through the gpg fallback on the sequoia backend)."""
    if not prefs.allows_compression():
        return None
    return (
        f"the gateway's OpenPGP key {fingerprint} advertises compression ({prefs.shown()}): partners' gpg will "
        "compress what it signs and encrypts, which the sequoia backend can only check through its gpg fallback. "
        "Fix: make a new key with `referral-gateway keys rotate openpgp` (it has the preferences "
        f"{PREFERENCES}) and send partners `keys export`, or on the key's GnuPG home run "
        f'`gpg --edit-key {fingerprint} "setpref {PREFERENCES}" save` and export it again'
    )
