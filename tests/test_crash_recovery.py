"""Crash recovery: the gateway as a real process, killed with SIGKILL while referrals arrive.

Several SMTP clients send referrals (a few Message-IDs on purpose more than once) while the
gateway is killed with SIGKILL again and again: right after a 250 (the commit must already be
durable), while the processing worker holds claimed messages, while the outbox holds claimed
deliveries, and at a random moment. Each time it is restarted with the same config. A client
whose connection drops or who gets a 4xx sends the same bytes again once the gateway is back, as
a real MTA does. At the end the last process drains its queues and is stopped with SIGTERM.

What must hold, read from the store (ids, references and states only; content is sealed):
every Message-ID that got a 250 is exactly one message, one referral and exactly one alert row
(and one receipt row), the same reference in every 250 for it, and its referral is `alerted`.
The team's maildir holds at least one alert for each referral: at-least-once on the wire, so
duplicates there are counted and shown, not failed. `referral-gateway verify` must pass.

Set CRASH_SEED to replay a run's random choices (the summary prints the seed).
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from gateway.core.reference import normalise_reference
from gateway.intake.smtp import dedupe_key
from tests.conftest import REFERRAL_ADDRESS, maildir_messages, make_message, referral_body, write_config

pytestmark = pytest.mark.slow

UNIQUE_MESSAGES = 150
RESENT_AT_ONCE = 6  # same Message-ID queued right behind the original: sent concurrently
RESENT_LATER = 6  # same Message-ID sent again at the end of the run
SENDERS = 6
# How each SIGKILL is timed. "after-250": the first client to read a 250 for a message the gateway
# had not seen before kills it at once (a gateway that answered before its commit loses that one).
KILL_PLANS = ("after-250", "processing-claimed", "after-250", "outbox-claimed", "random", "after-250")
PAUSE = (0.0, 0.25)  # seconds a client waits between messages: ~50 a second, bursty
RUN_DEADLINE = 90.0  # seconds; a healthy run takes about 15
SERVING = "referral-gateway serving:"
TEAMS = {
    "mash": "mash-duty@demo-council.example",
    "triage": "triage@demo-council.example",
    "edt": "edt@demo-council.example",
}
REFERRERS = ("ann.example@nhs.example", "gp.surgery@nhs.example", "head.teacher@school.example")
# (postcode, urgency, category) -> the team config/gateway.toml routes it to
SHAPES = (
    (("W1A 1AA", "urgent", "neglect"), "mash"),  # borough-postcodes
    (("M1 1AE", "standard", "neglect"), "triage"),  # default-triage
    (("M1 1AE", "immediate", "physical"), "edt"),  # immediate-out-of-area
)
REFERENCE_IN_REPLY = re.compile(r"Accepted: referral (\S+)")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports below the ephemeral range. While the gateway is down its port
    is unbound, and a port from the ephemeral range could then be handed out by connect(): to some
    other program, or to one of our own clients as its source port (a TCP self-connect), and the
    restarted gateway could not listen again. connect() never picks a port below that range."""
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(range_file.read_text().split()[0]) if range_file.exists() else 32768
    pick = random.SystemRandom()
    ports: list[int] = []
    for _ in range(1000):
        port = pick.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise AssertionError("no free loopback ports below the ephemeral range")


def crash_config(home: Path) -> tuple[Path, int]:
    """A config on fixed ports (a restarted process listens where the dead one did) with short
    leases, so a restarted process takes over the dead one's claimed work within seconds.
    Returns the config file and the SMTP port."""
    smtp_port, http_port = free_ports(2)
    path = write_config(
        home,
        '[processing]\nlease = "3s"\nretry = "1s"\n',
        smtp_port=smtp_port,
        http_port=http_port,
        all_hours=True,  # a real process on the wall clock: route the same way at any hour
    )
    text = path.read_text()
    for old, new in (('lease = "2m"', 'lease = "3s"'), ('first_retry = "30s"', 'first_retry = "1s"')):
        assert text.count(old) == 1, f"config template changed: {old!r} not found once"
        text = text.replace(old, new)
    path.write_text(text)
    return path, smtp_port


