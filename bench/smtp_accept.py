"""SMTP acceptance benchmark: durable 250s per second against a do-nothing SMTP sink.

    .venv/bin/python bench/smtp_accept.py [--messages 2000] [--concurrency 32] [--size 6144]

Runs, in one go and one after the other, two real server processes on loopback:

1. the baseline: a do-nothing aiosmtpd sink (`handle_DATA` returns "250 OK"), started as
   `smtp_accept.py --sink-server 0` so it has a process of its own, like the gateway;
2. the gateway: `python -m gateway serve` with a fresh config and SQLite database in a temp dir
   (WAL, synchronous=FULL, BEGIN IMMEDIATE; processing and outbox workers running as in production).

The same load is sent to each: N referral emails of realistic size (a filled referral template plus
a base64 PDF-like attachment, unique Message-IDs) over C concurrent connections, each connection
reused for many messages (aiosmtplib). A few warm-up messages go first on every connection and are
not counted. Reported per target: messages accepted (250), seconds, msg/s, and p50/p99 of the time
from end of DATA to 250 (measured as aiosmtplib's `data()` call, which also includes the short
DATA -> 354 round trip). For the gateway, from its database after the run: p50/p99 of
deliveries.created_at (the alert row) minus referrals.received_at. The last line is
`ratio: X.XX`, the gateway's msg/s over the sink's; the target is >= 0.50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
SENDER = "ann.example@nhs.example"
RECIPIENT = "referrals@demo-council.example"
READY_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the baseline server


class _SinkHandler:
    """Accepts everything and keeps nothing: the cost of aiosmtpd itself."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


async def _serve_sink(port: int) -> None:
    import logging

    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.ERROR)
    loop = asyncio.get_running_loop()
    handler = _SinkHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.localhost", decode_data=False, loop=loop), "127.0.0.1", port
    )
    bound = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"sink serving: SMTP on 127.0.0.1:{bound}", flush=True)
    await stop.wait()
    server.close()


# --------------------------------------------------------------------------- the messages

# The logic of tests/conftest.py (referral_body, write_config), copied rather than imported so the
# benchmark does not depend on the test suite's fixtures and their imports.
REFERRAL_FORM = """\
Referrer name: Ann Example
Referrer role: Community midwife
Referrer organisation: Demo NHS Foundation Trust
Referrer email: ann.example@nhs.example
Referrer phone: 020 7946 0999
Child name: Sam Testchild
Child's date of birth: 03/04/2021
NHS number: {nhs}
Child address: 1 Example Street, London
Child postcode: {postcode}
Concern category: {category}
Urgency: {urgency}
Parents/carers aware: yes
Consent basis: consent given by mother
Details:
{details}
"""

DETAILS = (
    "Synthetic benchmark concern text. The child attended clinic with an unexplained bruise and "
    "the parent gave two different accounts of how it happened. Health visitor informed. "
)


