"""Choosing the OpenPGP backend ([keys] openpgp_backend): apart from pgp_backend.py, which both import."""

from __future__ import annotations

from pathlib import Path

from gateway.open.crypto.openpgp import OpenPGP
from gateway.open.crypto.pgp_backend import Backend, OpenPGPBackend
from gateway.open.crypto.sequoia import SequoiaPGP


def default_home(backend: Backend) -> Path:
    """Where a backend keeps its keys under keys/ when [keys] openpgp_home is not given."""
    return Path("openpgp") if backend == "sequoia" else Path("gnupg")


def open_backend(backend: Backend, home: Path) -> OpenPGPBackend:
    """The configured backend over `home`."""
    return SequoiaPGP(home) if backend == "sequoia" else OpenPGP(home)