class GatewayProcess:
    """`python -m gateway serve` as a child process; every generation logs to its own files."""

    def __init__(self, home: Path, config: Path, smtp_port: int) -> None:
        self.home = home
        self.config = config
        self.smtp_port = smtp_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.kills = 0
        self._files: list[IO[bytes]] = []

    @property
    def db_path(self) -> Path:
        return self.home / "var" / "gateway.db"

    def log(self, generation: int, stream: str) -> Path:
        return self.home / "logs" / f"gen{generation}.{stream}"

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "the previous process is still running"
        self.generation += 1
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        out = open(self.log(self.generation, "out"), "wb")  # closed in close()
        err = open(self.log(self.generation, "err"), "wb")
        self._files += [out, err]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # a ^C to pytest is not a signal to the gateway
        )
        deadline = time.monotonic() + timeout
        while SERVING not in self.log(self.generation, "out").read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"gateway generation {self.generation} exited with {self.proc.returncode} "
                    f"before serving:\n{self.tail(self.generation)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway not serving after {timeout}s:\n{self.tail(self.generation)}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sigkill(self) -> None:
        """Send SIGKILL now (safe from any thread: the child is not reaped until wait)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def reap_killed(self) -> None:
        assert self.proc is not None
        assert self.proc.wait(timeout=10) == -signal.SIGKILL
        self.kills += 1

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def tail(self, generation: int, lines: int = 40) -> str:
        path = self.log(generation, "err")
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def error_lines(self) -> list[str]:
        found = []
        for gen in range(1, self.generation + 1):
            text = self.log(gen, "err").read_text(errors="replace")
            found += [f"gen{gen}: {line}" for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
        return found

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for handle in self._files:
            handle.close()
        self._files.clear()


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[GatewayProcess]:
    home = tmp_path / "gw"
    process = GatewayProcess(home, *crash_config(home))
    try:
        yield process
    finally:
        process.close()


def read_db(path: Path) -> sqlite3.Connection:
    """A read-only connection: the test only looks, it never writes to the gateway's store."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def query(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with contextlib.closing(read_db(path)) as conn:
        return conn.execute(sql, args).fetchall()


@dataclass(frozen=True)
class Item:
    message_id: str
    sender: str
    raw: bytes
    team: str

    @property
    def key(self) -> str:
        return dedupe_key(self.sender, self.raw)


@dataclass
class Traffic:
    """What the SMTP clients saw, shared between sender threads and the killer."""

    port: int
    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    references: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    accepted: int = 0  # 250 replies
    attempts: int = 0  # SMTP transactions tried
    broken: int = 0  # transactions cut off or answered 4xx (then retried)
    failures: list[str] = field(default_factory=list)  # 5xx, bad replies, give-ups, thread errors
    # Armed by the killer: the next client to read a 250 kills the gateway at once.
    arm: threading.Event = field(default_factory=threading.Event)
    fired: threading.Event = field(default_factory=threading.Event)
    kill_lock: threading.Lock = field(default_factory=threading.Lock)
    kill: Callable[[], None] = lambda: None
    seen: set[str] = field(default_factory=set)  # Message-IDs a client has had a 250 for

    def on_250(self, item: Item, reply: str, first_try: bool) -> None:
        with self.lock:  # fresh: a message no 250 has covered yet, so this 250 is its first commit
            fresh = first_try and item.message_id not in self.seen
            self.seen.add(item.message_id)
        if fresh and self.arm.is_set():
            with self.kill_lock:
                if self.arm.is_set():
                    self.kill()  # before anything else: the 250 is out, the commit must be durable
                    self.arm.clear()
                    self.fired.set()
        match = REFERENCE_IN_REPLY.search(reply)
        with self.lock:
            self.accepted += 1
            if not match:
                self.failures.append(f"{item.message_id}: 250 without a reference: {reply!r}")
                return
            self.references[item.message_id].append(match.group(1))


def transact(conn: smtplib.SMTP, item: Item) -> tuple[int, str]:
    code, text = conn.mail(item.sender)
    if code == 250:
        code, text = conn.rcpt(REFERRAL_ADDRESS)
        if code in (250, 251):
            code, text = conn.data(item.raw)
    return code, text.decode(errors="replace")


def attempt(conn: smtplib.SMTP | None, port: int, item: Item, timeout: float) -> tuple[smtplib.SMTP | None, int, str]:
    """One try, as an MTA makes it: connect if there is no connection, then MAIL, RCPT and DATA.
    A connection lost (the gateway killed mid-transaction, or not back yet) is code 0."""
    try:
        if conn is None:
            conn = smtplib.SMTP("127.0.0.1", port, "sender.test", timeout=timeout)
            conn.ehlo()
        code, text = transact(conn, item)
    except smtplib.SMTPResponseException as exc:
        code, text = exc.smtp_code, exc.smtp_error.decode(errors="replace")
    except (smtplib.SMTPException, OSError):
        code, text = 0, "connection lost"
    return conn, code, text


