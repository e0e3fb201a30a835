"""`backup` and `restore`: the keys never in the clear, what each refuses and says, and the nightly units.

The administrator's OpenPGP key is made with the real gpg in a GnuPG home of its own, and only its public
half imported into the gateway: the backup folder must hold no key in the clear and open nothing without it.
"""

from __future__ import annotations

import asyncio
import base64
import grp
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backup_helpers import ROOT, admin_key, gateway_home, gpg, run, secret_files, served_gateway, short_paths


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_paths() as path:
        yield path


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
    for name in ("keys.tar.gpg", "gateway.db"):
        assert stat.S_IMODE((backup_dir / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700

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
        written.replace('"migration_revision": "0011"', '"migration_revision": "0099"')
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
