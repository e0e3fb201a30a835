"""The outbox's plain-text emails written directly (gateway.outbox.plaintext) are byte for byte what
the email package's MIMEText makes, and a gateway whose headers need encoding still sends alerts
that read correctly (the email package's way)."""

from __future__ import annotations

import random
from email.mime.text import MIMEText
from pathlib import Path

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.outbox.plaintext import plain_text
from tests.conftest import maildir_messages, make_message, referral_body, smtp_send, write_config

MASH = "mash-duty@demo-council.example"


def by_email_package(headers: list[tuple[str, str]], body: str) -> bytes:
    msg = MIMEText(body, "plain", "utf-8")
    for name, value in headers:
        msg[name] = value
    return msg.as_bytes()


def test_the_same_bytes_as_mimetext_for_many_synthetic_emails() -> None:
    rng = random.Random(20261203)
    text = "abc XYZ 019 ,;:<>@.\"'-()[]\n\r\t éŵ✓"  # the body may hold anything a template renders
    header = "ab C9 ,;:<>@.\"'-()"  # printable ASCII and spaces, some runs doubled by chance
    written = 0
    for _ in range(3000):
        body = "".join(rng.choice(text) for _ in range(rng.randint(0, 600)))
        headers = [
            ("From", "Demo Borough Council referrals <referrals@demo-council.example>"),
            ("To", f"{rng.choice(['asha.okafor', 'x'])}@demo-council.example"),
            ("Subject", "".join(rng.choice(header) for _ in range(rng.randint(1, 90))).strip() or "x"),
            ("X-Referral-Reference", "2H56-CCHD"),
        ]
        raw = plain_text(headers, body)
        if raw is None:
            continue  # a header that needs folding: the caller uses the email package
        written += 1
        assert raw == by_email_package(headers, body)
    assert written > 1000  # the fast way was taken, most of the time


def test_headers_that_need_folding_or_encoding_are_left_to_the_email_package() -> None:
    body = "Reference 2H56-CCHD\n"
    assert plain_text([("Subject", "Safeguarding referral 2H56-CCHD")], body) is not None
    for value in (
        "x" * 70,  # the line would be over 78 characters
        "Cyngor Sir Ynys Môn",  # not ASCII
        "two  spaces",  # Header.encode may change whitespace
        " leading",
        "trailing ",
        "line\nbreak",
    ):
        assert plain_text([("Subject", value)], body) is None, value
    assert plain_text([("Subject", "ok")], "\udcff") is None  # a lone surrogate


async def test_a_council_name_that_needs_encoding_still_gives_readable_alerts(home: Path, clock: FakeClock) -> None:
    path = write_config(home)
    path.write_text(path.read_text().replace('council = "Demo Borough Council"', 'council = "Cyngor Bwrdeistref Ŵ"'))
    gateway = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gateway.start()
    try:
        code, text = await smtp_send(gateway.smtp_port, make_message(referral_body(), message_id="<pt1@nhs.example>"))
        assert code == 250
        reference = text.split()[-1]
        assert await gateway.process_all() == 1
        assert await gateway.deliver_all() == 4
    finally:
        await gateway.stop()
    (alert,) = maildir_messages(home, MASH)
    assert alert["From"].addresses[0].display_name == "Cyngor Bwrdeistref Ŵ referrals"
    assert alert["X-Referral-Reference"] == reference
    assert reference in alert.get_content() and "/ack/" in alert.get_content()
