"""Referral content is encrypted at rest, keys are private, and logs hold references only."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.core.keyfiles import KeyFileError, load_or_create
from gateway.core.schema import messages
from gateway.core.sealing import Sealer, SealError
from tests.conftest import make_message, referral_body, smtp_send

# Distinctive values from the synthetic referral: none may appear anywhere at rest or in logs.
PERSONAL = [
    "Sam Testchild",
    "Ann Example",
    "ann.example@nhs.example",
    "Example Street",
    "W1A 1AA",
    "Zebra-crossing-unique-detail",
    "consent given by mother",
    "Demo NHS Foundation Trust",
    "9990000018",
]


async def full_flow(gateway: Gateway) -> str:
    code, text = await smtp_send(gateway.smtp_port, make_message(referral_body(), message_id="<p1@nhs.example>"))
    assert code == 250
    await gateway.process_all()
    await gateway.deliver_all()
    return text.split()[-1]


async def test_database_files_hold_no_referral_text(gateway: Gateway, home: Path) -> None:
    reference = await full_flow(gateway)
    await gateway.engine.dispose()  # close connections so everything is in the files
    files = [p for p in (home / "var").glob("gateway.db*") if p.is_file()]
    assert files
    blob = b"".join(p.read_bytes() for p in files)
    assert reference.encode() in blob  # the reference is meant to be in clear: proves we read the data
    for value in PERSONAL:
        assert value.encode() not in blob, value
        assert value.encode("utf-16-le") not in blob, value


async def test_sealed_blobs_open_only_in_their_own_row(gateway: Gateway) -> None:
    await full_flow(gateway)
    async with gateway.engine.connect() as conn:
        row = (await conn.execute(select(messages.c.id, messages.c.raw))).one()
    assert b"Sam Testchild" in gateway.sealer.open(row.raw, f"raw:{row.id}")
    with pytest.raises(SealError):
        gateway.sealer.open(row.raw, "raw:another-row")
    damaged = row.raw[:-1] + bytes([row.raw[-1] ^ 1])
    with pytest.raises(SealError):
        gateway.sealer.open(damaged, f"raw:{row.id}")


async def test_key_files_are_created_private_and_refused_if_readable(
    gateway: Gateway, home: Path, tmp_path: Path
) -> None:
    for name in ("data-at-rest.key", "ack-signing.key"):
        mode = stat.S_IMODE((home / "keys" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    leaky = tmp_path / "leaky.key"
    load_or_create(leaky)
    leaky.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others; run: chmod 600"):
        load_or_create(leaky)
    (tmp_path / "data-at-rest.key").write_bytes(b"short")
    (tmp_path / "data-at-rest.key").chmod(0o600)
    with pytest.raises(KeyFileError, match="holds 5 bytes, expected 32"):
        Sealer.from_keys_dir(tmp_path)


async def test_logs_hold_references_never_personal_data(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reference = await full_flow(gateway)
    lines = [record.getMessage() for record in caplog.records]
    assert any(reference in line for line in lines)  # the logs do say what happened
    for line in lines:
        for value in PERSONAL:
            assert value not in line, line


async def test_gateway_refuses_to_start_when_the_data_key_is_lost(gateway: Gateway, home: Path) -> None:
    await full_flow(gateway)
    await gateway.stop()
    key = home / "keys" / "data-at-rest.key"
    saved = key.read_bytes()
    key.unlink()
    again = Gateway(gateway.config, clock=gateway.clock, workers=False)
    with pytest.raises(KeyFileError, match="key file is missing; restore it from backup"):
        await again.start()
    assert not (home / "keys" / "data-at-rest.key").exists()  # no new key was made to hide the loss
    await again.engine.dispose()
    load_or_create(key)  # creation is the only way in: O_EXCL, mode 0600
    key.write_bytes(saved)  # restored from "backup"
    await gateway.start()  # starts again with the key back; the fixture stops it
