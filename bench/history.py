"""The referral page's "Earlier referrals about this child" at 100k stored referrals: the child index
(keyed hashes, gateway.history.index) against the scan it replaced (open every older referral), in
the same run, on the same database, through the same function the page calls (dashboard_data.earlier).

    .venv/bin/python bench/history.py [--referrals 100000] [--children 20000] [--samples 30] [--scans 3]

Stores `--referrals` synthetic referrals about `--children` synthetic children (NHS numbers from the
999 test range with valid check digits; invented names; a handful of postcodes) in a fresh SQLite
database in a temporary directory: sealed content as the pipeline seals it, and the index rows the
pipeline writes with it, by bulk insert (the time to store them is printed, not compared). Then times
`earlier()` for `--samples` referrals with the index built, and for `--scans` of the same referrals
with the build record removed (the page then falls back to the scan). Prints the median and p90 of
each and, last, `ratio: X` (scan median over index median).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import write_config  # noqa: E402
from gateway import config as config_mod  # noqa: E402
from gateway.core import db  # noqa: E402
from gateway.core.model import Child, Referral, Referrer, Urgency  # noqa: E402
from gateway.core.records import ReferralRecord, find_referral  # noqa: E402
from gateway.core.schema import child_index_builds, messages, referrals  # noqa: E402
from gateway.core.sealed import Content, Sealed  # noqa: E402
from gateway.core.sealing import Sealer  # noqa: E402
from gateway.history import index  # noqa: E402
from gateway.history.keys import Hasher, load_key  # noqa: E402
from gateway.parse.nhs import nhs_check_digit  # noqa: E402
from gateway.staff.users import Role, User  # noqa: E402
from gateway.web.dashboard_data import earlier  # noqa: E402

START = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
FIRST = ("Sam", "Alex", "Kim", "Jo", "Ali", "Noor", "Ren", "Tess", "Ola", "Finn")
LAST = ("Testchild", "Example", "Sample", "Placeholder", "Fictional", "Madeup", "Pretend", "Synthetic")
POSTCODES = ("W1A 1AA", "WC1E 6BT", "NW1 4RY", "SE1 7PB", "E1 6AN", "N1 9GU")
CHUNK = 2000


def nhs_numbers(count: int) -> list[str]:
    """`count` valid NHS numbers from the 999 test range (a number with no valid check digit skipped)."""
    out: list[str] = []
    n = 0
    while len(out) < count:
        first_nine = f"999{n:06d}"
        n += 1
        check = nhs_check_digit(first_nine)
        if check is not None:
            out.append(first_nine + str(check))
    return out


def children(count: int, rng: random.Random) -> list[Child]:
    numbers = nhs_numbers(count)
    return [
        Child(
            name=f"{rng.choice(FIRST)} {rng.choice(LAST)}-{i}",
            date_of_birth=date(2010, 1, 1) + timedelta(days=rng.randrange(5000)),
            # Some referrals give no NHS number: the child is then found by name and date of birth.
            nhs_number=numbers[i] if rng.random() < 0.8 else None,
            postcode=rng.choice(POSTCODES),
        )
        for i in range(count)
    ]


async def store(database: db.Database, sealed: Sealed, hasher: Hasher, kids: list[Child], total: int) -> list[str]:
    """`total` referrals, each about a child drawn from `kids`, oldest first; returns their ids."""
    rng = random.Random(15)
    ids: list[str] = []
    for start in range(0, total, CHUNK):
        message_rows, referral_rows, index_rows = [], [], []
        for i in range(start, min(start + CHUNK, total)):
            referral_id, message_id = uuid.uuid4().hex, uuid.uuid4().hex
            at = START + timedelta(minutes=7 * i)
            child = rng.choice(kids)
            referral = Referral(
                referrer=Referrer(name="Ann Example", organisation=f"Demo Trust {i % 7}"),
                child=child,
                urgency=Urgency.STANDARD,
                details="Synthetic benchmark concern text. " * 20,
            )
            message_rows.append(
                {
                    "id": message_id,
                    "channel": "web",
                    "dedupe_key": message_id,
                    "received_at": at,
                    "size": 1,
                    "envelope": b"",
                    "raw": b"",
                    "processed_at": at,
                    "attempts": 1,
                    "next_attempt_at": at,
                }
            )
            referral_rows.append(
                {
                    "id": referral_id,
                    "message_id": message_id,
                    "reference": f"{i // 10000:04d}-{i % 10000:04d}",
                    "channel": "web",
                    "state": "alerted",
                    "received_at": at,
                    "team_id": "mash",
                    "urgency": "standard",
                    "incomplete": False,
                    "content": sealed.seal_content(referral_id, Content(referral, None)),
                }
            )
            digests = hasher.digests(child).items()
            index_rows += index.rows(hasher, referral_id, at, digests, referral.referrer.organisation)
            ids.append(referral_id)
        async with database.write() as conn:
            await conn.execute(messages.insert(), message_rows)
            await conn.execute(referrals.insert(), referral_rows)
            await index.insert(conn, index_rows)
    return ids


async def timed(work: object) -> float:
    began = time.perf_counter()
    await work  # type: ignore[misc]
    return time.perf_counter() - began


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.9 * len(ordered)) - 1)]


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        home = Path(tmp)
        cfg = config_mod.load(write_config(home))
        engine = db.make_engine(cfg.database_url)
        try:
            await db.upgrade(engine)
            database = db.Database(engine)
            sealed = Sealed(Sealer.from_keys_dir(cfg.keys_dir))
            hasher = Hasher(load_key(cfg.keys_dir))
            kids = children(args.children, random.Random(4))
            began = time.perf_counter()
            ids = await store(database, sealed, hasher, kids, args.referrals)
            print(f"stored {len(ids)} referrals about {len(kids)} children in {time.perf_counter() - began:.1f} s")
            async with database.write() as conn:
                built = {"key_id": hasher.key_id, "built_at": START, "referrals": len(ids)}
                await conn.execute(child_index_builds.insert().values(**built))
                print(f"index rows: {await index.size(conn)}")
            coordinator = User(
                "bench", "bench", "Bench Coordinator", Role.COORDINATOR, (), 0, None, None, START, START, None, 0
            )
            # The latest referrals: the page of a new one is the page a duty worker opens most.
            sample = ids[-args.samples :]
            rows: list[ReferralRecord] = []
            async with database.read() as conn:
                for referral_id in sample:
                    row = await find_referral(conn, referral_id)
                    assert row is not None
                    rows.append(row)

            async def page(row: ReferralRecord) -> int:
                assert row.content is not None
                child = sealed.content(row.id, row.content).referral.child
                return len(await earlier(database, sealed, cfg.settings, coordinator, row, child, hasher))

            found_by_index = [await page(row) for row in rows]
            by_index = [await timed(page(row)) for row in rows]
            async with database.write() as conn:
                await conn.execute(child_index_builds.delete())  # not built: the page scans
            found_by_scan = [await page(row) for row in rows[: args.scans]]
            by_scan = [await timed(page(row)) for row in rows[: args.scans]]
            # The same answer both ways: the index finds what the scan finds.
            assert found_by_scan == found_by_index[: args.scans], (found_by_scan, found_by_index)
            print(f"earlier referrals found per page (first {args.scans}): {found_by_scan}")
            index_median, scan_median = statistics.median(by_index), statistics.median(by_scan)
            print(
                f"index: {len(by_index)} pages, median {index_median * 1000:.2f} ms, p90 {p90(by_index) * 1000:.2f} ms"
            )
            print(f"scan:  {len(by_scan)} pages, median {scan_median * 1000:.1f} ms, p90 {p90(by_scan) * 1000:.1f} ms")
            print(f"ratio: {scan_median / index_median:.0f}")
        finally:
            await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--referrals", type=int, default=100_000)
    parser.add_argument("--children", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=30, help="pages timed with the index")
    parser.add_argument("--scans", type=int, default=3, help="of the same pages, timed with the scan")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