def valid_nhs() -> str:
    """A valid NHS number from the 999 test range (check digit computed, not guessed)."""
    body = "999000001"
    total = sum(int(d) * w for d, w in zip(body, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    return body + str(0 if check == 11 else check)


def referral_body(postcode: str, category: str, urgency: str) -> str:
    return REFERRAL_FORM.format(
        nhs=valid_nhs(), postcode=postcode, category=category, urgency=urgency, details=DETAILS * 3
    )


def write_config(home: Path) -> Path:
    """The embedded default config, in a temp home, on free loopback ports (SQLite, maildir)."""
    text = (ROOT / "config" / "gateway.toml").read_text()
    text = text.replace("port = 8025", "port = 0").replace("port = 8080", "port = 0")
    text = text.replace('templates_dir = "templates"', f'templates_dir = "{ROOT / "templates"}"')
    (home / "config").mkdir(parents=True, exist_ok=True)
    path = home / "config" / "gateway.toml"
    path.write_text(text)
    return path


def build_messages(count: int, size: int, seed: int) -> list[bytes]:
    """Filled referral forms with a base64 attachment padding each to about `size` bytes."""
    rng = random.Random(seed)
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
    postcodes = ("W1A 1AA", "WC1E 6BT", "NW1 4RY", "SE1 7PB", "E1 6AN", "N1 9GU")
    categories = ("neglect", "physical", "emotional", "sexual", "domestic abuse", "other")
    urgencies = ("immediate", "urgent", "standard")

    def one(index: int, attachment_bytes: int) -> bytes:
        body = referral_body(
            postcode=rng.choice(postcodes), category=rng.choice(categories), urgency=rng.choice(urgencies)
        )
        msg = EmailMessage()
        msg["From"] = f"Ann Example <{SENDER}>"
        msg["To"] = RECIPIENT
        msg["Subject"] = "Safeguarding referral"
        msg["Message-ID"] = f"<bench-{run}-{index}@nhs.example>"
        msg.set_content(body)
        if attachment_bytes > 0:
            msg.add_attachment(
                rng.randbytes(attachment_bytes),
                maintype="application",
                subtype="pdf",
                filename="referral-form.pdf",
            )
        return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    # Size the attachment once: base64 takes 4 bytes per 3, plus CRLF every 76 characters.
    with_small = len(one(-1, 3))
    attachment = max(0, int((size - with_small) * 57 / 78))
    return [one(i, attachment) for i in range(count)]


# --------------------------------------------------------------------------- the load generator


@dataclass
class LoadResult:
    name: str
    accepted: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # data() call, seconds
    started_utc: datetime = field(default_factory=lambda: datetime.now(UTC))
    server_cpu: float = 0.0  # user+system seconds of the server process during the timed run
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def drive(
    name: str,
    port: int,
    server_pid: int,
    warmup: Sequence[bytes],
    timed: Sequence[bytes],
    concurrency: int,
) -> LoadResult:
    import aiosmtplib

    result = LoadResult(name)
    warm_iter: Iterator[bytes] = iter(warmup)
    timed_iter: Iterator[bytes] = iter(timed)  # shared: one event loop, so next() is safe
    ready = 0
    all_ready = asyncio.Event()
    go = asyncio.Event()
    connections = min(concurrency, len(timed))

    async def connect() -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            start_tls=False,
            use_tls=False,
            local_hostname="bench.localhost",
            timeout=120,
        )
        await client.connect()
        await client.ehlo()
        return client

    async def send(client: aiosmtplib.SMTP, raw: bytes, record: bool) -> aiosmtplib.SMTP:
        try:
            await client.mail(SENDER)
            await client.rcpt(RECIPIENT)
            start = time.perf_counter()
            await client.data(raw)
            elapsed = time.perf_counter() - start
        except aiosmtplib.SMTPResponseException as exc:
            if record:
                result.failed += 1
                key = f"{exc.code} {exc.message[:60]}"
                result.failures[key] = result.failures.get(key, 0) + 1
            if not client.is_connected:
                client = await connect()
            return client
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            if record:
                result.failed += 1
                key = type(exc).__name__
                result.failures[key] = result.failures.get(key, 0) + 1
            client.close()
            return await connect()
        if record:
            result.accepted += 1
            result.latencies.append(elapsed)
        return client

    async def worker() -> None:
        nonlocal ready
        client = await connect()
        try:
            for raw in warm_iter:  # shared, so the warm-up is spread over every connection
                client = await send(client, raw, record=False)
            ready += 1
            if ready == connections:
                all_ready.set()
            await go.wait()
            for raw in timed_iter:
                client = await send(client, raw, record=True)
        finally:
            with contextlib.suppress(Exception):
                await client.quit()
            client.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    try:
        await asyncio.wait_for(all_ready.wait(), READY_TIMEOUT)
        await asyncio.sleep(0.2)  # let the gateway's workers finish with the warm-up
        cpu0, client0 = _proc_cpu(server_pid), time.process_time()
        result.started_utc = datetime.now(UTC)
        start = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - start
        result.server_cpu = _proc_cpu(server_pid) - cpu0
        result.client_cpu = time.process_time() - client0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result


# --------------------------------------------------------------------------- server processes


class Server:
    """A child process that prints `ready_prefix...` on stdout once it listens."""

    def __init__(self, name: str, argv: list[str], ready_prefix: str, log: Path, cwd: Path) -> None:
        self.name, self.argv, self.ready_prefix, self.log, self.cwd = name, argv, ready_prefix, log, cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.cwd,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # a Ctrl-C at the terminal reaches us, and we stop it
            )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._ready_line(), READY_TIMEOUT)
        except (TimeoutError, EOFError):
            await self.stop()
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} did not start; its log ends:\n{tail}") from None
        # "...SMTP on 127.0.0.1:PORT, ..." or "...SMTP on 127.0.0.1:PORT"
        self.port = int(line.split("SMTP on ", 1)[1].split(",", 1)[0].rsplit(":", 1)[1])
        self._drain = asyncio.create_task(self._drain_stdout())

    async def _ready_line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                raise EOFError
            line = raw.decode(errors="replace")
            if line.startswith(self.ready_prefix):
                return line.strip()

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.read(65536):
            pass

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain:
            self._drain.cancel()
            await asyncio.gather(self._drain, return_exceptions=True)
        self.proc = None


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# --------------------------------------------------------------------------- reading the gateway's DB


