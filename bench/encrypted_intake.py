"""Encrypted intake benchmark: PGP/MIME referrals (signed and encrypted by a partner) per second, on each
OpenPGP backend ([keys] openpgp_backend = "gnupg" and "sequoia"), against the bare rate of the same gpg
decrypt+verify calls.

    .venv/bin/python bench/encrypted_intake.py [--messages 1000] [--concurrency 16] [--rate 20] [--seconds 15]

Everything runs on loopback in a temp dir, in one go:

1. keys: the gateway's key made by gateway.crypto.openpgp.OpenPGP(home/keys/gnupg).generate_key(), a partner's
   (ed25519 sign + cv25519 encr) made with the gpg command line in a GnuPG home of its own, each side's public
   key imported into the other, as in tests/test_secure_intake.py;
2. messages, built before any timing: referral forms (tests.conftest.referral_body plus narrative padding, 3-6
   KB of text), each signed and encrypted in one pass by the partner (`gpg --sign --encrypt` with gpg's own
   choice of compression, a few gpg processes in parallel) and wrapped as RFC 3156 PGP/MIME with a unique
   Message-ID. The gateway's key prefers Uncompressed (gateway/open/crypto/pgp_keygen.py), so gpg sends them
   uncompressed; `--compressed P` forces zlib on P per cent of them, which pysequoia 0.1.35 cannot check
   and the sequoia backend hands to its gpg fallback (counted from the gateway's /metrics);
3. the baseline: the bare rate of the same gpg calls without the gateway. A process of its own (this script
   with `--baseline-worker`) decrypts and verifies the same armoured blocks through python-gnupg, with the
   options and the concurrency bound the gateway uses (2 threads), in a copy of the gateway's GnuPG home
   (same keys, an agent of its own). It runs before and after the gateway; the ratio uses their mean;
4. the gateway, once per backend (gnupg, then sequoia; a home and database of its own each, the same key:
   for sequoia exported from the GnuPG home into keys/openpgp/): `python -m gateway serve` with [keys]
   openpgp_backend and openpgp_fingerprint, the partner's fingerprint in
   [[partners]] and [security] require_encryption/require_signature = true; its processing and outbox
   workers running. Warm-up referrals go first, untimed. Then
   - burst: the N referrals over C concurrent SMTP connections; referrals/s from the first send to the last
     alert queued (the last `deliveries` row of kind 'alert' seen committed);
   - paced: referrals sent at --rate per second for --seconds; p50/p99 of 250 -> alert queued.

250 -> alert queued is measured per referral: the wall-clock time at which this script saw the alert row
committed (the database is polled read-only every 20 ms; the row was committed between two polls) minus the
time the client got the 250 (whose text carries the referral's reference). The gateway's own timestamps
(deliveries.created_at - referrals.received_at) are printed too; both are taken at the start of a batch, so
they understate. The last line is `ratio: X.XX`: the default backend's (sequoia) burst rate over the
baseline's; the gnupg backend's is printed on the line before. The targets (issue 14) are a ratio >= 1.0
(beat bare gpg), a paced p99 under 250 ms and a gateway peak RSS no more than 125 MiB (issue 3's were
0.70 and 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import common
import openpgp_backends

if TYPE_CHECKING:
    import aiosmtplib

SCRIPT = Path(__file__).resolve()
PARTNER = "Demo NHS Trust"
POLL = 0.02  # seconds between looks at the gateway's database
# What gateway.crypto.openpgp.OpenPGP passes to gpg, so the baseline makes the same calls.
GPG_OPTIONS = [
    "--trust-model", "direct",
    "--pinentry-mode", "error",
    "--no-symkey-cache",
    "--no-auto-key-retrieve",
    "--disable-dirmngr",
]  # fmt: skip
MAX_OUTPUT = ["--max-output", str(64 * 1024 * 1024 + 1024 * 1024)]


# --------------------------------------------------------------------------- processes (Linux /proc)


def find_agent(gnupg_home: Path) -> int | None:
    """The gpg-agent serving a GnuPG home: a daemon (not our child), found by its command line."""
    want = str(gnupg_home).encode()
    for pid in common.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"gpg-agent") and want in argv:
            return pid
    return None


def agent_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return common.proc_cpu(pid)
    except OSError:
        return 0.0


def kill_agent(gnupg_home: Path) -> None:
    subprocess.run(
        ["gpgconf", "--homedir", str(gnupg_home), "--kill", "gpg-agent"], check=False, capture_output=True, timeout=30
    )


# --------------------------------------------------------------------------- keys


@dataclass
class Keys:
    gateway_home: Path  # the gateway's home (config, keys, var)
    gateway_gnupg: Path  # home/keys/gnupg
    gateway_fpr: str
    partner_gnupg: Path
    partner_fpr: str


def gpg(home: Path, *args: str, stdin: bytes = b"") -> bytes:
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", *args], input=stdin, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args[:3])}: {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout


def make_keys(work: Path) -> Keys:
    from gateway.open.crypto.openpgp import OpenPGP

    home = work / "gw"
    gateway_gnupg = home / "keys" / "gnupg"
    gateway_pgp = OpenPGP(gateway_gnupg)
    try:
        gateway_fpr = gateway_pgp.generate_key("Demo gateway", common.RECIPIENT)
        partner = work / "partner"
        partner.mkdir(mode=0o700)
        gpg(partner, "--passphrase", "", "--quick-gen-key", f"Ann Example <{common.SENDER}>", "ed25519", "sign", "2y")
        partner_fpr = gpg(partner, "--with-colons", "--list-secret-keys").decode().split("fpr:::::::::")[1][:40]
        gpg(partner, "--passphrase", "", "--quick-add-key", partner_fpr, "cv25519", "encr", "2y")
        gateway_pgp.import_keys(gpg(partner, "--armor", "--export", partner_fpr))
        gpg(partner, "--import", stdin=gateway_pgp.export_public(gateway_fpr))
    finally:
        gateway_pgp.close()  # stops its agent: the gateway process starts its own
    return Keys(home, gateway_gnupg, gateway_fpr, partner, partner_fpr)


def gateway_extra(keys: Keys, backend: str, metrics_port: int) -> str:
    return (
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n\n'  # the fallback counter is read from it
        "[security]\nrequire_encryption = true\nrequire_signature = true\n\n"
        f'[keys]\nopenpgp_backend = "{backend}"\nopenpgp_fingerprint = "{keys.gateway_fpr}"\n\n'
        f'[[partners]]\nname = "{PARTNER}"\naddresses = ["@nhs.example"]\nopenpgp = ["{keys.partner_fpr}"]\n'
    )


# --------------------------------------------------------------------------- the messages

NARRATIVE = (
    "The child attended clinic with an unexplained bruise on the upper arm",
    "the parent gave two different accounts of how it happened",
    "the health visitor was informed the same afternoon",
    "an older sibling said there had been shouting at home most evenings",
    "school attendance has fallen to around seventy per cent this term",
    "the family moved to the area in the spring and are not yet registered with a GP",
    "mother said she was worried about her partner's drinking",
    "the child appeared hungry and asked staff for food twice",
    "no previous referrals are known to this service",
    "the referrer spoke to the mother who agreed to this referral being made",
    "a follow-up appointment has been booked for next week",
    "the child was wearing clothes unsuitable for the weather",
)


@dataclass
class Built:
    raw: bytes  # the whole message as sent over SMTP
    armoured: bytes  # the PGP MESSAGE block inside it: what gpg decrypts, in the gateway and the baseline
    plain_size: int  # bytes of the signed inner entity


def inner_entity(rng: random.Random) -> bytes:
    body = common.referral_form(rng)
    target = rng.randint(3000, 6000)
    lines: list[str] = []
    line = ""
    while len(body) + sum(len(x) + 1 for x in lines) + len(line) < target:
        sentence = rng.choice(NARRATIVE).capitalize() + ". "
        if len(line) + len(sentence) > 76:
            lines.append(line.rstrip())
            line = ""
        line += sentence
    lines.append(line.rstrip())
    text = body + "\n".join(lines) + "\n"
    return b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.replace("\n", "\r\n").encode()


def pgp_mime(armoured: bytes, message_id: str) -> bytes:
    head = (
        f"From: Ann Example <{common.SENDER}>\r\nTo: {common.RECIPIENT}\r\nSubject: Safeguarding referral\r\n"
        f"Message-ID: <{message_id}@nhs.example>\r\nDate: {datetime.now(UTC):%a, %d %b %Y %H:%M:%S +0000}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="pgp-bench-42"\r\n\r\n'
        "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"
        "--pgp-bench-42\r\nContent-Type: application/pgp-encrypted\r\nContent-Description: PGP/MIME version "
        "identification\r\n\r\nVersion: 1\r\n\r\n"
        "--pgp-bench-42\r\nContent-Type: application/octet-stream; name=encrypted.asc\r\n"
        "Content-Disposition: inline; filename=encrypted.asc\r\n\r\n"
    )
    return head.encode() + armoured.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n--pgp-bench-42--\r\n"


def build_messages(keys: Keys, count: int, seed: int, jobs: int, compressed: float = 0.0) -> list[Built]:
    """Signed and encrypted by the partner, `jobs` gpg processes at a time (each takes a few ms of CPU);
    `compressed` per cent of them (spread evenly) with zlib forced, the rest as gpg chooses."""
    rng = random.Random(seed)
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
    entities = [inner_entity(rng) for _ in range(count)]
    sign_encrypt = (
        "--armor", "--trust-model", "always", "--sign", "--encrypt",
        "--local-user", keys.partner_fpr, "--recipient", keys.gateway_fpr,
    )  # fmt: skip
    every = round(100 / compressed) if compressed > 0 else 0

    def one(index: int) -> Built:
        forced = ("--compress-algo", "zlib") if every and index % every == every - 1 else ()
        armoured = gpg(keys.partner_gnupg, *sign_encrypt, *forced, stdin=entities[index])
        return Built(pgp_mime(armoured, f"bench-{run}-{index}"), armoured, len(entities[index]))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, range(count)))


# --------------------------------------------------------------------------- the baseline


def baseline_worker(gnupg_home: Path, blobs: Path, threads: int, warmup: int, signer: str) -> None:
    """In a process of its own: python-gnupg decrypt+verify of every block, `threads` at a time. Prints JSON."""
    import gnupg  # type: ignore[import-untyped]

    gpg_ = gnupg.GPG(gnupghome=str(gnupg_home), options=GPG_OPTIONS)
    gpg_.encoding = "utf-8"
    data = blobs.read_bytes().split(b"\0")
    warm, timed = data[:warmup], data[warmup:]

    def one(block: bytes) -> tuple[bool, float]:
        start = time.perf_counter()
        result = gpg_.decrypt(block, extra_args=MAX_OUTPUT)
        good = bool(result.ok and result.valid and signer in (result.fingerprint, result.pubkey_fingerprint))
        return good and bool(result.data), time.perf_counter() - start

    for block in warm:  # starts the agent; loads the keys
        one(block)
    agent = find_agent(gnupg_home)
    self0, child0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    agent0 = agent_cpu(agent)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(one, timed))
    seconds = time.perf_counter() - start
    self1, child1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    report = {
        "count": len(timed),
        "good": sum(1 for ok, _ in results if ok),
        "seconds": seconds,
        "latencies": [elapsed for _, elapsed in results],
        "cpu_self": self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime,
        "cpu_children": child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime,
        "cpu_agent": agent_cpu(agent) - agent0,
        "self_hwm_kb": self1.ru_maxrss,
        "gpg_rss_kb": gpg_max_rss(gnupg_home, timed[0]),
        "agent_hwm_kb": common.proc_hwm_kb(agent) if agent else 0,
    }
    print(json.dumps(report), flush=True)


def gpg_max_rss(gnupg_home: Path, block: bytes) -> int:
    """Peak RSS in KiB of one gpg decrypt+verify process, from /usr/bin/time (0 without it). Our own
    getrusage(RUSAGE_CHILDREN) cannot tell: a child's maxrss includes the Python image it forked from."""
    if not Path("/usr/bin/time").exists():
        return 0
    done = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss=%M", "gpg", "--homedir", str(gnupg_home), "--batch", *GPG_OPTIONS, "--decrypt"],
        input=block,
        capture_output=True,
        check=False,
    )
    found = [line for line in done.stderr.decode(errors="replace").splitlines() if line.startswith("maxrss=")]
    return int(found[-1].split("=")[1]) if found else 0


