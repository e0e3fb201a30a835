"""Several instances on one host, laid out as systemd/referral-gateway@.service runs them: one
home, config/north.toml and config/south.toml differing only in their ports, one PostgreSQL
database. Two real `serve` processes started together, each on its own ports; a referral sent
over SMTP to each is accepted, and both reach `alerted` (processed by whichever instance claims
them first) in the one database; both stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.core.schema import referrals
from tests.conftest import make_message, referral_body, smtp_send, write_config
from tests.postgres import create_database
from tests.test_crash_recovery import free_ports

pytestmark = pytest.mark.slow

SERVING = "referral-gateway serving:"
INSTANCES = ("north", "south")


@pytest.fixture
def instances(tmp_path: Path, postgres_base_url: str) -> Iterator[tuple[dict[str, int], str]]:
    """Both instances serving; yields each one's SMTP port and the database URL."""
    home = tmp_path / "opt"
    url = create_database(postgres_base_url, f"t{uuid.uuid4().hex[:16]}")
    base = write_config(home, database_url=url).read_text(encoding="utf-8")
    # As INSTALL.txt says: the keys first, once, then the instances.
    subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "init", "--config", str(home / "config" / "gateway.toml")],
        cwd=home,
        check=True,
        capture_output=True,
    )
    ports = free_ports(2 * len(INSTANCES))
    smtp_ports = {}
    procs = []
    try:
        for index, name in enumerate(INSTANCES):
            smtp_port, http_port = ports[2 * index], ports[2 * index + 1]
            text = base.replace("port = 0", f"port = {smtp_port}", 1).replace("port = 0", f"port = {http_port}", 1)
            config = home / "config" / f"{name}.toml"
            config.write_text(text, encoding="utf-8")
            out = (home / f"{name}.out").open("wb")
            err = (home / f"{name}.err").open("wb")
            procs.append(
                (
                    name,
                    subprocess.Popen(
                        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                        cwd=home,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                    ),
                    out,
                    err,
                )
            )
            smtp_ports[name] = smtp_port
        deadline = time.monotonic() + 60
        for name, proc, _, _ in procs:
            while SERVING not in (home / f"{name}.out").read_text(errors="replace"):
                tail = (home / f"{name}.err").read_text(errors="replace")[-3000:]
                assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{tail}"
                assert time.monotonic() < deadline, f"{name} not serving after 60s:\n{tail}"
                time.sleep(0.05)
        yield smtp_ports, url
        for name, proc, _, _ in procs:
            proc.terminate()
            assert proc.wait(timeout=30) == 0, (home / f"{name}.err").read_text(errors="replace")[-3000:]
    finally:
        for _, proc, out, err in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            out.close()
            err.close()
    keys = sorted(p.name for p in (home / "keys").iterdir() if p.suffix == ".key")
    assert "data-at-rest.key" in keys, keys  # one set of keys, in the shared home


async def states(url: str) -> dict[str, str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(referrals.c.reference, referrals.c.state))).all()
        return {row.reference: row.state for row in rows}
    finally:
        await engine.dispose()


async def test_two_instances_on_their_own_ports_share_one_database(instances: tuple[dict[str, int], str]) -> None:
    smtp_ports, url = instances
    references = []
    for name, port in smtp_ports.items():
        message = make_message(referral_body(urgency="urgent"), message_id=f"<{name}-1@nhs.example>")
        code, text = await smtp_send(port, message)
        assert code == 250, text
        references.append(text.rsplit(" ", 1)[1])
    deadline = time.monotonic() + 60
    while True:
        found = await states(url)
        if all(found.get(ref) == "alerted" for ref in references):
            break
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.2)
    assert sorted(found) == sorted(references)