def sender(traffic: Traffic, work: queue.Queue[Item], seed: int) -> None:
    rng = random.Random(seed)
    conn: smtplib.SMTP | None = None

    def drop() -> None:
        nonlocal conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        conn = None

    try:
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            time.sleep(rng.uniform(*PAUSE))
            first_try = True
            while True:
                if time.monotonic() > traffic.deadline:
                    with traffic.lock:
                        traffic.failures.append(f"{item.message_id}: no 250 before the deadline")
                    break
                with traffic.lock:
                    traffic.attempts += 1
                conn, code, text = attempt(conn, traffic.port, item, timeout=15)
                if code == 250:
                    traffic.on_250(item, text, first_try)
                    break
                first_try = False
                drop()
                if code >= 500:
                    with traffic.lock:
                        traffic.failures.append(f"{item.message_id}: permanent failure {code} {text!r}")
                    break
                with traffic.lock:
                    traffic.broken += 1
                time.sleep(rng.uniform(0.05, 0.2))  # a real MTA retries later, the same bytes
    except Exception as exc:  # noqa: BLE001 (a thread must not die silently: the test fails on it)
        with traffic.lock:
            traffic.failures.append(f"sender thread crashed: {exc!r}")
    finally:
        drop()


def build_items(rng: random.Random, run: str) -> list[Item]:
    items = []
    for n in range(UNIQUE_MESSAGES):
        (postcode, urgency, category), team = SHAPES[n % len(SHAPES)]
        referrer = REFERRERS[n % len(REFERRERS)]
        message_id = f"<crash-{run}-{n:04d}@{referrer.split('@')[1]}>"
        msg = make_message(
            referral_body(postcode=postcode, urgency=urgency, category=category),
            sender=referrer,
            message_id=message_id,
            subject=f"Safeguarding referral {n}",
        )
        items.append(Item(message_id, referrer, msg.as_bytes(), team))
    # The same Message-ID again, with the same bytes, from the same sender: a retry, not a new referral.
    picks = rng.sample(range(UNIQUE_MESSAGES), RESENT_AT_ONCE + RESENT_LATER)
    work = list(items)
    for index in sorted(picks[:RESENT_AT_ONCE], reverse=True):
        work.insert(index + 1, items[index])
    work += [items[index] for index in picks[RESENT_AT_ONCE:]]
    return work


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def claimed_by(gw: GatewayProcess, table: str, pending: str, timeout: float, delay: float) -> bool:
    """Poll until the live process holds a lease on some row of `table`; False at the timeout."""
    sql = f"SELECT 1 FROM {table} WHERE {pending} AND lease_owner LIKE ? LIMIT 1"  # noqa: S608
    owner = f"%:{gw.pid}:%"  # lease owner is host:pid:random
    deadline = time.monotonic() + timeout
    with contextlib.closing(read_db(gw.db_path)) as conn:
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.Error):
                if conn.execute(sql, (owner,)).fetchone():
                    time.sleep(delay)  # somewhere between the claim and the commit of the work
                    return True
            time.sleep(0.002)
    return False


def settled(db: Path) -> bool:
    try:
        ((unprocessed, unsent, messages),) = query(
            db,
            "SELECT (SELECT count(*) FROM messages WHERE processed_at IS NULL),"
            " (SELECT count(*) FROM deliveries WHERE state != 'sent'),"
            " (SELECT count(*) FROM messages)",
        )
    except sqlite3.Error:
        return False
    return unprocessed == 0 and unsent == 0 and messages > 0


