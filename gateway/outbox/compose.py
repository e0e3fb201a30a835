"""Compose outbound email (alerts, receipts, notices) from templates/email/*.txt.

Unencrypted email carries no personal data (DESIGN.md, Security rules): these messages hold the
reference, urgency, team, times, the names of missing fields and a link, nothing about the child.
Each template's first line is `Subject: ...`, then a blank line, then the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from email.header import Header
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path

import jinja2

from gateway.config import Config, Settings
from gateway.config.duty import Team
from gateway.core.clock import uk_time
from gateway.core.model import Problem, Referral, Urgency
from gateway.open.mime import Attachment
from gateway.open.security import Security
from gateway.outbox.plaintext import plain_text
from gateway.outbox.tokens import AckSigner

_CRLF = compat32.clone(linesep="\r\n")  # signed and encrypted entities are made in canonical form


def _header(text: str) -> str:
    """RFC 2047-encode a header value only when it needs it (a council or team name in Welsh)."""
    return text if text.isascii() else Header(text, "utf-8").encode()


@dataclass(frozen=True)
class Outgoing:
    kind: str  # alert | reminder | receipt | ack_notice | notice | ack_told | quarantine | digest
    to: str  # an email address, or an E.164 number for SMS
    message: bytes  # the whole email; for SMS the UTF-8 text
    recipient_hash: str
    team_id: str | None = None
    channel: str = "email"


def email_environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty line in an alert
        keep_trailing_newline=True,
        autoescape=False,  # plain text mail  # noqa: S701
    )
    env.filters["uk_time"] = uk_time
    return env


@dataclass(frozen=True)
class AlertContent:
    """What an encrypted first alert carries."""

    referral: Referral
    attachments: tuple[Attachment, ...]


@dataclass(frozen=True)
class AlertFacts:
    referral_id: str
    reference: str
    team: Team
    route_name: str
    urgency: Urgency | None
    problems: tuple[Problem, ...]
    received_at: datetime
    due_at: datetime
    now: datetime
    security: Security | None = None  # how an email referral was sent; None for web and SMS
    step_notify: str = ""  # "managers, coordinators": why an escalation reached this recipient


Context = Mapping[str, object]  # a template's values


@dataclass(frozen=True)
class QuarantineFacts:
    """What the triage team is told of a quarantined referral (no personal data)."""

    referral_id: str
    reference: str
    received_at: datetime
    stage: str
    reason: str
    sender_told: bool
    why_not: str = ""  # when the sender was not told: why (a null sender, automatic mail, ...)


def triage_team(settings: Settings) -> Team:
    """The team of the default route (config requires one, last): where anything that fits no
    other route goes, and so who looks at what could not be read at all."""
    default = next((r for r in settings.routes if r.default), settings.routes[-1])
    return settings.team(default.team)


class Composer:
    def __init__(self, config: Config, signer: AckSigner, env: jinja2.Environment) -> None:
        self._config = config
        self._s = config.settings
        self._signer = signer
        self._env = env
        self._domain = self._s.mail.from_address.split("@", 1)[1]

    def _render(self, template: str, context: Context) -> tuple[str, str]:
        text = self._env.get_template(template).render(
            council=self._s.gateway.council, duty_phone=self._s.gateway.duty_phone, **context
        )
        first, _, body = text.partition("\n")
        if not first.startswith("Subject: "):
            raise ValueError(f"{template}: the first line must be 'Subject: ...'")
        return first.removeprefix("Subject: ").strip(), body.lstrip("\n")

    def _header_items(
        self, to: str, subject: str, now: datetime, reference: str, in_reply_to: str | None, reply_to: str = ""
    ) -> list[tuple[str, str]]:
        items = [
            ("From", formataddr((f"{self._s.gateway.council} referrals", self._s.mail.from_address), "utf-8")),
            ("To", to),
            ("Subject", _header(subject)),
            ("Date", format_datetime(now)),
            ("Message-ID", make_msgid("rg", domain=self._domain)),
            ("Auto-Submitted", "auto-generated"),  # RFC 3834: stops auto-replies looping back
            ("X-Referral-Reference", reference),
        ]
        if in_reply_to:
            items += [("In-Reply-To", in_reply_to), ("References", in_reply_to)]
        if reply_to:  # a message whose reply we read (a request for more information)
            items.append(("Reply-To", reply_to))
        return items

    def _headers(
        self,
        msg: Message,
        to: str,
        subject: str,
        now: datetime,
        reference: str,
        in_reply_to: str | None,
        reply_to: str = "",
    ) -> None:
        for name, value in self._header_items(to, subject, now, reference, in_reply_to, reply_to):
            msg[name] = value

    def _build(
        self,
        kind: str,
        template: str,
        to: str,
        now: datetime,
        reference: str,
        context: Context,
        in_reply_to: str | None = None,
        team_id: str | None = None,
        reply_to: str = "",
    ) -> Outgoing:
        subject, body = self._render(template, {"now": now, "reference": reference, **context})
        headers = self._header_items(to, subject, now, reference, in_reply_to, reply_to)
        # Written directly (gateway.outbox.plaintext), the same bytes as the MIMEText below: the
        # email package's generator was most of the cost of composing a referral's emails.
        raw = plain_text(headers, body)
        if raw is None:
            # compat32 MIMEText, not EmailMessage: the modern policy re-parses every header we
            # set, which was half of the processing stage's time, and these headers are all ours.
            msg = MIMEText(body, "plain", "utf-8")
            for name, value in headers:
                msg[name] = value
            raw = msg.as_bytes()
        return Outgoing(kind, to, raw, self._signer.recipient_hash(to), team_id)

    def _ack_link(self, referral_id: str, to: str, now: datetime) -> dict[str, object]:
        """The acknowledgement link for one referral and one recipient, and when it stops working."""
        token = self._signer.sign(referral_id, to, now, self._s.ack.link_ttl)
        return {
            "ack_url": f"{self._s.http.public_url}/ack/{token}",
            "link_expires": now + self._s.ack.link_ttl,
            "link_for": to,
        }

    def secure_alert_parts(self, to: str, facts: AlertFacts, content: AlertContent) -> tuple[bytes, bytes]:
        """(outer headers, inner MIME entity) of an alert WITH the referral's content, for a
        recipient with a key: the caller encrypts the entity to that key and joins the two."""
        attachments = content.attachments
        values = {
            "referral": content.referral,
            "route_name": facts.route_name,
            "received_at": facts.received_at,
            "due_at": facts.due_at,
            "security": facts.security,
            **self._ack_link(facts.referral_id, to, facts.now),
            "now": facts.now,
            "reference": facts.reference,
            "team": facts.team,
            "attachments": [(a.filename, a.content_type, len(a.data)) for a in attachments],
        }
        subject, body = self._render("email/alert_secure.txt", values)
        inner = MIMEMultipart("mixed")
        inner.attach(MIMEText(body, "plain", "utf-8"))
        for item in attachments:
            maintype, _, subtype = item.content_type.partition("/")
            part = MIMEApplication(item.data, _subtype=subtype or "octet-stream")
            if maintype != "application":
                part.replace_header("Content-Type", f"{item.content_type}")
            part.add_header("Content-Disposition", "attachment", filename=item.filename)
            inner.attach(part)
        outer = Message()
        self._headers(outer, to, subject, facts.now, facts.reference, None)
        outer["MIME-Version"] = "1.0"
        head = outer.as_bytes(policy=_CRLF).split(b"\r\n\r\n", 1)[0] + b"\r\n"
        return head, inner.as_bytes(policy=_CRLF)

    def alert(self, kind: str, to: str, facts: AlertFacts) -> Outgoing:
        """An alert (or reminder) by email with no personal data: reference, urgency, team, times,
        the names of missing fields and a link bound to this recipient."""
        context = {
            "team": facts.team,
            "route_name": facts.route_name,
            "urgency": facts.urgency,
            "problems": facts.problems,
            "received_at": facts.received_at,
            "due_at": facts.due_at,
            **self._ack_link(facts.referral_id, to, facts.now),
            "security": facts.security,
            "step_notify": facts.step_notify,
        }
        return self._build(kind, f"email/{kind}.txt", to, facts.now, facts.reference, context, team_id=facts.team.id)

    def alert_sms(self, kind: str, to: str, facts: AlertFacts) -> Outgoing:
        context = {"reference": facts.reference, "urgency": facts.urgency, "team": facts.team}
        return self.sms(kind, "alert", to=to, referral_id=facts.referral_id, now=facts.now, context=context)

    def receipt(
        self,
        *,
        reference: str,
        to: str,
        received_at: datetime,
        now: datetime,
        in_reply_to: str | None,
        repeat_of: tuple[str, datetime] | None = None,
    ) -> Outgoing:
        """`repeat_of`: the earlier referral's reference and when it came, for a message holding
        content received before (gateway.pipeline.repeats): the sender is told which reference is
        being dealt with, and that no second referral was made. References and times only."""
        context: dict[str, object] = {"received_at": received_at, "repeat_of": None, "first_received": None}
        if repeat_of is not None:
            context |= {"repeat_of": repeat_of[0], "first_received": repeat_of[1]}
        return self._build("receipt", "email/receipt.txt", to, now, reference, context, in_reply_to)

    def quarantine_notice(
        self,
        *,
        reference: str,
        to: str,
        reason: str,
        received_at: datetime,
        now: datetime,
        in_reply_to: str | None,
        fault: bool = False,
    ) -> Outgoing:
        """To the sender: held, not passed on, what to do. `fault`: the gateway failed, not the
        message (a crash after its retries), so they are not told to send it again differently."""
        context = {"reason": reason, "received_at": received_at, "fault": fault}
        return self._build("notice", "email/quarantine_notice.txt", to, now, reference, context, in_reply_to)

    def quarantine_alert(self, *, quarantine: QuarantineFacts, now: datetime) -> Outgoing:
        """To the triage team's mailbox: a referral is held and nobody is acting on it. No
        personal data: the reference, the stage and reason, whether the sender was told, links."""
        q, url = quarantine, self._s.http.public_url
        team = triage_team(self._s)
        context = {
            "received_at": q.received_at,
            "stage": q.stage,
            "reason": q.reason,
            "sender_told": q.sender_told,
            "why_not": q.why_not,
            "referral_url": f"{url}/referrals/{q.referral_id}",
            "report_url": f"{url}/report?state=quarantined",
        }
        return self._build(
            "quarantine", "email/quarantine_alert.txt", team.email, now, q.reference, context, team_id=team.id
        )

    def concern_alert(
        self, *, to: str, team: Team, referral_id: str, reference: str, detail: Context, now: datetime
    ) -> Outgoing:
        """To a manager or coordinator: referrals about one child, none urgent alone, add up to a
        cumulative concern (gateway.history.concern). References and counts only, never content."""
        url = self._s.http.public_url
        context = {
            "team": team,
            "count": detail["referrals"],
            "organisations": detail["organisations"],
            "window": detail["window"],
            "linked": detail["linked"],
            "referral_url": f"{url}/referrals/{referral_id}",
        }
        return self._build("concern", "email/concern_alert.txt", to, now, reference, context, team_id=team.id)

    def referrer_notice(
        self, kind: str, channel: str, to: str, now: datetime, reference: str, context: Context, reply_to: str = ""
    ) -> Outgoing:
        """A notice to the referrer (ack_notice, outcome_notice) on the channel their referral came
        by: templates/email/<kind>.txt, or templates/sms/<kind>.txt for an SMS referral."""
        if channel == "sms":
            return self.sms(kind, kind, to=to, referral_id=None, now=now, context={"reference": reference, **context})
        return self._build(kind, f"email/{kind}.txt", to, now, reference, context, reply_to=reply_to)

    def answer_mail(
        self, kind: str, template: str, to: str, now: datetime, reference: str, context: Context
    ) -> Outgoing:
        """An email about a structured answer (gateway.track.answers: a forward's notice, a team
        told of more information) with no personal data, from templates/email/<template>.txt."""
        return self._build(kind, f"email/{template}.txt", to, now, reference, context)

    def answer_secure_parts(
        self, template: str, to: str, now: datetime, reference: str, context: Context, reply_to: str = ""
    ) -> tuple[bytes, bytes]:
        """(outer headers, inner entity) of an answer message that holds personal data (a forward's
        content, a request's reason): the caller encrypts the entity or does not send it."""
        subject, body = self._render(f"email/{template}.txt", {"now": now, "reference": reference, **context})
        outer = Message()
        self._headers(outer, to, subject, now, reference, None, reply_to)
        outer["MIME-Version"] = "1.0"
        head = outer.as_bytes(policy=_CRLF).split(b"\r\n\r\n", 1)[0] + b"\r\n"
        return head, MIMEText(body, "plain", "utf-8").as_bytes(policy=_CRLF)

    def acknowledged_by(self, *, reference: str, to: str, team: Team, by: str, at: datetime, now: datetime) -> Outgoing:
        """To everyone already alerted: somebody has it, stand down."""
        context = {"team": team, "by": by, "at": at}
        return self._build("ack_told", "email/acknowledged_by.txt", to, now, reference, context, team_id=team.id)

    def digest(self, *, to: str, day: date, now: datetime, context: Context) -> Outgoing:
        """The daily digest to one coordinator: references and counts only, never personal data
        (it goes in clear to a coordinator without a key). Its reference header names the day, so
        a receiver can tell a resend (at-least-once delivery) from the next day's."""
        return self._build("digest", "email/digest.txt", to, now, f"digest-{day.isoformat()}", context)

    def sms(
        self, kind: str, template: str, *, to: str, referral_id: str | None, now: datetime, context: Context
    ) -> Outgoing:
        """An SMS from templates/sms/<template>.txt: reference, urgency, team and a link, never content."""
        extra = self._ack_link(referral_id, to, now) if referral_id else {}
        text = self._env.get_template(f"sms/{template}.txt").render(
            council=self._s.gateway.council,
            duty_phone=self._s.gateway.duty_phone,
            kind=kind,
            now=now,
            **context,
            **extra,
        )
        team = context.get("team")
        return Outgoing(
            kind,
            to,
            " ".join(text.split()).encode(),
            self._signer.recipient_hash(to),
            team.id if isinstance(team, Team) else None,
            "sms",
        )
