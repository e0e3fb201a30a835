"""`referral-gateway backup --to DIR` and `restore --from DIR`, against the running gateway.

The gateway runs as a real `serve` process (SQLite) or in-process (PostgreSQL) while real SMTP clients send
referrals; `backup`, `restore` and `verify` run as real `python -m gateway` processes. The administrator's
OpenPGP key is made with the real gpg in a GnuPG home of its own, the way an administrator would, and only
its public half is imported into the gateway. What must hold: every referral that had its 250 before the
backup started is in the backup; the restored copy passes `verify` and every referral in it opens with the
restored keys; the backup folder holds no key in the clear and opens nothing without the administrator's key.
"""

from __future__ import annotations

import asyncio
import base64
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import smtplib
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core import db
from gateway.core.schema import messages, referrals
from gateway.core.sealed import Sealed
from gateway.core.sealing import Sealer
from tests.conftest import REFERRAL_ADDRESS, make_message, referral_body, smtp_send, write_config
from tests.postgres import create_database
from tests.test_crash_recovery import GatewayProcess, free_ports, query, settled, wait_for

ROOT = Path(__file__).resolve().parent.parent


def gpg(home: Path, *args: str, data: bytes = b"", check: bool = True) -> subprocess.CompletedProcess[bytes]:
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback", *args]
    return subprocess.run(cmd, input=data, capture_output=True, check=check, timeout=60)


