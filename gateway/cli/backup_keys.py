"""The keys half of `backup` and `restore`: keys/ as one tar, encrypted to the administrator's OpenPGP key.

The database holds only sealed data, but keys/ opens it (the data-at-rest key and the retired ones), signs
acknowledgement links and sessions, and holds the gateway's OpenPGP and S/MIME secret keys: it must never sit
in a backup in the clear. So the tar is built in memory and only its encryption is written; it is encrypted
with gpg to one public key (named in [backup] admin_openpgp, imported with `keys import`), whose secret half
the administrator keeps away from the gateway, so a copy of the backup alone opens nothing.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from gateway.cli.backup_db import BackupError

KEYS_FILE = "keys.tar.gpg"
# gpg's own sockets and lock files in the GnuPG home: state of a running agent, not keys.
_SKIPPED_PREFIXES = ("S.", ".#lk")


def _members(keys_dir: Path) -> list[Path]:
    """Folders first (their modes matter: gpg refuses a home others can read), then the files in them."""
    found: list[Path] = []
    for root, dirs, files in os.walk(keys_dir):
        dirs.sort()
        if Path(root) != keys_dir:
            found.append(Path(root))
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(_SKIPPED_PREFIXES) or name.endswith(".lock") or not path.is_file() or path.is_symlink():
                continue
            found.append(path)
    return found


def pack(keys_dir: Path) -> tuple[bytes, int]:
    """keys/ as an uncompressed tar in memory (modes kept: secrets stay 0600), and how many files it holds."""
    if not keys_dir.is_dir():
        raise BackupError(f"{keys_dir}: no keys folder there; check [paths] keys_dir")
    members = _members(keys_dir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in members:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(keys_dir)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""  # the restoring user owns the files, whoever made the backup
            if info.isdir():
                tar.addfile(info)
                continue
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue(), sum(1 for path in members if not path.is_dir())


def _gpg(home: Path, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [
                "gpg",
                "--homedir",
                str(home),
                "--batch",
                "--no-tty",
                "--disable-dirmngr",
                "--no-auto-key-retrieve",
                *args,
            ],
            input=data,
            capture_output=True,
            timeout=300,
            check=False,
        )
    except FileNotFoundError:
        raise BackupError("gpg is not installed; install GnuPG (Debian: apt install gnupg)") from None


def encrypt(home: Path, fingerprint: str, data: bytes) -> bytes:
    # --trust-model always: the fingerprint comes from the reviewed config, not from gpg's web of trust.
    done = _gpg(home, "--trust-model", "always", "--encrypt", "--recipient", fingerprint, "--output", "-", data=data)
    if done.returncode != 0 or not done.stdout:
        raise BackupError(
            f"gpg could not encrypt the keys to [backup] admin_openpgp {fingerprint} with the keyring in {home}: "
            f"{_last_line(done.stderr)}. Import the administrator's public key with `referral-gateway keys import "
            "FILE` (and check that it has not expired); nothing was written to the backup's keys file"
        )
    return done.stdout


def decrypt(home: Path, encrypted: Path) -> bytes:
    """With the administrator's own GnuPG home (their secret key; gpg-agent asks for its passphrase)."""
    done = _gpg(home, "--decrypt", "--output", "-", str(encrypted))
    if done.returncode != 0 or not done.stdout:
        raise BackupError(
            f"gpg could not decrypt {encrypted} with the GnuPG home {home}: {_last_line(done.stderr)}. It needs the "
            "secret key of [backup] admin_openpgp; or decrypt it yourself (gpg --decrypt --output keys.tar "
            f"{encrypted}) and pass --keys-from keys.tar"
        )
    return done.stdout


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no reason given"


def open_tar(data: bytes, source: str) -> list[tarfile.TarInfo]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
    except tarfile.TarError:
        raise BackupError(f"{source} is not the keys tar of a backup (decrypted keys.tar.gpg)") from None
    return members


def conflicts(data: bytes, keys_dir: Path) -> list[str]:
    """Files the restore would change: a key already in keys_dir with other bytes. A committed public
    certificate (keys/partners/, keys/teams/) or README identical to the backup's is no conflict."""
    found: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            target = keys_dir / member.name
            if member.isfile() and target.exists():
                extracted = tar.extractfile(member)
                if extracted is None or not target.is_file() or target.read_bytes() != extracted.read():
                    found.append(member.name)
    return found


def unpack(data: bytes, keys_dir: Path) -> int:
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
        # The "data" filter refuses absolute paths, "..", links out of keys_dir and device files; it keeps
        # the owner-only modes of the secrets.
        tar.extractall(keys_dir, filter="data")
    for member in members:
        if member.isdir():  # the filter ignores folders' modes; gpg refuses a GnuPG home others can read
            os.chmod(keys_dir / member.name, member.mode & 0o755)
    return sum(1 for m in members if m.isfile())
