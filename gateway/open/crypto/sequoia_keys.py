"""The `sequoia` backend's keys: standard armoured files under keys/openpgp/, interchangeable with gpg.

    keys/openpgp/secret-<FPR>.asc   the gateway's own secret keys (mode 0600), as `gpg --export-secret-keys --armor`
    keys/openpgp/certs/<FPR>.asc    public certificates: partners', teams' and the gateway's own

Files are written whole and renamed into place, so a reader (a worker process loading keys) never sees half
a key. The directory's modification times are the keys' version: a rename changes them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.open.crypto import CryptoKeyError
from gateway.open.crypto.pgp_backend import KeyInfo, check_fpr, emails

os.environ["RUST_LIB_BACKTRACE"] = "0"  # anyhow's backtraces: slow, and their text holds paths
import pysequoia as sq
from pysequoia.packet import Packet, PacketPile, Tag

_BLOCK = re.compile(rb"-----BEGIN PGP [A-Z ]+-----.*?-----END PGP [A-Z ]+-----", re.DOTALL)
_PRIMARY = (Tag.PublicKey, Tag.SecretKey)
_SECRET = (Tag.SecretKey, Tag.SecretSubkey)
_KEY_PACKETS = (Tag.PublicKey, Tag.SecretKey, Tag.PublicSubkey, Tag.SecretSubkey)


@dataclass(frozen=True)
class ParsedKey:
    fingerprint: str  # upper-case
    packets: tuple[Packet, ...]
    secret: bool


def parse_keys(data: bytes) -> list[ParsedKey]:
    """Every key in `data` (armoured blocks, possibly several, or binary). pysequoia's PacketPile reads one
    armour block, so the blocks are cut apart first; a block may hold several keys."""
    blocks = [m.group(0) for m in _BLOCK.finditer(data)] or [data]
    keys: list[ParsedKey] = []
    for block in blocks:
        try:
            packets = list(PacketPile.from_bytes(block))
        except Exception:  # noqa: BLE001 - pysequoia raises bare RuntimeError/ValueError; its text is not ours
            packets = []  # not a key block: the others may still hold keys
        groups: list[list[Packet]] = []
        for packet in packets:
            if packet.tag in _PRIMARY:
                groups.append([])
            if groups:
                groups[-1].append(packet)
        for group in groups:
            fpr = (group[0].fingerprint or "").upper()
            if fpr:
                keys.append(ParsedKey(fpr, tuple(group), any(p.tag in _SECRET for p in group)))
    return keys


def key_ids(cert: sq.Cert) -> list[str]:
    """Lower-case fingerprints and key ids of the primary key and every subkey: what a signature's issuer
    subpackets name (pysequoia's store callback is asked for these)."""
    out: list[str] = []
    for packet in PacketPile.from_bytes(bytes(cert)):
        if packet.tag in _KEY_PACKETS:
            out += [x for x in (packet.fingerprint, packet.key_id) if x]
    return out


def key_info(cert: sq.Cert) -> KeyInfo:
    first = next(iter(PacketPile.from_bytes(bytes(cert))))
    uids = tuple(str(u) for u in cert.user_ids)
    return KeyInfo(
        fingerprint=cert.fingerprint.upper(),
        uids=uids,
        emails=emails(uids),
        created=first.key_created or datetime.fromtimestamp(0, tz=UTC),
        expires=cert.expiration,
        revoked=cert.is_revoked,
    )


def _usable(tsk: sq.Tsk) -> None:
    """The gateway decrypts unattended: a secret key it cannot use without a passphrase is refused at import,
    not found out at the first message."""
    try:
        tsk.decryptor()
    except Exception:  # noqa: BLE001 - pysequoia's text is not ours
        raise CryptoKeyError(
            "the secret key cannot decrypt unattended: it has a passphrase (remove it with gpg --passwd "
            "before exporting) or no encryption subkey"
        ) from None


class KeyFiles:
    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.certs_dir = self.home / "certs"
        self.certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)

    def stamp(self) -> tuple[int, ...]:
        """Changes whenever a key file is added or replaced (a rename touches its directory)."""
        return tuple(x for d in (self.home, self.certs_dir) for x in (d.stat().st_ino, d.stat().st_mtime_ns))

    def secret_paths(self) -> list[Path]:
        return sorted(self.home.glob("secret-*.asc"))

    def secrets(self) -> dict[str, sq.Tsk]:
        out: dict[str, sq.Tsk] = {}
        for path in self.secret_paths():
            tsk = sq.Tsk.from_bytes(path.read_bytes())
            out[tsk.extract_certificate().fingerprint.upper()] = tsk
        return out

    def certs(self) -> dict[str, sq.Cert]:
        out: dict[str, sq.Cert] = {}
        for path in sorted(self.certs_dir.glob("*.asc")):
            cert = sq.Cert.from_bytes(path.read_bytes())
            out[cert.fingerprint.upper()] = cert
        return out

    def cert(self, fingerprint: str) -> sq.Cert | None:
        path = self.certs_dir / f"{check_fpr(fingerprint)}.asc"
        return sq.Cert.from_bytes(path.read_bytes()) if path.is_file() else None

    def import_keys(self, data: bytes) -> list[str]:
        parsed = parse_keys(data)
        if not parsed:
            raise CryptoKeyError("no OpenPGP key found")
        done: list[str] = []
        for key in parsed:
            try:
                cert = sq.Cert.from_packets(list(key.packets))
                if key.secret:
                    tsk = sq.Tsk.from_packets(list(key.packets))
                    _usable(tsk)
                    self._write(self.home / f"secret-{key.fingerprint}.asc", str(tsk), secret=True)
            except CryptoKeyError:
                raise
            except Exception:  # noqa: BLE001 - a malformed key: named, pysequoia's text is not shown
                raise CryptoKeyError("unreadable OpenPGP key") from None
            old = self.cert(key.fingerprint)
            merged = old.merge(cert) if old is not None else cert  # keeps revocations and new user ids
            self._write(self.certs_dir / f"{key.fingerprint}.asc", str(merged), secret=False)
            done.append(key.fingerprint)
        return list(dict.fromkeys(done))

    @staticmethod
    def _write(path: Path, text: str, *, secret: bool) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text if text.endswith("\n") else text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
