"""Scale-out: plain-email referrals end to end (SMTP 250 -> alert queued) through one and then two
`python -m gateway serve` processes on the same PostgreSQL, in one run.

    .venv/bin/python bench/scale_out.py [--referrals 2000] [--concurrency 32] [--size 6144] [--keep]

A throwaway PostgreSQL server (tests/postgres.py) holds a fresh database for each run. `python -m
gateway keys init` makes the keys once; both runs' instances use that one keys/ directory, as
instances on one host do (systemd/referral-gateway@.service). Each run sends the same referrals over
`--concurrency` SMTP connections (spread round-robin over the instances) and is timed from the first
send until the deliveries table holds an alert for every referral accepted. The last line is
`ratio: X.XX`, the two-instance rate over the one-instance rate. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import common
from smtp_accept import build_messages

if TYPE_CHECKING:
    import aiosmtplib
    from sqlalchemy.ext.asyncio import AsyncConnection

    from tests.postgres import Server as Postgres

# Referrals with an alert queued, and the waits of the gateway's sessions (pg_stat_activity), read
# on one connection of our own. A state of "idle in transaction" is a session holding a
# transaction open while the gateway does something else (Python work between statements).
ALERTED = "SELECT count(DISTINCT referral_id) FROM deliveries WHERE kind = 'alert'"
QUARANTINED = "SELECT count(*) FROM referrals WHERE state = 'quarantined'"
# For a lock wait, the start of the statement that waits says which lock (SQL with $n parameters:
# no data).
ACTIVITY = (
    "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'CPU'), left(query, 60) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'"
)
PHASES = ("sending", "after")  # first send -> last 250, last 250 -> last alert queued


# --------------------------------------------------------------------------- CPU figures (Linux /proc)


def postgres_cpu(server: Postgres) -> float:
    """User + system CPU seconds of the PostgreSQL server: the postmaster, the backends and
    workers running now, and (cutime) those that ended, which the postmaster has waited for."""
    postmaster = int((server.data / "db" / "postmaster.pid").read_text().split()[0])
    own, ended = common.proc_cpu_split(postmaster)
    total = own + ended
    for child in common.children_of(postmaster, "postgres"):
        with contextlib.suppress(OSError):  # ended since it was listed: its time is now in cutime
            total += common.proc_cpu(child)
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle since boot (/proc/stat), every process counted."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / common.CLK_TCK  # less idle and iowait


@dataclass
class Cpu:
    """User + system CPU seconds: so far, or (a difference) in a stretch of wall time."""

    wall: float
    gateways: list[float]  # per instance
    postgres: float
    client: float
    machine: float  # every process on the machine, ours and the others'

    @property
    def ours(self) -> float:
        return sum(self.gateways) + self.postgres + self.client

    def __sub__(self, before: Cpu) -> Cpu:
        return Cpu(
            self.wall - before.wall,
            [a - b for a, b in zip(self.gateways, before.gateways, strict=True)],
            self.postgres - before.postgres,
            self.client - before.client,
            self.machine - before.machine,
        )


def cpu_now(gateways: Sequence[common.Server], postgres: Postgres) -> Cpu:
    return Cpu(
        time.perf_counter(),
        [common.proc_cpu(g.pid) for g in gateways],
        postgres_cpu(postgres),
        time.process_time(),
        machine_busy(),
    )


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    instances: int
    referrals: int = 0  # accepted (250) in the timed part
    failures: Counter[str] = field(default_factory=Counter)
    alerted_by_last_250: int = 0  # of the timed referrals: how many had their alert queued by then
    alerted: int = 0  # timed referrals with an alert queued (== referrals unless timed out)
    quarantined: int = 0
    phases: dict[str, Cpu] = field(default_factory=dict)  # PHASES
    # pg_stat_activity samples of non-idle sessions, and how many samples, per phase
    activity: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in PHASES})
    polls: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> Cpu:
        """First send -> every alert queued."""
        sending, after = self.phases["sending"], self.phases["after"]
        return Cpu(
            sending.wall + after.wall,
            [a + b for a, b in zip(sending.gateways, after.gateways, strict=True)],
            sending.postgres + after.postgres,
            sending.client + after.client,
            sending.machine + after.machine,
        )

    @property
    def rate(self) -> float:
        seconds = self.total.wall
        return self.alerted / seconds if seconds else 0.0


async def count(conn: AsyncConnection, sql: str) -> int:
    from sqlalchemy import text

    return int((await conn.execute(text(sql))).scalar_one())


async def send_all(ports: Sequence[int], messages: Sequence[bytes], concurrency: int, result: RunResult | None) -> None:
    """`messages` over `concurrency` connections, connection i to ports[i % len(ports)]; the
    failures counted in `result` (None: a warm-up, counted nowhere)."""
    shared: Iterator[bytes] = iter(messages)  # one event loop, so next() from every task is safe

    async def connection(port: int) -> None:
        client: aiosmtplib.SMTP = await common.smtp_connect(port)
        try:
            for raw in shared:
                outcome = await common.smtp_send(client, port, raw)
                client = outcome.client
                if result is not None and outcome.failure:
                    result.failures[outcome.failure] += 1
                elif result is not None:
                    result.referrals += 1
        finally:
            await common.smtp_close(client)

    await asyncio.gather(*(connection(ports[i % len(ports)]) for i in range(min(concurrency, len(messages)))))


async def sample(conn: AsyncConnection, result: RunResult, phase: str) -> None:
    """One look at what the gateway's PostgreSQL sessions are doing."""
    from sqlalchemy import text

    result.polls[phase] += 1
    for state, wait, query in (await conn.execute(text(ACTIVITY))).all():
        what = wait if state == "active" else state
        result.activity[phase][f"{what} ({' '.join(query.split())})" if what.startswith("Lock:") else what] += 1


