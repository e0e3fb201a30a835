"""The gateway's own development keys: an OpenPGP key and a self-signed S/MIME identity under keys/.

`referral-gateway keys init` makes them on request; `keys.development = true` (the embedded default only)
makes them on first run, so a fresh checkout takes encrypted mail. Production keys are the administrators'.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from gateway.config import Config
from gateway.open.crypto import CryptoError, CryptoKeyError
from gateway.open.crypto.backends import opened
from gateway.open.crypto.smime import CertInfo, SMime, make_development_identity

# Named as before the move out of identity.py: these lines go to the journal, where filters may name it.
log = logging.getLogger("gateway.open.identity")

DEV_SMIME_KEY = Path("smime/gateway.key.pem")
DEV_SMIME_CERT = Path("smime/gateway.crt.pem")


def make_smime_files(key_path: Path, cert_path: Path, name: str, email: str) -> CertInfo:
    """A development S/MIME identity at exactly these paths. make_development_identity writes
    smime-key.pem/smime-cert.pem; they are made in a private scratch directory beside the target,
    then hard-linked into place: a link never replaces an existing file (as O_EXCL)."""
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".smime-", dir=key_path.parent))
    placed: list[Path] = []
    try:
        made_key, made_cert = make_development_identity(scratch, name, email)
        for made, target in ((made_key, key_path), (made_cert, cert_path)):
            os.link(made, target)
            placed.append(target)
        return SMime.certificate_info(cert_path.read_bytes())
    except FileExistsError as exc:
        for path in placed:  # a half-made pair would not load; only what this run placed is removed
            path.unlink()
        raise CryptoKeyError(f"{exc.filename2 or exc.filename} appeared while making keys; not replacing it") from None
    except CryptoError as exc:
        raise CryptoKeyError(f"making the S/MIME identity failed ({exc.reason})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def refuse_gnupg_only(config: Config) -> None:
    """The sequoia backend (the default since it replaced gnupg) with its key files absent but a GnuPG home in
    keys/gnupg: an install from before the change. Starting would make (development) or miss the gateway's
    key, so every encrypted referral would be quarantined; refused with the two ways out."""
    keys = config.settings.keys
    if keys.openpgp_backend != "sequoia" or keys.openpgp_home is not None:
        return
    gnupg = config.keys_dir / "gnupg"
    files = config.keys_dir / keys.openpgp_dir()
    has_home = (gnupg / "pubring.kbx").is_file() or (gnupg / "pubring.gpg").is_file()
    if has_home and not any(files.glob("secret-*.asc")):
        raise CryptoKeyError(
            f'the OpenPGP keys are in a GnuPG home ({gnupg}) but [keys] openpgp_backend is "sequoia" (the '
            f"default), whose keys are files in {files}: run `referral-gateway keys move-from-gnupg`, or set "
            '[keys] openpgp_backend = "gnupg" in the config'
        )


def development_keys(config: Config) -> tuple[str, Path, Path]:
    """For `keys.development = true` (the embedded default only): the gateway's OpenPGP key and
    S/MIME identity under keys/, made on first run, so a fresh checkout takes encrypted mail.
    Returns (OpenPGP fingerprint, S/MIME key, S/MIME certificate)."""
    keys = config.settings.keys
    name = f"{config.settings.gateway.council} referral gateway (development)"
    email = config.settings.mail.from_address
    key_path = config.keys_dir / (keys.smime_key or DEV_SMIME_KEY)
    cert_path = config.keys_dir / (keys.smime_cert or DEV_SMIME_CERT)
    if not key_path.exists() and not cert_path.exists():
        make_smime_files(key_path, cert_path, name, email)
        log.warning("made a development S/MIME identity in %s: not for production", cert_path.parent)
    # Made by the configured backend: a Sequoia key in keys/openpgp/, or a gpg key in keys/gnupg/.
    with opened(keys.openpgp_backend, config.keys_dir / keys.openpgp_dir()) as pgp:
        secret = pgp.keys(secret=True)
        if keys.openpgp_fingerprint:
            fingerprint = keys.openpgp_fingerprint
        elif len(secret) == 1:
            fingerprint = secret[0].fingerprint
        elif not secret:
            fingerprint = pgp.generate_key(name, email)
            log.warning("made a development OpenPGP key %s: not for production", fingerprint)
        else:
            raise CryptoKeyError("several OpenPGP secret keys in keys/; name the gateway's in keys.openpgp_fingerprint")
    return fingerprint, key_path, cert_path
