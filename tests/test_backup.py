"""`referral-gateway backup --to DIR` and `restore --from DIR` while referrals arrive at the running gateway.

The gateway runs as a real `serve` process (SQLite) or in-process (PostgreSQL) while real SMTP clients send
referrals; `backup`, `restore` and `verify` run as real `python -m gateway` processes. What must hold: every
referral that had its 250 before the backup started is in the backup; the restored copy passes `verify`,
every referral in it opens with the restored keys, and it serves and finishes what was in flight.
Refusals, the keys' encryption and the nightly units are in test_backup_checks.py.
"""

from __future__ import annotations

import asyncio
import smtplib
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import config as config_mod
from gateway.app import Gateway
from tests.backup_helpers import admin_key, cli, gateway_home, manifest, readable_referrals, short_paths
from tests.conftest import REFERRAL_ADDRESS, make_message, referral_body, smtp_send
from tests.postgres import create_database
from tests.test_crash_recovery import GatewayProcess, free_ports, query, settled, wait_for


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_paths() as path:
        yield path


class Senders:
    """SMTP clients sending referrals one after another until stopped; keeps the reference of every 250."""

    def __init__(self, port: int, threads: int = 2) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.accepted: list[str] = []  # references, in the order their 250s arrived
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def references(self) -> list[str]:
        with self.lock:
            return list(self.accepted)

    def wait_for(self, count: int) -> None:
        while len(self.references()) < count and not self.failures:
            self.stop.wait(0.05)
        assert not self.failures, self.failures

    def _run(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, "sender.test", timeout=30) as conn:
                conn.ehlo()
                while not self.stop.is_set():
                    msg = make_message(referral_body(), message_id=f"<{uuid.uuid4().hex}@nhs.example>")
                    assert conn.mail("ann.example@nhs.example")[0] == 250
                    assert conn.rcpt(REFERRAL_ADDRESS)[0] == 250
                    code, text = conn.data(msg.as_bytes())
                    assert code == 250, text
                    with self.lock:
                        self.accepted.append(text.decode().split()[-1])
        except Exception as exc:  # noqa: BLE001 (a sender thread must not die silently: the test fails on it)
            with self.lock:
                self.failures.append(repr(exc))


