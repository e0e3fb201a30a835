"""The sequoia backend's gpg fallback: a private GnuPG home for the few messages pysequoia cannot decide.

pysequoia 0.1.35 cannot check a signature inside compressed data inside the encryption (gpg's default for
sign+encrypt), cannot read bzip2, and cannot parse some structures gpg reads. Quarantining those would make
the outcome depend on the backend; so the sequoia backend hands exactly those messages to the gnupg backend
(gateway.open.crypto.openpgp), over a GnuPG home of its own, and gives gpg's outcome and reason. It is also
asked why a signature inside the encryption that pysequoia refused is not good (expired or bad): there only
the reason is taken from gpg, never the outcome.

The fallback's folder (`data_dir/gpg-fallback`, mode 0700) holds one GnuPG home per version of the key
files (named by a digest of keys/openpgp's stamp), each a copy of keys/openpgp: the gateway's secret keys and
every certificate. When the key files change, a new home is built beside the old one and used from the next
message; so a certificate removed from keys/openpgp is gone from it, and instances sharing var/ (several on
one host) never see a home half-built or pulled from under a call still running: a lock file serialises
the building, the rename into place is atomic, and a home is removed only once it has been replaced for
`_GRACE` seconds.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from gateway.open.crypto import Signature
from gateway.open.crypto.openpgp import OpenPGP, stop_components
from gateway.open.crypto.sequoia_keys import KeyFiles

_STAMP = ".synced-from"
_GRACE = 600  # seconds a replaced home is kept: far longer than any call that may still be using it


class GpgFallback:
    def __init__(self, home: Path, keys: KeyFiles, *, max_plaintext: int, concurrency: int = 2) -> None:
        self.home = Path(home)
        self._keys = keys
        self._max = max_plaintext
        self._concurrency = concurrency
        self._pgp: OpenPGP | None = None
        self._current = ""
        self._lock = threading.Lock()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)  # whatever the umask: it holds copies of the gateway's secret keys
        with open(self.home / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def synced(self) -> OpenPGP:
        """The gnupg backend over a home that holds exactly the current key files (built if there is none)."""
        wanted = " ".join(str(x) for x in self._keys.stamp())
        name = hashlib.sha256(wanted.encode()).hexdigest()[:16]
        with self._lock:
            if self._pgp is not None and self._current == name:
                return self._pgp
            with self._exclusive():
                target = self.home / name
                if not (target / _STAMP).is_file():
                    self._build(target, wanted)
                self._remove_replaced(keep=name)
            if self._pgp is not None:
                self._pgp.close()  # its agent; its home stays for _GRACE (another instance may use it)
            self._pgp = OpenPGP(target, concurrency=self._concurrency, max_plaintext=self._max)
            self._current = name
            return self._pgp

    def _build(self, target: Path, wanted: str) -> None:
        # From empty, not imported over an older home: gpg's import only adds, and a key taken out of
        # keys/openpgp must not stay usable. Built aside and renamed into place whole.
        building = self.home / f".build-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(mode=0o700)
        pgp = OpenPGP(building, concurrency=self._concurrency, max_plaintext=self._max)
        try:
            secrets = b"".join(p.read_bytes() for p in self._keys.secret_paths())
            certs = b"".join(p.read_bytes() for p in sorted(self._keys.certs_dir.glob("*.asc")))
            for block in (secrets, certs):
                if block.strip():
                    pgp.import_keys(block)
            (building / _STAMP).write_text(wanted)
        finally:
            pgp.close()  # the agent started on the building path: the home is used under its final name
        shutil.rmtree(target, ignore_errors=True)  # a half-built one from a crash (no stamp file)
        os.rename(building, target)

    def _remove_replaced(self, keep: str) -> None:
        now = time.time()
        for old in self.home.iterdir():
            if old.name == keep or old.name.startswith(".") or not old.is_dir():
                continue
            marker = old / ".replaced"
            if not marker.exists():
                marker.touch()  # replaced from now: removed once _GRACE has passed
            elif now - marker.stat().st_mtime > _GRACE:
                stop_components(old)
                shutil.rmtree(old, ignore_errors=True)

    async def decrypt(
        self, data: bytes, retired: dict[str, datetime], now: Callable[[], datetime]
    ) -> tuple[bytes, Signature | None]:
        pgp = await asyncio.to_thread(self.synced)  # a rebuild runs gpg: not on the event loop
        pgp.retired, pgp.now = retired, now  # the same replaced keys and clock as the sequoia backend's
        return await pgp.decrypt(data)

    async def verify_inline(self, data: bytes) -> tuple[bytes, Signature]:
        return await (await asyncio.to_thread(self.synced)).verify_inline(data)

    async def verify_detached(self, signed: bytes, signature: bytes) -> Signature:
        return await (await asyncio.to_thread(self.synced)).verify_detached(signed, signature)

    def close(self) -> None:
        with self._lock:
            if self._pgp is not None:
                self._pgp.close()
                self._pgp = None