@dataclass
class BaselineResult:
    name: str
    count: int
    good: int
    seconds: float
    latencies: list[float]
    cpu_self: float
    cpu_children: float
    cpu_agent: float
    self_hwm_kb: int
    gpg_rss_kb: int
    agent_hwm_kb: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @property
    def cpu(self) -> float:
        return self.cpu_self + self.cpu_children + self.cpu_agent


async def run_baseline(
    name: str, work: Path, keys: Keys, built: Sequence[Built], warmup: int, threads: int
) -> BaselineResult:
    slug = name.replace(" ", "-")
    home = work / f"{slug}-gnupg"
    # The same keys, in a home (and so an agent) of its own; sockets and locks are not copied.
    shutil.copytree(keys.gateway_gnupg, home, ignore=shutil.ignore_patterns("S.*", "*.lock", ".#*"))
    os.chmod(home, 0o700)
    blobs = work / f"{slug}.blobs"
    blobs.write_bytes(b"\0".join(b.armoured for b in built))
    argv = [common.python(), str(SCRIPT), "--baseline-worker", str(home), str(blobs), str(threads), str(warmup)]
    argv += [keys.partner_fpr]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=common.ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        kill_agent(home)
    if proc.returncode != 0:
        raise RuntimeError(f"baseline worker failed: {err.decode(errors='replace')[-2000:]}")
    return BaselineResult(name, **json.loads(out.decode().strip().splitlines()[-1]))