def test_no_accepted_referral_is_lost_or_twinned_across_sigkills(
    gateway_process: GatewayProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = gateway_process
    seed = int(os.environ.get("CRASH_SEED", str(random.SystemRandom().randrange(2**32))))
    rng = random.Random(seed)
    started = time.monotonic()
    work_items = build_items(rng, f"{seed:08x}")
    unique = {item.message_id: item for item in work_items}
    work: queue.Queue[Item] = queue.Queue()
    for item in work_items:
        work.put(item)
    traffic = Traffic(gw.smtp_port, started + RUN_DEADLINE, kill=gw.sigkill)

    # Kill points, by number of 250s seen: spread over the run, a little random.
    total = len(work_items)
    step = total // (len(KILL_PLANS) + 1)
    thresholds = [step * (i + 1) + rng.randint(-step // 4, step // 4) for i in range(len(KILL_PLANS))]
    plans = list(KILL_PLANS)
    rng.shuffle(plans)
    plans.remove("after-250")
    plans.insert(0, "after-250")  # an early kill right behind a burst of 250s
    how_killed: list[str] = []

    gw.start()
    threads = [
        threading.Thread(target=sender, args=(traffic, work, seed + n), name=f"smtp-sender-{n}", daemon=True)
        for n in range(SENDERS)
    ]
    try:
        for thread in threads:
            thread.start()

        def senders_done() -> bool:
            return not any(t.is_alive() for t in threads)

        for plan, threshold in zip(plans, thresholds, strict=True):
            wait_for(
                lambda threshold=threshold: traffic.accepted >= threshold or senders_done(),
                RUN_DEADLINE,
                f"{threshold} 250 replies",
            )
            if plan == "after-250":
                traffic.arm.set()
                if not traffic.fired.wait(timeout=5):
                    with traffic.kill_lock:  # nobody got a 250 in time: kill it ourselves
                        if traffic.arm.is_set():
                            traffic.arm.clear()
                            gw.sigkill()
                            plan += " (none came: timed)"
                traffic.fired.clear()
            elif plan == "processing-claimed":
                if not claimed_by(gw, "messages", "processed_at IS NULL", 3, rng.uniform(0, 0.01)):
                    plan += " (not seen: timed)"
                gw.sigkill()
            elif plan == "outbox-claimed":
                if not claimed_by(gw, "deliveries", "state = 'pending'", 3, rng.uniform(0, 0.01)):
                    plan += " (not seen: timed)"
                gw.sigkill()
            else:
                time.sleep(rng.uniform(0, 0.3))
                gw.sigkill()
            at = traffic.accepted
            gw.reap_killed()
            how_killed.append(f"{plan} at {at} 250s")
            time.sleep(rng.uniform(0, 0.3))  # clients meet a closed port for a moment
            gw.start()

        for thread in threads:
            thread.join(timeout=max(1.0, traffic.deadline - time.monotonic()))
        assert senders_done(), "SMTP senders still running at the deadline"
        assert not traffic.failures, "\n".join(traffic.failures[:20])

        # The last process drains everything the dead ones left behind, then stops cleanly.
        wait_for(lambda: settled(gw.db_path), 45, "every message processed and every delivery sent")
        assert gw.terminate() == 0, gw.tail(gw.generation)
        sent_at_end = time.monotonic()

        verify = subprocess.run(
            [sys.executable, "-m", "gateway", "verify", "--config", str(gw.config)],
            cwd=gw.home,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr

        # --- the client's side: every Message-ID got a 250, always with the same reference
        assert set(traffic.references) == set(unique), "some Message-IDs never got a 250"
        reference_of: dict[str, str] = {}
        for message_id, refs in traffic.references.items():
            assert len(set(refs)) == 1, f"{message_id} got different references: {refs}"
            assert normalise_reference(refs[0]) == refs[0]
            reference_of[message_id] = refs[0]
        assert len(set(reference_of.values())) == len(reference_of), "two messages share a reference"

        # --- the store's side
        db = gw.db_path
        stored = query(
            db,
            "SELECT m.dedupe_key, m.processed_at, r.id, r.reference, r.state, r.team_id"
            " FROM messages m LEFT JOIN referrals r ON r.message_id = m.id",
        )
        rows_by_key: dict[str, list[tuple[object, ...]]] = defaultdict(list)
        for row in stored:
            rows_by_key[str(row[0])].append(row)
        deliveries = Counter(
            (str(referral_id), str(kind))
            for referral_id, kind, state in query(db, "SELECT referral_id, kind, state FROM deliveries")
            if state == "sent"
        )
        all_deliveries = Counter((str(r), str(k)) for r, k in query(db, "SELECT referral_id, kind FROM deliveries"))
        # One row per referral, kind and recipient: an alert goes to the team mailbox and to each
        # member on duty, but a restart must not queue any of them twice.
        per_recipient = Counter(
            (str(r), str(k), str(h))
            for r, k, h in query(db, "SELECT referral_id, kind, recipient_hash FROM deliveries")
        )
        twins = {key: n for key, n in per_recipient.items() if n > 1}
        assert not twins, f"deliveries queued twice: {list(twins)[:5]}"
        event_counts = Counter((str(r), str(k)) for r, k in query(db, "SELECT referral_id, kind FROM events"))
        for message_id, item in unique.items():
            rows = rows_by_key.get(item.key, [])
            assert len(rows) == 1, f"{message_id}: {len(rows)} stored messages/referrals, expected 1"
            _, processed_at, referral_id, reference, state, team = rows[0]
            assert referral_id is not None, f"{message_id}: stored message without a referral"
            assert reference == reference_of[message_id], f"{message_id}: store says {reference}"
            assert processed_at is not None, f"{message_id}: never processed"
            assert state == "alerted", f"{message_id} ({reference}): state {state}"
            assert team == item.team, f"{message_id} ({reference}): routed to {team}, expected {item.team}"
            count = all_deliveries[(str(referral_id), "receipt")]
            assert count == 1, f"{message_id} ({reference}): {count} receipt rows, expected exactly 1"
            assert deliveries[(str(referral_id), "receipt")] == 1, f"{reference}: receipt not sent"
            alerts = all_deliveries[(str(referral_id), "alert")]
            assert alerts >= 1, f"{message_id} ({reference}): no alert queued"
            assert deliveries[(str(referral_id), "alert")] == alerts, f"{reference}: an alert not sent"
            for kind in ("received", "routed"):
                count = event_counts[(str(referral_id), kind)]
                assert count == 1, f"{message_id} ({reference}): {count} '{kind}' events, expected 1"
            count = event_counts[(str(referral_id), "alerted")]  # one for each alert marked sent
            assert count == alerts, f"{message_id} ({reference}): {count} 'alerted' events for {alerts} alerts"
        # Nothing in the store that no client sent (every message sent got its 250 in the end).
        assert set(rows_by_key) == {item.key for item in unique.values()}
        assert len(stored) == len(unique)

        # --- the wire: each team's maildir holds at least one alert per referral it was routed
        team_of = {reference_of[m]: item.team for m, item in unique.items()}
        on_wire: Counter[str] = Counter()
        for team, address in TEAMS.items():
            for alert in maildir_messages(gw.home, address):
                reference = str(alert["X-Referral-Reference"])
                assert team_of.get(reference) == team, f"alert for {reference} in {team}'s mailbox"
                on_wire[reference] += 1
        missing = [m for m in unique if on_wire[reference_of[m]] == 0]
        assert not missing, f"no alert in any maildir for {len(missing)} referrals: {missing[:5]}"
        duplicates = {ref: n for ref, n in on_wire.items() if n > 1}
        receipts: Counter[str] = Counter()
        for address in REFERRERS:
            for receipt in maildir_messages(gw.home, address):
                receipts[str(receipt["X-Referral-Reference"])] += 1
        assert all(receipts[ref] >= 1 for ref in reference_of.values()), "a receipt never reached the wire"
        receipt_duplicates = sum(n - 1 for n in receipts.values() if n > 1)

        errors = gw.error_lines()
        summary = [
            f"crash recovery (seed {seed}): {len(unique)} referrals, {len(work_items)} queued sends "
            f"({RESENT_AT_ONCE + RESENT_LATER} deliberate re-sends), {traffic.attempts} SMTP "
            f"transactions, {traffic.accepted} x 250, {traffic.broken} cut off or 4xx and retried",
            f"  {gw.kills} SIGKILLs, {gw.generation} processes: " + "; ".join(how_killed),
            f"  alerts on the wire: {sum(on_wire.values())} for {len(on_wire)} referrals, "
            f"{sum(n - 1 for n in duplicates.values())} duplicate(s) (e.g. {sorted(duplicates.items())[:4]}); "
            f"receipt duplicates: {receipt_duplicates}",
            f"  gateway ERROR/Traceback log lines: {len(errors)}" + "".join(f"\n    {line}" for line in errors[:10]),
            f"  wall time {time.monotonic() - started:.1f}s (sending+draining {sent_at_end - started:.1f}s)",
        ]
        with capsys.disabled():
            print("\n" + "\n".join(summary))
        assert gw.kills == len(KILL_PLANS)
    except BaseException:
        with capsys.disabled():
            print(f"\ncrash recovery FAILED (seed {seed}); kills so far: {how_killed}")
            for gen in range(1, gw.generation + 1):
                print(f"--- gateway generation {gen} stderr (tail) ---\n{gw.tail(gen, 25)}")
        raise
    finally:
        traffic.deadline = 0.0  # stop any sender still retrying
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=20)
