"""The sequoia backend's gpg fallback (gateway.open.crypto.gpg_fallback): what pysequoia 0.1.35 cannot decide
goes to gpg over a private home, with gpg's outcome and reason, and is counted; what pysequoia decides is not.

Messages are made by the real gpg command line; the counter is the gateway's prometheus counter.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.metrics import Counters
from gateway.open.crypto import DecryptError
from gateway.open.crypto.openpgp import OpenPGP
from gateway.open.crypto.pgp_backend import BACKENDS, OpenPGPBackend
from gateway.open.crypto.pgp_keygen import PREFERENCES, preferences
from gateway.open.crypto.sequoia import SequoiaPGP
from tests.test_openpgp import AUTOCRYPT, BOB, BODY, CLIENT, Partner, encrypted_part

FALLBACK = "gateway_openpgp_fallback_total"


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gpg"))  # short: gpg-agent's socket path must fit in 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def counters() -> Counters:
    return Counters()


def count(counters: Counters, reason: str) -> float:
    return counters.registry.get_sample_value(FALLBACK, {"reason": reason}) or 0.0


def make(backend: str, scratch: Path, counters: Counters) -> OpenPGPBackend:
    if backend == "gnupg":
        return OpenPGP(scratch / "gw")
    pgp = SequoiaPGP(scratch / "gw", fallback_home=scratch / "data" / "gpg-fallback")
    pgp.on_fallback = counters.openpgp_fallback
    return pgp


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def partner(scratch: Path) -> Iterator[Partner]:
    p = Partner(scratch / "p")
    yield p
    p.close()


@pytest.fixture
def gw(scratch: Path, backend: str, counters: Counters, partner: Partner) -> Iterator[OpenPGPBackend]:
    gateway = make(backend, scratch, counters)
    gateway.import_keys((AUTOCRYPT / "bob@openpgp.example.sec.asc").read_bytes())
    partner.generate("Ann Referrer <ann@nhs.example>")
    gateway.import_keys(partner.export())
    partner.gpg("--import", data=gateway.export_public(BOB))
    yield gateway
    gateway.close()


def signed_and_encrypted(partner: Partner, *compression: str) -> bytes:
    cmd = ("--trust-model", "always", "-u", partner.fpr, "-r", BOB, *compression, "--sign", "--encrypt")
    return partner.gpg(*cmd, data=BODY).stdout


@pytest.mark.parametrize("algo", ["zip", "zlib", "bzip2"])
async def test_compressed_sign_and_encrypt_is_verified(
    gw: OpenPGPBackend, partner: Partner, counters: Counters, backend: str, algo: str
) -> None:
    # gpg's own sign+encrypt with compression (what Thunderbird and gpg send by default): pysequoia cannot
    # check the signature (zip, zlib) or read the data at all (bzip2); the fallback gives gpg's verdict.
    message = signed_and_encrypted(partner, "--compress-algo", algo)
    plaintext, sig = await gw.decrypt(message)
    assert plaintext == BODY
    assert sig is not None and sig.valid and sig.problem is None and sig.signer_id == partner.fpr
    assert sig.signer_addresses == ("ann@nhs.example",)
    reason = "unreadable structure" if algo == "bzip2" else "compressed signature"
    assert count(counters, reason) == (1.0 if backend == "sequoia" else 0.0)


async def test_bad_signature_inside_compressed_data(gw: OpenPGPBackend, partner: Partner, scratch: Path) -> None:
    # A signed message whose text was changed after signing, then compressed and encrypted as it is
    # (`--no-literal` encrypts the packets themselves): the encryption is sound, the signature is not.
    signed = partner.gpg("-z", "0", "-u", partner.fpr, "--sign", data=BODY).stdout
    tampered = signed.replace(b"synthetic", b"synthetiC", 1)
    assert tampered != signed
    cmd = ("--no-literal", "--compress-algo", "zlib", "--trust-model", "always", "-r", BOB, "--encrypt")
    message = partner.gpg(*cmd, data=tampered).stdout
    plaintext, sig = await gw.decrypt(message)
    assert plaintext == BODY.replace(b"synthetic", b"synthetiC", 1)
    assert sig is not None and not sig.valid and sig.problem == "bad signature" and sig.signer_id == partner.fpr


async def test_what_pysequoia_decides_is_not_retried(
    gw: OpenPGPBackend, partner: Partner, counters: Counters, scratch: Path, backend: str
) -> None:
    # Uncompressed: a good signature, an unknown signer, a tampered text; and no integrity protection. Only
    # the tampered one is shown to gpg, for the reason alone (an expired signature looks the same to
    # pysequoia); it stays "bad signature".
    _, good = await gw.decrypt(signed_and_encrypted(partner, "-z", "0"))
    assert good is not None and good.valid
    stranger = Partner(scratch / "stranger")
    try:
        stranger.generate("Stranger <stranger@example.org>")
        stranger.gpg("--import", data=gw.export_public(BOB))
        _, unknown = await gw.decrypt(signed_and_encrypted(stranger, "-z", "0"))
    finally:
        stranger.close()
    assert unknown is not None and unknown.problem == "unknown signer"
    signed = partner.gpg("-z", "0", "-u", partner.fpr, "--sign", data=BODY).stdout
    cmd = ("--no-literal", "-z", "0", "--trust-model", "always", "-r", BOB, "--encrypt")
    _, bad = await gw.decrypt(partner.gpg(*cmd, data=signed.replace(b"synthetic", b"synthetiC", 1)).stdout)
    assert bad is not None and bad.problem == "bad signature"
    with pytest.raises(DecryptError) as err:
        await gw.decrypt(encrypted_part(CLIENT / "negative" / "pgpmime-no-mdc.eml"))
    assert err.value.reason == "no integrity protection"
    assert counters.registry.get_sample_value(FALLBACK, {"reason": "compressed signature"}) is None
    assert counters.registry.get_sample_value(FALLBACK, {"reason": "unreadable structure"}) is None
    assert count(counters, "bad signature reason") == (1.0 if backend == "sequoia" else 0.0)


async def test_expired_signature_inside_encryption_is_counted(
    gw: OpenPGPBackend, partner: Partner, counters: Counters, backend: str
) -> None:
    # A signature past its own expiry, inside uncompressed encryption: pysequoia finds it not good, gpg says
    # why (EXPSIG), and the message is still refused. Counted once, under its own reason.
    fpr = partner.generate("Old Referrer <old@nhs.example>", expire="never", faked_time="20200101T000000")
    gw.import_keys(partner.export())
    when = ("--faked-system-time", "20200101T120000!", "--default-sig-expire", "1d")
    cmd = ("--trust-model", "always", "-z", "0", "-u", fpr, "-r", BOB, "--sign", "--encrypt")
    plaintext, sig = await gw.decrypt(partner.gpg(*when, *cmd, data=BODY).stdout)
    assert plaintext == BODY
    assert sig is not None and not sig.valid and sig.problem == "expired key" and sig.signer_id == fpr
    assert count(counters, "bad signature reason") == (1.0 if backend == "sequoia" else 0.0)
    assert count(counters, "compressed signature") == 0.0


async def test_fallback_home_is_private_and_follows_the_key_files(
    scratch: Path, counters: Counters, partner: Partner
) -> None:
    gw = make("sequoia", scratch, counters)
    try:
        gw.import_keys((AUTOCRYPT / "bob@openpgp.example.sec.asc").read_bytes())
        partner.generate("Ann Referrer <ann@nhs.example>")
        partner.gpg("--import", data=gw.export_public(BOB))
        message = signed_and_encrypted(partner, "--compress-algo", "zlib")
        # Ann's key is not in keys/openpgp yet: pysequoia decides "unknown signer" itself (no fallback).
        _, before = await gw.decrypt(message)
        assert before is not None and before.problem == "unknown signer"
        home = scratch / "data" / "gpg-fallback"
        assert not home.exists() and count(counters, "compressed signature") == 0.0
        bea = Partner(scratch / "bea")
        try:
            bea.generate("Bea Referrer <bea@nhs.example>")
            gw.import_keys(bea.export())
            bea.gpg("--import", data=gw.export_public(BOB))
            _, first = await gw.decrypt(signed_and_encrypted(bea, "--compress-algo", "zlib"))
        finally:
            bea.close()
        assert first is not None and first.valid
        (built,) = [p for p in home.iterdir() if p.is_dir()]  # one GnuPG home per version of the key files
        assert stat.S_IMODE(home.stat().st_mode) == 0o700 and stat.S_IMODE(built.stat().st_mode) == 0o700
        # `keys import` writes a key file: the next message is checked in a new home that holds it; the old
        # one stays a while (another instance sharing var/ may be using it), marked replaced.
        gw.import_keys(partner.export())
        _, after = await gw.decrypt(message)
        assert after is not None and after.valid and after.signer_id == partner.fpr
        homes = {p.name: p for p in home.iterdir() if p.is_dir()}
        assert len(homes) == 2 and (built / ".replaced").exists()
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in [home, *homes.values()])
        assert count(counters, "compressed signature") == 2.0
    finally:
        gw.close()


async def test_gateway_key_prefers_uncompressed(scratch: Path, backend: str, counters: Counters) -> None:
    # The key the gateway makes (keys init, development keys, rotate openpgp) asks senders not to compress,
    # and a partner's gpg then sends sign+encrypt that pysequoia checks itself: no fallback.
    gw = make(backend, scratch, counters)
    team = Partner(scratch / "team")
    try:
        own = gw.generate_key("Referral Gateway", "gateway@example.test", expire="1y")
        prefs = preferences(gw.export_public(own))
        assert prefs.shown() == PREFERENCES and not prefs.allows_compression()
        team.generate("Ann Referrer <ann@nhs.example>")
        gw.import_keys(team.export())
        team.gpg("--import", data=gw.export_public(own))
        message = team.gpg("--trust-model", "always", "-u", team.fpr, "-r", own, "--sign", "--encrypt", data=BODY)
        listing = team.gpg("--list-packets", data=message.stdout, check=False).stdout
        assert b":compressed packet:" not in listing
        plaintext, sig = await gw.decrypt(message.stdout)
        assert plaintext == BODY and sig is not None and sig.valid
        assert counters.registry.get_sample_value(FALLBACK, {"reason": "compressed signature"}) is None
        assert preferences((AUTOCRYPT / "alice@openpgp.example.pub.asc").read_bytes()).allows_compression()
    finally:
        gw.close()
        team.close()


@pytest.mark.parametrize("compression", [("-z", "0"), ("--compress-algo", "zlib")], ids=["uncompressed", "zlib"])
async def test_expired_key_inside_encryption(
    gw: OpenPGPBackend, scratch: Path, counters: Counters, backend: str, compression: tuple[str, str]
) -> None:
    # A key made "in 2020" with a 1-day life signed (time frozen with `!`) while it was valid; opened now.
    # gpg says EXPKEYSIG; pysequoia gives no good signature, and the backend checks the key's expiry itself
    # (uncompressed) or hands the message to gpg (compressed): "expired key" either way.
    old = Partner(scratch / "old")
    try:
        fpr = old.generate("Old Partner <old@partner.example>", expire="1d", faked_time="20200101T000000")
        gw.import_keys(old.export())
        old.gpg("--import", data=gw.export_public(BOB))
        when = ("--faked-system-time", "20200101T120000!")
        message = old.gpg(
            *when, "--trust-model", "always", *compression, "-u", fpr, "-r", BOB, "--sign", "--encrypt", data=BODY
        )
    finally:
        old.close()
    plaintext, sig = await gw.decrypt(message.stdout)
    assert plaintext == BODY
    assert sig is not None and not sig.valid and sig.problem == "expired key" and sig.signer_id == fpr
    expected = 1.0 if backend == "sequoia" and compression[1] == "zlib" else 0.0
    assert count(counters, "compressed signature") == expected


async def test_without_a_fallback_home_an_undecidable_message_is_refused(
    scratch: Path, counters: Counters, partner: Partner
) -> None:
    # The `keys` commands open the backend without one: nothing they do reads mail, and nothing half-checked
    # may come out of it.
    pgp = SequoiaPGP(scratch / "gw")
    pgp.on_fallback = counters.openpgp_fallback
    try:
        pgp.import_keys((AUTOCRYPT / "bob@openpgp.example.sec.asc").read_bytes())
        partner.generate("Ann Referrer <ann@nhs.example>")
        pgp.import_keys(partner.export())
        partner.gpg("--import", data=pgp.export_public(BOB))
        with pytest.raises(DecryptError) as err:
            await pgp.decrypt(signed_and_encrypted(partner, "--compress-algo", "zlib"))
        assert err.value.reason == "damaged or altered"
        assert count(counters, "compressed signature") == 1.0
    finally:
        pgp.close()
