"""Replies: more information from a referrer, threaded back onto their referral (issue 15).

When the duty team asks a referrer for more information (gateway.track.answers), the referral
waits. An email whose Subject or body carries that referral's reference, while it waits, from the
same referrer, is not a new referral: it is stored as an additional-information item on the
waiting one (sealed like content), the waiting referral's timeline says so, and its team's mailbox
is told (with no personal data). Its own row (made at intake, as for every message) ends in the
terminal state `reply`, never routed.

The same checks as for a new referral come first: the message has been opened (decrypted and
its signature judged by the partner directory and the policy: a quarantined message never gets
here). Then the sender must be the original referrer's address (the envelope sender its receipt
went to, or the address given on the form), or the message signed by a known partner of the
original referral's organisation. Anything else, or a reference that is not waiting, is processed
as a new referral, as before: in safeguarding a concern is never dropped on a guess.
"""

from __future__ import annotations

import base64
import email.errors
import email.header
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Settings
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.reference import is_valid_reference
from gateway.core.schema import events, messages, referrals
from gateway.core.sealed import EmailEnvelope, Sealed, WebEnvelope
from gateway.core.sealing import sealed_context
from gateway.outbox.compose import Composer
from gateway.pipeline.work import Reply, Work

STAGE = "reply"  # the handler's stage, as the report names it if it fails
# In a subject, as a person may retype it (any case, a space or no dash); in a body, only as our
# mails print it (7KM4-Q9XC): a body is long, and every eight-letter word would otherwise be a
# candidate to check. The check symbol weeds out the words that match by chance.
_IN_SUBJECT = re.compile(r"(?<![0-9A-Z])([2-9A-HJ-NP-Z]{4})[ -]?([2-9A-HJ-NP-Z]{4})(?![0-9A-Z])")
# A body is searched from each dash (a literal the regex engine finds fast), and the four symbols
# before it checked by hand: a pattern that begins with a look-behind tries every position of the text.
_DASH_THEN_FOUR = re.compile(r"-([2-9A-HJ-NP-Z]{4})(?![0-9A-Za-z])")
_FOUR = re.compile(r"[2-9A-HJ-NP-Z]{4}")
_SUBJECT = re.compile(rb"^Subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def additional_info_context(item_id: str) -> str:
    return sealed_context("additional_info", item_id)


def references_in_subject(subject: str) -> list[str]:
    """Every valid reference in a subject, in order, each once."""
    return _valid(f"{first}-{second}" for first, second in _IN_SUBJECT.findall(subject.upper()))


def references_in_body(text: str) -> list[str]:
    """Every valid reference printed as ours are (7KM4-Q9XC) in a body, in order, each once."""
    candidates = []
    for match in _DASH_THEN_FOUR.finditer(text):
        start = match.start()
        before = text[start - 4 : start] if start >= 4 else ""
        if _FOUR.fullmatch(before) and (start == 4 or not text[start - 5].isalnum()):
            candidates.append(f"{before}-{match.group(1)}")
    return _valid(candidates)


def _valid(candidates: Iterable[str]) -> list[str]:
    # The check symbol weeds out the words that match by chance.
    found: list[str] = []
    for candidate in candidates:
        if candidate not in found and is_valid_reference(candidate):
            found.append(candidate)
    return found


def subject_of(raw: bytes) -> str:
    """The outer Subject, read straight from the header block (a whole header parse of every
    incoming message cost more than parsing the referral)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = _SUBJECT.search(head)
    if match is None:
        return ""
    value = match.group(1).decode("ascii", "replace")
    value = re.sub(r"\r?\n[ \t]", " ", value)
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (UnicodeError, LookupError, email.errors.HeaderParseError):
        return value


class ThreadReply:
    """After opening (and the repeat check): is this a reply to a request for more information?"""

    name = STAGE

    def __init__(self, settings: Settings, db: Database, sealed: Sealed, composer: Composer) -> None:
        self._s = settings
        self._db = db
        self._sealed = sealed
        self._composer = composer

    async def __call__(self, work: Work) -> None:
        envelope, opened, security = work.envelope, work.opened, work.security
        assert isinstance(envelope, EmailEnvelope) and opened is not None and security is not None
        if work.outer is None or work.outer.automatic or not envelope.mail_from:
            return  # an out-of-office or a bounce is nobody's answer
        candidates = references_in_subject(subject_of(work.raw)) + references_in_body(opened.text)
        if not candidates:
            return
        async with self._db.read() as conn:
            for reference in dict.fromkeys(candidates):
                original = await self._waiting(conn, reference)
                if original is None or original.id == work.message.referral_id:
                    continue
                if await self._same_referrer(conn, original, envelope.mail_from, security.partner):
                    self._thread(work, original.id, original.reference, original.team_id)
                    return

    async def _waiting(self, conn: AsyncConnection, reference: str) -> _Original | None:
        row = (
            await conn.execute(
                select(
                    referrals.c.id,
                    referrals.c.reference,
                    referrals.c.team_id,
                    referrals.c.message_id,
                    referrals.c.content,
                ).where(referrals.c.reference == reference, referrals.c.state == State.ACKNOWLEDGED.value)
            )
        ).first()
        if row is None:
            return None
        marks = (
            await conn.execute(
                select(events.c.kind)
                .where(
                    events.c.referral_id == row.id,
                    events.c.kind.in_(("information_requested", "information_received")),
                )
                .order_by(events.c.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if marks != "information_requested":
            return None
        return _Original(row.id, row.reference, row.team_id, row.message_id, row.content)

    async def _same_referrer(
        self, conn: AsyncConnection, original: _Original, mail_from: str, partner: str | None
    ) -> bool:
        message = (
            await conn.execute(
                select(messages.c.channel, messages.c.envelope).where(messages.c.id == original.message_id)
            )
        ).one_or_none()
        if message is not None and message.envelope:
            first = self._sealed.envelope(original.message_id, message.channel, message.envelope)
            address = (
                first.mail_from
                if isinstance(first, EmailEnvelope)
                else first.referrer_email
                if isinstance(first, WebEnvelope)
                else None
            )
            if address and address.strip().lower() == mail_from.strip().lower():
                return True
        if partner is None or original.content is None:
            return False
        # Signed by a known partner: the same organisation as the original referral's.
        parsed = (
            await conn.execute(
                select(events.c.detail).where(events.c.referral_id == original.id, events.c.kind == "parsed").limit(1)
            )
        ).scalar_one_or_none()
        organisation = json.loads(parsed).get("partner") if parsed else None
        if not organisation:
            organisation = self._sealed.content(original.id, original.content).referral.referrer.organisation
        return bool(organisation) and str(organisation).strip().lower() == partner.strip().lower()

    def _thread(self, work: Work, original_id: str, reference: str, team_id: str | None) -> None:
        assert work.opened is not None
        item_id = uuid.uuid4().hex
        data = {
            "text": work.opened.text,
            "attachments": [a.filename for a in work.opened.attachments],
            # Kept whole, so nothing the referrer sent is lost (the page lists them by name).
            "files": [[a.filename, a.content_type, base64.b64encode(a.data).decode()] for a in work.opened.attachments],
        }
        blob = self._sealed.sealer.seal(json.dumps(data).encode(), additional_info_context(item_id))
        outgoing = []
        team = self._s.find_team(team_id or "")
        if team is not None:
            context = {"team": team, "referral_url": f"{self._s.http.public_url}/referrals/{original_id}"}
            outgoing.append(
                self._composer.answer_mail(
                    "info_received", "information_received", team.email, work.now, reference, context
                )
            )
        work.reply = Reply(original_id, reference, item_id, blob, tuple(outgoing))
        work.event("reply", {"to": reference, "original": original_id, "item": item_id})


@dataclass(frozen=True)
class _Original:
    id: str
    reference: str
    team_id: str | None
    message_id: str
    content: bytes | None