def kill_agents(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Short paths: gpg-agent's socket in keys/gnupg must fit in 108 bytes. Agents are killed at teardown."""
    path = Path(tempfile.mkdtemp(prefix="bk"))
    yield path
    for home in (path / "admin", path / "gw" / "keys" / "gnupg", path / "new" / "keys" / "gnupg"):
        kill_agents(home)
    shutil.rmtree(path, ignore_errors=True)


def admin_key(short_dir: Path) -> tuple[Path, str]:
    """The administrator's own key pair in their own GnuPG home; returns the home and the fingerprint."""
    home = short_dir / "admin"
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", "Alex Admin <it.admin@demo-council.example>", "future-default")
    listing = gpg(home, "--with-colons", "--list-secret-keys").stdout.decode()
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    (short_dir / "admin.asc").write_bytes(gpg(home, "--armor", "--export", fingerprint).stdout)
    return home, fingerprint


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        cwd=config.parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def gateway_home(
    home: Path, fingerprint: str | None, *, database_url: str = "", ports: tuple[int, int] = (0, 0)
) -> Path:
    """A gateway home whose [backup] names the administrator's key, imported with `keys import` as the README says."""
    config = write_config(home, smtp_port=ports[0], http_port=ports[1], database_url=database_url, all_hours=True)
    if fingerprint is not None:
        assert main(["keys", "import", str(home.parent / "admin.asc"), "--config", str(config)]) == 0
        with config.open("a") as handle:
            handle.write(f'\n[backup]\nadmin_openpgp = "{fingerprint}"\n')
    return config


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


def readable_referrals(config: Path) -> dict[str, str]:
    """reference -> postcode (from the sealed content, or from the sealed raw message of a referral not yet
    processed when the backup was taken) of every referral in a restored copy, opened with the restored keys:
    one that does not open fails here. Read as the gateway reads them, through the configured database."""
    cfg = config_mod.load(config)
    sealed = Sealed(Sealer.from_keys_dir(cfg.keys_dir, may_create=False))

    async def read() -> dict[str, str]:
        engine = db.make_engine(cfg.database_url)
        try:
            async with engine.connect() as conn:
                query = select(
                    referrals.c.id, referrals.c.reference, referrals.c.content, messages.c.id, messages.c.raw
                )
                rows = (await conn.execute(query.join_from(referrals, messages))).all()
        finally:
            await engine.dispose()
        found = {}
        for ref_id, reference, content, message_id, raw in rows:
            if content is not None:
                found[reference] = str(sealed.content(ref_id, content).referral.child.postcode)
            else:
                text = sealed.raw(message_id, raw).decode()
                found[reference] = "W1A 1AA" if "Child postcode: W1A 1AA" in text else "unreadable"
        return found

    return asyncio.run(read())


def manifest(folder: Path) -> dict[str, object]:
    data = json.loads((folder / "manifest.json").read_text())
    assert isinstance(data, dict)
    return data


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
    assert done.stdout.startswith(f"backup: OK: {backup_dir}: sqlite database at migration 0007"), done.stdout
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


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def served_gateway(config: Path) -> None:
    """The gateway's own keys made as `serve` makes them, and one referral taken by SMTP."""
    gw = Gateway(config_mod.load(config), workers=False)
    await gw.start()
    try:
        code, text = await smtp_send(gw.smtp_port, make_message(referral_body(), message_id="<one@nhs.example>"))
        assert code == 250, text
    finally:
        await gw.stop()


def secret_files(keys: Path) -> list[Path]:
    """Every secret the gateway holds under keys/: its raw keys, its S/MIME key, its OpenPGP secret keys."""
    found = [p for p in keys.glob("*.key")] + [keys / "smime" / "gateway.key.pem"]
    found += list((keys / "gnupg" / "private-keys-v1.d").glob("*.key"))
    return found


async def test_the_backup_holds_no_key_in_the_clear_and_only_the_admin_key_opens_it(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin_home, fingerprint = admin_key(short_dir)
    config = gateway_home(short_dir / "gw", fingerprint)
    code, out, err = await asyncio.to_thread(run, capsys, "keys", "init", "--config", str(config))
    assert code == 0, err
    await served_gateway(config)
    backup_dir = short_dir / "b1"
    code, out, err = await asyncio.to_thread(run, capsys, "backup", "--to", str(backup_dir), "--config", str(config))
    assert code == 0, err

    keys = short_dir / "gw" / "keys"
    secrets = secret_files(keys)
    assert {p.name for p in secrets} >= {"data-at-rest.key", "ack-signing.key", "gateway.key.pem"}
    assert len(list((keys / "gnupg" / "private-keys-v1.d").glob("*.key"))) >= 2  # primary key and subkey
    stored = [p.read_bytes() for p in backup_dir.rglob("*") if p.is_file()]
    for secret in secrets:
        data = secret.read_bytes()
        forms = [data, data.hex().encode(), base64.b64encode(data), base64.urlsafe_b64encode(data).rstrip(b"=")]
        for form in forms:
            assert not any(form in blob for blob in stored), f"{secret.name} is in the backup in the clear"
    assert not any(b"PRIVATE KEY" in blob or b"data-at-rest" in blob for blob in stored)
    assert stat.S_IMODE((backup_dir / "keys.tar.gpg").stat().st_mode) == 0o600

    # The gateway's own secret key does not open it (a stolen gateway with its backups gives nothing more) ...
    own = gpg(keys / "gnupg", "--decrypt", str(backup_dir / "keys.tar.gpg"), check=False)
    assert own.returncode != 0 and not own.stdout
    # ... and restore says what it needs, and writes nothing, without the administrator's key.
    fresh = gateway_home(short_dir / "new", None)
    code, out, err = await asyncio.to_thread(run, capsys, "restore", "--from", str(backup_dir), "--config", str(fresh))
    assert code == 2
    assert "pass --gnupghome DIR" in err and "--keys-from keys.tar" in err and fingerprint in err
    wrong = ("restore", "--from", str(backup_dir), "--gnupghome", str(keys / "gnupg"), "--config", str(fresh))
    code, out, err = await asyncio.to_thread(run, capsys, *wrong)
    assert code == 2 and "gpg could not decrypt" in err
    assert not (short_dir / "new" / "var").exists() and not (short_dir / "new" / "keys").exists()

    # The administrator decrypts it with their own gpg, on their own machine, and restores from the tar.
    tar = short_dir / "keys.tar"
    gpg(admin_home, "--output", str(tar), "--decrypt", str(backup_dir / "keys.tar.gpg"))
    restore = ("restore", "--from", str(backup_dir), "--keys-from", str(tar), "--config", str(fresh))
    code, out, err = await asyncio.to_thread(run, capsys, *restore)
    assert code == 0, err
    assert "every referral opens with the restored keys (1)" in out
    for secret in secrets:
        again = short_dir / "new" / "keys" / secret.relative_to(keys)
        assert again.read_bytes() == secret.read_bytes()
        assert stat.S_IMODE(again.stat().st_mode) == 0o600

    # A second restore onto it is refused without --force, and changes nothing; with --force it goes ahead.
    code, out, err = await asyncio.to_thread(run, capsys, *restore)
    assert code == 2 and "gateway.db exists" in err and "--force" in err
    code, out, err = await asyncio.to_thread(run, capsys, *restore, "--force")
    assert code == 0, err


def test_a_damaged_backup_is_refused_whole(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    admin_home, fingerprint = admin_key(short_dir)
    config = gateway_home(short_dir / "gw", fingerprint)
    asyncio.run(served_gateway(config))
    backup_dir = short_dir / "b1"
    assert run(capsys, "backup", "--to", str(backup_dir), "--config", str(config))[0] == 0
    code, _, err = run(capsys, "backup", "--to", str(backup_dir), "--config", str(config))
    assert code == 2 and "is not an empty folder" in err  # a backup is never written over
    fresh = gateway_home(short_dir / "new", None)
    restore = ("restore", "--from", str(backup_dir), "--gnupghome", str(admin_home), "--config", str(fresh))
    written = (backup_dir / "manifest.json").read_text()
    (backup_dir / "manifest.json").write_text(
        written.replace('"migration_revision": "0007"', '"migration_revision": "0099"')
    )
    code, _, err = run(capsys, *restore)
    assert code == 2 and "at migration 0099, which this version does not know" in err
    (backup_dir / "manifest.json").write_text(written)
    copy = backup_dir / "gateway.db"
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    code, _, err = run(capsys, *restore)
    assert code == 2
    assert f"{copy} does not match the SHA-256 in manifest.json" in err and "nothing was restored" in err
    assert not (short_dir / "new" / "var").exists() and not (short_dir / "new" / "keys").exists()


def test_backup_refuses_without_an_administrator_key(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = gateway_home(short_dir / "gw", None)
    asyncio.run(served_gateway(config))
    backup_dir = short_dir / "b1"
    code, _out, err = run(capsys, "backup", "--to", str(backup_dir), "--config", str(config))
    assert code == 2
    assert "[backup] admin_openpgp is not set" in err and "keys import" in err and "nothing was backed up" in err
    assert not backup_dir.exists()

    # Named but never imported: refused, saying to import it.
    with config.open("a") as handle:
        handle.write('\n[backup]\nadmin_openpgp = "0123456789ABCDEF0123456789ABCDEF01234567"\n')
    code, _out, err = run(capsys, "backup", "--to", str(backup_dir), "--config", str(config))
    assert code == 2 and "is not in the gateway's keyring" in err and "keys import" in err
    assert not backup_dir.exists()


def test_backup_refuses_the_gateways_own_key(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = gateway_home(short_dir / "gw", None)
    code, out, err = run(capsys, "keys", "init", "--config", str(config))
    assert code == 0, err
    own = next(line.split('"')[1] for line in out.splitlines() if line.startswith("openpgp_fingerprint"))
    with config.open("a") as handle:
        handle.write(f'\n[backup]\nadmin_openpgp = "{own}"\n')
    asyncio.run(served_gateway(config))
    code, out, err = run(capsys, "backup", "--to", str(short_dir / "b1"), "--config", str(config))
    assert code == 2 and "the gateway holds the secret half of" in err


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

    fresh = gateway_home(short_dir / "new", None, database_url=target)
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


UNITS = ROOT / "systemd"


def unit_value(name: str, key: str) -> str:
    lines = (UNITS / name).read_text().splitlines()
    return next(line.partition("=")[2] for line in lines if line.startswith(f"{key}="))


def systemd_command(value: str, replacements: dict[str, str]) -> list[str]:
    """A unit's command line as systemd runs it: its $$ and %% escapes undone, the install paths made local."""
    argv = [a.replace("$$", "$").replace("%%", "%") for a in shlex.split(value)]
    for old, new in replacements.items():
        argv = [a.replace(old, new) for a in argv]
    return argv


def test_the_nightly_backup_units_verify_and_their_commands_back_up_and_prune(
    short_dir: Path, capsys: pytest.CaptureFixture[str], in_ci: bool
) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None and in_ci:
        pytest.fail("systemd-analyze is not installed (CI must run this)")
    if analyze is not None:
        local = short_dir / "units"
        local.mkdir()
        for name in ("referral-gateway-backup.service", "referral-gateway-backup.timer"):
            text = (
                (UNITS / name).read_text().replace("User=referral-gateway", f"User={pwd.getpwuid(os.getuid()).pw_name}")
            )
            (local / name).write_text(
                text.replace("Group=referral-gateway", f"Group={grp.getgrgid(os.getgid()).gr_name}")
            )
        names = [str(local / "referral-gateway-backup.service"), str(local / "referral-gateway-backup.timer")]
        env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "LC_ALL": "C"}
        done = subprocess.run(
            [analyze, "verify", "--man=no", *names], capture_output=True, text=True, timeout=60, env=env
        )
        complaints = [line for line in (done.stdout + done.stderr).splitlines() if "referral-gateway-backup" in line]
        assert done.returncode == 0 and not complaints, done.stdout + done.stderr

    _, fingerprint = admin_key(short_dir)
    config = gateway_home(short_dir / "gw", fingerprint)
    asyncio.run(served_gateway(config))
    backups = short_dir / "backups"
    backups.mkdir()
    old = backups / "2026-10-01T0230Z"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    weeks_ago = time.time() - 20 * 86400
    os.utime(old, (weeks_ago, weeks_ago))
    paths = {
        "/opt/referral-gateway/.venv/bin/referral-gateway": f"{sys.executable} -m gateway",
        "/opt/referral-gateway/config/gateway.toml": str(config),
        "/var/backups/referral-gateway": str(backups),
    }
    for key in ("ExecStart", "ExecStartPost"):
        command = systemd_command(unit_value("referral-gateway-backup.service", key), paths)
        ran = subprocess.run(command, cwd=short_dir / "gw", capture_output=True, text=True, timeout=300, check=False)
        assert ran.returncode == 0, ran.stdout + ran.stderr
    made = [p.name for p in backups.iterdir()]
    assert len(made) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d{4}Z", made[0]), made  # the old one pruned
    assert (backups / made[0] / "manifest.json").is_file()