async def wait_alerted(conn: AsyncConnection, expected: int, limit: float, result: RunResult | None) -> int:
    """Polls until `expected` referrals have an alert queued or `limit` seconds pass; returns the
    number seen. With `result`, samples the sessions' waits at each poll."""
    deadline = time.perf_counter() + limit
    while True:
        seen = await count(conn, ALERTED)
        if seen >= expected or time.perf_counter() > deadline:
            return seen
        if result is not None:
            await sample(conn, result, "after")
        await asyncio.sleep(0.05)


async def measure(
    instances: int,
    gateways: Sequence[common.Server],
    postgres: Postgres,
    url: str,
    warmup: Sequence[bytes],
    timed: Sequence[bytes],
    args: argparse.Namespace,
) -> RunResult:
    from sqlalchemy.ext.asyncio import create_async_engine

    result = RunResult(instances)
    ports = [g.port for g in gateways]
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")  # each poll sees the latest commits
    try:
        async with engine.connect() as conn:
            # Warm-up, untimed: every instance's connections, caches and pool, through to alerts queued.
            await send_all(ports, warmup, args.concurrency, None)
            warm = await wait_alerted(conn, len(warmup), args.timeout, None)
            await asyncio.sleep(0.5)  # let the outbox deliver the warm-up's alerts before the clock starts
            start = cpu_now(gateways, postgres)
            sending = asyncio.create_task(send_all(ports, timed, args.concurrency, result))
            while not sending.done():
                await sample(conn, result, "sending")
                await asyncio.wait([sending], timeout=0.05)
            last_250 = cpu_now(gateways, postgres)
            await sending  # its exceptions, if any
            result.alerted_by_last_250 = await count(conn, ALERTED) - warm
            seen = await wait_alerted(conn, warm + result.referrals, args.timeout, result)
            end = cpu_now(gateways, postgres)
            result.phases = {"sending": last_250 - start, "after": end - last_250}
            result.alerted = seen - warm
            result.quarantined = await count(conn, QUARANTINED)
    finally:
        await engine.dispose()
    return result


