"""The sequoia backend's gpg fallback: a private GnuPG home for the few messages pysequoia cannot decide.

pysequoia 0.1.35 cannot check a signature inside compressed data inside the encryption (gpg's default for
sign+encrypt), cannot read bzip2, and cannot parse some structures gpg reads. Quarantining those would make
the outcome depend on the backend; so the sequoia backend hands exactly those messages to the gnupg backend
(gateway.open.crypto.openpgp), over a GnuPG home of its own, and gives gpg's outcome and reason.

The home (`data_dir/gpg-fallback`, mode 0700) is a copy of keys/openpgp: the gateway's secret keys and every
certificate. It is rebuilt whenever the key files change (their directories' stamp, kept in the home), so a
certificate removed from keys/openpgp is gone from it too. Several processes may share it: a lock file
beside it serialises the rebuilding.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from gateway.open.crypto import Signature
from gateway.open.crypto.openpgp import OpenPGP, stop_components
from gateway.open.crypto.sequoia_keys import KeyFiles

_STAMP = ".synced-from"


class GpgFallback:
    def __init__(self, home: Path, keys: KeyFiles, *, max_plaintext: int, concurrency: int = 2) -> None:
        self.home = Path(home)
        self._keys = keys
        self._max = max_plaintext
        self._concurrency = concurrency
        self._pgp: OpenPGP | None = None
        self._stamp = ""
        self._lock = threading.Lock()

    def _wanted(self) -> str:
        return " ".join(str(x) for x in self._keys.stamp())

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.home.parent.mkdir(parents=True, exist_ok=True)
        with open(self.home.with_name(self.home.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def synced(self) -> OpenPGP:
        """The gnupg backend over a home that holds exactly the current key files (rebuilt if not)."""
        wanted = self._wanted()
        with self._lock:
            if self._pgp is not None and self._stamp == wanted:
                return self._pgp
            with self._exclusive():
                stamp_file = self.home / _STAMP
                current = stamp_file.read_text() if stamp_file.is_file() else ""
                if current != wanted:
                    self._rebuild(wanted)
                if self._pgp is None:
                    self._pgp = OpenPGP(self.home, concurrency=self._concurrency, max_plaintext=self._max)
                self._stamp = wanted
                return self._pgp

    def _rebuild(self, wanted: str) -> None:
        # Started again from empty, not imported over: gpg's import only adds, and a key taken out of
        # keys/openpgp must not stay usable here.
        if self._pgp is not None:
            self._pgp.close()
            self._pgp = None
        stop_components(self.home)
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(mode=0o700, parents=True)
        os.chmod(self.home, 0o700)  # whatever the umask: gpg warns about (and we refuse) a readable home
        pgp = OpenPGP(self.home, concurrency=self._concurrency, max_plaintext=self._max)
        secrets = b"".join(p.read_bytes() for p in self._keys.secret_paths())
        certs = b"".join(p.read_bytes() for p in sorted(self._keys.certs_dir.glob("*.asc")))
        for block in (secrets, certs):
            if block.strip():
                pgp.import_keys(block)
        (self.home / _STAMP).write_text(wanted)
        self._pgp = pgp

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
