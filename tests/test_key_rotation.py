"""Rotating the at-rest sealing key with referrals stored: `keys rotate sealing`, the background
re-seal, `keys rotation-status` and `keys retire-unused`, run through the real CLI against a real
gateway that took the referrals by SMTP."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import LargeBinary, select

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core import schema
from gateway.core.clock import FakeClock
from gateway.core.reseal import SEALED_COLUMNS
from gateway.core.schema import messages, referrals
from gateway.core.sealing import KEY_FILE, Sealer, key_id
from tests.conftest import START, both_databases, send_referral, write_config


@pytest.fixture
async def gw(home: Path, database_url: str) -> AsyncIterator[Gateway]:
    config = write_config(home, database_url=database_url)
    gateway = Gateway(config_mod.load(config), clock=FakeClock(START), workers=False)
    await gateway.start()
    yield gateway
    await gateway.stop()


def cli(home: Path, *args: str) -> int:
    return main(["keys", *args, "--config", str(home / "config" / "gateway.toml")])


async def acli(home: Path, *args: str) -> int:
    """The CLI as an administrator runs it while the gateway serves (its own event loop: a thread)."""
    return await asyncio.to_thread(cli, home, *args)


async def blob_key_ids(gw: Gateway) -> dict[str, set[bytes]]:
    """Every stored blob's key id, by column (empty and NULL values are not blobs)."""
    out: dict[str, set[bytes]] = {}
    async with gw.engine.connect() as conn:
        for col in SEALED_COLUMNS:
            for (blob,) in await conn.execute(select(col.table.c[col.column])):
                if blob:
                    out.setdefault(col.name, set()).add(bytes(blob)[1:9])
    return out


async def readable_referrals(gw: Gateway, sealer: Sealer) -> dict[str, str]:
    """Each referral's reference and child's detail text, opened with `sealer` alone."""
    from gateway.core.sealed import Sealed

    sealed = Sealed(sealer)
    out = {}
    async with gw.engine.connect() as conn:
        rows = await conn.execute(
            select(referrals.c.id, referrals.c.reference, referrals.c.content, messages.c.id, messages.c.raw).join(
                messages, messages.c.id == referrals.c.message_id
            )
        )
        for rid, reference, content, mid, raw in rows:
            details = sealed.content(rid, content).referral.details or ""
            assert b"Zebra-crossing-unique-detail" in sealed.raw(mid, raw)
            out[reference] = details
    return out


def test_every_sealed_column_is_resealed() -> None:
    """A new sealed column that is not in SEALED_COLUMNS would keep blobs under an old key forever."""
    binary = {
        f"{table.name}.{column.name}"
        for table in schema.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, LargeBinary)
    }
    assert binary == {col.name for col in SEALED_COLUMNS}


