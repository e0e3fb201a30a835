"""Statements per referral on PostgreSQL, by stage, and where one gateway's CPU goes.

    .venv/bin/python bench/statements.py [--referrals 1000] [--concurrency 16] [--cpu-only] [--profile]

Starts a throwaway PostgreSQL (tests/postgres.py) and one `python -m gateway serve`, run through
this script (`--hooked-gateway`) with SQLAlchemy event listeners that count, per statement, the
executions (round trips: an executemany is one) and the executions PostgreSQL runs (an executemany
runs once per row); transactions begun; and pool checkouts (each one a pre-ping round trip on
PostgreSQL). `--cpu-only` runs plain `serve` and counts nothing. Each count is filed under the gateway
functions on the awaiting stack at the time, so a statement is put to its stage (intake commit,
processing, outbox, tracker) and to the helper that issued it (audit.append, transitions, claim).

The warm-up referrals go through to their alerts sent; then the counters are reset (SIGUSR1), the
timed referrals are sent, and the run ends once every one has its alert sent (no delivery pending).
A second SIGUSR1 writes the counts. The gateway's and PostgreSQL's CPU seconds over the timed part
are printed per referral: unlike bench/scale_out.py, which stops at the last alert queued, they
include sending every alert. With `--profile`, py-spy samples the gateway (the thread holding the
GIL) over the timed part and the top functions by own and by inclusive time are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import common

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

COUNTS_ENV = "BENCH_STATEMENT_COUNTS"  # where the hooked gateway writes its counts on SIGUSR1
PENDING = "SELECT count(*) FROM deliveries WHERE state = 'pending'"
SENT_ALERTS = "SELECT count(DISTINCT referral_id) FROM deliveries WHERE kind = 'alert' AND state = 'sent'"

# The outermost gateway function on the stack names the stage; the innermost of these names the helper.
STAGES = {
    "IntakeWriter": "intake commit",
    "Processor": "processing (claim, load, write)",
    "BatchWriter": "processing (claim, load, write)",
    "Outbox": "outbox (claim, send, outcome)",
}
SCRIPT = str(Path(__file__).resolve())
HELPERS = ("append", "transitions", "lock", "create", "claim", "alert_dead", "apply_early_statuses")


# --------------------------------------------------------------------------- inside the gateway


def _stack() -> tuple[str, ...]:
    """The gateway functions awaiting the statement, outermost first. SQLAlchemy's async layer runs
    the statement in a greenlet, so the awaiting coroutines are on the parent greenlet's frames."""
    import greenlet

    frame = sys._getframe(1)
    parent = greenlet.getcurrent().parent
    if parent is not None and parent.gr_frame is not None:
        frame = parent.gr_frame
    names: list[str] = []
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("gateway.") and module != "gateway.workers":
            names.append(f"{module.rsplit('.', 1)[-1]}.{frame.f_code.co_qualname}")
        frame = frame.f_back
    return tuple(reversed(names))