def _utc(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass
class AlertLatency:
    referrals: int
    latencies: list[float]  # seconds, created_at - received_at
    processed_after: float  # seconds from the end of the timed run until all were processed
    quarantined: int
    unprocessed: int


def _ro(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)


async def wait_processed(db_path: Path, expected: int, limit: float) -> tuple[float, int]:
    """Poll until `expected` messages exist and none is unprocessed; returns (seconds, unprocessed)."""
    start = time.perf_counter()
    unprocessed = expected
    while time.perf_counter() - start < limit:
        with contextlib.closing(_ro(db_path)) as db:
            total, unprocessed = db.execute("SELECT count(*), count(*) - count(processed_at) FROM messages").fetchone()
        if total >= expected and unprocessed == 0:
            return time.perf_counter() - start, 0
        await asyncio.sleep(0.1)
    return time.perf_counter() - start, unprocessed


def alert_latencies(db_path: Path, since: datetime) -> tuple[list[float], int, int]:
    """(created_at - received_at of each alert, referrals counted, quarantined) for the timed run."""
    with contextlib.closing(_ro(db_path)) as db:
        rows = db.execute(
            "SELECT r.received_at, r.state, min(d.created_at) FROM referrals r "
            "LEFT JOIN deliveries d ON d.referral_id = r.id AND d.kind = 'alert' GROUP BY r.id"
        ).fetchall()
    latencies: list[float] = []
    counted = quarantined = 0
    for received, state, created in rows:
        received_at = _utc(received)
        if received_at < since:
            continue  # a warm-up message
        counted += 1
        if state == "quarantined":
            quarantined += 1
        if created is not None:
            latencies.append((_utc(created) - received_at).total_seconds())
    return latencies, counted, quarantined


# --------------------------------------------------------------------------- the report


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def print_report(
    args: argparse.Namespace, sizes: Sequence[int], results: Sequence[LoadResult], alerts: AlertLatency
) -> None:
    print()
    print(
        f"referral-gateway SMTP acceptance: {args.messages} messages (+{args.warmup} warm-up) over "
        f"{args.concurrency} connections, mean size {sum(sizes) / len(sizes):,.0f} bytes "
        f"(min {min(sizes):,}, max {max(sizes):,})"
    )
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; client, server: one process each")
    print()
    header = (
        f"{'target':<9} {'accepted':>8} {'failed':>6} {'seconds':>8} {'msg/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'srv CPU':>8} {'cli CPU':>8}"
    )
    print("                                            DATA -> 250        CPU seconds")
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<9} {r.accepted:>8} {r.failed:>6} {r.seconds:>8.2f} {r.rate:>8.1f} "
            f"{pct(r.latencies, 50) * 1000:>8.1f} {pct(r.latencies, 99) * 1000:>8.1f} "
            f"{r.server_cpu:>8.2f} {r.client_cpu:>8.2f}"
        )
        for why, count in sorted(r.failures.items()):
            print(f"          failed {count}x: {why}")
    print()
    lat = alerts.latencies
    print(
        f"gateway 250 -> alert queued ({len(lat)} of {alerts.referrals} referrals): "
        f"p50 {pct(lat, 50) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms, "
        f"max {max(lat, default=0) * 1000:.1f} ms"
    )
    print(
        f"  processing backlog drained {alerts.processed_after:.2f} s after the last 250"
        + (f"; {alerts.quarantined} quarantined" if alerts.quarantined else "")
        + (f"; {alerts.unprocessed} STILL UNPROCESSED at timeout" if alerts.unprocessed else "")
    )
    print()
    print("notes: 'DATA -> 250' is the duration of aiosmtplib's data() call: DATA, 354, the body with its")
    print("  final '.', then the 250; the DATA/354 round trip is included (a few tenths of a ms idle).")
    print("  The gateway answers 250 only after its SQLite commit (WAL, synchronous=FULL) returned.")
    print("  '250 -> alert queued' is deliveries.created_at - referrals.received_at (both UTC). Both are")
    print("  the clock read at the start of a batch: received_at just before the intake commit (so a")
    print("  little before the 250), created_at when the processor claimed the message (its commit of the")
    print("  alert row follows after parsing the claimed batch). Measured in the same run as the load, so")
    print("  the processing worker competes with intake for the CPU and SQLite's write lock.")
    print()
    sink, gateway = results
    ratio = gateway.rate / sink.rate if sink.rate else 0.0
    print(f"target: gateway durable acceptance >= 0.50 x sink ({'met' if ratio >= 0.5 else 'NOT met'})")
    print(f"ratio: {ratio:.2f}")


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> int:
    total = args.warmup + args.messages
    print(f"building {total} messages of ~{args.size} bytes...", flush=True)
    all_messages = build_messages(total, args.size, args.seed)
    warmup, timed = all_messages[: args.warmup], all_messages[args.warmup :]
    sizes = [len(m) for m in timed]
    python = _python()
    results: list[LoadResult] = []

    with tempfile.TemporaryDirectory(prefix="smtp-accept-") as tmp:
        work = Path(tmp)
        servers: list[Server] = []
        try:
            sink = Server(
                "sink",
                [python, str(SCRIPT), "--sink-server", "0"],
                "sink serving:",
                work / "sink.log",
                ROOT,
            )
            servers.append(sink)
            await sink.start()
            print(f"sink on port {sink.port} (pid {sink.pid}): sending...", flush=True)
            results.append(await drive("sink", sink.port, sink.pid, warmup, timed, args.concurrency))
            await sink.stop()
            print(f"sink: {results[-1].rate:.1f} msg/s", flush=True)

            home = work / "gw"
            config = write_config(home)
            gateway = Server(
                "gateway",
                [python, "-m", "gateway", "serve", "--config", str(config)],
                "referral-gateway serving:",
                work / "gateway.log",
                ROOT,
            )
            servers.append(gateway)
            await gateway.start()
            print(f"gateway on port {gateway.port} (pid {gateway.pid}): sending...", flush=True)
            result = await drive("gateway", gateway.port, gateway.pid, warmup, timed, args.concurrency)
            results.append(result)
            print(f"gateway: {result.rate:.1f} msg/s; waiting for processing...", flush=True)
            db_path = home / "var" / "gateway.db"
            drained, unprocessed = await wait_processed(db_path, total - result.failed, args.drain_timeout)
            latencies, counted, quarantined = alert_latencies(db_path, result.started_utc)
            alerts = AlertLatency(counted, latencies, drained, quarantined, unprocessed)
            await gateway.stop()
            errors = [
                line
                for line in (work / "gateway.log").read_text(errors="replace").splitlines()
                if " ERROR " in line or "Traceback" in line
            ]
            if errors:
                print(f"gateway log: {len(errors)} error lines, first: {errors[0][:200]}")
            if args.keep:
                keep = Path(tempfile.mkdtemp(prefix="smtp-accept-kept-"))
                os.rename(home, keep / "gw")
                for log in ("gateway.log", "sink.log"):
                    os.rename(work / log, keep / log)
                print(f"kept the gateway's home and the servers' logs in {keep}")
        finally:
            for server in reversed(servers):
                await server.stop()

    print_report(args, sizes, results, alerts)
    return 0 if all(r.accepted == args.messages for r in results) else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2000, help="timed messages per target (default 2000)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent SMTP connections (default 32)")
    p.add_argument("--size", type=int, default=6144, help="approximate message size in bytes (default 6144)")
    p.add_argument("--warmup", type=int, default=64, help="untimed warm-up messages (default 64)")
    p.add_argument("--seed", type=int, default=1, help="random seed for message contents")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for processing (default 120)")
    p.add_argument("--keep", action="store_true", help="keep the gateway's home (database, maildir) and the logs")
    p.add_argument("--sink-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sink_server is None and (args.messages < 1 or args.concurrency < 1 or args.warmup < 0):
        p.error("--messages and --concurrency must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sink_server is not None:
        asyncio.run(_serve_sink(args.sink_server))
        return 0
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