# --------------------------------------------------------------------------- watching the gateway


def _epoch(text: str) -> float:
    return common.parse_utc(text).timestamp()


@dataclass
class Alert:
    seen: float  # epoch seconds: the start of the poll that first saw the row committed
    created_at: float  # the gateway's deliveries.created_at
    received_at: float  # the gateway's referrals.received_at


class Watcher:
    """Polls the gateway's database (read-only) for alert rows, and samples its gpg children's memory."""

    def __init__(self, db_path: Path, gateway_pid: int) -> None:
        self._db_path = db_path
        self._pid = gateway_pid
        self.alerts: dict[str, Alert] = {}  # by referral reference
        self.child_hwm_kb = 0
        self.child_samples = 0
        self._last_rowid = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        db = common.readonly_db(self._db_path, autocommit=True)
        next_sample = 0.0
        try:
            while True:
                seen = time.time()
                rows = db.execute(
                    "SELECT d.rowid, r.reference, d.created_at, r.received_at FROM deliveries d "
                    "JOIN referrals r ON r.id = d.referral_id WHERE d.kind = 'alert' AND d.rowid > ? "
                    "ORDER BY d.rowid",
                    (self._last_rowid,),
                ).fetchall()
                for rowid, reference, created, received in rows:
                    self._last_rowid = max(self._last_rowid, rowid)
                    self.alerts.setdefault(reference, Alert(seen, _epoch(created), _epoch(received)))
                if rows:
                    self._changed.set()
                if seen >= next_sample:  # gpg processes live ~10 ms: a sample now and then, cheaply
                    next_sample = seen + 0.25
                    for child in common.children_of(self._pid, "gpg"):  # after exec: not the forked Python image
                        self.child_samples += 1
                        self.child_hwm_kb = max(self.child_hwm_kb, common.proc_hwm_kb(child))
                await asyncio.sleep(POLL)
        finally:
            db.close()

    async def wait_for(self, references: Sequence[str], limit: float) -> bool:
        give_up = time.monotonic() + limit
        while not all(r in self.alerts for r in references):
            self._changed.clear()
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True


