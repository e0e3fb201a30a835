"""Choosing the OpenPGP backend ([keys] openpgp_backend): apart from pgp_backend.py, which both import."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.open.crypto import CryptoKeyError
from gateway.open.crypto.openpgp import OpenPGP, read_keyring
from gateway.open.crypto.pgp_backend import Backend, KeyInfo, OpenPGPBackend
from gateway.open.crypto.pgp_keygen import Preferences, compression_advice, preferences
from gateway.open.crypto.sequoia import SequoiaPGP


def open_backend(
    backend: Backend,
    home: Path,
    fallback_home: Path | None = None,
    on_fallback: Callable[[str], None] | None = None,
) -> OpenPGPBackend:
    """The configured backend over `home` (a GnuPG home, or the folder of key files). For sequoia,
    `fallback_home` is the private GnuPG home for what pysequoia cannot decide (gpg_fallback.py), and
    `on_fallback(reason)` counts each message sent there."""
    if backend == "gnupg":
        return OpenPGP(home)
    pgp = SequoiaPGP(home, fallback_home=fallback_home)
    if on_fallback is not None:
        pgp.on_fallback = on_fallback
    return pgp


@contextmanager
def opened(backend: Backend, home: Path) -> Iterator[OpenPGPBackend]:
    """For a short use (a CLI command): closed on the way out (no gpg-agent or worker outlives it)."""
    pgp = open_backend(backend, home)
    try:
        yield pgp
    finally:
        pgp.close()


def read_keys(backend: Backend, home: Path) -> tuple[list[KeyInfo], list[KeyInfo]]:
    """(secret, public) keys; empty when `home` does not exist (not created by looking)."""
    if backend == "gnupg":
        return read_keyring(home)
    if not home.is_dir():
        return [], []
    with opened(backend, home) as pgp:
        return pgp.keys(secret=True), pgp.keys()


def key_preferences(backend: Backend, home: Path, fingerprints: list[str]) -> dict[str, Preferences]:
    """The algorithm preferences each of these held keys advertises (the gateway's own: `keys list` and
    `check-config` show them); a key that is not held is left out."""
    if not home.is_dir() or not fingerprints:
        return {}
    out: dict[str, Preferences] = {}
    with opened(backend, home) as pgp:
        for fingerprint in dict.fromkeys(fingerprints):
            try:
                out[fingerprint] = preferences(pgp.export_public(fingerprint))
            except CryptoKeyError:
                continue
    return out


def preference_lines(backend: Backend, home: Path, fingerprints: list[str]) -> tuple[list[str], list[str]]:
    """(notes, warnings) on the gateway's own keys' preferences: each key's, and how to fix one that still
    invites compressed mail."""
    notes, warnings = [], []
    for fingerprint, prefs in key_preferences(backend, home, fingerprints).items():
        notes.append(f"OpenPGP key {fingerprint} prefers {prefs.shown()}")
        if (advice := compression_advice(fingerprint, prefs)) is not None:
            warnings.append(advice)
    return notes, warnings
