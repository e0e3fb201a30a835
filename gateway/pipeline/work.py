"""What moves through a pipeline: the claimed message, the work its handlers build up, and the
prepared referral the driver writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.core import audit
from gateway.core.model import Referral
from gateway.core.sealed import EmailEnvelope, Envelope
from gateway.open.mime import Attachment, Opened, Outer
from gateway.open.security import Security
from gateway.outbox.compose import Outgoing
from gateway.route.escalate import NextStep


@dataclass(frozen=True)
class Claimed:
    """A stored message this worker holds the lease on, and its referral."""

    message_id: str
    attempts: int
    channel: str
    referral_id: str
    reference: str
    received_at: datetime


@dataclass(frozen=True)
class Loaded:
    """A claimed message with its sealed raw bytes and envelope, as read from the store."""

    message: Claimed
    raw: bytes
    envelope: bytes


@dataclass(frozen=True)
class Routed:
    """The referral's columns once routed: its sealed content, the team, the deadline."""

    content: bytes
    team_id: str
    route_name: str
    urgency: str | None
    incomplete: bool
    due_at: datetime

    def columns(self) -> dict[str, object]:
        return {
            "content": self.content,
            "team_id": self.team_id,
            "route_name": self.route_name,
            "urgency": self.urgency,
            "incomplete": self.incomplete,
            "due_at": self.due_at,
        }


@dataclass(frozen=True)
class Original:
    """The earlier referral a repeat's signed content made (gateway.pipeline.repeats)."""

    referral_id: str
    reference: str
    received_at: datetime


@dataclass(frozen=True)
class Reply:
    """A referrer's reply threaded onto the referral waiting for it (gateway.pipeline.replies):
    the additional-information item (sealed) and the team's notice, written with the batch."""

    referral_id: str
    reference: str
    item_id: str
    content: bytes  # sealed JSON, context "additional_info:<item_id>"
    outgoing: tuple[Outgoing, ...]


@dataclass(frozen=True)
class Prepared:
    """Everything one message's processing writes, in the batch's one transaction: a routed
    referral, or (`repeat_of` set, `routed` None) a repeat of an earlier one."""

    message: Claimed
    routed: Routed | None
    events: tuple[audit.Event, ...]
    outgoing: tuple[Outgoing, ...]
    next_step: NextStep | None
    digest: str | None = None  # of the partner-signed content, when there was any
    repeat_of: Original | None = None
    child_digests: tuple[tuple[str, str], ...] = ()  # (kind, keyed hash): gateway.history.keys
    organisation: str | None = None  # the referrer's, as the gateway knows it (gateway.history.concern)
    reply: Reply | None = None


@dataclass
class Work:
    """One message on its way through its channel's pipeline: each handler reads what the ones
    before it left and adds its part. In memory only; nothing is written until all have run."""

    loaded: Loaded
    now: datetime
    actor: str  # who the events are by: this worker
    stage: str = "open"  # the handler running now: the stage reported if it fails
    raw: bytes = b""
    envelope: Envelope | None = None
    outer: Outer | None = None  # email: the outer message's own headers
    opened: Opened | None = None
    security: Security | None = None  # email: how it was sent
    referral: Referral | None = None
    organisation: str | None = None  # the verified partner's name, else the one the referrer gave
    sender_name: str | None = None  # SMS: the registered professional the number belongs to
    source: str = ""  # where the referral was read from ("body", "referral.json", "web form", "sms")
    attachments: tuple[Attachment, ...] = ()
    routed: Routed | None = None
    next_step: NextStep | None = None
    digest: str | None = None  # the signed content's (gateway.pipeline.repeats)
    repeat_of: Original | None = None  # set: a repeat, which is neither parsed nor routed
    child_digests: tuple[tuple[str, str], ...] = ()  # set by IndexChild, written with the content
    reply: Reply | None = None  # set: a reply threaded onto a waiting referral, neither parsed nor routed
    events: list[audit.Event] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)

    @property
    def message(self) -> Claimed:
        return self.loaded.message

    def event(self, kind: str, detail: dict[str, object]) -> None:
        self.events.append(audit.Event(self.message.referral_id, self.now, self.actor, kind, detail))

    def prepared(self) -> Prepared:
        if self.routed is None and self.repeat_of is None and self.reply is None:
            raise RuntimeError("the pipeline ended without routing the referral")
        return Prepared(
            self.message,
            self.routed,
            tuple(self.events),
            tuple(self.outgoing),
            self.next_step,
            self.digest,
            self.repeat_of,
            self.child_digests,
            self.known_organisation(),
            self.reply,
        )

    def known_organisation(self) -> str | None:
        """The verified partner or the organisation given, else an email sender's mail domain."""
        if self.organisation:
            return self.organisation
        if isinstance(self.envelope, EmailEnvelope) and self.envelope.mail_from and "@" in self.envelope.mail_from:
            return self.envelope.mail_from.rsplit("@", 1)[1].lower()
        return None