async def one_run(
    instances: int, work: Path, postgres: Postgres, messages: Sequence[bytes], args: argparse.Namespace
) -> RunResult:
    from tests.postgres import create_database

    url = create_database(postgres.url, f"scale{instances}")
    home = work / "gw"
    config = common.write_config(home, database_url=url)  # ports 0: each instance gets its own
    if not (home / "keys").exists():
        # Once, as an operator does before the first instance starts; the second run's fresh
        # database uses the same keys/, as a second instance on the host would.
        init = await asyncio.create_subprocess_exec(
            *[common.python(), "-m", "gateway", "keys", "init", "--config", str(config)],
            cwd=home,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await init.communicate()
        if init.returncode != 0:
            raise RuntimeError(f"keys init failed: {err.decode(errors='replace')[-2000:]}")
    gateways = [common.gateway_server(config, work / f"gateway-{instances}-{i}.log") for i in range(instances)]
    try:
        for gateway in gateways:
            await gateway.start()
        print(f"{instances} instance(s) on ports {', '.join(str(g.port) for g in gateways)}: sending...", flush=True)
        result = await measure(
            instances, gateways, postgres, url, messages[: args.warmup], messages[args.warmup :], args
        )
    finally:
        for gateway in gateways:
            await gateway.stop()
    for gateway in gateways:
        common.print_log_errors(gateway.log)
    print(f"{instances} instance(s): {result.rate:.1f} referrals/s", flush=True)
    return result


# --------------------------------------------------------------------------- the report


def cpu_line(label: str, cpu: Cpu) -> str:
    """Wall seconds, then each part's CPU seconds and (in brackets) the cores it kept busy."""
    wall = cpu.wall or float("nan")
    gateways = " + ".join(f"{c:.2f}" for c in cpu.gateways)
    return (
        f"  {label:<26} {cpu.wall:>7.2f} {gateways:>13} ({sum(cpu.gateways) / wall:.2f}) "
        f"{cpu.postgres:>6.2f} ({cpu.postgres / wall:.2f}) {cpu.client:>6.2f} ({cpu.client / wall:.2f}) "
        f"{cpu.ours / wall:>5.2f} {cpu.machine / wall:>8.2f}"
    )


def print_report(args: argparse.Namespace, results: Sequence[RunResult]) -> None:
    print()
    print(
        f"referral-gateway scale-out: {args.referrals} plain-email referrals (+{args.warmup} warm-up) over "
        f"{args.concurrency} SMTP connections, ~{args.size} bytes each, on one PostgreSQL"
    )
    load = os.getloadavg()[0]
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; load average {load:.2f} at the end")
    print()
    header = (
        f"{'instances':>9} {'referrals':>9} {'failed':>6} {'seconds':>8} {'ref/s':>7}   per referral: gateway CPU ms"
    )
    print(f"{'':>26}end to end (first send -> last alert queued)")
    print(header)
    print("-" * len(header))
    for r in results:
        total = r.total
        print(
            f"{r.instances:>9} {r.referrals:>9} {sum(r.failures.values()):>6} {total.wall:>8.2f} {r.rate:>7.1f} "
            f"{'':>16}{sum(total.gateways) / max(r.alerted, 1) * 1000:>8.2f}"
        )
        for why, times in sorted(r.failures.items()):
            print(f"          failed {times}x: {why}")
        if r.alerted < r.referrals:
            print(f"          {r.referrals - r.alerted} referrals had NO ALERT QUEUED after {args.timeout:.0f} s")
        if r.quarantined:
            print(f"          {r.quarantined} quarantined")
    print()
    print("CPU seconds (cores kept busy); 'ours' and 'machine' in cores")
    print(
        f"  {'':<26} {'seconds':>7} {'gateway':>13} {'':>6} {'PG':>6} {'':>6} {'client':>6} {'':>6} {'ours':>5} machine"
    )
    for r in results:
        print(f"{r.instances} instance(s): {r.alerted_by_last_250} alerts queued by the last 250")
        for label, cpu in (
            ("sending (-> last 250)", r.phases["sending"]),
            ("after (-> last alert)", r.phases["after"]),
            ("whole run", r.total),
        ):
            print(cpu_line(label, cpu))
    print()
    print("PostgreSQL sessions not idle, sampled every 50 ms (mean sessions per sample; CPU = no wait event):")
    for r in results:
        for phase in PHASES:
            polls = max(r.polls[phase], 1)
            top = ", ".join(f"{what} {n / polls:.2f}" for what, n in r.activity[phase].most_common(6))
            print(f"  {r.instances} instance(s), {phase}, {r.polls[phase]} samples: {top or 'none seen'}")
    print()
    print("notes: 'seconds' runs from the first send until every referral accepted has a deliveries row of")
    print("  kind 'alert' (polled every 50 ms, so at most a poll late). 'ours' is the gateways', PostgreSQL's")
    print("  and this client's CPU over the wall time; 'machine' is every process on the machine")
    print("  (/proc/stat), so machine - ours is what other programs used.")
    print()
    one, two = results
    ratio = two.rate / one.rate if one.rate else 0.0
    print(f"target: 2 instances >= 1.6 x 1 instance ({'met' if ratio >= 1.6 else 'NOT met'})")
    print(f"ratio: {ratio:.2f}")


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> int:
    from tests.postgres import Server as PostgresServer

    print(f"building {args.warmup + args.referrals} referrals of ~{args.size} bytes...", flush=True)
    messages = build_messages(args.warmup + args.referrals, args.size, args.seed)
    postgres = PostgresServer()  # initdb in a temp dir; fsync=off, as for the tests
    results: list[RunResult] = []
    try:
        postgres.start()
        with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
            work = Path(tmp)
            for instances in (1, 2):
                results.append(await one_run(instances, work, postgres, messages, args))
            if args.keep:
                keep = Path(tempfile.mkdtemp(prefix="scale-out-kept-"))
                for kept in os.listdir(work):
                    os.rename(work / kept, keep / kept)
                print(f"kept the gateway's home and logs in {keep}")
    finally:
        postgres.remove()
    print_report(args, results)
    return 0 if all(r.alerted == r.referrals == args.referrals for r in results) else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--referrals", type=int, default=2000, help="timed referrals per run (default 2000)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent SMTP connections in all (default 32)")
    p.add_argument("--size", type=int, default=6144, help="approximate message size in bytes (default 6144)")
    p.add_argument("--warmup", type=int, default=32, help="untimed warm-up referrals per run (default 32)")
    p.add_argument("--seed", type=int, default=1, help="random seed for message contents")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the alerts (default 300)")
    p.add_argument("--keep", action="store_true", help="keep the gateway's home (keys, maildir) and the logs")
    args = p.parse_args(argv)
    # The one instance takes every connection, and refuses more than smtp.max_sessions_per_client (50) from one address.
    if args.referrals < 1 or not 2 <= args.concurrency <= 50 or args.warmup < 0:
        p.error("--referrals must be at least 1, --concurrency 2 (one per instance) to 50, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
