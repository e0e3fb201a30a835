"""Fault run: PostgreSQL restarted under load, once with `-m fast` and once with `-m immediate`.

A real `serve` process on a PostgreSQL server of the test's own; SMTP clients in threads send
referrals (a few Message-IDs more than once) and, like an MTA, send the same bytes again after a
4xx. Mid-load the server is restarted: "fast" ends every session and shuts down cleanly,
"immediate" kills every server process at once and recovers from the WAL on the way up.

What must hold: nobody gets a 5xx; while the server is down a commit cannot happen, so the
gateway answers 451 (counted, per restart); every Message-ID that got a 250 is exactly one stored
message and referral, processed, routed to its team with its alert rows queued and sent; nothing
is twinned; the gateway process never exits (it rides out both restarts and stops cleanly on
SIGTERM); `referral-gateway verify` passes.
"""

from __future__ import annotations

import contextlib
import queue
import random
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.core.reference import normalise_reference
from tests.conftest import write_config
from tests.postgres import Server, create_database
from tests.test_crash_recovery import (
    REFERENCE_IN_REPLY,
    GatewayProcess,
    Item,
    attempt,
    build_items,
    free_ports,
    wait_for,
)

pytestmark = pytest.mark.fault

SENDERS = 6
PAUSE = (0.05, 0.3)  # seconds a client waits between messages: the load outlasts both restarts
RETRY = (0.05, 0.2)  # seconds before an MTA-like client sends again after a 4xx
RUN_DEADLINE = 180.0  # seconds for every message to get its 250; a healthy run takes well under a minute
RESTARTS = ("fast", "immediate")


@dataclass
class Load:
    """What the SMTP clients saw, shared by the sender threads and the test."""

    port: int
    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    replies: Counter[int] = field(default_factory=Counter)  # final reply code to each transaction; 0: cut off
    references: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)  # 5xx, give-ups, thread errors

    def count(self, code: int) -> None:
        with self.lock:
            self.replies[code] += 1

    @property
    def temporary(self) -> int:
        with self.lock:
            return sum(n for code, n in self.replies.items() if 400 <= code < 500)

    @property
    def accepted(self) -> int:
        with self.lock:
            return self.replies[250]


def send_all(load: Load, work: queue.Queue[Item], seed: int) -> None:
    """One MTA-like client: each message until a 250 (retrying the same bytes after a 4xx or a
    cut connection), a 5xx (a failure: the sender's server would give the referral up), or the
    deadline."""
    rng = random.Random(seed)
    conn: smtplib.SMTP | None = None
    try:
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            time.sleep(rng.uniform(*PAUSE))
            while time.monotonic() < load.deadline:
                conn, code, text = attempt(conn, load.port, item, timeout=60)
                load.count(code)
                if code == 250:
                    match = REFERENCE_IN_REPLY.search(text)
                    with load.lock:
                        if match:
                            load.references[item.message_id].append(match.group(1))
                        else:
                            load.failures.append(f"{item.message_id}: 250 without a reference: {text!r}")
                    break
                if code >= 500:
                    with load.lock:
                        load.failures.append(f"{item.message_id}: permanent failure {code} {text!r}")
                    break
                if conn is not None:  # as an MTA does: a new connection for the retry
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                time.sleep(rng.uniform(*RETRY))
            else:
                with load.lock:
                    load.failures.append(f"{item.message_id}: no 250 before the deadline")
    except Exception as exc:  # noqa: BLE001 (a thread must not die silently: the test fails on it)
        with load.lock:
            load.failures.append(f"sender thread crashed: {exc!r}")
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


# The store's side, as text rows (psql and sqlite3 alike): ids, references and states only.
STORED_SQL = (
    "SELECT m.dedupe_key, CASE WHEN m.processed_at IS NULL THEN 0 ELSE 1 END, r.id, r.reference, r.state,"
    " r.team_id FROM messages m LEFT JOIN referrals r ON r.message_id = m.id"
)
DELIVERIES_SQL = "SELECT referral_id, kind, state, recipient_hash FROM deliveries"
EVENTS_SQL = "SELECT referral_id, kind FROM events"
SETTLED_SQL = (
    "SELECT (SELECT count(*) FROM messages WHERE processed_at IS NULL),"
    " (SELECT count(*) FROM deliveries WHERE state != 'sent'), (SELECT count(*) FROM messages)"
)

Rows = Sequence[Sequence[object]]


def text(value: object) -> str:
    return "" if value is None else str(value)


