"""The `sequoia` OpenPGP backend: pysequoia, with keys as armoured files (gateway.open.crypto.sequoia_keys).

Incoming messages are opened in a small pool of worker processes (gateway.open.crypto.sequoia_open says
why: pysequoia holds the GIL and has no output limit); a worker killed by its memory limit refuses only
that message ("message too large") and the pool is built again. Detached signatures (nothing to inflate),
our own outgoing sign+encrypt and key operations run in this process.

Same decisions and reason strings as the gnupg backend (gateway.open.crypto.openpgp). The few messages
pysequoia cannot decide (a signature inside compressed data, bzip2, a structure it cannot parse, a detached
signature it cannot read) go to gpg over a private home kept in sync (gateway.open.crypto.gpg_fallback), and
`on_fallback(reason)` counts each. A signature inside the encryption that pysequoia refuses is also shown to
gpg, for the reason only ("expired key" for one past its own expiry, which pysequoia cannot see, else "bad
signature"): it stays refused whatever gpg says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.open.crypto import CryptoError, CryptoKeyError, DecryptError, Signature, VerifyError
from gateway.open.crypto import sequoia_open as worker
from gateway.open.crypto.gpg_fallback import GpgFallback
from gateway.open.crypto.pgp_backend import KeyInfo, check_fpr
from gateway.open.crypto.pgp_keygen import generate_armoured
from gateway.open.crypto.sequoia_keys import KeyFiles, key_info

os.environ["RUST_LIB_BACKTRACE"] = "0"  # before pysequoia is used: anyhow's backtraces are slow and hold paths
import pysequoia as sq

_HEADROOM = 64 * 1024 * 1024  # what decrypting needs beyond the plaintext itself (input, buffers)


def _signature(result: worker.SigResult) -> Signature:
    return Signature("openpgp", result.valid, result.signer_id, result.addresses, result.problem)


class SequoiaPGP:
    def __init__(
        self,
        home: Path,
        *,
        concurrency: int = 2,
        max_plaintext: int = 64 * 1024 * 1024,
        workers: int = 2,
        fallback_home: Path | None = None,
    ) -> None:
        self._files = KeyFiles(home)
        # Without a fallback home (the `keys` commands, which open no mail) an undecidable message is refused.
        self._fallback = (
            GpgFallback(fallback_home, self._files, max_plaintext=max_plaintext, concurrency=concurrency)
            if fallback_home is not None
            else None
        )
        self.on_fallback: Callable[[str], None] = lambda reason: None
        self._max = max_plaintext
        self._sem = asyncio.Semaphore(concurrency)
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        # Each message may take a few times its plaintext (pysequoia's buffers grow by doubling).
        self._data_limit = 4 * max_plaintext + _HEADROOM
        self._local: worker._Keys | None = None
        self.retired: dict[str, datetime] = {}
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)

    @classmethod
    @contextmanager
    def opened(cls, home: Path) -> Iterator[SequoiaPGP]:
        pgp = cls(home)
        try:
            yield pgp
        finally:
            pgp.close()

    # -- the worker pool -----------------------------------------------------------------------------------

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # forkserver: a worker is forked from a small clean process, not from the gateway with its
                # event loop, threads and database connections. The server loads the worker's module (and
                # pysequoia) once, and nothing else: not the gateway's __main__.
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload([worker.__name__])
                self._pool = ProcessPoolExecutor(
                    max_workers=self._workers,
                    mp_context=context,
                    initializer=worker.init_worker,
                    initargs=(self._data_limit,),
                )
            return self._pool

    def _drop_pool(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    async def _in_worker(self, fn: Callable[..., worker.Opened], data: bytes) -> worker.Opened:
        async with self._sem:
            # A broken pool fails every message in it, not only the one that broke it: each gets one more
            # try in a new pool, and only a message that breaks that one too is refused.
            for attempt in range(2):
                pool = self._get_pool()
                try:
                    future = pool.submit(fn, self._files.home, self._files.stamp(), data, self._max)
                    return await asyncio.wrap_future(future)
                except BrokenProcessPool:
                    self._drop_pool(pool)
                    if attempt:
                        break
            return worker.Opened("message too large")

    # -- incoming ------------------------------------------------------------------------------------------

    def _gpg(self, reason: str, refusal: CryptoError) -> GpgFallback:
        """The fallback for a message pysequoia cannot decide, counted; without one, `refusal` is raised."""
        self.on_fallback(reason)
        if self._fallback is None:
            raise refusal
        return self._fallback

    async def decrypt(self, data: bytes) -> tuple[bytes, Signature | None]:
        opened = await self._in_worker(worker.decrypt, data)
        if opened.fallback is not None:
            gpg = self._gpg(opened.fallback, DecryptError("damaged or altered"))
            return await gpg.decrypt(data, self.retired, self.now)
        reason = opened.reason
        if reason is None and opened.key in self.retired and self.now() >= self.retired[opened.key]:
            reason = "encrypted to a replaced key of this gateway whose overlap has ended"
        if reason is not None:
            raise DecryptError(reason)
        signature = opened.signature
        if signature is not None and signature.problem == "bad signature":
            signature = await self._why_bad(data, signature)
        return opened.plaintext, (_signature(signature) if signature is not None else None)

    async def _why_bad(self, data: bytes, bad: worker.SigResult) -> worker.SigResult:
        """The reason for a signature inside the encryption that pysequoia found not good, asked of gpg.

        pysequoia 0.1.35's decrypt shows neither the signature packet nor its times, so a signature past its
        own expiry (gpg's EXPSIG) looks the same as a tampered one; nor does it hand back the decrypted
        packets to read them here. Only the reason may change: the signature stays refused whatever gpg says
        (it becomes "expired key" only when gpg says so for the same signer, and stays "bad signature" if gpg
        refuses the message or, wrongly, finds it good), and pysequoia's plaintext is the one returned.
        """
        if self._fallback is None:
            return bad
        self.on_fallback("bad signature reason")
        try:
            _, theirs = await self._fallback.decrypt(data, self.retired, self.now)
        except CryptoError:
            return bad
        expired = theirs is not None and not theirs.valid and theirs.problem == "expired key"
        if expired and theirs is not None and theirs.signer_id == bad.signer_id:
            return dataclasses.replace(bad, problem="expired key")
        return bad

    async def verify_inline(self, data: bytes) -> tuple[bytes, Signature]:
        opened = await self._in_worker(worker.verify_inline, data)
        if opened.fallback is not None:
            return await self._gpg(opened.fallback, VerifyError("unreadable signature")).verify_inline(data)
        if opened.reason is not None or opened.signature is None:
            raise VerifyError(opened.reason or "unreadable signature")
        return opened.plaintext, _signature(opened.signature)

    async def verify_detached(self, signed: bytes, signature: bytes) -> Signature:
        def work() -> worker.SigResult | None:
            if not worker.armour_intact(signature):
                raise VerifyError("unreadable signature")  # as gpg's NODATA: decided, not retried
            try:
                sig = sq.Sig.from_bytes(signature)
            except Exception:  # noqa: BLE001 - pysequoia's text is not ours to pass on
                return None  # a signature pysequoia cannot read: gpg may (several, or an unusual packet)
            keys = self._keys()
            store = worker._Store(keys)
            try:
                valid: list[Any] = sq.verify(bytes=signed, store=store, signature=sig).valid_sigs
            except Exception:  # noqa: BLE001 - no good signature: classified below from what the store held
                valid = []
            if not store.asked:
                issuer = sig.issuer_fingerprint or sig.issuer_key_id
                if issuer is None:
                    raise VerifyError("unreadable signature")
                store.asked.append(issuer)
            expired = (e := sig.expiration) is not None and e <= datetime.now(UTC)
            return worker.classify(keys, store.asked, valid, sig_expired=expired)

        async with self._sem:
            result = await asyncio.to_thread(work)
        if result is None:
            gpg = self._gpg("unreadable signature", VerifyError("unreadable signature"))
            return await gpg.verify_detached(signed, signature)
        return _signature(result)

    def _keys(self) -> worker._Keys:
        if self._local is None or self._local.stamp != self._files.stamp():
            self._local = worker._Keys(self._files.home)
        return self._local

    # -- outgoing ------------------------------------------------------------------------------------------

    async def encrypt_and_sign(self, data: bytes, recipients: Sequence[str], signer: str) -> bytes:
        fprs = [check_fpr(r) for r in recipients]
        if not fprs:
            raise CryptoKeyError("no recipients")
        signer_fpr = check_fpr(signer)

        def work() -> bytes:
            keys = self._keys()
            tsk = keys.secrets.get(signer_fpr)
            if tsk is None:
                raise CryptoKeyError("gateway signing key unusable")
            certs = [keys.certs.get(f) for f in fprs]
            if any(c is None for c in certs):
                raise CryptoKeyError("recipient key unusable")
            try:
                signing = tsk.signer()
            except Exception:  # noqa: BLE001
                raise CryptoKeyError("gateway signing key unusable") from None
            try:
                return sq.encrypt(data, [c for c in certs if c is not None], signer=signing, armor=True)
            except Exception:  # noqa: BLE001 - an expired or revoked recipient, no encryption subkey
                raise CryptoKeyError("recipient key unusable") from None

        async with self._sem:
            return await asyncio.to_thread(work)

    def encrypt_to(self, data: bytes, fingerprint: str) -> bytes:
        """Encrypted (binary, unsigned) to one held certificate: the backup's keys file."""
        cert = self._files.cert(check_fpr(fingerprint))
        if cert is None:
            raise CryptoKeyError("recipient key unusable")
        try:
            return sq.encrypt(data, [cert], armor=False)
        except Exception:  # noqa: BLE001 - expired, revoked, no encryption subkey
            raise CryptoKeyError("recipient key unusable") from None

    # -- keys ----------------------------------------------------------------------------------------------

    def import_keys(self, armoured: bytes) -> list[str]:
        return self._files.import_keys(armoured)

    def keys(self, secret: bool = False) -> list[KeyInfo]:
        certs = self._files.certs()
        if not secret:
            return [key_info(c) for c in certs.values()]
        out = []
        for fpr, tsk in self._files.secrets().items():
            public = tsk.extract_certificate()
            held = certs.get(fpr)
            out.append(key_info(held.merge(public) if held is not None else public))
        return out

    def export_public(self, fingerprint: str) -> bytes:
        cert = self._files.cert(check_fpr(fingerprint))
        if cert is None:
            raise CryptoKeyError("no such key")
        return str(cert).encode("ascii")

    def export_secret(self, fingerprint: str) -> bytes:
        path = self._files.home / f"secret-{check_fpr(fingerprint)}.asc"
        if not path.is_file():
            raise CryptoKeyError("no such key")
        return path.read_bytes()

    def generate_key(self, name: str, email: str, expire: str = "2y") -> str:
        # Made by gpg with our algorithm preferences (pgp_keygen says why), then kept as key files.
        (fingerprint,) = self._files.import_keys(generate_armoured(name, email, expire))
        return fingerprint

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if self._fallback is not None:
            self._fallback.close()
