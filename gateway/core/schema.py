"""The tables. Portable SQLAlchemy Core: the same schema on SQLite and PostgreSQL.

Columns that could hold personal data are sealed blobs (see gateway.core.sealing); everything in clear
is an id, a reference, a state, a time or a team. Times are stored in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use the injected clock")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        when: datetime = value
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per message accepted by any channel: the raw bytes, sealed, and the processing queue.
messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("dedupe_key", String(64), nullable=False, unique=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("size", Integer, nullable=False),
    Column("envelope", LargeBinary, nullable=False),  # sealed JSON: mail_from, rcpt_tos, peer; b"" once purged
    Column("raw", LargeBinary, nullable=False),  # sealed raw bytes exactly as received; b"" once purged
    Column("processed_at", UTCDateTime),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", UTCDateTime),
    Column("last_error", String(200)),
    Index("ix_messages_queue", "processed_at", "next_attempt_at"),
)

referrals = Table(
    "referrals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("message_id", String(32), ForeignKey("messages.id"), nullable=False, unique=True),
    Column("reference", String(9), nullable=False, unique=True),
    Column("channel", String(16), nullable=False),
    Column("state", String(20), nullable=False),  # cache of the state derived from events
    Column("received_at", UTCDateTime, nullable=False),
    Column("team_id", String(64)),
    Column("route_name", String(200)),
    Column("urgency", String(16)),
    Column("incomplete", Boolean, nullable=False, default=False),
    Column("due_at", UTCDateTime),
    Column("acknowledged_at", UTCDateTime),
    Column("acknowledged_by", String(200)),
    Column("content", LargeBinary),  # sealed JSON of gateway.core.model.Referral; None once purged
    Column("legal_hold", Boolean, nullable=False, default=False, server_default=false()),  # never purged
    Column("purged_at", UTCDateTime),  # when retention removed its content (metadata and events stay)
    Index("ix_referrals_state", "state"),
)

# Append-only, hash-chained: each row's hash covers the previous row's hash and its own fields.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # None for a staff event (sign-in, factor change, session end): one chain holds both kinds.
    Column("referral_id", String(32), ForeignKey("referrals.id")),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", Text, nullable=False),  # JSON; never personal data
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_events_referral_id", "referral_id"),
)

# A single row holding the chain's head; updating it serialises writers of events on PostgreSQL
# (row lock) as BEGIN IMMEDIATE does on SQLite, so the chain never forks.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("count", Integer, nullable=False),
)

# deliveries.kind values that alert a duty worker (the first alert, and reminders at later steps).
ALERT_KINDS = ("alert", "reminder")

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("referral_id", String(32), ForeignKey("referrals.id")),  # None: not about one referral (digest)
    Column("kind", String(16), nullable=False),  # alert | receipt | ack_notice | reminder
    Column("channel", String(16), nullable=False),  # email (sms, webhook later)
    Column("team_id", String(64)),
    Column("recipient_hash", String(64), nullable=False),  # binds ack links to this recipient
    Column("payload", LargeBinary),  # sealed: recipient and the message bytes; None once purged
    Column("state", String(16), nullable=False),  # pending | sent | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", UTCDateTime),
    Column("last_error", String(200)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    # SMS: the provider's message SID and its latest status (queued, sent, delivered, undelivered,
    # failed), from status callbacks or, when none came in time, a fetch by SID.
    Column("provider_id", String(64)),
    Column("provider_status", String(32)),
    Index("ix_deliveries_queue", "state", "next_attempt_at"),
    Index("ix_deliveries_provider_id", "provider_id"),
    Index("ix_deliveries_referral_id", "referral_id"),
)

# Every Twilio webhook that is not a referral (an ACK, HELP, STOP, a status callback), stored
# before it is answered; Twilio's retries hit the unique key and make no twin.
sms_webhooks = Table(
    "sms_webhooks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # inbound | status
    Column("message_sid", String(64), nullable=False),
    Column("status", String(32), nullable=False),  # the MessageStatus of a callback; "" for inbound
    Column("sender_hash", String(64), nullable=False),  # keyed hash of the number, for rate limits
    Column("payload", LargeBinary),  # sealed: the form as posted; None once purged
    Column("outcome", String(200), nullable=False),  # what was done, with no personal data
    Column("reply", LargeBinary),  # sealed: the reply given, so a retry gets the same answer
    Column("received_at", UTCDateTime, nullable=False),
    UniqueConstraint("kind", "message_sid", "status", name="uq_sms_webhooks_sid"),
    Index("ix_sms_webhooks_sender", "sender_hash", "received_at"),
)

deadlines = Table(
    "deadlines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("referral_id", String(32), ForeignKey("referrals.id"), nullable=False),
    # ack: the acknowledgement deadline (overdue when missed); step: an escalation step falls due;
    # handover: the office closes and the referral goes to the out-of-hours team (gateway.route.handover)
    Column("kind", String(16), nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("fired_at", UTCDateTime),
    Column("cancelled_at", UTCDateTime),
    Column("chain", String(64)),  # step rows: the escalation chain's id, its step (0-based) and
    Column("step", Integer),  # how many times that step has been sent before (repeats)
    Column("round", Integer),
    Column("detail", Text),  # JSON, once fired: whom it alerted on which channels, or why it skipped
    Index("ix_deadlines_open", "fired_at", "cancelled_at", "due_at"),
)

# Staff who sign in to the web dashboard (gateway.staff.users). Usernames are staff identifiers, stored
# lower-case (gateway.staff.users.normalise_username makes the unique key case-blind); logs name a user
# by id only. password_hash is argon2id's encoded string (salt and parameters inside).
# session_epoch is copied into each signed-in session (staff_sessions.epoch): bumping it (disable, a
# password or factor reset) ends every session of that user at once.
users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False),
    Column("role", String(16), nullable=False),  # duty | coordinator | admin
    Column("teams", Text, nullable=False),  # JSON list of team ids (duty workers); "[]" otherwise
    Column("password_hash", String(255), nullable=False),
    Column("failed_attempts", Integer, nullable=False, default=0),  # since the last success or lock
    Column("locked_until", UTCDateTime),
    Column("disabled_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("password_changed_at", UTCDateTime, nullable=False),
    Column("last_sign_in_at", UTCDateTime),
    Column("session_epoch", Integer, nullable=False, default=0),
)

# A coordinator's recorded decision on an item of the report (gateway.report.decisions): who, when, what.
# item_key names the item ("referral:<id>" or "sms:<message sid>" for a text held over its rate
# limit, which has no referral). `what` is a code from gateway.report.decisions.WHAT; the free-text note
# may hold personal data, so it is sealed (context "decision_note:<id>").
decisions = Table(
    "decisions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("item_key", String(80), nullable=False),
    Column("referral_id", String(32), ForeignKey("referrals.id")),  # None for a held text
    Column("decided_by", String(32), ForeignKey("users.id"), nullable=False),
    Column("decided_at", UTCDateTime, nullable=False),
    Column("what", String(32), nullable=False),
    Column("note", LargeBinary),  # sealed UTF-8 text; None when no note was given
    Index("ix_decisions_item_key", "item_key"),
)

# Staff sign-in's second factor (gateway.staff.factors): one TOTP authenticator per user. The secret is
# sealed (context "totp:<user id>"); a row is written only once the user typed a code from it (until
# then the new secret waits in their encrypted session cookie); last_step is the RFC 6238 time-step
# of the last code accepted, so no code is accepted twice; codes_saved_at is when the user said they
# had saved their recovery codes (enrolment ends there).
staff_factors = Table(
    "staff_factors",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id"), primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_step", Integer, nullable=False, default=0),
    Column("codes_saved_at", UTCDateTime),
)

# One-time recovery codes: argon2id hashes, each usable once (used_at set when it is).
recovery_codes = Table(
    "recovery_codes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False),
    Column("code_hash", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime),
    Index("ix_recovery_codes_user_id", "user_id"),
)

# Signed-in staff sessions (gateway.staff.sessions); the cookie holds a random token whose SHA-256 is
# the id here, so a copy of this table signs no one in. A session is live while ended_at is None, its
# epoch equals its user's session_epoch, and it is within the idle and absolute limits. `browser` is a
# short summary of the User-Agent ("Firefox on Windows"); no address is kept.
staff_sessions = Table(
    "staff_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("signed_in_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("reauth_at", UTCDateTime),  # the last time password and code were typed again
    Column("browser", String(80), nullable=False),
    Column("ended_at", UTCDateTime),
    Column("ended_why", String(16)),  # signed_out | elsewhere | admin | idle | absolute | replaced
    Index("ix_staff_sessions_user_id", "user_id"),
)

# Failed sign-ins by client address, for the per-address throttle (gateway.staff.throttle). `client` is
# a keyed hash of the address (keys/throttle.key), not the address: the table holds no personal data.
sign_in_failures = Table(
    "sign_in_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_sign_in_failures_client_at", "client", "at"),
)

# The public form's flood guard (issue 13): POSTs counted per client address and fixed window, in
# the database so that every instance behind a balancer counts against the same limit. The address
# is only a keyed hash, as in sign_in_failures; rows of past windows are deleted as new ones come.
form_attempts = Table(
    "form_attempts",
    metadata,
    Column("client", String(64), primary_key=True),
    Column("window_start", UTCDateTime, primary_key=True),
    Column("attempts", Integer, nullable=False),
    Index("ix_form_attempts_window_start", "window_start"),
)

# The daily digest to coordinators (issue 12): one row per Europe/London day, inserted by whichever
# instance makes that day's digest, in the transaction that queues its deliveries, so it is made
# exactly once a day across restarts and instances (the primary key refuses a second).
digests = Table(
    "digests",
    metadata,
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, the London date
    Column("due_at", UTCDateTime, nullable=False),
    Column("made_at", UTCDateTime, nullable=False),
    Column("made_by", String(64), nullable=False),  # the instance
    Column("recipients", Integer, nullable=False),
)

# Partner-signed content already made into a referral (issue 14): an HMAC-SHA256 of the signer and
# the exact bytes they signed (gateway.pipeline.repeats), never the content itself. The primary key
# is what makes a replay under a new Message-ID a repeat: two instances processing the same content
# at once both insert, and exactly one row (one original referral) results.
signed_content = Table(
    "signed_content",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("referral_id", String(32), ForeignKey("referrals.id"), nullable=False),
    Column("first_seen", UTCDateTime, nullable=False),
)

# Linked history (issue 15): keyed hashes of what identifies a child (gateway.history.keys), one row
# per kind a referral's content gives, written in the transaction that seals its content and deleted
# when retention purges it. The primary key's first two columns are the look-up index. `organisation`
# is a keyed hash too (counted for a cumulative concern, never shown); `key_id` names the index key the
# digest was made with, so that rows made with a replaced key are found and rebuilt.
child_index = Table(
    "child_index",
    metadata,
    Column("kind", String(16), primary_key=True),  # nhs | name_dob | dob_postcode
    Column("digest", String(64), primary_key=True),
    Column("referral_id", String(32), ForeignKey("referrals.id"), primary_key=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("organisation", String(64)),
    Column("key_id", String(16), nullable=False),
    Index("ix_child_index_referral_id", "referral_id"),
    # The latest referrals about a child, newest first (the cumulative-concern check's bounded read).
    Index("ix_child_index_recent", "kind", "digest", "received_at"),
)

# Which index keys `referral-gateway reindex` has built the index for: with a row for the current
# key every referral stored before it is in the index (later ones are indexed as they are written);
# without one the referral page falls back to opening every older referral (gateway.history.index).
child_index_builds = Table(
    "child_index_builds",
    metadata,
    Column("key_id", String(16), primary_key=True),
    Column("built_at", UTCDateTime, nullable=False),
    Column("referrals", Integer, nullable=False),
)

# A duty worker's structured answer to a referral (issue 15, gateway.track.answers): "not ours"
# (another team, or a neighbouring authority), "more information needed", or "duplicate of". The
# reason is free text and may hold personal data, so it is sealed (context "answer_reason:<id>").
# `target`: the team id, the neighbour's name, or the other referral's id; `delivery_id`: the
# forward to a neighbour, whose delivery ends our responsibility.
answers = Table(
    "answers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("referral_id", String(32), ForeignKey("referrals.id"), nullable=False),
    Column("kind", String(24), nullable=False),  # not_ours_team | not_ours_authority | more_info | duplicate
    Column("answered_by", String(32), ForeignKey("users.id"), nullable=False),
    Column("answered_at", UTCDateTime, nullable=False),
    Column("target", String(200)),
    Column("delivery_id", String(32)),
    Column("reason", LargeBinary),  # sealed UTF-8 text; None once purged
    Index("ix_answers_referral_id", "referral_id"),
)

# What a referrer sent back when asked for more information (a reply quoting the reference, threaded
# onto the referral by gateway.pipeline.replies): the text and attachments as read, sealed like
# content (context "additional_info:<id>"). `message_id` is the reply's own stored message.
additional_info = Table(
    "additional_info",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("referral_id", String(32), ForeignKey("referrals.id"), nullable=False),
    Column("message_id", String(32), ForeignKey("messages.id"), nullable=False, unique=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("content", LargeBinary),  # sealed JSON {text, attachments: [[filename, type, base64]]}; None once purged
    Index("ix_additional_info_referral_id", "referral_id"),
)