def check_store(
    unique: dict[str, Item],
    references: dict[str, list[str]],
    stored: Rows,
    deliveries: Rows,
    events: Rows,
) -> tuple[int, int]:
    """Asserts every Message-ID with a 250 is one message and one referral, processed, routed to
    its team, with its alerts and receipt queued once and sent, and its events once. Returns
    (lost, twinned) for the figures (both are asserted zero)."""
    reference_of: dict[str, str] = {}
    for message_id, refs in references.items():
        assert len(set(refs)) == 1, f"{message_id} got different references: {refs}"
        assert normalise_reference(refs[0]) == refs[0]
        reference_of[message_id] = refs[0]
    assert len(set(reference_of.values())) == len(reference_of), "two messages share a reference"
    rows_by_key: dict[str, list[Sequence[object]]] = defaultdict(list)
    for row in stored:
        rows_by_key[text(row[0])].append(row)
    lost = sum(1 for m in reference_of if not rows_by_key.get(unique[m].key))
    twinned = sum(1 for rows in rows_by_key.values() if len(rows) > 1)
    assert lost == 0 and twinned == 0, f"{lost} accepted message(s) lost, {twinned} twinned"
    sent = Counter((text(r), text(k)) for r, k, state, _ in deliveries if state == "sent")
    queued = Counter((text(r), text(k)) for r, k, _, _ in deliveries)
    per_recipient = Counter((text(r), text(k), text(h)) for r, k, _, h in deliveries)
    twins = [key for key, n in per_recipient.items() if n > 1]
    assert not twins, f"deliveries queued twice: {twins[:5]}"
    event_counts = Counter((text(r), text(k)) for r, k in events)
    for message_id, reference in reference_of.items():
        item = unique[message_id]
        ((_, processed, referral_id, stored_reference, state, team),) = rows_by_key[item.key]
        referral = text(referral_id)
        assert referral, f"{message_id}: stored message without a referral"
        assert stored_reference == reference, f"{message_id}: store says {stored_reference}, 250 said {reference}"
        assert text(processed) == "1", f"{message_id} ({reference}): never processed"
        assert state == "alerted", f"{message_id} ({reference}): state {state}"
        assert team == item.team, f"{message_id} ({reference}): routed to {team}, expected {item.team}"
        assert queued[(referral, "receipt")] == 1 == sent[(referral, "receipt")], f"{reference}: receipt"
        alerts = queued[(referral, "alert")]
        assert alerts >= 1, f"{message_id} ({reference}): no alert queued"
        assert sent[(referral, "alert")] == alerts, f"{reference}: an alert not sent"
        for kind in ("received", "routed"):
            count = event_counts[(referral, kind)]
            assert count == 1, f"{message_id} ({reference}): {count} '{kind}' events, expected 1"
    # Nothing stored that no client sent.
    assert set(rows_by_key) <= {item.key for item in unique.values()}
    return lost, twinned


def run_verify(config: Path, home: Path) -> None:
    verify = subprocess.run(
        [sys.executable, "-m", "gateway", "verify", "--config", str(config)],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def start_senders(load: Load, items: list[Item], seed: int) -> list[threading.Thread]:
    work: queue.Queue[Item] = queue.Queue()
    for item in items:
        work.put(item)
    threads = [
        threading.Thread(target=send_all, args=(load, work, seed + n), name=f"smtp-sender-{n}", daemon=True)
        for n in range(SENDERS)
    ]
    for thread in threads:
        thread.start()
    return threads


def stop_senders(load: Load, threads: list[threading.Thread]) -> None:
    load.deadline = 0.0  # any sender still retrying gives up
    for thread in threads:
        thread.join(timeout=70)


# Short leases and retries: a delivery claimed just before the restart, whose "sent" could not
# be recorded, is taken again within seconds, not after the shipped two minutes.
SHORT_LEASES = '[processing]\nlease = "3s"\nretry = "1s"\n'


def short_retries(config: Path) -> None:
    text = config.read_text()
    for old, new in (('lease = "2m"', 'lease = "3s"'), ('first_retry = "30s"', 'first_retry = "1s"')):
        assert text.count(old) == 1, f"config template changed: {old!r} not found once"
        text = text.replace(old, new)
    config.write_text(text)


@pytest.fixture
def pg_gateway(tmp_path: Path, own_postgres: Server) -> Iterator[tuple[GatewayProcess, str]]:
    """`serve` on the test's own PostgreSQL after `keys init`, as INSTALL.txt has it; yields the
    process and the database's name."""
    home = tmp_path / "gw"
    name = f"t{uuid.uuid4().hex[:16]}"
    url = create_database(own_postgres.url, name)
    smtp_port, http_port = free_ports(2)
    config = write_config(
        home,
        SHORT_LEASES,
        smtp_port=smtp_port,
        http_port=http_port,
        database_url=url,
        all_hours=True,  # a real process on the wall clock: route the same way at any hour
        shared_keys=False,
    )
    short_retries(config)
    subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "init", "--config", str(config)],
        cwd=home,
        check=True,
        capture_output=True,
    )
    process = GatewayProcess(home, config, smtp_port)
    try:
        yield process, name
    finally:
        process.close()


