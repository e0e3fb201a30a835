"""Fault run: the filesystem under data_dir fills up while referrals with attachments arrive.

As root, a small tmpfs is mounted as the gateway's data_dir (the SQLite database, its WAL, the
outbound maildir); a real `serve` process starts on it, and a filler file takes all but a little
of the space. SMTP clients in threads send referrals with attachments and, like an MTA, send the
same bytes again after a 4xx. While the disk is full: every reply is 451, never a 5xx, and never
a 250 for a message not in the database; the gateway keeps answering. Then the filler goes and the
clients' retries get 250: every yes is stored once and processed, `verify` passes.

tmpfs refuses a write past its size with ENOSPC, as a full ext4 does (SQLite: SQLITE_FULL); no
loop device is needed. Not root, or no mount: skipped here, a failure under CI=true (CI runs as
root), as tests/postgres.py does for a missing server.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import smtplib
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_message, referral_body, write_config
from tests.test_crash_recovery import SHAPES, GatewayProcess, Item, free_ports, query, wait_for
from tests.test_database_restart import (
    DELIVERIES_SQL,
    EVENTS_SQL,
    SETTLED_SQL,
    SHORT_LEASES,
    STORED_SQL,
    Load,
    check_store,
    run_verify,
    short_retries,
    start_senders,
    stop_senders,
)

pytestmark = pytest.mark.fault

SIZE = "32m"  # the tmpfs: once the filler goes, room for every referral, its WAL and its alerts
LEFT_FREE = 1024 * 1024  # bytes the filler leaves: a few referrals, then ENOSPC
REFERRALS = 24
ATTACHMENT = 96 * 1024  # bytes of (random, so incompressible) synthetic scan per referral
FULL_FOR = 3.0  # seconds the disk stays full once the refusals start: the workers meet it too
RUN_DEADLINE = 180.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI runs as root and must be able to mount a tmpfs")
    pytest.skip(f"{reason} (required in CI)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SIZE mounted at HOME/var (the config's data_dir); unmounted afterwards."""
    if os.geteuid() != 0:
        cannot("mounting a small filesystem needs root")
    var = tmp_path / "gw" / "var"
    var.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(var)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        cannot(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield var
    finally:
        if subprocess.run(["umount", str(var)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(var)], check=True)  # something still holds it open


def fill(directory: Path, leave: int) -> Path:
    """A filler file taking all the free space but `leave` bytes (checked: the write stops at ENOSPC)."""
    filler = directory / "filler.bin"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            written = out.tell()
    # Page-sized: tmpfs counts whole pages.
    os.truncate(filler, max(0, written - leave) // 4096 * 4096)
    return filler


def build_items(run: str) -> list[Item]:
    rng = random.Random(run)
    items = []
    for n in range(REFERRALS):
        (postcode, urgency, category), team = SHAPES[n % len(SHAPES)]
        message_id = f"<full-{run}-{n:04d}@nhs.example>"
        msg = make_message(
            referral_body(postcode=postcode, urgency=urgency, category=category),
            message_id=message_id,
            subject=f"Safeguarding referral {n}",
        )
        msg.add_attachment(rng.randbytes(ATTACHMENT), maintype="application", subtype="pdf", filename=f"scan-{n}.pdf")
        # CRLF, as on the wire: smtplib sends bytes as they are, and a message in bare LFs is one
        # line to aiosmtpd, refused (500) once it passes 1000 bytes.
        raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
        items.append(Item(message_id, "ann.example@nhs.example", raw, team))
    return items


def stored_keys(db: Path) -> set[str]:
    return {str(key) for (key,) in query(db, "SELECT dedupe_key FROM messages")}


def answers(port: int) -> bool:
    """A fresh SMTP session greets, takes EHLO and NOOP: the gateway is up, not wedged."""
    with contextlib.closing(smtplib.SMTP("127.0.0.1", port, "probe.test", timeout=30)) as conn:
        return conn.ehlo()[0] == 250 and conn.noop()[0] == 250


def test_disk_full_under_data_dir_answers_451_loses_nothing_and_recovers(
    small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = small_disk.parent
    smtp_port, http_port = free_ports(2)
    config = write_config(home, SHORT_LEASES, smtp_port=smtp_port, http_port=http_port, all_hours=True)
    short_retries(config)
    gw = GatewayProcess(home, config, smtp_port)
    started = time.monotonic()
    run = f"{random.SystemRandom().randrange(2**32):08x}"
    items = build_items(run)
    unique = {item.message_id: item for item in items}
    load = Load(smtp_port, started + RUN_DEADLINE)
    threads = []
    try:
        gw.start(timeout=60)
        proc = gw.proc
        assert proc is not None
        filler = fill(small_disk, LEFT_FREE)
        threads = start_senders(load, items, 7)

        wait_for(lambda: load.temporary >= 5, 60, "451 replies once the disk is full")
        refusing = time.monotonic()
        while time.monotonic() < refusing + FULL_FOR:
            assert proc.poll() is None, f"the gateway exited with {proc.returncode}:\n{gw.tail(1)}"
            # Every 250 so far is a committed message: read from the database while it is full.
            with load.lock:
                yes = {unique[m].key for m in load.references}
            missing = yes - stored_keys(gw.db_path)
            assert not missing, f"{len(missing)} message(s) answered 250 but not in the database"
            assert answers(smtp_port)
            # The refusals are the full disk's (the log names only the error's class).
            space = os.statvfs(small_disk)
            assert space.f_bavail * space.f_frsize < ATTACHMENT, "the 451s came with room on the disk"
            time.sleep(0.5)
        with load.lock:
            full = dict(load.replies)
            accepted_while_full = len(load.references)
        assert not load.failures, "\n".join(load.failures[:20])
        assert len(load.references) < len(unique), "the disk never filled: every message got its 250"

        filler.unlink()  # space again: the clients' next retries must get their 250
        for thread in threads:
            thread.join(timeout=max(1.0, load.deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "SMTP senders still running at the deadline"
        assert not load.failures, "\n".join(load.failures[:20])
        assert set(load.references) == set(unique), "some Message-IDs never got a 250"

        def settled() -> bool:
            try:
                ((unprocessed, unsent, count),) = query(gw.db_path, SETTLED_SQL)
            except sqlite3.Error:
                return False
            return unprocessed == 0 and unsent == 0 and int(str(count)) > 0

        wait_for(settled, 120, "every message processed and every delivery sent")
        assert proc.poll() is None, f"the gateway exited with {proc.returncode}:\n{gw.tail(1)}"
        assert gw.terminate(timeout=60) == 0, gw.tail(1)
        run_verify(config, home)
        db = gw.db_path
        lost, twinned = check_store(
            unique, load.references, query(db, STORED_SQL), query(db, DELIVERIES_SQL), query(db, EVENTS_SQL)
        )
        replies = dict(sorted(load.replies.items()))
        # What the gateway logged, without the times: one line of each kind, with its count.
        errors = Counter(line.split(" ERROR ", 1)[-1] for line in gw.error_lines())
        summary = [
            f"disk full (run {run}): {len(unique)} referrals with {ATTACHMENT // 1024} KB attachments on a "
            f"{SIZE} tmpfs, {LEFT_FREE // 1024} KB left free; replies {replies}",
            f"  while full: {full}; {accepted_while_full} referral(s) had their 250 before it filled",
            f"  250s: {replies.get(250, 0)}, 4xx: {load.temporary}, lost: {lost}, twinned: {twinned}",
            f"  gateway ERROR log lines: {errors.total()}"
            + "".join(f"\n    {n} x {line}" for line, n in errors.most_common(8)),
            f"  wall time {time.monotonic() - started:.1f}s",
        ]
        with capsys.disabled():
            print("\n" + "\n".join(summary))
        assert set(full) <= {250} | set(range(400, 500)), full  # no 5xx, no cut connection
        assert set(replies) <= {250} | set(range(400, 500)), replies
    except BaseException:
        with capsys.disabled():
            print(f"\ndisk full run FAILED (run {run}); replies {dict(load.replies)}")
            print(subprocess.run(["df", "-k", str(small_disk)], capture_output=True, text=True).stdout)
            print(f"--- gateway stderr (tail) ---\n{gw.tail(gw.generation, 40)}")
        raise
    finally:
        stop_senders(load, threads)
        gw.close()  # before the unmount