def db_counts(db_path: Path, references: Sequence[str]) -> tuple[dict[str, int], int]:
    """(referral states of these references, deliveries not yet sent)."""
    with contextlib.closing(common.readonly_db(db_path)) as db:
        states: dict[str, int] = {}
        wanted = set(references)
        for reference, state in db.execute("SELECT reference, state FROM referrals"):
            if reference in wanted:
                states[state] = states.get(state, 0) + 1
        (unsent,) = db.execute("SELECT count(*) FROM deliveries WHERE state != 'sent'").fetchone()
    return states, int(unsent)


async def wait_outbox(db_path: Path, limit: float) -> int:
    give_up = time.monotonic() + limit
    unsent = -1
    while time.monotonic() < give_up:
        _, unsent = db_counts(db_path, [])
        if unsent == 0:
            break
        await asyncio.sleep(0.1)
    return unsent


# --------------------------------------------------------------------------- sending


@dataclass
class Sent:
    reference: str
    sent: float  # epoch: the MAIL command was sent
    accepted: float  # epoch: the 250 to DATA arrived
    data_seconds: float  # the data() call: DATA, 354, the body, 250


@dataclass
class Sending:
    sent: list[Sent] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    late: list[float] = field(default_factory=list)  # paced: seconds behind schedule at the send
    first_send: float = 0.0
    last_accept: float = 0.0

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


class Client:
    """One reused SMTP connection."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._smtp: aiosmtplib.SMTP | None = None

    async def connect(self) -> None:
        self._smtp = await common.smtp_connect(self._port)

    async def send(self, raw: bytes, out: Sending) -> None:
        assert self._smtp is not None
        sent = time.time()
        outcome = await common.smtp_send(self._smtp, self._port, raw)
        self._smtp = outcome.client
        if outcome.failure:
            out.fail(outcome.failure)
            return
        accepted = time.time()
        out.last_accept = max(out.last_accept, accepted)
        out.sent.append(Sent(outcome.reply.split()[-1], sent, accepted, outcome.seconds))

    async def close(self) -> None:
        if self._smtp is not None:
            await common.smtp_close(self._smtp)


async def connect_all(port: int, count: int) -> list[Client]:
    clients = [Client(port) for _ in range(count)]
    await asyncio.gather(*(c.connect() for c in clients))
    return clients


async def send_burst(clients: Sequence[Client], messages: Sequence[bytes]) -> Sending:
    out = Sending()
    todo: Iterator[bytes] = iter(messages)  # shared: one event loop, so next() is safe

    async def worker(client: Client) -> None:
        for raw in todo:
            await client.send(raw, out)

    out.first_send = time.time()
    await asyncio.gather(*(worker(c) for c in clients))
    return out


async def send_paced(clients: Sequence[Client], messages: Sequence[bytes], rate: float) -> Sending:
    """One message every 1/rate s on whichever connection is free (late ones are counted, not skipped)."""
    out = Sending()
    free: asyncio.Queue[Client] = asyncio.Queue()
    for client in clients:
        free.put_nowait(client)

    async def one(raw: bytes, due: float) -> None:
        client = await free.get()
        out.late.append(max(0.0, time.monotonic() - due))
        try:
            await client.send(raw, out)
        finally:
            free.put_nowait(client)

    tasks = []
    start = time.monotonic()
    out.first_send = time.time()
    for i, raw in enumerate(messages):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(one(raw, due)))
    await asyncio.gather(*tasks)
    return out


# --------------------------------------------------------------------------- the report


@dataclass
class Phase:
    name: str
    sending: Sending
    alerts: dict[str, Alert]
    cpu_self: float = 0.0
    cpu_children: float = 0.0
    cpu_agent: float = 0.0
    complete: bool = True

    @property
    def count(self) -> int:
        return len(self.sending.sent)

    @property
    def last_alert(self) -> float:
        return max(
            (self.alerts[s.reference].seen for s in self.sending.sent if s.reference in self.alerts), default=0.0
        )

    @property
    def seconds(self) -> float:
        return self.last_alert - self.sending.first_send

    @property
    def seconds_db(self) -> float:
        """The same from the gateway's timestamp: max(deliveries.created_at) - first send."""
        created = [self.alerts[s.reference].created_at for s in self.sending.sent if s.reference in self.alerts]
        return max(created, default=0.0) - self.sending.first_send

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def to_alert(self) -> list[float]:
        return [self.alerts[s.reference].seen - s.accepted for s in self.sending.sent if s.reference in self.alerts]

    def to_alert_db(self) -> list[float]:
        return [a.created_at - a.received_at for s in self.sending.sent if (a := self.alerts.get(s.reference))]

    @property
    def cpu(self) -> float:
        return self.cpu_self + self.cpu_children + self.cpu_agent


