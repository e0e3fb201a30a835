"""The maildir transport remembers the mailboxes it has made, and makes one again when it is gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.core.outcomes import TemporaryFailure
from gateway.deliver.transports import MaildirTransport

TO = "asha.okafor@demo-council.example"


async def test_a_mailbox_removed_under_a_running_gateway_is_made_again(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path / "mail")
    await transport.send("referrals@demo-council.example", TO, b"Subject: one\n\nfirst\n")
    box = transport.mailbox(TO)
    assert [p.read_bytes() for p in (box / "new").iterdir()] == [b"Subject: one\n\nfirst\n"]
    shutil.rmtree(box)  # an operator clears the spool while the gateway runs
    await transport.send("referrals@demo-council.example", TO, b"Subject: two\n\nsecond\n")
    assert [p.read_bytes() for p in (box / "new").iterdir()] == [b"Subject: two\n\nsecond\n"]
    assert sorted(p.name for p in box.iterdir()) == ["cur", "new", "tmp"]


async def test_a_mailbox_that_cannot_be_made_is_a_temporary_failure(tmp_path: Path) -> None:
    (tmp_path / "mail").write_text("a file where the spool should be")
    transport = MaildirTransport(tmp_path / "mail")
    with pytest.raises(TemporaryFailure):
        await transport.send("referrals@demo-council.example", TO, b"Subject: one\n\nfirst\n")
