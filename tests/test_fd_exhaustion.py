"""Out of file descriptors, for real: `python -m gateway serve` as a child process with RLIMIT_NOFILE
lowered to 100 (soft and hard, so the gateway cannot raise it), then held connections until every
descriptor is taken. HTTP connections are not capped, so they are what fills the table here.

Before the fix asyncio logged a traceback per failed accept(), in a tight loop (438 MB of stderr
in two minutes on this machine). Now: one line at once, then one line per interval with a count;
no traceback; and SMTP and HTTP answer again once the connections are gone. The same process is
also sent bad HTTP requests, and its stderr (the real logging setup) must hold none of their text.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.test_crash_recovery import free_ports
from tests.test_log_privacy import BAD_REQUESTS, SECRETS

pytestmark = pytest.mark.slow

FD_LIMIT = 100
HELD = 300  # connections opened and held: three times the limit
SERVING = "referral-gateway serving:"
ACCEPT_ERROR = "socket.accept() out of system resource"


def limit_descriptors() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def wait_for(what: str, check: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout:.0f}s: {what}")
        time.sleep(0.1)


def first_line(port: int, send: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if send:
            sock.sendall(send)
        return sock.makefile("rb").readline()


def answers(port: int, send: bytes, prefix: bytes) -> bool:
    try:
        return first_line(port, send).startswith(prefix)
    except OSError:
        return False


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int, int]]:
    home = tmp_path / "gw"
    smtp_port, http_port = free_ports(2)
    config = write_config(home, smtp_port=smtp_port, http_port=http_port)
    out, err = home / "out", home / "err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=limit_descriptors,  # before exec, in a child that has no threads yet
            start_new_session=True,
        )
    try:
        wait_for("the gateway serving", lambda: SERVING in out.read_text() or proc.poll() is not None, 30)
        assert proc.poll() is None, err.read_text()[-3000:]
        yield proc, err, smtp_port, http_port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_out_of_descriptors_logs_a_few_lines_and_both_listeners_recover(
    gateway_process: tuple[subprocess.Popen[bytes], Path, int, int],
) -> None:
    proc, err, smtp_port, http_port = gateway_process
    for raw in BAD_REQUESTS.values():
        assert first_line(http_port, raw.encode()).split()[1] == b"400"

    held: list[socket.socket] = []
    try:
        for _ in range(HELD):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", http_port))  # in progress; the kernel's backlog holds it
            held.append(sock)
        # The first line at once, then the count when the interval (10s) is up.
        wait_for("a count of repeated accept errors", lambda: "repeated" in err.read_text())
        text = err.read_text()
        storm = [line for line in text.splitlines() if ACCEPT_ERROR in line]
        assert 2 <= len(storm) <= 3, "\n".join(storm)
        assert "Traceback" not in text, text[-3000:]
        repeated = int(storm[-1].split("(repeated ")[1].split()[0])
        assert repeated > 10  # the storm was real: it is counted, not printed
    finally:
        for sock in held:
            sock.close()

    # asyncio retries accept() a second after each failure: both listeners answer again.
    wait_for("SMTP answering", lambda: answers(smtp_port, b"", b"220 "))
    wait_for("HTTP answering", lambda: answers(http_port, b"GET /no-such-page HTTP/1.0\r\n\r\n", b"HTTP/1.0 404"))
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    text = err.read_text()
    assert "Error handling request from [withheld]" in text  # the bad requests were logged...
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} reached stderr:\n{text[-3000:]}"  # ...without their text
