"""The `gnupg` OpenPGP backend (RFC 4880, PGP/MIME RFC 3156): gpg through python-gnupg, with our own
reading of gpg's status lines.

python-gnupg's summary fields (`ok`, `valid`, `status`) are not enough to decide what is safe: it ignores
GOODMDC/BADMDC, `status` is only the last line, and `fingerprint` is filled from ERRSIG for a signer we do
not have. So every decision here is taken from the full list of `[GNUPG:]` status lines and the exit code.
Trust is ours (a fingerprint allow-list elsewhere): gpg runs with `--trust-model direct`.
"""

from __future__ import annotations

import asyncio
import codecs
import encodings.utf_8
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import gnupg  # type: ignore[import-untyped]

from gateway.open.crypto import CryptoKeyError, DecryptError, Signature, VerifyError
from gateway.open.crypto.pgp_backend import FPR as _FPR
from gateway.open.crypto.pgp_backend import KeyInfo
from gateway.open.crypto.pgp_backend import check_fpr as _check_fpr
from gateway.open.crypto.pgp_backend import emails as _emails
from gateway.open.crypto.pgp_keygen import key_parameters

T = TypeVar("T")
# gpg stops writing at --max-output part-way through a chunk and, when the signer is unknown, the exit code
# (2) looks the same as for a complete message. So gpg gets this much slack above our limit, and anything
# longer than our limit is refused: a truncated output is always longer than the limit.
_SLACK = 1024 * 1024
_NOT_GOOD = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG"}

# python-gnupg decodes gpg's stderr (the status lines) with errors="strict" in a reader thread, and gpg copies
# sender-chosen bytes into it (a signature's signer-UID subpacket: NEWSIG, "issuer"). One invalid UTF-8 byte
# killed the reader thread and lost every status line. This codec is UTF-8 whose stream reader replaces such
# bytes; the fields we rely on (keywords, hex fingerprints) are ASCII.
_CODEC = "utf_8_gpg_lenient"


class _LenientReader(encodings.utf_8.StreamReader):
    def __init__(self, stream: Any, errors: str = "replace") -> None:
        super().__init__(stream, "replace")


def _find_codec(name: str) -> codecs.CodecInfo | None:
    if name != _CODEC:
        return None
    utf8 = codecs.lookup("utf-8")
    return codecs.CodecInfo(
        utf8.encode,
        utf8.decode,
        streamreader=_LenientReader,
        streamwriter=utf8.streamwriter,
        incrementalencoder=utf8.incrementalencoder,
        incrementaldecoder=utf8.incrementaldecoder,
        name=_CODEC,
    )


codecs.register(_find_codec)


@dataclass(frozen=True)
class _Run:
    rc: int
    status: list[tuple[str, list[str]]]
    data: bytes
    uids: dict[str, list[str]] = field(default_factory=dict)  # primary fingerprint -> user ids, for signers we hold
    # A bad signature's key id (BADSIG names no fingerprint) -> the primary fingerprint of the held key, so the
    # Signature names the signer as the sequoia backend does.
    primaries: dict[str, str] = field(default_factory=dict)

    def has(self, keyword: str) -> bool:
        return any(k == keyword for k, _ in self.status)

    def first(self, keyword: str) -> list[str] | None:
        return next((v for k, v in self.status if k == keyword), None)

    def count(self, keyword: str) -> int:
        return sum(1 for k, _ in self.status if k == keyword)


def _run_of(result: Any) -> _Run:
    stderr = getattr(result, "stderr", None)
    if not isinstance(stderr, str):  # the reader thread died: we know nothing, so nothing is good
        return _Run(rc=2, status=[], data=b"")
    status = [
        (parts[0], parts[1:])
        for line in stderr.splitlines()
        if line.startswith("[GNUPG:] ") and (parts := line[9:].split())
    ]
    rc = result.returncode
    data = result.data
    return _Run(rc=rc if isinstance(rc, int) else 2, status=status, data=data if isinstance(data, bytes) else b"")


def _utc(epoch: str) -> datetime | None:
    return datetime.fromtimestamp(int(epoch), tz=UTC) if epoch.isdigit() and int(epoch) > 0 else None


