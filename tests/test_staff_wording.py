"""What a duty worker new to the service saw wrong (issue 15 item 6), checked as they would see it:
the HTML of the real web app over real HTTP, after referrals sent by real SMTP.

- A referral that could not be read: its page says why, who sent it (MAIL FROM, From:, Subject),
  and what was sent (its parts, its readable text escaped), never "Not given" for every field;
  the message as sent downloads, audited.
- States in plain words, "Not given — treated as immediate" for a missing urgency, never "late
  by 00m", references that cannot wrap.
- The timeline: one line per alert step.
- /favicon.ico: an icon, without signing in, cached.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

from sqlalchemy import select

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.core.lifecycle import State
from gateway.core.schema import events
from gateway.intake.web_form import STATIC_DIR
from gateway.report.plain_words import STATE_WORDS
from tests.conftest import REFERRAL_ADDRESS, make_message, referral_row, send_referral, smtp_send
from tests.test_dashboard import Browser, page, referral_id, signed_in
from tests.test_dashboard import accounts as accounts  # the fixtures: staff and a browser on the app
from tests.test_dashboard import browser as browser

SENDER = "ann.example@nhs.example"
ARMOUR = (
    "-----BEGIN PGP MESSAGE-----\n\nhQEMA1234567890<script>alert(1)</script>notreallypgp\n-----END PGP MESSAGE-----\n"
)
INCOMPLETE = "Worried about a child at W1A 1AA, please call me.\n"  # an SMS-style note: no form at all


def garbled(subject: str = "Referral <b>for</b> review") -> bytes:
    """An OpenPGP/MIME message whose encrypted part is not OpenPGP at all, with a file name and a
    subject that would be markup if echoed unescaped."""
    return (
        f"From: Ann Example <{SENDER}>\r\nTo: {REFERRAL_ADDRESS}\r\nSubject: {subject}\r\n"
        "Message-ID: <garbled-1@nhs.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="XX"\r\n\r\n'
        "--XX\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        '--XX\r\nContent-Type: application/octet-stream; name="<i>encrypted</i>.asc"\r\n\r\n'
        + ARMOUR.replace("\n", "\r\n")
        + "--XX--\r\n"
    ).encode()


def text_of(html: str) -> str:
    """The page as a person reads it: tags out, entities decoded, spaces collapsed."""
    import html as entities

    body = re.sub(r"<(script|style)\b.*?</\1>", "", html, flags=re.S)
    return " ".join(entities.unescape(re.sub(r"<[^>]+>", " ", body)).split())


async def quarantined(gateway: Gateway, raw: bytes) -> str:
    code, reply = await smtp_send(gateway.smtp_port, raw, sender=SENDER)
    assert code == 250, reply
    reference = reply.split()[-1]
    await gateway.process_all()
    await gateway.deliver_all()
    assert (await referral_row(gateway, reference)).state == "quarantined"
    return reference


async def test_an_unreadable_referral_shows_its_sender_and_what_was_sent(gateway: Gateway, browser: Browser) -> None:
    raw = garbled()
    reference = await quarantined(gateway, raw)
    rid = await referral_id(gateway, reference)
    client = await signed_in(browser, "triage.worker")  # the triage team is alerted to look at it
    html = await page(client, f"/referrals/{rid}")
    words = text_of(html)
    content = words.split("Content", 1)[1].split("Earlier referrals")[0]
    assert "Not given" not in content
    assert re.search(r"The referral could not be read: [^.]+\(at the open stage\)", content), content
    assert f"Envelope sender (SMTP MAIL FROM) {SENDER}" in content
    assert f"From (the message's header) Ann Example <{SENDER}>" in content
    assert "Subject Referral <b>for</b> review" in content  # shown as typed...
    assert "<b>for</b>" not in html and "&lt;b&gt;for&lt;/b&gt;" in html  # ...never as markup
    assert f"{len(raw)} bytes in 2 part(s)" in content
    assert "1 application/pgp-encrypted none 12" in content
    assert "2 application/octet-stream <i>encrypted</i>.asc" in content and "<i>encrypted" not in html
    assert "-----BEGIN PGP MESSAGE-----" in content and "<script>alert(1)</script>" in content
    assert "<script>alert(1)" not in html  # the sender's text is escaped
    assert "State Could not be read: held for a person to check" in words
    assert "Urgency Not known: the referral could not be read" in words

    # The message as it came, for a mail client, sealed at rest and audited when opened.
    response = await client.get(f"/referrals/{rid}/raw", allow_redirects=False)
    assert response.status == 200
    assert await response.read() == raw
    assert response.headers["Content-Disposition"] == f'attachment; filename="referral-{reference}.eml"'
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Cache-Control"] == "no-store"
    async with gateway.engine.connect() as conn:
        opened = (
            await conn.execute(
                select(events.c.actor, events.c.detail).where(
                    events.c.referral_id == rid, events.c.kind == "raw_message_opened"
                )
            )
        ).all()
    assert [json.loads(d)["size"] for _, d in opened] == [len(raw)] and opened[0][0].startswith("user:")
    timeline = text_of((await page(client, f"/referrals/{rid}")).split('id="timeline"')[1])
    assert "The message as it was sent downloaded by Tia Triage" in timeline


async def test_the_raw_message_is_only_for_those_who_may_see_it(gateway: Gateway, browser: Browser) -> None:
    rid = await referral_id(gateway, await quarantined(gateway, garbled()))
    other_team = await signed_in(browser, "mash.worker")
    assert (await other_team.get(f"/referrals/{rid}/raw", allow_redirects=False)).status == 403
    signed_out = await browser()
    assert (await signed_out.get(f"/referrals/{rid}/raw", allow_redirects=False)).status == 303
    # A readable referral has no raw download: its content is on its page.
    readable = await referral_id(gateway, await send_referral(gateway, "readable-1", urgency="urgent"))
    await gateway.process_all()
    coordinator = await signed_in(browser, "coord")
    assert (await coordinator.get(f"/referrals/{readable}/raw", allow_redirects=False)).status == 403


async def test_a_message_too_deep_to_list_still_shows_its_sender_and_text(gateway: Gateway, browser: Browser) -> None:
    from tests.test_mime_reading import nested

    raw = nested(120)  # past gateway.open.mimeread.MAX_NESTING: quarantined at once
    reference = await quarantined(gateway, raw)
    client = await signed_in(browser, "coord")
    words = text_of(await page(client, f"/referrals/{await referral_id(gateway, reference)}"))
    assert "The parts could not be listed: the message nests parts more than 50 levels deep" in words
    assert "Envelope sender (SMTP MAIL FROM)" in words and "Its readable text" in words


PDF_ONLY = (
    f"From: Ann Example <{SENDER}>\r\nTo: {REFERRAL_ADDRESS}\r\nSubject: referral attached\r\n"
    'Message-ID: <pdf-1@nhs.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
    '--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="referral.pdf"\r\n'
    "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n--B--\r\n"
).encode()
NO_BOUNDARY = (
    f"From: Ann Example <{SENDER}>\r\nTo: {REFERRAL_ADDRESS}\r\nSubject: scanned\r\n"
    'Message-ID: <nob-1@nhs.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="nope"\r\n\r\n'
    "Worried about a child, please phone me.\r\n--wrong\r\n"
).encode()


async def test_an_email_with_nothing_read_as_a_referral_shows_what_was_sent(gateway: Gateway, browser: Browser) -> None:
    """Garbage MIME, or a form sent only as a PDF: read, routed to triage as incomplete, and on its
    page every field said "Not given", with neither the sender nor what came."""
    refs = []
    for raw in (PDF_ONLY, NO_BOUNDARY):
        code, reply = await smtp_send(gateway.smtp_port, raw, sender=SENDER)
        assert code == 250, reply
        refs.append(reply.split()[-1])
    await gateway.process_all()
    await gateway.deliver_all()
    client = await signed_in(browser, "triage.worker")
    pdf, no_boundary = [await referral_id(gateway, ref) for ref in refs]
    words = text_of(await page(client, f"/referrals/{pdf}"))
    content = words.split("Content", 1)[1].split("Earlier referrals")[0]
    assert "Not given" not in content
    assert "The referral could not be read: no field of the referral form and no text were found in it" in content
    assert "It went to Front door triage team as an incomplete referral" in content
    assert f"Envelope sender (SMTP MAIL FROM) {SENDER}" in content and "Subject referral attached" in content
    assert "1 application/pdf referral.pdf 15" in content  # in the parts...
    assert "Attachments referral.pdf ( application/pdf , 15 bytes)" in content  # ...and openable
    assert "Urgency Not given \N{EM DASH} treated as immediate" in words  # it was routed, so it was
    assert (await client.get(f"/referrals/{pdf}/raw")).status == 200
    words = text_of(await page(client, f"/referrals/{no_boundary}"))
    assert "Worried about a child, please phone me." in words.split("Its readable text")[1]
    # A note with text is read (its details), so its page shows the fields as usual.
    code, reply = await smtp_send(gateway.smtp_port, make_message(INCOMPLETE, message_id="<inc-2@nhs.example>"))
    await gateway.process_all()
    note = await referral_id(gateway, reply.split()[-1])
    assert "could not be read" not in await page(client, f"/referrals/{note}")
    assert (await client.get(f"/referrals/{note}/raw", allow_redirects=False)).status == 403


async def test_dashboard_words_a_new_duty_worker_reads(gateway: Gateway, browser: Browser, clock: FakeClock) -> None:
    code, reply = await smtp_send(gateway.smtp_port, make_message(INCOMPLETE, message_id="<inc-1@nhs.example>"))
    assert code == 250
    reference = reply.split()[-1]
    await gateway.process_all()
    await gateway.deliver_all()
    row = await referral_row(gateway, reference)
    assert row.incomplete and row.urgency is None and row.team_id == "triage"
    # What routing does with a missing urgency: the immediate deadline (15 minutes here).
    assert row.due_at - row.received_at == timedelta(minutes=15)
    client = await signed_in(browser, "triage.worker")

    def the_row(html: str) -> str:
        (found,) = re.findall(rf'<tr class="govuk-table__row" data-reference="{reference}">.*?</tr>', html, re.S)
        return found

    clock.set(row.due_at - timedelta(seconds=30))
    html = await page(client, "/dashboard")
    cells = text_of(the_row(html))
    assert "Not given \N{EM DASH} treated as immediate" in cells and "Incomplete" in cells
    assert "less than a minute left" in cells
    assert "Waiting for a named person to acknowledge" in cells and "alerted" not in cells
    assert f'class="govuk-table__header app-reference"><a class="govuk-link" href="/referrals/{row.id}">' in html

    clock.set(row.due_at + timedelta(seconds=30))
    cells = text_of(the_row(await page(client, "/dashboard")))
    assert "late by less than a minute" in cells and "00m" not in cells
    clock.set(row.due_at + timedelta(minutes=1, seconds=5))
    assert "late by 01m" in text_of(the_row(await page(client, "/dashboard")))

    words = text_of(await page(client, f"/referrals/{row.id}"))
    assert "State Waiting for a named person to acknowledge" in words
    assert "Urgency Not given \N{EM DASH} treated as immediate" in words


def test_references_never_wrap_in_the_compiled_stylesheet() -> None:
    css = (STATIC_DIR / "council.css").read_text()
    assert ".app-reference{white-space:nowrap}" in css


async def test_the_report_page_says_states_in_words(gateway: Gateway, browser: Browser) -> None:
    await quarantined(gateway, garbled())
    client = await signed_in(browser, "coord")
    html = await page(client, "/report")
    (state_cell,) = re.findall(
        r'<th scope="row" class="govuk-table__header app-reference">.*?</td>\s*<td[^>]*>(.*?)</td>', html, re.S
    )
    assert text_of(state_cell) == STATE_WORDS["quarantined"]
    options = re.findall(r'<option value="([a-z]+)"[^>]*>([^<]+)</option>', html.split('id="filter-state"')[1])
    assert ("alerted", "Waiting for a named person to acknowledge") in options


async def test_the_timeline_has_one_line_per_alert_step(gateway: Gateway, browser: Browser) -> None:
    reference = await send_referral(gateway, "steps-1", urgency="urgent")
    await gateway.process_all()
    await gateway.deliver_all()
    client = await signed_in(browser, "coord")
    html = (await page(client, f"/referrals/{await referral_id(gateway, reference)}")).split('id="timeline"')[1]
    lines = re.findall(r"<li><strong>.*?</strong>:(.*?)(?=<li><strong>|</ol>)", html, re.S)
    steps = [text_of(line) for line in lines if "Alert step" in line]
    (step,) = steps
    head = step.split("Each message of this step")[0].strip()
    # The test config's MASH chain: the team's mailbox and the two on duty, by email (all sent).
    assert head == (
        "Alert step 1 (on-duty, mailbox): email to 3 (Asha Okafor, Ben Carter, MASH duty team) "
        "\N{EM DASH} sent 3 of 3, the last at 10:00"
    )
    top = [text_of(line.split("<details")[0]) for line in lines]
    assert not [t for t in top if t.startswith("The alert") or t.startswith("Alerted ")], top  # folded in
    assert "The alert to MASH duty team was sent by email (attempt 1)" in step  # kept in its details


async def test_favicon_is_served_without_signing_in(gateway: Gateway, browser: Browser) -> None:
    import importlib.util

    client = await browser()
    response = await client.get("/favicon.ico", allow_redirects=False)
    assert response.status == 200
    assert response.content_type == "image/x-icon"
    body = await response.read()
    assert body[:4] == b"\x00\x00\x01\x00" and b"PNG" in body[:40]  # an ICO holding a PNG
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    assert '<link rel="icon" href="/favicon.ico"' in await page(client, "/sign-in")
    # The committed icon is what its generator makes.
    spec = importlib.util.spec_from_file_location("favicon", STATIC_DIR.parent / "web_assets" / "favicon.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.ico() == body


def test_every_state_has_words_for_staff() -> None:
    # A state added later (as the answers' were) must not reach staff pages as its code.
    missing = [state.value for state in State if state not in STATE_WORDS]
    assert missing == []