@pytest.mark.slow
def test_backup_while_referrals_arrive_restores_into_a_fresh_folder_that_verifies(short_dir: Path) -> None:
    admin_home, fingerprint = admin_key(short_dir)
    smtp_port, http_port = free_ports(2)
    config = gateway_home(short_dir / "gw", fingerprint, ports=(smtp_port, http_port))
    backup_dir = short_dir / "backups" / "2026-12-02"
    process = GatewayProcess(short_dir / "gw", config, smtp_port)
    try:
        process.start()
        with Senders(smtp_port) as senders:
            senders.wait_for(20)
            before = senders.references()
            done = cli(config, "backup", "--to", str(backup_dir))
            during = senders.references()
            senders.wait_for(len(during) + 5)  # still accepting after the backup
        assert done.returncode == 0, done.stderr
        assert process.terminate() == 0
    finally:
        process.close()
    assert not senders.failures, senders.failures
    assert len(during) > len(before), "no referral arrived while the backup ran: the test proved nothing"
    assert done.stdout.startswith(f"backup: OK: {backup_dir}: sqlite database at migration 0011"), done.stdout
    found = manifest(backup_dir)
    assert sorted(found["files"]) == ["gateway.db", "keys.tar.gpg"]  # type: ignore[call-overload]
    assert found["keys"]["encrypted_to"] == fingerprint  # type: ignore[index]

    new_config = gateway_home(short_dir / "new", None)
    with new_config.open("a") as handle:  # the same config as the gateway's, on its fresh data_dir and keys_dir
        handle.write(f'\n[backup]\nadmin_openpgp = "{fingerprint}"\n')
    restored = cli(new_config, "restore", "--from", str(backup_dir), "--gnupghome", str(admin_home))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    rows = found["database"]["rows"]  # type: ignore[index]
    assert f"every referral opens with the restored keys ({rows['referrals']})" in restored.stdout

    checked = cli(new_config, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "verify: OK" in checked.stdout
    readable = readable_referrals(new_config)
    assert len(readable) == rows["referrals"]
    assert set(readable.values()) == {"W1A 1AA"}
    # Every referral whose 250 came before the backup started is in it; none arrived that the gateway did not accept.
    assert set(before) <= set(readable) <= set(senders.references())
    keys = short_dir / "new" / "keys"
    assert (keys / "data-at-rest.key").read_bytes() == (short_dir / "gw" / "keys" / "data-at-rest.key").read_bytes()
    assert stat.S_IMODE((keys / "data-at-rest.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "gnupg").stat().st_mode) == 0o700

    # The restored copy is a gateway: it serves, and finishes what was in flight when the backup was taken.
    again = GatewayProcess(short_dir / "new", new_config, 0)
    try:
        again.start()
        wait_for(lambda: settled(again.db_path), 120, "the restored gateway to process and alert every referral")
        assert again.terminate() == 0
    finally:
        again.close()
    assert again.error_lines() == []
    assert {state for (state,) in query(again.db_path, "SELECT state FROM referrals")} == {"alerted"}
    assert cli(new_config, "verify").returncode == 0


async def test_postgresql_backup_while_referrals_arrive_restores_into_an_empty_database(
    short_dir: Path, postgres_base_url: str
) -> None:
    admin_home, fingerprint = admin_key(short_dir)
    source = create_database(postgres_base_url, f"b{uuid.uuid4().hex[:12]}")
    target = create_database(postgres_base_url, f"r{uuid.uuid4().hex[:12]}")  # new and empty, as createdb makes it
    config = gateway_home(short_dir / "gw", fingerprint, database_url=source)
    backup_dir = short_dir / "b1"
    gw = Gateway(config_mod.load(config))  # the workers run: referrals are processed and alerted meanwhile
    await gw.start()
    accepted: list[str] = []
    stop = asyncio.Event()

    async def send() -> None:
        while not stop.is_set():
            msg = make_message(referral_body(), message_id=f"<{uuid.uuid4().hex}@nhs.example>")
            code, text = await smtp_send(gw.smtp_port, msg)
            assert code == 250, text
            accepted.append(text.split()[-1])

    senders = [asyncio.create_task(send()) for _ in range(2)]
    try:
        while len(accepted) < 10 and not any(task.done() for task in senders):  # a failed sender ends the wait
            await asyncio.sleep(0.05)
        before = list(accepted)
        done = await asyncio.to_thread(cli, config, "backup", "--to", str(backup_dir))
        during = list(accepted)
    finally:
        stop.set()
        await asyncio.gather(*senders)
        await gw.stop()
    assert done.returncode == 0, done.stderr
    assert len(during) > len(before), "no referral arrived while the backup ran: the test proved nothing"
    assert sorted(manifest(backup_dir)["files"]) == ["database.pgdump", "keys.tar.gpg"]  # type: ignore[call-overload]

    fresh = gateway_home(short_dir / "new", None, database_url=target, shared_keys=False)  # restored, not made
    restored = await asyncio.to_thread(cli, fresh, "restore", "--from", str(backup_dir), "--gnupghome", str(admin_home))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    rows = manifest(backup_dir)["database"]["rows"]  # type: ignore[index]
    assert f"every referral opens with the restored keys ({rows['referrals']})" in restored.stdout
    checked = await asyncio.to_thread(cli, fresh, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    readable = await asyncio.to_thread(readable_referrals, fresh)
    assert set(readable.values()) == {"W1A 1AA"}
    assert set(before) <= set(readable) <= set(accepted)
    again = await asyncio.to_thread(cli, fresh, "restore", "--from", str(backup_dir), "--gnupghome", str(admin_home))
    assert again.returncode == 2 and "already has tables" in again.stderr
