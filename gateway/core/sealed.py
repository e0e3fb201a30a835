"""Sealed columns: what each one holds, as a typed record, and the one way to write and read it.

Every column that could hold personal data is sealed (gateway.core.sealing) and bound to its row and
purpose, so a blob copied into another row does not open. Stages ask `Sealed` for the record they
need (an envelope, a referral's content, a delivery's payload) instead of opening blobs and parsing
JSON themselves; the JSON shapes here are the stored format, kept as they were written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from gateway.core.model import Referral
from gateway.core.sealing import Sealer, sealed_context

# The key to encrypt replies to a referrer with: ("openpgp", fingerprint) or ("smime", certificate
# path). Stored with the referral's content: it names a key, never a person.
ReplyKey = tuple[Literal["openpgp", "smime"], str]


@dataclass(frozen=True)
class EmailEnvelope:
    mail_from: str  # SMTP MAIL FROM; "" for a null sender (a bounce)
    rcpt_tos: tuple[str, ...]
    peer: str
    helo: str

    def to_json(self) -> dict[str, object]:
        return {"mail_from": self.mail_from, "rcpt_tos": list(self.rcpt_tos), "peer": self.peer, "helo": self.helo}


@dataclass(frozen=True)
class WebEnvelope:
    referrer_email: str | None  # where the receipt goes, if the referrer gave an address
    peer: str

    def to_json(self) -> dict[str, object]:
        return {"referrer_email": self.referrer_email, "peer": self.peer}


@dataclass(frozen=True)
class RoutedAtIntake:
    """The routing decision an SMS reply already told the sender (the team it went to), so that
    processing sends the referral where the sender was told, not where a second look might."""

    route: str
    team: str
    in_hours: bool
    hours: str


@dataclass(frozen=True)
class SmsEnvelope:
    sender: str  # E.164; stored as "from"
    to: str
    message_sid: str
    rate_limited: bool
    routed: RoutedAtIntake | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "from": self.sender,
            "to": self.to,
            "message_sid": self.message_sid,
            "rate_limited": self.rate_limited,
        }
        if self.routed is not None:
            r = self.routed
            out["routed"] = {"route": r.route, "team": r.team, "in_hours": r.in_hours, "hours": r.hours}
        return out


Envelope = EmailEnvelope | WebEnvelope | SmsEnvelope


def _routed(data: dict[str, object]) -> RoutedAtIntake:
    return RoutedAtIntake(
        str(data.get("route")), str(data.get("team")), bool(data.get("in_hours")), str(data.get("hours"))
    )


def envelope_from_json(channel: str, data: dict[str, object]) -> Envelope:
    """An envelope as stored for its channel (json.loads gives plain values; absent keys default)."""
    if channel == "web":
        email = data.get("referrer_email")
        return WebEnvelope(str(email) if email else None, str(data.get("peer") or ""))
    if channel == "sms":
        routed = data.get("routed")
        return SmsEnvelope(
            str(data.get("from") or ""),
            str(data.get("to") or ""),
            str(data.get("message_sid") or ""),
            bool(data.get("rate_limited")),
            _routed(routed) if isinstance(routed, dict) else None,
        )
    rcpts = data.get("rcpt_tos")
    return EmailEnvelope(
        str(data.get("mail_from") or ""),
        tuple(str(r) for r in rcpts) if isinstance(rcpts, list) else (),
        str(data.get("peer") or ""),
        str(data.get("helo") or ""),
    )


@dataclass(frozen=True)
class Content:
    """A referral's content as processing read it, and the key replies to its referrer go under."""

    referral: Referral
    reply_key: ReplyKey | None = None


@dataclass(frozen=True)
class Payload:
    """An outbound message: its recipient (an address or an E.164 number) and its bytes."""

    to: str
    message: bytes


class Sealed:
    """Typed access to every sealed column, through one Sealer."""

    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer

    def _json(self, blob: bytes, kind: str, row_id: str) -> dict[str, object]:
        data = json.loads(self.sealer.open(blob, sealed_context(kind, row_id)))
        if not isinstance(data, dict):
            raise ValueError(f"sealed {kind} of {row_id} is not a JSON object")
        return data

    def _seal_json(self, data: object, kind: str, row_id: str) -> bytes:
        return self.sealer.seal(json.dumps(data).encode(), sealed_context(kind, row_id))

    # messages.raw and messages.envelope

    def seal_raw(self, message_id: str, raw: bytes) -> bytes:
        return self.sealer.seal(raw, sealed_context("raw", message_id))

    def raw(self, message_id: str, blob: bytes) -> bytes:
        return self.sealer.open(blob, sealed_context("raw", message_id))

    def seal_envelope(self, message_id: str, envelope: Envelope) -> bytes:
        return self._seal_json(envelope.to_json(), "envelope", message_id)

    def envelope(self, message_id: str, channel: str, blob: bytes) -> Envelope:
        return envelope_from_json(channel, self._json(blob, "envelope", message_id))

    # referrals.content

    def seal_content(self, referral_id: str, content: Content) -> bytes:
        data = content.referral.to_json() | {"reply_key": list(content.reply_key) if content.reply_key else None}
        return self._seal_json(data, "content", referral_id)

    def content(self, referral_id: str, blob: bytes) -> Content:
        data = self._json(blob, "content", referral_id)
        key = data.pop("reply_key", None)
        reply_key: ReplyKey | None = None
        if isinstance(key, list) and len(key) == 2 and key[0] in ("openpgp", "smime"):
            reply_key = ("openpgp" if key[0] == "openpgp" else "smime", str(key[1]))
        return Content(Referral.from_json(data), reply_key)

    # deliveries.payload

    def seal_payload(self, delivery_id: str, payload: Payload) -> bytes:
        return self._seal_json({"to": payload.to, "message": payload.message.decode("utf-8")}, "delivery", delivery_id)

    def payload(self, delivery_id: str, blob: bytes) -> Payload:
        data = self._json(blob, "delivery", delivery_id)
        return Payload(str(data["to"]), str(data["message"]).encode("utf-8"))

    # decisions.note

    def seal_note(self, decision_id: str, note: str) -> bytes:
        return self.sealer.seal(note.encode(), sealed_context("decision_note", decision_id))

    def note(self, decision_id: str, blob: bytes) -> str:
        return self.sealer.open(blob, sealed_context("decision_note", decision_id)).decode()

    # sms_webhooks.payload and .reply: bound to the webhook's kind, MessageSid and status

    def seal_webhook(self, kind: str, sid: str, status: str, params: list[tuple[str, str]]) -> bytes:
        return self.sealer.seal(json.dumps(params).encode(), f"sms:{kind}:{sid}:{status}")

    def webhook(self, kind: str, sid: str, status: str, blob: bytes) -> list[tuple[str, str]]:
        data = json.loads(self.sealer.open(blob, f"sms:{kind}:{sid}:{status}"))
        return [(str(key), str(value)) for key, value in data]

    def seal_reply(self, kind: str, sid: str, reply: str) -> bytes:
        return self.sealer.seal(reply.encode(), f"sms:{kind}:{sid}:reply")

    def reply(self, kind: str, sid: str, blob: bytes) -> str:
        return self.sealer.open(blob, f"sms:{kind}:{sid}:reply").decode()