@dataclass
class GatewayRun:
    """One backend's gateway: its burst and paced phases, memory and the referrals' states."""

    backend: str
    burst: Phase
    paced: Phase
    memory: dict[str, int]
    states: dict[str, int]
    fallbacks: dict[str, float]  # gateway_openpgp_fallback_total by reason, from the gateway's /metrics


def ms(value: float) -> str:
    return f"{value * 1000:.0f}"


def print_report(
    args: argparse.Namespace,
    built: Sequence[Built],
    baselines: Sequence[BaselineResult],
    runs: Sequence[GatewayRun],
    build_seconds: float,
    alone: tuple[int, int, float],
) -> float:
    from importlib.metadata import version

    sizes = [len(b.raw) for b in built]
    plain = [b.plain_size for b in built]
    gpg_version = subprocess.run(["gpg", "--version"], capture_output=True, text=True, check=False).stdout
    print()
    print(
        f"referral-gateway encrypted intake: PGP/MIME referrals signed+encrypted by a partner key "
        f"(ed25519/cv25519), {len(built)} built in {build_seconds:.1f} s"
    )
    print(
        f"  message size mean {sum(sizes) / len(sizes):,.0f} bytes (min {min(sizes):,}, max {max(sizes):,}); "
        f"signed plaintext mean {sum(plain) / len(plain):,.0f} bytes"
    )
    print(
        f"python {platform.python_version()}, {gpg_version.splitlines()[0] if gpg_version else 'gpg ?'}, "
        f"python-gnupg {version('python-gnupg')}, pysequoia {version('pysequoia')}, {os.cpu_count()} CPUs"
    )
    print()
    print("                                                     ---- latency ms ----    CPU s per referral")
    header = (
        f"{'run':<22} {'refs':>5} {'seconds':>8} {'ref/s':>7} {'p50':>7} {'p99':>7} {'max':>7}"
        f" {'proc':>6} {'gpg':>6} {'agent':>6} {'total':>6}"
    )
    print(header)
    print("-" * len(header))
    for b in baselines:
        n = b.count or 1
        print(
            f"{b.name + ' (decrypt)':<22} {b.count:>5} {b.seconds:>8.2f} {b.rate:>7.1f} "
            f"{ms(common.pct(b.latencies, 50)):>7} {ms(common.pct(b.latencies, 99)):>7} "
            f"{ms(max(b.latencies, default=0)):>7}"
            f" {b.cpu_self / n:>6.4f} {b.cpu_children / n:>6.4f} {b.cpu_agent / n:>6.4f} {b.cpu / n:>6.4f}"
        )
    count, good, seconds = alone
    print(
        f"{'sequoia alone (decr.)':<22} {count:>5} {seconds:>8.2f} {count / seconds if seconds else 0:>7.1f}"
        f"   (SequoiaPGP.decrypt through its 2 workers, no gateway; {good} of {count} verified)"
    )
    phases = [ph for r in runs for ph in (r.burst, r.paced)]
    for ph in phases:
        n = ph.count or 1
        lat = ph.to_alert()
        print(
            f"{ph.name:<22} {ph.count:>5} {ph.seconds:>8.2f} {ph.rate:>7.1f} "
            f"{ms(common.pct(lat, 50)):>7} {ms(common.pct(lat, 99)):>7} {ms(max(lat, default=0)):>7}"
            f" {ph.cpu_self / n:>6.4f} {ph.cpu_children / n:>6.4f} {ph.cpu_agent / n:>6.4f} {ph.cpu / n:>6.4f}"
        )
    print()
    print("latency: baseline = one python-gnupg decrypt() call; gateway = client's 250 -> alert row seen committed")
    for ph in phases:
        data = [s.data_seconds for s in ph.sending.sent]
        db = ph.to_alert_db()
        print(
            f"{ph.name}: DATA -> 250 p50 {ms(common.pct(data, 50))} / p99 {ms(common.pct(data, 99))} ms; "
            f"gateway timestamps created_at - received_at p50 {ms(common.pct(db, 50))} / "
            f"p99 {ms(common.pct(db, 99))} ms; "
            f"first send -> max(created_at) {ph.seconds_db:.2f} s"
            + ("" if ph.complete else "; NOT ALL ALERTS QUEUED before the timeout")
        )
        if ph.sending.late:
            print(
                f"  paced sends behind schedule: p50 {ms(common.pct(ph.sending.late, 50))} / "
                f"max {ms(max(ph.sending.late))} ms (offered {args.rate:g}/s for {args.seconds:g} s; "
                f"achieved {ph.count / max(ph.sending.last_accept - ph.sending.first_send, 1e-9):.1f}/s accepted)"
            )
        for why, count in sorted(ph.sending.failures.items()):
            print(f"  failed {count}x: {why}")
    print()
    for r in runs:
        memory = r.memory
        print(
            f"memory (peak RSS, VmHWM), {r.backend}: gateway process {memory['gateway'] / 1024:.1f} MiB; its "
            f"gpg-agent {memory['agent'] / 1024:.1f} MiB; its gpg children up to {memory['children'] / 1024:.1f} MiB "
            f"(sampled at 4/s: {memory['samples']} seen running); its Python worker processes "
            f"{memory['workers']} (the sequoia pool: its forkserver, resource tracker and workers): largest "
            f"{memory['worker_max'] / 1024:.1f} MiB, together {memory['worker_sum'] / 1024:.1f} MiB"
        )
    b0 = baselines[0]
    print(
        f"  baseline: python process {b0.self_hwm_kb / 1024:.1f} MiB; its gpg-agent {b0.agent_hwm_kb / 1024:.1f} MiB; "
        f"one gpg decrypt+verify process {b0.gpg_rss_kb / 1024:.1f} MiB (/usr/bin/time)"
    )
    for r in runs:
        total = sum(r.states.values())
        print(
            f"referral states (burst + paced), {r.backend}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(r.states.items()))
            + f"; quarantined: {r.states.get('quarantined', 0)} of {total}"
        )
        shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.fallbacks.items())) or "none"
        print(f"gpg fallbacks (warm-up, burst and paced), {r.backend}: {shown}")
    print()
    print("notes: CPU 'proc' is the gateway's (or baseline worker's) own utime+stime; 'gpg' the gpg processes it")
    print("  waited for (cutime+cstime); 'agent' the gpg-agent daemon of its GnuPG home (not a child: /proc/PID/")
    print("  stat of the agent). Gateway CPU is counted from the first send to the last alert seen queued, so")
    print("  outbox work in that window is included. Gateway memory is the process's VmHWM; gpg children and the")
    print("  agent are separate processes and are not in it. The gateway's first send -> last alert includes")
    print("  SMTP intake of the burst; the baseline times decrypt calls only. Percentiles are nearest-rank:")
    count = runs[0].paced.count
    print(f"  the paced p99 is number {max(1, round(count * 0.01))} from the top of {count}.")
    print("  The sequoia backend decrypts in its worker processes (not gpg children): their CPU is in 'gpg'")
    print("  only once they have exited, so for sequoia 'proc' and 'gpg' undercount; seconds and ref/s do not.")
    print()
    base_rate = sum(b.rate for b in baselines) / len(baselines)
    ratio = 0.0
    for r in sorted(runs, key=lambda r: r.backend == openpgp_backends.DEFAULT):  # the default's line last
        this = r.burst.rate / base_rate if base_rate else 0.0
        p99 = common.pct(r.paced.to_alert(), 99)
        print(
            f"target ({r.backend}{', the default' if r.backend == openpgp_backends.DEFAULT else ''}): gateway "
            f"rate >= 1.0 x baseline ({r.burst.rate:.1f} / {base_rate:.1f} ref/s = {this:.2f}: "
            f"{'met' if this >= 1.0 else 'NOT met'}); paced {args.rate:g}/s p99 250 -> alert queued < 250 ms "
            f"({ms(p99)} ms: {'met' if p99 < 0.25 else 'NOT met'})"
        )
        if r.backend == openpgp_backends.DEFAULT or len(runs) == 1:
            ratio = this  # the default's; with --backend, the one backend run
    print(f"ratio: {ratio:.2f}")
    return ratio