def hooked_gateway(argv: list[str]) -> None:
    """`python -m gateway ARGV` with the counting listeners."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    counts: Counter[str] = Counter()  # JSON key [kind, stack, statement] -> n

    def add(kind: str, statement: str, n: int = 1) -> None:
        counts[json.dumps([kind, list(_stack()), " ".join(statement.split())[:160]])] += n

    def on_execute(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        add("execute", statement)
        # An executemany runs once per row on PostgreSQL; an INSERT of many VALUES (SQLAlchemy's
        # insertmanyvalues, whose parameters are one flat list) runs once.
        rows = executemany and parameters and isinstance(parameters[0], (list, tuple, dict))
        add("rows", statement, len(parameters) if rows else 1)

    event.listen(Engine, "before_cursor_execute", on_execute)
    event.listen(Engine, "begin", lambda conn: add("begin", "BEGIN"))
    event.listen(Pool, "checkout", lambda *args: add("checkout", "checkout"))

    def dump(_sig: int, _frame: object) -> None:
        Path(os.environ[COUNTS_ENV]).write_text(json.dumps(dict(counts)))
        counts.clear()

    signal.signal(signal.SIGUSR1, dump)
    import runpy

    sys.argv = ["gateway", *argv]
    runpy.run_module("gateway", run_name="__main__")


# --------------------------------------------------------------------------- the run


async def scalar(conn: AsyncConnection, sql: str) -> int:
    from sqlalchemy import text

    return int((await conn.execute(text(sql))).scalar_one())


async def wait_sent(url: str, expected: int, limit: float) -> None:
    """Polls, on one connection of its own (a new one each time would fork a backend each time,
    and count in PostgreSQL's CPU), until `expected` referrals have their alerts sent."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")  # each poll sees the latest commits
    try:
        async with engine.connect() as conn:
            deadline = time.perf_counter() + limit
            while time.perf_counter() < deadline:
                if await scalar(conn, SENT_ALERTS) >= expected and await scalar(conn, PENDING) == 0:
                    return
                await asyncio.sleep(0.1)
    finally:
        await engine.dispose()
    raise RuntimeError(f"not every alert was sent within {limit:.0f} s")


def read_counts(path: Path) -> dict[str, int] | None:
    return dict(json.loads(path.read_text())) if path.exists() else None


async def dump_counts(gateway: common.Server, path: Path) -> dict[str, int]:
    await asyncio.to_thread(path.unlink, missing_ok=True)
    os.kill(gateway.pid, signal.SIGUSR1)
    for _ in range(100):
        await asyncio.sleep(0.1)  # the write is one call: done by then, or not begun
        counts = await asyncio.to_thread(read_counts, path)
        if counts is not None:
            return counts
    raise RuntimeError("the gateway did not write its counts")


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


async def run(args: argparse.Namespace) -> int:
    from scale_out import postgres_cpu, send_all
    from smtp_accept import build_messages

    from tests.postgres import Server as PostgresServer
    from tests.postgres import create_database

    if args.profile and py_spy() is None:
        print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    messages = build_messages(args.warmup + args.referrals, args.size, args.seed)
    postgres = PostgresServer()
    with tempfile.TemporaryDirectory(prefix="statements-") as tmp:
        work = Path(tmp)
        counts_path = work / "counts.json"
        try:
            postgres.start()
            url = create_database(postgres.url, "statements")
            home = work / "gw"
            config = common.write_config(home, database_url=url)
            init = await asyncio.create_subprocess_exec(
                *[common.python(), "-m", "gateway", "keys", "init", "--config", str(config)],
                cwd=home,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await init.wait() != 0:
                raise RuntimeError("keys init failed")
            # --cpu-only: the gateway as `serve` runs it, without the listeners (their cost is in its CPU).
            hook = ["-m", "gateway"] if args.cpu_only else [SCRIPT, "--hooked-gateway"]
            argv = [common.python(), *hook, "serve", "--config"]
            gateway = common.Server("gateway", [*argv, str(config)], "referral-gateway serving:", work / "gw.log")
            os.environ[COUNTS_ENV] = str(counts_path)
            await gateway.start()
            try:
                await send_all([gateway.port], messages[: args.warmup], args.concurrency, None)
                await wait_sent(url, args.warmup, args.timeout)
                if not args.cpu_only:
                    await dump_counts(gateway, counts_path)  # resets the counters
                spy = None
                if args.profile and (tool := py_spy()) is not None:
                    spy = await asyncio.create_subprocess_exec(
                        *[tool, "record", "--gil", "-p", str(gateway.pid), "-r", "250", "-f", "raw"],
                        *["-o", str(work / "spy")],
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                    await asyncio.sleep(1.0)  # py-spy attaches
                cpu0, pg0, wall0 = common.proc_cpu(gateway.pid), postgres_cpu(postgres), time.perf_counter()
                await send_all([gateway.port], messages[args.warmup :], args.concurrency, None)
                await wait_sent(url, args.warmup + args.referrals, args.timeout)
                cpu, wall = common.proc_cpu(gateway.pid) - cpu0, time.perf_counter() - wall0
                pg = postgres_cpu(postgres) - pg0
                counts = {} if args.cpu_only else await dump_counts(gateway, counts_path)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
                    await asyncio.wait_for(spy.wait(), 60)
            finally:
                await gateway.stop()
            common.print_log_errors(gateway.log)
        finally:
            postgres.remove()
        report(args, counts, cpu, pg, wall)
        if args.profile:
            profile(work / "spy", args.top)
            if args.raw:
                shutil.copy(work / "spy", args.raw)
    return 0


# --------------------------------------------------------------------------- the report


def stage_of(stack: Sequence[str]) -> str:
    for name in stack:
        owner = name.split(".")[1] if name.count(".") >= 2 else ""
        if owner in STAGES:
            return STAGES[owner]
    return stack[0].rsplit(".", 1)[0] if stack else "(no gateway caller)"


def helper_of(stack: Sequence[str]) -> str:
    for name in reversed(stack):
        if name.rsplit(".", 1)[-1] in HELPERS:
            return name
    return stack[-1] if stack else ""


def report(args: argparse.Namespace, counts: dict[str, int], cpu: float, pg: float, wall: float) -> None:
    n = args.referrals
    by_stage: dict[str, Counter[str]] = {}
    statements: Counter[tuple[str, str, str]] = Counter()
    for key, value in counts.items():
        kind, stack, statement = json.loads(key)
        stage = stage_of(stack)
        by_stage.setdefault(stage, Counter())[kind] += value
        if kind == "execute":
            statements[(stage, helper_of(stack), statement)] += value
    print()
    print(f"{n} plain-email referrals over {args.concurrency} connections, one instance on PostgreSQL")
    print(f"gateway CPU: {cpu:.2f} s in {wall:.2f} s: {cpu / n * 1000:.2f} ms per referral ({n / wall:.0f} ref/s)")
    print(f"PostgreSQL CPU: {pg:.2f} s: {pg / n * 1000:.2f} ms per referral")
    print("(the gateway's counting listeners and py-spy, if used, add to its CPU; compare runs of this script only)")
    print()
    print(f"{'per referral':<40} {'statements':>10} {'PG execs':>8} {'transactions':>12} {'checkouts':>9}")
    total: Counter[str] = Counter()
    for stage, c in sorted(by_stage.items()):
        total += c
        print(
            f"{stage:<40} {c['execute'] / n:>10.3f} {c['rows'] / n:>8.2f} "
            f"{c['begin'] / n:>12.3f} {c['checkout'] / n:>9.3f}"
        )
    print(
        f"{'total':<40} {total['execute'] / n:>10.3f} {total['rows'] / n:>8.2f} "
        f"{total['begin'] / n:>12.3f} {total['checkout'] / n:>9.3f}"
    )
    print()
    print("statements (executions per referral), by stage and the helper that issued them:")
    for (stage, helper, statement), value in sorted(statements.items(), key=lambda item: -item[1]):
        print(f"  {value / n:7.3f}  {stage[:12]:<12} {helper[:34]:<34} {statement[:90]}")
    print(f"statements per referral: {total['execute'] / n:.2f}")


def profile(path: Path, top: int) -> None:
    """py-spy's raw (collapsed) stacks: one line per distinct stack, its sample count last."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [
            frame.split(" (", 1)[0] + " (" + frame.split(" (", 1)[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            for frame in stack.split(";")
        ]
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print()
    print(f"py-spy: {samples} samples of the gateway while busy")
    for title, counter in (("own time", own), ("inclusive time", inclusive)):
        print(f"top {top} by {title} (% of samples):")
        for frame, n in counter.most_common(top):
            print(f"  {n / max(samples, 1) * 100:5.1f}%  {frame[:110]}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--referrals", type=int, default=1000, help="timed referrals (default 1000)")
    p.add_argument("--concurrency", type=int, default=16, help="SMTP connections (default 16)")
    p.add_argument("--size", type=int, default=6144, help="approximate message size in bytes (default 6144)")
    p.add_argument("--warmup", type=int, default=32, help="untimed warm-up referrals (default 32)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the alerts to be sent")
    p.add_argument("--cpu-only", action="store_true", help="no statement counting: the gateway's CPU alone")
    p.add_argument("--profile", action="store_true", help="sample the gateway with py-spy (pip install py-spy)")
    p.add_argument("--raw", type=Path, help="with --profile: keep py-spy's collapsed stacks in this file")
    p.add_argument("--top", type=int, default=30, help="functions to list from the profile (default 30)")
    return p.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--hooked-gateway"]:
        hooked_gateway(argv[1:])
        return 0
    return common.run_main(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