@both_databases
async def test_rotate_reseal_and_retire(gw: Gateway, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs = [await send_referral(gw, f"rot-{i}", urgency="urgent") for i in range(3)]
    await gw.process_all()
    await gw.deliver_all()
    keys_dir = home / "keys"
    old_key = (keys_dir / KEY_FILE).read_bytes()
    before = await blob_key_ids(gw)
    assert {"messages.raw", "messages.envelope", "referrals.content", "deliveries.payload"} <= set(before)
    assert all(ids == {key_id(old_key)} for ids in before.values())

    assert await acli(home, "rotate", "sealing") == 0
    new_key = (keys_dir / KEY_FILE).read_bytes()
    retired = keys_dir / "retired" / f"{key_id(old_key).hex()}.key"
    assert new_key != old_key and retired.read_bytes() == old_key
    assert stat.S_IMODE(retired.stat().st_mode) == 0o600
    assert stat.S_IMODE((keys_dir / KEY_FILE).stat().st_mode) == 0o600
    capsys.readouterr()

    # Before the re-seal: blobs remain under the old key, and it cannot be set aside.
    assert await acli(home, "rotation-status") == 1
    out = capsys.readouterr().out
    assert f"current {key_id(new_key).hex()}" in out and "remain under old keys" in out
    assert await acli(home, "retire-unused") == 1
    assert "still sealed with it" in capsys.readouterr().out and retired.exists()

    # A referral arriving now (this gateway has not looked at keys/ yet) is still kept safe.
    refs.append(await send_referral(gw, "rot-late", urgency="standard"))
    await gw.process_all()
    assert await gw.reseal_all() > 0  # picks up the new key by itself, then re-seals everything
    after = await blob_key_ids(gw)
    assert set(after) == set(before) and all(ids == {key_id(new_key)} for ids in after.values())
    opened = await readable_referrals(gw, Sealer(new_key))  # the new key alone opens every referral
    assert sorted(opened) == sorted(refs)
    assert all("Zebra-crossing-unique-detail" in d for d in opened.values())

    assert await acli(home, "rotation-status") == 0
    assert "every blob is under the current key" in capsys.readouterr().out
    assert await acli(home, "retire-unused") == 0
    assert "no blob uses it" in capsys.readouterr().out
    assert not retired.exists() and (keys_dir / "retired" / "unused" / retired.name).read_bytes() == old_key

    # A restarted gateway reads everything with the keys left in keys/.
    await gw.stop()
    again = Gateway(config_mod.load(home / "config" / "gateway.toml"), clock=FakeClock(START), workers=False)
    await again.start()
    try:
        assert sorted(await readable_referrals(again, again.sealer)) == sorted(refs)
        assert await again.reseal_all() == 0
    finally:
        await again.stop()
    await gw.start()  # for the fixture's stop


@both_databases
async def test_rotate_twice_before_the_reseal(gw: Gateway, home: Path) -> None:
    """Two rotations in a row: blobs under either old key are re-sealed, none is lost."""
    ref = await send_referral(gw, "twice-1", urgency="urgent")
    await gw.process_all()
    assert await acli(home, "rotate", "sealing") == 0
    await gw.reseal_all()
    ref2 = await send_referral(gw, "twice-2", urgency="urgent")
    await gw.process_all()
    assert await acli(home, "rotate", "sealing") == 0
    assert await acli(home, "rotate", "sealing") == 0
    await gw.reseal_all()
    current = key_id((home / "keys" / KEY_FILE).read_bytes())
    assert all(ids == {current} for ids in (await blob_key_ids(gw)).values())
    assert sorted(await readable_referrals(gw, gw.sealer)) == sorted([ref, ref2])
    assert len(list((home / "keys" / "retired").glob("*.key"))) == 3


def test_rotate_without_a_key(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(home)
    assert cli(home, "rotate", "sealing") == 2
    assert "start the gateway once" in capsys.readouterr().err
    assert not (home / "keys" / "retired").exists()


def test_reseal_contexts_are_the_ones_the_writers_use() -> None:
    """A re-seal under the wrong associated data would leave a blob that no reader can open: each
    column's context must be the one its writer (gateway.core.sealed, gateway.staff.factors) binds."""
    from types import SimpleNamespace

    from gateway.core.model import Referral
    from gateway.core.sealed import Content, Payload, Sealed, SmsEnvelope
    from gateway.pipeline.replies import additional_info_context
    from gateway.staff.factors import Factors
    from gateway.track.answers import answer_reason_context

    sealer = Sealer(b"k" * 32)
    sealed = Sealed(sealer)
    row = SimpleNamespace(id="r1", user_id="u1", kind="inbound", message_sid="SM1", status="received")
    written = {
        "messages.envelope": sealed.seal_envelope("r1", SmsEnvelope("+447700900123", "+447700900000", "SM1", False)),
        "messages.raw": sealed.seal_raw("r1", b"raw"),
        "referrals.content": sealed.seal_content("r1", Content(Referral())),
        "deliveries.payload": sealed.seal_payload("r1", Payload("a@b.example", b"m")),
        "decisions.note": sealed.seal_note("r1", "note"),
        "sms_webhooks.payload": sealed.seal_webhook("inbound", "SM1", "received", [("Body", "x")]),
        "sms_webhooks.reply": sealed.seal_reply("inbound", "SM1", "reply"),
        # The staff package's own sealing (its only writer), not a copy of its context string.
        "staff_factors.secret": Factors(None, sealer)._seal("u1", "secret"),  # type: ignore[arg-type]
        "answers.reason": sealer.seal(b"why", answer_reason_context("r1")),
        "additional_info.content": sealer.seal(b"{}", additional_info_context("r1")),
    }
    assert set(written) == {col.name for col in SEALED_COLUMNS}
    for col in SEALED_COLUMNS:
        sealer.open(written[col.name], col.context(row))  # raises SealError if the context differs


async def test_a_rotation_cut_short_leaves_keys_usable(gw: Gateway, home: Path) -> None:
    """`keys rotate sealing` killed after staging the new key and copying the old one into retired/,
    before the rename: every blob still opens, and the command simply runs again."""
    ref = await send_referral(gw, "cut-1", urgency="urgent")
    await gw.process_all()
    keys = home / "keys"
    current = (keys / KEY_FILE).read_bytes()
    (keys / "retired").mkdir(mode=0o700)
    for path, data in (
        (keys / "retired" / f"{key_id(current).hex()}.key", current),
        (keys / f"{KEY_FILE}.new", b"n" * 32),
    ):
        path.write_bytes(data)
        path.chmod(0o600)
    assert await gw.reseal_all() == 0  # the same current key: nothing to do, nothing broken
    assert sorted(await readable_referrals(gw, gw.sealer)) == [ref]

    assert await acli(home, "rotate", "sealing") == 0
    assert (keys / KEY_FILE).read_bytes() not in (current, b"n" * 32) and not (keys / f"{KEY_FILE}.new").exists()
    assert await gw.reseal_all() > 0
    assert await acli(home, "retire-unused") == 0
    assert sorted(await readable_referrals(gw, Sealer((keys / KEY_FILE).read_bytes()))) == [ref]


async def test_a_blob_no_key_opens_is_left_as_it_is_and_shown(
    gw: Gateway, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blob sealed with a key that is not in keys/ (lost, or restored from elsewhere): the re-seal
    leaves it byte for byte, still finishes the others, and rotation-status names the missing key."""
    from sqlalchemy import update

    refs = [await send_referral(gw, f"lost-{i}", urgency="urgent") for i in range(2)]
    await gw.process_all()
    stranger = Sealer(b"s" * 32)
    async with gw.db.write() as conn:
        rid = (await conn.execute(select(referrals.c.id).where(referrals.c.reference == refs[0]))).scalar_one()
        orphan = stranger.seal(b"{}", f"content:{rid}")
        await conn.execute(update(referrals).where(referrals.c.id == rid).values(content=orphan))
    assert await acli(home, "rotate", "sealing") == 0
    assert await gw.reseal_all() > 0  # finishes: the orphan is not retried in a loop
    async with gw.engine.connect() as conn:
        assert (await conn.execute(select(referrals.c.content).where(referrals.c.id == rid))).scalar_one() == orphan
    current = key_id((home / "keys" / KEY_FILE).read_bytes())
    ids = await blob_key_ids(gw)
    assert ids["referrals.content"] == {current, stranger.current_id}
    assert all(v == {current} for k, v in ids.items() if k != "referrals.content")
    capsys.readouterr()
    assert await acli(home, "rotation-status") == 1
    out = capsys.readouterr().out
    assert f"{stranger.current_id.hex()}        1 blob(s)  NOT IN keys/" in out
