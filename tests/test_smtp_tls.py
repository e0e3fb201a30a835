"""SMTP transport rules: STARTTLS with the configured certificate (required off loopback), and the
size limit refused up front at MAIL FROM SIZE=."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.config import ConfigError
from gateway.core.clock import FakeClock
from tests.conftest import REFERRAL_ADDRESS, make_message, referral_body, write_config
from tests.tls import make_cert


@pytest.fixture
async def tls_gateway(home: Path, clock: FakeClock, tmp_path: Path) -> AsyncIterator[tuple[Gateway, Path]]:
    cert, key = make_cert(tmp_path / "tls")
    (home / "keys").mkdir(parents=True)
    shutil.copy(cert, home / "keys" / "smtp.crt")
    shutil.copy(key, home / "keys" / "smtp.key")
    path = write_config(home)
    path.write_text(
        path.read_text().replace(
            'max_message_size = "25MB"',
            'max_message_size = "64KB"\ntls_cert = "smtp.crt"\ntls_key = "smtp.key"\nrequire_starttls = true',
        )
    )
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    yield gw, cert
    await gw.stop()


async def test_starttls_is_offered_and_required(tls_gateway: tuple[Gateway, Path]) -> None:
    gw, cert = tls_gateway
    plain = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.smtp_port, start_tls=False)
    await plain.connect()
    await plain.ehlo()
    assert plain.supports_extension("starttls")
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await plain.mail("ann.example@nhs.example")
    assert refused.value.code == 530  # must issue STARTTLS first
    plain.close()

    context = ssl.create_default_context(cafile=str(cert))
    secure = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.smtp_port, start_tls=True, tls_context=context)
    await secure.connect()
    errors, reply = await secure.sendmail(
        "ann.example@nhs.example",
        [REFERRAL_ADDRESS],
        make_message(referral_body(), message_id="<tls1@nhs.example>").as_bytes(),
    )
    await secure.quit()
    assert errors == {} and "Accepted: referral" in reply


async def test_oversized_message_is_refused_at_mail_from_size(tls_gateway: tuple[Gateway, Path]) -> None:
    gw, cert = tls_gateway
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=gw.smtp_port,
        start_tls=True,
        tls_context=ssl.create_default_context(cafile=str(cert)),
    )
    await client.connect()
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await client.mail("ann.example@nhs.example", options=["SIZE=200000"])
    assert refused.value.code == 552
    client.close()


def test_a_listener_off_loopback_needs_a_certificate(tmp_path: Path) -> None:
    path = write_config(tmp_path / "gw")
    path.write_text(path.read_text().replace('[smtp]\nhost = "127.0.0.1"', '[smtp]\nhost = "0.0.0.0"'))
    with pytest.raises(ConfigError) as error:
        config_mod.load(path)
    (issue,) = error.value.issues
    assert issue.key == "smtp" and "STARTTLS is required on 0.0.0.0 but no certificate is set" in issue.message
    assert issue.fix.startswith("use tls_cert and tls_key")