# --------------------------------------------------------------------------- main


async def gateway_phase(
    name: str,
    gw: common.Server,
    watcher: Watcher,
    agent: int | None,
    send: Callable[[], Awaitable[Sending]],
    limit: float,
) -> Phase:
    self0, child0 = common.proc_cpu_split(gw.pid)
    agent0 = agent_cpu(agent)
    sending: Sending = await send()
    references = [s.reference for s in sending.sent]
    complete = await watcher.wait_for(references, limit)
    self1, child1 = common.proc_cpu_split(gw.pid)
    return Phase(
        name,
        sending,
        {r: watcher.alerts[r] for r in references if r in watcher.alerts},
        cpu_self=self1 - self0,
        cpu_children=child1 - child0,
        cpu_agent=agent_cpu(agent) - agent0,
        complete=complete,
    )


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def fallback_counts(port: int) -> dict[str, float]:
    """gateway_openpgp_fallback_total by reason, read from the gateway's metrics listener."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    text = (await reader.read()).decode("utf-8", "replace")
    writer.close()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gateway_openpgp_fallback_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return found


async def gateway_run(
    args: argparse.Namespace,
    work: Path,
    keys: Keys,
    backend: str,
    warm: Sequence[Built],
    timed: Sequence[Built],
    paced_msgs: Sequence[Built],
) -> GatewayRun:
    """The gateway on one backend: a home of its own (same keys), warm-up, burst, paced."""
    home = openpgp_backends.backend_home(work, keys.gateway_home, backend, keys.partner_fpr)
    log = work / f"gateway-{backend}.log"
    gw: common.Server | None = None
    watcher: Watcher | None = None
    clients: list[Client] = []
    try:
        metrics_port = free_port()
        config = common.write_config(home, gateway_extra(keys, backend, metrics_port))
        gw = common.gateway_server(config, log, args.checkout)
        await gw.start()
        db_path = home / "var" / "gateway.db"
        watcher = Watcher(db_path, gw.pid)
        watcher.start()
        clients = await connect_all(gw.port, min(args.concurrency, args.messages))
        print(f"{backend} gateway on port {gw.port} (pid {gw.pid}): warm-up...", flush=True)
        warm_sent = await send_burst(clients, [b.raw for b in warm])
        if not await watcher.wait_for([s.reference for s in warm_sent.sent], args.drain_timeout):
            raise RuntimeError("the warm-up referrals were not processed; see the gateway's log")
        await wait_outbox(db_path, args.drain_timeout)
        await asyncio.sleep(0.5)
        agent = find_agent(home / "keys" / "gnupg") if backend == "gnupg" else None

        print(f"{backend} gateway burst: {len(timed)} referrals over {len(clients)} connections...", flush=True)
        burst = await gateway_phase(
            f"{backend} burst",
            gw,
            watcher,
            agent,
            lambda: send_burst(clients, [b.raw for b in timed]),
            args.drain_timeout,
        )
        print(f"{backend} gateway burst: {burst.rate:.1f} referrals/s; outbox draining...", flush=True)
        await wait_outbox(db_path, args.drain_timeout)
        await asyncio.sleep(1.0)

        print(f"{backend} gateway paced: {len(paced_msgs)} referrals at {args.rate:g}/s...", flush=True)
        paced = await gateway_phase(
            f"{backend} paced {args.rate:g}/s",
            gw,
            watcher,
            agent,
            lambda: send_paced(clients, [b.raw for b in paced_msgs], args.rate),
            args.drain_timeout,
        )
        p99 = common.pct(paced.to_alert(), 99)
        print(f"{backend} gateway paced: p99 250 -> alert queued {p99 * 1000:.0f} ms", flush=True)
        await wait_outbox(db_path, args.drain_timeout)
        states, _ = db_counts(db_path, [s.reference for s in (*burst.sending.sent, *paced.sending.sent)])
        fallbacks = await fallback_counts(metrics_port)
        workers, worker_max, worker_sum = openpgp_backends.worker_memory(gw.pid)
        memory = {
            "workers": workers,
            "worker_max": worker_max,
            "worker_sum": worker_sum,
            "gateway": common.proc_hwm_kb(gw.pid),
            "agent": common.proc_hwm_kb(agent) if agent else 0,
            "children": watcher.child_hwm_kb,
            "samples": watcher.child_samples,
        }
        for client in clients:
            await client.close()
        clients = []
        await watcher.stop()
        await gw.stop()
        common.print_log_errors(log)
        return GatewayRun(backend, burst, paced, memory, states, fallbacks)
    finally:
        for client in clients:
            await client.close()
        if watcher is not None:
            await watcher.stop()
        if gw is not None:
            await gw.stop()


async def run(args: argparse.Namespace) -> int:
    paced_count = round(args.rate * args.seconds)
    total = args.warmup + args.messages + paced_count
    work = Path(tempfile.mkdtemp(prefix="encint-"))  # short: gpg-agent socket paths must be short
    keys: Keys | None = None
    try:
        print(f"keys: gateway and partner in {work}...", flush=True)
        keys = make_keys(work)
        print(f"building {total} PGP/MIME referrals with {args.build_jobs} gpg processes at a time...", flush=True)
        start = time.perf_counter()
        built = build_messages(keys, total, args.seed, args.build_jobs, args.compressed)
        build_seconds = time.perf_counter() - start
        kill_agent(keys.partner_gnupg)
        warm = built[: args.warmup]
        timed = built[args.warmup : args.warmup + args.messages]
        paced_msgs = built[args.warmup + args.messages :]

        baselines = []
        runs: list[GatewayRun] = []
        print(f"baseline 1: python-gnupg decrypt+verify of {len(timed)} messages, {args.gpg_threads} threads...")
        baselines.append(await run_baseline("baseline 1", work, keys, [*warm, *timed], len(warm), args.gpg_threads))
        print(f"baseline 1: {baselines[-1].rate:.1f} decrypts/s", flush=True)

        if args.checkout != common.ROOT:
            print(f"gateway code from {args.checkout}", flush=True)
        for backend in args.backend or openpgp_backends.BACKENDS:
            runs.append(await gateway_run(args, work, keys, backend, warm, timed, paced_msgs))
        alone = (0, 0, 0.0)  # not measured without the sequoia gateway's home
        if (work / "gw-sequoia").exists():
            print(f"sequoia alone: SequoiaPGP.decrypt of {len(timed)} messages, 2 at a time...", flush=True)
            alone = await openpgp_backends.sequoia_alone(
                work / "gw-sequoia" / "keys" / "openpgp",
                [b.armoured for b in (*warm, *timed)],
                len(warm),
                keys.partner_fpr,
            )

        print(f"baseline 2: python-gnupg decrypt+verify of {len(timed)} messages, {args.gpg_threads} threads...")
        baselines.append(await run_baseline("baseline 2", work, keys, [*warm, *timed], len(warm), args.gpg_threads))
        print(f"baseline 2: {baselines[-1].rate:.1f} decrypts/s", flush=True)
    finally:
        if keys is not None:
            sequoia_var = work / "gw-sequoia" / "var"  # the gpg fallback homes (the gateway's and sequoia alone's)
            for home in (
                keys.partner_gnupg,
                keys.gateway_gnupg,
                work / "gw-gnupg" / "keys" / "gnupg",
                sequoia_var / "gpg-fallback",
                sequoia_var / "gpg-fallback-alone",
            ):
                kill_agent(home)
        for slug in ("baseline-1", "baseline-2"):
            if (work / f"{slug}-gnupg").exists():
                kill_agent(work / f"{slug}-gnupg")
        if args.keep:
            print(f"kept {work} (gateway homes in gw-gnupg/ and gw-sequoia/, their logs in gateway-*.log)")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_report(args, built, baselines, runs, build_seconds, alone)
    good = all(b.good == b.count for b in baselines) and alone[0] == alone[1]
    sent_all = all(r.burst.count == args.messages and r.paced.count == paced_count for r in runs)
    routed = all(r.states.get("quarantined", 0) == 0 and r.burst.complete and r.paced.complete for r in runs)
    return 0 if good and sent_all and routed else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=1000, help="referrals in the burst (default 1000)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent SMTP connections (default 16)")
    p.add_argument("--rate", type=float, default=20.0, help="paced phase: referrals per second (default 20)")
    p.add_argument("--seconds", type=float, default=15.0, help="paced phase: seconds (default 15)")
    p.add_argument("--gpg-threads", type=int, default=2, help="baseline: concurrent gpg calls (the gateway's: 2)")
    p.add_argument("--warmup", type=int, default=16, help="untimed warm-up referrals (default 16)")
    p.add_argument("--build-jobs", type=int, default=4, help="gpg processes building messages (default 4)")
    p.add_argument("--seed", type=int, default=1, help="random seed for message contents")
    p.add_argument("--compressed", type=float, default=0.0, help="per cent of referrals with zlib forced (default 0)")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for alerts (default 300)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (gateway home, database, log)")
    p.add_argument(
        "--backend",
        action="append",
        choices=openpgp_backends.BACKENDS,
        help="only this backend's gateway (repeatable; default: each)",
    )
    p.add_argument(
        "--checkout",
        type=Path,
        default=common.ROOT,
        help="run the gateway's code from this checkout (e.g. a worktree of the commit to compare with)",
    )
    p.add_argument("--smime", action="store_true", help="the S/MIME line first (bench/smime_line.py), then this")
    p.add_argument("--baseline-worker", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_worker is None and (
        args.messages < 1 or args.concurrency < 1 or args.warmup < 1 or args.rate <= 0 or args.seconds <= 0
    ):
        p.error("--messages, --concurrency and --warmup must be at least 1; --rate and --seconds positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_worker is not None:
        home, blobs, threads, warmup, signer = args.baseline_worker
        baseline_worker(Path(home), Path(blobs), int(threads), int(warmup), signer)
        return 0
    if args.smime:  # its own report, ending `smime ratio: X`; this run's `ratio: X` stays the last line
        import smime_line

        smime = common.run_main(smime_line.line(args.messages, args.concurrency, args.warmup, args.seed,
                                                args.build_jobs, args.keep))  # fmt: skip
    return common.run_main(run(args)) or (smime if args.smime else 0)


if __name__ == "__main__":
    sys.exit(main())