class OpenPGP:
    def __init__(self, home: Path, *, concurrency: int = 2, max_plaintext: int = 64 * 1024 * 1024) -> None:
        self._home = Path(home)
        self._home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._home, 0o700)  # gpg refuses (warns about) a group/world-readable home
        self._max = max_plaintext
        self._sem = asyncio.Semaphore(concurrency)
        options = [
            "--trust-model", "direct",  # our allow-list decides trust, not gpg's web of trust
            "--pinentry-mode", "error",  # never wait for a passphrase prompt: fail instead
            "--no-symkey-cache",
            "--no-auto-key-retrieve",  # an unknown signer stays unknown: no network look-ups
            "--disable-dirmngr",
        ]  # fmt: skip
        self._gpg = gnupg.GPG(gnupghome=str(self._home), options=options, encoding=_CODEC)
        self._limit = ["--max-output", str(max_plaintext + _SLACK)]  # bounds decompression bombs
        self._uid_cache: dict[str, list[str]] = {}
        self._uid_stamp = (0, 0, 0)
        # The gateway's replaced keys (`keys rotate openpgp`) by primary fingerprint: each decrypts
        # until its overlap ends, then mail to it is refused. `now` is the gateway's clock.
        self.retired: dict[str, datetime] = {}
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)

    @classmethod
    @contextmanager
    def opened(cls, home: Path) -> Iterator[OpenPGP]:
        """For a short use (a CLI command, making development keys): closed on the way out, so that no
        gpg-agent started for `home` outlives it."""
        pgp = cls(home)
        try:
            yield pgp
        finally:
            pgp.close()

    async def _call(self, fn: Callable[[], T]) -> T:
        async with self._sem:
            return await asyncio.to_thread(fn)

    # -- incoming -------------------------------------------------------------------------------------------

    async def decrypt(self, data: bytes) -> tuple[bytes, Signature | None]:
        # Decrypt to stdout: `-o existing_file` without --yes gives a false BADSIG (NOTES.md).
        run = await self._call(lambda: self._decrypt_run(data))
        checked = run
        if _stopped_at_signature(run):
            # gpg 2.2 stops after a bad, expired or revoked signature inside the encryption, before it has
            # checked the integrity (no DECRYPTION_OKAY, no GOODMDC). The signature is judged from this run;
            # whether the decryption itself was sound, and the plaintext, from a second run that skips it.
            checked = await self._call(lambda: self._decrypt_run(data, verify=False))
        reason = self._decrypt_problem(checked)
        if reason is None and (key := run.first("DECRYPTION_KEY")) and len(key) > 1 and key[1] in self.retired:
            if self.now() >= self.retired[key[1]]:
                reason = "encrypted to a replaced key of this gateway whose overlap has ended"
        if reason is not None:
            raise DecryptError(reason)  # run.data may hold partial plaintext: dropped here
        return checked.data, (self._signature(run) if run.has("NEWSIG") else None)

    def _decrypt_run(self, data: bytes, *, verify: bool = True) -> _Run:
        extra = self._limit if verify else [*self._limit, "--skip-verify"]
        return self._with_signer_addresses(_run_of(self._gpg.decrypt(data, extra_args=extra)))

    def _decrypt_problem(self, run: _Run) -> str | None:
        if not (run.has("ENC_TO") or run.has("BEGIN_DECRYPTION") or run.has("NEED_PASSPHRASE_SYM")):
            return "not encrypted" if run.has("PLAINTEXT") or run.has("NEWSIG") else "not an OpenPGP message"
        info = run.first("DECRYPTION_INFO") or []
        aead = len(info) > 2 and info[2] != "0"
        no_mdc = (bool(info) and info[0] == "0" and not aead) or any(
            k == "ERROR" and v[:1] == ["nomdc_with_legacy_cipher"] for k, v in run.status
        )
        if not run.has("DECRYPTION_OKAY") or run.has("DECRYPTION_FAILED") or run.has("BADMDC"):
            if no_mdc:
                return "no integrity protection"
            # NO_SECKEY alone is normal (a copy for the sender's key too): only without DECRYPTION_KEY is it ours.
            if not run.has("DECRYPTION_KEY") and (run.has("NO_SECKEY") or run.has("NEED_PASSPHRASE_SYM")):
                return "not encrypted to this gateway's key"
            return "damaged or altered"
        if no_mdc or not (run.has("GOODMDC") or aead):
            return "no integrity protection"
        if len(run.data) > self._max:
            return "message too large"
        if run.has("ERROR") or run.count("PLAINTEXT") != 1 or not self._rc_explained(run):
            return "damaged or altered"  # e.g. an unencrypted literal packet appended after the encrypted one
        return None

    @staticmethod
    def _rc_explained(run: _Run) -> bool:
        # gpg exits 1 for a bad (or expired) signature and 2 for an unknown signer even when decryption was
        # fine; any other non-zero exit is a failure we cannot attribute, so the output is not trusted.
        rc1 = run.rc == 1 and any(run.has(k) for k in _NOT_GOOD - {"ERRSIG"})
        return run.rc == 0 or rc1 or (run.rc == 2 and run.has("ERRSIG"))

    async def verify_detached(self, signed: bytes, signature: bytes) -> Signature:
        def work() -> _Run:
            # python-gnupg's verify_data needs the signature in a file: a private (0700) directory of our own.
            with tempfile.TemporaryDirectory(prefix="gwsig") as tmp:
                sig_path = Path(tmp, "signature")
                sig_path.write_bytes(signature)
                return self._with_signer_addresses(_run_of(self._gpg.verify_data(str(sig_path), signed)))

        run = await self._call(work)
        if not run.has("NEWSIG") or run.has("ERROR") or not self._rc_explained(run):
            # CRC error / NODATA / "not a detached signature": there is no signature to judge.
            raise VerifyError("unreadable signature")
        return self._signature(run)

    async def verify_inline(self, data: bytes) -> tuple[bytes, Signature]:
        run = await self._call(lambda: self._decrypt_run(data))
        if run.has("ENC_TO") or run.has("BEGIN_DECRYPTION"):
            raise VerifyError("encrypted, not inline-signed")
        if len(run.data) > self._max:
            raise VerifyError("message too large")
        # Several clearsigned blocks, unsigned literal data, or no signature at all: gpg's output would mix
        # signed and unsigned text, so it is refused as a whole.
        if not run.has("NEWSIG") or run.has("ERROR") or run.count("PLAINTEXT") != 1 or not self._rc_explained(run):
            raise VerifyError("unreadable signature")
        return run.data, self._signature(run)

    def _with_signer_addresses(self, run: _Run) -> _Run:
        # Runs in the worker thread: the addresses of a key we hold, for the Signature. Listing
        # them is a gpg process of its own, so they are cached until the keyring file changes
        # (`keys import` changes it, and the next message sees the new key).
        fprs = {v[-1] for k, v in run.status if k == "VALIDSIG" and len(v) >= 10}
        bad_ids = sorted({v[0].upper() for k, v in run.status if k == "BADSIG" and v})
        if not fprs and not bad_ids:
            return run
        stamp = self._keyring_stamp()
        if stamp != self._uid_stamp:
            self._uid_cache, self._uid_stamp = {}, stamp
        primaries: dict[str, str] = {}
        for k in self._gpg.list_keys(keys=bad_ids) if bad_ids else []:
            primary = str(k["fingerprint"]).upper()
            self._uid_cache[primary] = [str(u) for u in k.get("uids", [])]
            for key_id in [k.get("keyid"), *(sub[0] for sub in k.get("subkeys", []))]:
                if str(key_id).upper() in bad_ids:
                    primaries[str(key_id).upper()] = primary
        fprs |= set(primaries.values())
        missing = sorted(f for f in fprs if f not in self._uid_cache)
        if missing:
            for k in self._gpg.list_keys(keys=missing):
                self._uid_cache[str(k["fingerprint"]).upper()] = [str(u) for u in k.get("uids", [])]
        uids = {f: self._uid_cache[f] for f in fprs if f in self._uid_cache}
        return replace(run, uids=uids, primaries=primaries)

    def _keyring_stamp(self) -> tuple[int, int, int]:
        for name in ("pubring.kbx", "pubring.gpg"):
            try:
                st = (self._home / name).stat()
            except FileNotFoundError:
                continue
            return (st.st_ino, st.st_size, st.st_mtime_ns)
        return (0, 0, 0)

    def _signature(self, run: _Run) -> Signature:
        blocks: list[list[tuple[str, list[str]]]] = []
        for keyword, values in run.status:
            if keyword == "NEWSIG":
                blocks.append([])
            elif blocks:
                blocks[-1].append((keyword, values))
        sigs = [self._one_signature(block, run.uids, run.primaries) for block in blocks]
        bad = [s for s in sigs if not s.valid]
        if bad:
            return bad[0]
        if len({s.signer_id for s in sigs}) > 1:
            return Signature(kind="openpgp", valid=False, signer_id=None, problem="multiple signers")
        return sigs[0]

    @staticmethod
    def _one_signature(
        block: list[tuple[str, list[str]]], uids: dict[str, list[str]], primaries: dict[str, str]
    ) -> Signature:
        found = {k: v for k, v in reversed(block)}  # first occurrence of each keyword wins
        validsig = found.get("VALIDSIG")
        # VALIDSIG's last field is the primary key's fingerprint, also when a subkey made the signature.
        primary = validsig[-1].upper() if validsig and len(validsig) >= 10 else None
        if primary is None and found.get("BADSIG"):
            primary = primaries.get(found["BADSIG"][0].upper())
        addresses = _emails(uids.get(primary or "", []))
        if "GOODSIG" in found and primary and not (_NOT_GOOD & found.keys()):
            return Signature(kind="openpgp", valid=True, signer_id=primary, signer_addresses=addresses)
        problems = [
            ("BADSIG", "bad signature"),
            ("REVKEYSIG", "revoked key"),
            ("EXPKEYSIG", "expired key"),
            ("EXPSIG", "expired key"),  # the signature's own expiry: same outcome, and policy.py quarantines on it
        ]
        for keyword, problem in problems:
            if keyword in found:
                key_id = primary or (found[keyword][0].upper() if found[keyword] else None)
                return Signature("openpgp", valid=False, signer_id=key_id, signer_addresses=addresses, problem=problem)
        errsig = found.get("ERRSIG")
        if errsig is not None or "NO_PUBKEY" in found:
            # ERRSIG <keyid> <pkalgo> <hash> <class> <time> <rc> [<fpr>]: rc 9 = no public key. The fingerprint
            # comes from the signature itself, so it is only a hint for the report, never an identity.
            errsig = errsig or []
            hint = errsig[6] if len(errsig) > 6 and errsig[6] != "-" else (errsig[0] if errsig else None)
            hint = hint or (found["NO_PUBKEY"][0] if found.get("NO_PUBKEY") else None)
            unknown = "NO_PUBKEY" in found or (len(errsig) > 5 and errsig[5] == "9")
            problem = "unknown signer" if unknown else "unverifiable signature"
            return Signature(kind="openpgp", valid=False, signer_id=hint.upper() if hint else None, problem=problem)
        return Signature(kind="openpgp", valid=False, signer_id=None, problem="unverifiable signature")

    # -- outgoing -------------------------------------------------------------------------------------------

    async def encrypt_and_sign(self, data: bytes, recipients: Sequence[str], signer: str) -> bytes:
        fprs = [_check_fpr(r) for r in recipients]
        if not fprs:
            raise CryptoKeyError("no recipients")
        signer_fpr = _check_fpr(signer)

        def work() -> _Run:
            # always_trust: these fingerprints come from our allow-list, gpg's validity is not consulted.
            result = self._gpg.encrypt(data, fprs, sign=signer_fpr, always_trust=True, armor=True)
            return _run_of(result)

        run = await self._call(work)
        if run.has("INV_SGNR") or not run.has("SIG_CREATED"):
            raise CryptoKeyError("gateway signing key unusable")
        if run.has("INV_RECP") or not run.has("END_ENCRYPTION") or run.rc != 0 or not run.data:
            raise CryptoKeyError("recipient key unusable")
        return run.data

    # -- keys -----------------------------------------------------------------------------------------------

    def import_keys(self, armoured: bytes) -> list[str]:
        result = self._gpg.import_keys(armoured)
        fprs = [str(f).upper() for f in result.fingerprints]
        if not fprs:
            raise CryptoKeyError("no OpenPGP key found")
        return list(dict.fromkeys(fprs))  # a secret key import reports each fingerprint twice

    def keys(self, secret: bool = False) -> list[KeyInfo]:
        out: list[KeyInfo] = []
        for key in self._gpg.list_keys(secret=secret):
            uids = tuple(str(u) for u in key.get("uids", []))
            created = _utc(str(key.get("date", ""))) or datetime.fromtimestamp(0, tz=UTC)
            out.append(
                KeyInfo(
                    fingerprint=str(key["fingerprint"]).upper(),
                    uids=uids,
                    emails=_emails(uids),
                    created=created,
                    expires=_utc(str(key.get("expires", ""))),
                    revoked=key.get("trust") == "r",
                )
            )
        return out

    def export_public(self, fingerprint: str) -> bytes:
        armoured = self._gpg.export_keys(_check_fpr(fingerprint), armor=True)
        if not isinstance(armoured, str) or "BEGIN PGP PUBLIC KEY BLOCK" not in armoured:
            raise CryptoKeyError("no such key")
        return armoured.encode("ascii")

    def generate_key(self, name: str, email: str, expire: str = "2y") -> str:
        result = self._gpg.gen_key(key_parameters(name, email, expire))
        fpr = str(result.fingerprint or "").upper()
        if not _FPR.fullmatch(fpr):
            raise CryptoKeyError("key generation failed")
        return fpr

    def close(self) -> None:
        stop_components(self._home)


def _stopped_at_signature(run: _Run) -> bool:
    """gpg judged a signature not good and stopped before it finished decrypting (nothing says the
    decryption failed either): the only case where the integrity is still unknown."""
    failed = run.has("DECRYPTION_OKAY") or run.has("DECRYPTION_FAILED") or run.has("BADMDC")
    return not failed and run.has("BEGIN_DECRYPTION") and any(run.has(k) for k in _NOT_GOOD - {"ERRSIG"})


def stop_components(home: Path) -> None:
    # gpg starts a gpg-agent per home that outlives us: stop it (and any other component) explicitly.
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True, timeout=30)


def read_keyring(home: Path) -> tuple[list[KeyInfo], list[KeyInfo]]:
    """(secret, public) keys in a GnuPG home; empty when the home does not exist (not created by looking)."""
    if not home.is_dir():
        return [], []
    with OpenPGP.opened(home) as pgp:
        return pgp.keys(secret=True), pgp.keys()
