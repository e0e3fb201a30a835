"""The embedded default makes the gateway's development keys on first run, so a fresh checkout
takes encrypted mail; a second start reuses them."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from tests.conftest import write_config


async def test_first_run_makes_development_keys_and_the_next_reuses_them(home: Path, clock: FakeClock) -> None:
    path = write_config(home, '[keys]\ndevelopment = true\nopenpgp_backend = "gnupg"\n')
    config = config_mod.load(path)
    gw = Gateway(config, clock=clock, workers=False)
    await gw.start()
    try:
        assert gw.identity.pgp is not None and gw.identity.smime is not None
        first = [k.fingerprint for k in gw.identity.pgp.keys(secret=True)]
        # The generated key is the one the gateway signs with (alerts, encrypted receipts).
        assert first == [gw.identity.openpgp_fingerprint]
        cert = gw.identity.smime.info.fingerprint
    finally:
        await gw.stop()
    key = home / "keys" / "smime" / "gateway.key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "keys" / "gnupg").stat().st_mode) == 0o700

    again = Gateway(config_mod.load(path), clock=clock, workers=False)
    await again.start()
    try:
        assert again.identity.pgp is not None and again.identity.smime is not None
        assert [k.fingerprint for k in again.identity.pgp.keys(secret=True)] == first
        assert again.identity.smime.info.fingerprint == cert
    finally:
        await again.stop()
    subprocess.run(["gpgconf", "--homedir", str(home / "keys" / "gnupg"), "--kill", "gpg-agent"], check=False)
