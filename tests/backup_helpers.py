"""What the backup tests share: the administrator's own GnuPG key, a gateway home whose [backup] names it,
the CLI as a real process, and reading a restored copy with its restored keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
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
from tests.conftest import make_message, referral_body, smtp_send, write_config

ROOT = Path(__file__).resolve().parent.parent


def gpg(home: Path, *args: str, data: bytes = b"", check: bool = True) -> subprocess.CompletedProcess[bytes]:
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback", *args]
    return subprocess.run(cmd, input=data, capture_output=True, check=check, timeout=60)


def kill_agents(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


@contextlib.contextmanager
def short_paths() -> Iterator[Path]:
    """Short paths: gpg-agent's socket in keys/gnupg must fit in 108 bytes. Agents are killed at the end."""
    path = Path(tempfile.mkdtemp(prefix="bk"))
    try:
        yield path
    finally:
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
    home: Path,
    fingerprint: str | None,
    *,
    database_url: str = "",
    ports: tuple[int, int] = (0, 0),
    shared_keys: bool = True,
) -> Path:
    """A gateway home whose [backup] names the administrator's key, imported with `keys import` as the README says."""
    config = write_config(
        home,
        # These tests look into keys/gnupg; test_sequoia_keys.py backs up and restores the sequoia default.
        '[keys]\nopenpgp_backend = "gnupg"\n',
        smtp_port=ports[0],
        http_port=ports[1],
        database_url=database_url,
        all_hours=True,
        shared_keys=shared_keys,
    )
    if fingerprint is not None:
        assert main(["keys", "import", str(home.parent / "admin.asc"), "--config", str(config)]) == 0
        with config.open("a") as handle:
            handle.write(f'\n[backup]\nadmin_openpgp = "{fingerprint}"\n')
    return config


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
