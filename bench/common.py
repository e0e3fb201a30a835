"""What the benchmarks share: the gateway (or a sink) as a child process, SMTP sending, /proc readers,
reading the gateway's database, percentiles, and the referral form and config of tests/conftest.py.

Only the standard library is imported at module level: a benchmark's helper processes (the SMTP sink,
the gpg baseline worker) import this module too, and the baseline reports its own peak memory. The
test suite's helpers (and with them pytest and the gateway) are imported when first called.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator, Sequence

    import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `gateway` and `tests` from this checkout, whatever the working directory

SENDER = "ann.example@nhs.example"
RECIPIENT = "referrals@demo-council.example"
READY_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

POSTCODES = ("W1A 1AA", "WC1E 6BT", "NW1 4RY", "SE1 7PB", "E1 6AN", "N1 9GU")
CATEGORIES = ("neglect", "physical", "emotional", "sexual", "domestic abuse", "other")
URGENCIES = ("immediate", "urgent", "standard")


# --------------------------------------------------------------------------- from the test suite


def referral_form(rng: random.Random) -> str:
    """The filled referral form of tests/conftest.py, with a postcode, category and urgency drawn from `rng`."""
    from tests.conftest import referral_body

    return referral_body(postcode=rng.choice(POSTCODES), category=rng.choice(CATEGORIES), urgency=rng.choice(URGENCIES))


def write_config(home: Path, extra: str = "", database_url: str = "") -> Path:
    """The embedded default config plus `extra`, in `home`, on free loopback ports (tests/conftest.py).
    `database_url` empty: SQLite under `home`. With a PostgreSQL one the shared keys are not made here:
    the benchmark runs `python -m gateway keys init`, as an operator would."""
    from tests.conftest import write_config as write

    return write(home, extra, database_url=database_url, shared_keys=False)


# --------------------------------------------------------------------------- processes (Linux /proc)


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (so fields[0] is the state)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(own utime+stime, cutime+cstime of the children it has waited for) of a process, in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, (int(fields[13]) + int(fields[14])) / CLK_TCK


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process itself."""
    return proc_cpu_split(pid)[0]


def proc_hwm_kb(pid: int) -> int:
    """Peak resident set size (VmHWM) in KiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pids() -> Iterator[int]:
    """The ids of the processes running now."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def children_of(pid: int, name: str) -> list[int]:
    """The running children of `pid` whose command name is `name`."""
    found = []
    for child in pids():
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        comm, rest = stat.split(" (", 1)[1].rsplit(")", 1)
        if comm == name and int(rest.split()[1]) == pid:
            found.append(child)
    return found


def python() -> str:
    """The checkout's venv Python, or this one."""
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# --------------------------------------------------------------------------- server processes


class Server:
    """A child process that prints `ready_prefix...` on stdout once it listens."""

    def __init__(self, name: str, argv: list[str], ready_prefix: str, log: Path, cwd: Path = ROOT) -> None:
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


def gateway_server(config: Path, log: Path, checkout: Path = ROOT) -> Server:
    """`python -m gateway serve --config CONFIG`, its stderr (the log) to `log`. Run in `checkout`, whose
    `gateway` package `-m` then imports first: another checkout's code (a baseline commit's worktree)
    can be measured with this checkout's venv and script."""
    argv = [python(), "-m", "gateway", "serve", "--config", str(config)]
    return Server("gateway", argv, "referral-gateway serving:", log, cwd=checkout)


def print_log_errors(log: Path) -> None:
    """One line about the ERROR and Traceback lines in a server's log, if it has any."""
    errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line or "Traceback" in line]
    if errors:
        print(f"gateway log: {len(errors)} error lines, first: {errors[0][:200]}")


# --------------------------------------------------------------------------- SMTP sending


async def smtp_connect(port: int) -> aiosmtplib.SMTP:
    """A plain (no TLS) SMTP connection to 127.0.0.1:PORT, after EHLO, for many messages."""
    import aiosmtplib

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


@dataclass
class Outcome:
    client: aiosmtplib.SMTP  # the connection to send the next message on (a new one after a failure)
    reply: str = ""  # the text of the 250 to DATA
    seconds: float = 0.0  # the data() call: DATA, 354, the body, 250
    failure: str = ""  # why it failed: "CODE text" or the exception's name; empty when accepted


async def smtp_send(client: aiosmtplib.SMTP, port: int, raw: bytes) -> Outcome:
    """MAIL FROM, RCPT TO, DATA on a reused connection; reconnects to `port` when a failure closed it."""
    import aiosmtplib

    try:
        await client.mail(SENDER)
        await client.rcpt(RECIPIENT)
        start = time.perf_counter()
        response = await client.data(raw)
        elapsed = time.perf_counter() - start
    except aiosmtplib.SMTPResponseException as exc:
        if not client.is_connected:
            client = await smtp_connect(port)
        return Outcome(client, failure=f"{exc.code} {exc.message[:60]}")
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        client.close()
        return Outcome(await smtp_connect(port), failure=type(exc).__name__)
    return Outcome(client, response.message, elapsed)


async def smtp_close(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        await client.quit()
    client.close()


# --------------------------------------------------------------------------- the gateway's database


def readonly_db(db_path: Path, autocommit: bool = False) -> sqlite3.Connection:
    """A read-only connection; `autocommit`: no implicit transactions, so each query sees the latest commit."""
    uri = f"file:{db_path}?mode=ro"
    if autocommit:
        return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
    return sqlite3.connect(uri, uri=True, timeout=30)


def parse_utc(text: str) -> datetime:
    """A timestamp from the database, as an aware UTC datetime (naive ones are UTC)."""
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# --------------------------------------------------------------------------- the report


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- main


def run_main(benchmark: Coroutine[Any, Any, int]) -> int:
    """Runs a benchmark's event loop; its exit status, or 130 after a Ctrl-C."""
    try:
        return asyncio.run(benchmark)
    except KeyboardInterrupt:
        return 130
