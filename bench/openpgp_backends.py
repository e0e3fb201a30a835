"""What bench/encrypted_intake.py needs to run the gateway on each OpenPGP backend: a gateway home per backend
holding the same keys (for sequoia: exported from the GnuPG home with gpg into keys/openpgp/), and the memory
of the gateway's worker processes (the sequoia backend's pool: a forkserver and its workers)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import common

BACKENDS = ("gnupg", "sequoia")  # each run in turn; the report prints the default's line last
DEFAULT = "sequoia"  # [keys] openpgp_backend


def backend_home(work: Path, source_home: Path, backend: str, partner_fpr: str) -> Path:
    """work/gw-<backend>: a copy of the gateway home's keys/ (sockets and locks left out); for sequoia the
    gateway's secret key and the partner's public key as key files, exported by gpg."""
    from gateway.open.crypto.sequoia import SequoiaPGP

    home = work / f"gw-{backend}"
    shutil.copytree(source_home / "keys", home / "keys", ignore=shutil.ignore_patterns("S.*", "*.lock", ".#*"))
    if backend == "sequoia":
        gnupg = home / "keys" / "gnupg"
        cmd = ["gpg", "--homedir", str(gnupg), "--batch", "--pinentry-mode", "error", "--armor"]
        secret = subprocess.run([*cmd, "--export-secret-keys"], capture_output=True, check=True).stdout
        public = subprocess.run([*cmd, "--export", partner_fpr], capture_output=True, check=True).stdout
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(gnupg)  # so nothing on this run can use gpg for the gateway's own key
        with SequoiaPGP.opened(home / "keys" / "openpgp") as pgp:
            pgp.import_keys(secret)
            pgp.import_keys(public)
    return home


def descendants(pid: int) -> list[int]:
    """Every running descendant of `pid` (children, their children, ...)."""
    parent: dict[int, int] = {}
    for child in common.pids():
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        parent[child] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [c for c, p in parent.items() if p == current]
        found += kids
        frontier += kids
    return found


def worker_memory(gateway_pid: int) -> tuple[int, int, int]:
    """(how many Python worker processes, the largest VmHWM in KiB, their VmHWM summed): the sequoia pool's
    forkserver and workers. gpg and gpg-agent are counted elsewhere."""
    hwm = []
    for pid in descendants(gateway_pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("python"):
            hwm.append(common.proc_hwm_kb(pid))
    return len(hwm), max(hwm, default=0), sum(hwm)


async def sequoia_alone(home: Path, blocks: list[bytes], warmup: int, signer: str) -> tuple[int, int, float]:
    """The sequoia backend's own rate, without the gateway: SequoiaPGP.decrypt of the same armoured blocks,
    2 at a time (the gateway's bound) through its worker pool. (count, good, seconds)."""
    import asyncio
    import time

    from gateway.open.crypto.sequoia import SequoiaPGP

    pgp = SequoiaPGP(home, fallback_home=home.parent.parent / "var" / "gpg-fallback-alone")
    try:
        for block in blocks[:warmup]:  # starts the pool, loads the keys in both workers
            await pgp.decrypt(block)
        timed = blocks[warmup:]
        start = time.perf_counter()
        results = await asyncio.gather(*(pgp.decrypt(b) for b in timed))
        seconds = time.perf_counter() - start
    finally:
        pgp.close()
    good = sum(1 for plain, sig in results if plain and sig is not None and sig.valid and sig.signer_id == signer)
    return len(timed), good, seconds