def test_postgres_restarted_fast_and_immediate_mid_load_loses_no_yes(
    pg_gateway: tuple[GatewayProcess, str], own_postgres: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    gw, database = pg_gateway
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    started = time.monotonic()
    items = build_items(rng, f"pg{seed:08x}")
    unique = {item.message_id: item for item in items}
    load = Load(gw.smtp_port, started + RUN_DEADLINE)
    gw.start(timeout=60)
    proc = gw.proc
    assert proc is not None
    threads = start_senders(load, items, seed)
    during: dict[str, tuple[int, int, float]] = {}  # mode -> (4xx, 250s before, seconds down)

    def alive() -> None:
        assert proc.poll() is None, f"the gateway exited with {proc.returncode}:\n{gw.tail(gw.generation)}"

    def senders_done() -> bool:
        return not any(t.is_alive() for t in threads)

    try:
        for index, mode in enumerate(RESTARTS):
            threshold = len(items) * (index + 1) // (len(RESTARTS) + 1)
            wait_for(lambda t=threshold: load.accepted >= t or senders_done(), RUN_DEADLINE, f"{threshold} x 250")
            alive()
            before, accepted = load.temporary, load.accepted
            down = time.monotonic()
            own_postgres.restart(mode)
            back = time.monotonic()
            # Counted until the gateway is saying yes again: the clients' retries of what was
            # refused while it was down (pre-ping drops the pool's dead connections on the way).
            wait_for(lambda a=load.accepted: load.accepted >= a + 5 or senders_done(), 60, "250s again")
            alive()
            during[mode] = (load.temporary - before, accepted, back - down)

        for thread in threads:
            thread.join(timeout=max(1.0, load.deadline - time.monotonic()))
        assert senders_done(), "SMTP senders still running at the deadline"
        alive()
        assert not load.failures, "\n".join(load.failures[:20])
        assert set(load.references) == set(unique), "some Message-IDs never got a 250"

        def settled() -> bool:
            ((unprocessed, unsent, count),) = own_postgres.psql(database, SETTLED_SQL)
            return unprocessed == "0" and unsent == "0" and int(count) > 0

        wait_for(settled, 120, "every message processed and every delivery sent")
        alive()
        assert gw.terminate(timeout=60) == 0, gw.tail(gw.generation)
        run_verify(gw.config, gw.home)

        lost, twinned = check_store(
            unique,
            load.references,
            own_postgres.psql(database, STORED_SQL),
            own_postgres.psql(database, DELIVERIES_SQL),
            own_postgres.psql(database, EVENTS_SQL),
        )
        errors = gw.error_lines()
        with load.lock:
            replies = dict(sorted(load.replies.items()))
        summary = [
            f"postgres restarts (seed {seed}): {len(unique)} referrals, {len(items)} sends, "
            f"{sum(replies.values())} SMTP transactions; replies {replies}",
            f"  250s: {replies.get(250, 0)}, 4xx: {load.temporary}, lost: {lost}, twinned: {twinned}",
            *(
                f"  -m {mode} after {acc} x 250: down {secs:.2f}s, {n} x 4xx while down or just back"
                + ("" if n else " (too quick to refuse anything)")
                for mode, (n, acc, secs) in during.items()
            ),
            f"  gateway ERROR log lines: {len(errors)}; wall time {time.monotonic() - started:.1f}s",
        ]
        with capsys.disabled():
            print("\n" + "\n".join(summary))
        # No permanent refusal and no cut connection: only 250s and temporary failures.
        assert set(replies) <= {250} | set(range(400, 500)), replies
        # Each restart here is down about a quarter of a second, in which some 4 to 6 sends are
        # refused; one restart alone may catch none on a slow machine, both together should.
        assert load.temporary > 0, "no send was refused while the database was down"
    except BaseException:
        with capsys.disabled():
            print(f"\npostgres restart run FAILED (seed {seed}); restarts: {during}")
            print(f"--- gateway stderr (tail) ---\n{gw.tail(gw.generation, 40)}")
        raise
    finally:
        stop_senders(load, threads)
