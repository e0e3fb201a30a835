"""A throwaway PostgreSQL server for the tests: initdb in a temp dir, listening on loopback only.

Tests that need it skip when PostgreSQL is not installed, except in CI (CI=true), where a
missing server is a failure: .ci/run installs it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres_user(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class Server:
    """One throwaway server; `stop()` and `start()` again on the same data and port let a test
    take the database away from a running gateway and give it back."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail("PostgreSQL is not installed; .ci/run must install the postgresql package")
            pytest.skip("PostgreSQL is not installed here (it is required in CI)")
        self.bin_dir = bin_dir
        self.data = Path(tempfile.mkdtemp(prefix="rg-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        self.port = _free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}"
        self._server: subprocess.Popen[bytes] | None = None
        subprocess.run(
            _as_postgres_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data / "db"),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self._server = subprocess.Popen(
            _as_postgres_user(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data / "db"),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.data),
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if ready.returncode == 0:
                return
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test PostgreSQL server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._server is not None:
            # pg_ctl's "fast" shutdown ends client sessions (a signal to runuser would not reach
            # the server; SIGTERM, "smart", would wait for a running gateway's pooled connections).
            subprocess.run(
                _as_postgres_user([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data / "db"), "-m", "fast"]),
                check=True,
                capture_output=True,
            )
            self._server.wait(timeout=30)
            self._server = None

    def restart(self, mode: str) -> None:
        """`pg_ctl restart -m MODE` under running clients: "fast" ends their sessions and shuts
        down cleanly, "immediate" kills every process at once (crash recovery on the way up).

        Stopping with pg_ctl and starting again, rather than `pg_ctl restart`: that would leave
        the new postmaster a daemon of pg_ctl's, outside this object (pause(), stop() and remove()
        would lose track of it, and its inherited output pipe would hold pg_ctl's caller)."""
        assert mode in ("smart", "fast", "immediate"), mode
        assert self._server is not None
        subprocess.run(
            _as_postgres_user([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data / "db"), "-m", mode]),
            check=True,
            capture_output=True,
        )
        self._server.wait(timeout=30)
        self._server = None
        self.start()

    def psql(self, database: str, sql: str) -> list[list[str]]:
        """Rows of a query, as text, read with psql: for tests that look at a database from a
        thread or a synchronous test, outside any event loop."""
        out = subprocess.run(
            [
                *(str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"),
                *("-d", database, "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def _processes(self) -> list[int]:
        postmaster = int((self.data / "db" / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout
        return [postmaster, *(int(pid) for pid in children.split())]

    def pause(self) -> None:
        """SIGSTOP the server and its backends: connections stay open, nothing answers (a hung
        host, as opposed to a stopped server, which refuses at once)."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        # runuser too: seeing its child stop, it stops itself (as su does, for job control).
        assert self._server is not None
        for pid in (self._server.pid, *self._processes()):
            os.kill(pid, signal.SIGCONT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


@contextmanager
def own_server() -> Iterator[Server]:
    """A started server, removed afterwards: its url is postgresql+asyncpg://postgres@127.0.0.1:PORT."""
    server = Server()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a base URL (postgresql+asyncpg://postgres@127.0.0.1:PORT)."""
    with own_server() as server:
        yield server.url


def create_database(base_url: str, name: str) -> str:
    port = base_url.rsplit(":", 1)[1]
    bin_dir = _bin_dir()
    assert bin_dir is not None
    subprocess.run(
        [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", name],
        check=True,
        capture_output=True,
    )
    return f"{base_url}/{name}"
