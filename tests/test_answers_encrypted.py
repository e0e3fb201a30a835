"""More information needed, when the referrer's key is known (issue 15): the request, reason and
all, is encrypted to the key the referral was signed with, and the referrer's encrypted, signed
reply threads back onto the referral under the strict policy, from their own address or from a
colleague's at the same partner organisation. Real gpg homes and PGP/MIME over real SMTP, as in
tests/test_secure_intake.py (whose fixtures these tests use: a strict gateway and a partner)."""

from __future__ import annotations

import email
import email.policy
import subprocess

from sqlalchemy import select

from gateway.app import Gateway
from gateway.core.schema import additional_info
from tests.conftest import maildir_messages, referral_body, referral_row
from tests.test_answers import Client, acknowledge, answer, kinds, page

# Fixtures, imported by name: `clients` signs staff in on this module's (strict) gateway.
from tests.test_answers import clients as clients
from tests.test_secure_intake import SENDER, Setup, outer, pgpmime_message, send_and_process
from tests.test_secure_intake import gateway as gateway
from tests.test_secure_intake import setup as setup

REASON = "Which school does Sam Testchild attend?"


def signed_reply(s: Setup, body: str, reference: str, mid: str, sender: str = SENDER) -> bytes:
    head = (
        f"From: Ann Example <{sender}>\r\nTo: referrals@demo-council.example\r\n"
        f"Subject: Re: More information needed: referral {reference}\r\n"
        f"Message-ID: <{mid}@nhs.example>\r\nMIME-Version: 1.0\r\n"
    )
    return head.encode() + pgpmime_message(s, body)


def decrypt(s: Setup, message: email.message.EmailMessage) -> str:
    done = subprocess.run(
        ["gpg", "--homedir", str(s.pgp_partner_home), "--batch", "--decrypt"],
        input=message.get_payload()[1].get_payload(decode=True),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return str(email.message_from_bytes(done.stdout, policy=email.policy.default).get_content())


async def test_the_request_is_encrypted_with_the_reason_and_signed_replies_thread_back(
    gateway: Gateway, setup: Setup, clients: dict[str, Client]
) -> None:
    reference = await send_and_process(gateway, outer(pgpmime_message(setup, referral_body()), "first"))
    rid = str((await referral_row(gateway, reference)).id)
    assert (await referral_row(gateway, reference)).team_id == "mash"
    worker = clients["mash.worker"]
    await acknowledge(worker, rid)
    assert (await answer(worker, rid, "more-info", {"reason": REASON}))[0] == 303
    await gateway.deliver_all()
    (request,) = [m for m in maildir_messages(setup.home, SENDER) if "More information needed" in str(m["Subject"])]
    assert request.get_content_type() == "multipart/encrypted"
    assert REASON not in request.as_string()
    assert REASON in decrypt(setup, request)  # what is missing, readable only with their key

    # Their reply, encrypted and signed as the strict policy requires, threads back.
    reply_ref = await send_and_process(
        gateway, signed_reply(setup, "Sam attends Ambridge Primary.", reference, "reply1")
    )
    assert (await referral_row(gateway, reply_ref)).state == "reply"
    # Asked again: a colleague at the same partner organisation answers from their own address.
    assert (await answer(worker, rid, "more-info", {"reason": "And the class teacher?"}))[0] == 303
    colleague = "bea.colleague@nhs.example"
    colleague_ref = await send_and_process(
        gateway, signed_reply(setup, "The class teacher is Mr Example.", reference, "reply2", colleague), colleague
    )
    assert (await referral_row(gateway, colleague_ref)).state == "reply"
    async with gateway.engine.connect() as conn:
        items = (await conn.execute(select(additional_info.c.referral_id))).all()
    assert [i.referral_id for i in items] == [rid, rid]
    html = await page(worker, f"/referrals/{rid}")
    assert "Sam attends Ambridge Primary." in html and "The class teacher is Mr Example." in html
    assert (await kinds(gateway, rid)).count("information_received") == 2
