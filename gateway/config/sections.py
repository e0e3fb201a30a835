"""The config's sections other than who is on duty (gateway.config.duty): where things are, the
listeners, mail and SMS, the workers, deadlines, links, the partner directory, security, keys and
backups."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, BeforeValidator, Field, field_validator, model_validator

from gateway.config.duty import ClockTime, Deadline
from gateway.config.fields import Duration, Email, Fingerprint, Mobile, Size, Strict, normalise_mobile
from gateway.core.model import Urgency
from gateway.duty.deadline_rules import DeadlineRule, parse_deadline


class GatewaySection(Strict):
    council: str = "Demo Borough Council"
    duty_phone: str = Field(description="the phone number referrers call to follow up")


class PathsSection(Strict):
    data_dir: Path = Path("var")
    keys_dir: Path = Path("keys")
    templates_dir: Path = Path("templates")


class DatabaseSection(Strict):
    # Empty: SQLite at <data_dir>/gateway.db. Otherwise a SQLAlchemy async URL
    # (postgresql+asyncpg://user@host/db); the password comes from keys/, never from here.
    url: str = ""
    # How long a writer waits for SQLite's write lock before giving up (then SMTP answers 451).
    busy_timeout: Duration = timedelta(seconds=10)


class SmtpSection(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8025, ge=0, le=65535)
    hostname: str = "referrals.localhost"
    referral_addresses: tuple[Email, ...] = Field(min_length=1)
    max_message_size: Size = 25 * 1024 * 1024
    # Sessions are capped so that idle or slow connections cannot take every file descriptor
    # (at the limit SMTP and HTTP both stop answering). Over a cap: 421, closed at once. 50 per
    # client is Postfix's default: behind a relay every session comes from the relay's address.
    max_sessions: int = Field(default=200, ge=1)
    max_sessions_per_client: int = Field(default=50, ge=1)
    # Before DATA a sending server types nothing by hand: a connection silent this long is one
    # holding a slot, not one sending a referral. DATA (and the commit) get `timeout`.
    idle_timeout: Duration = timedelta(seconds=30)
    timeout: Duration = timedelta(minutes=5)
    # How long a batch of concurrent sessions may wait to share one commit (group commit).
    commit_window: Duration = timedelta(milliseconds=5)
    # STARTTLS: certificate and key (PEM; paths relative to keys/). Required by default on any
    # listener that is not loopback: referrals must not cross a network in clear.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_starttls: bool | None = None  # None: required unless host is loopback
    # Behind a TCP load balancer every connection comes from the balancer: with this on, each
    # connection must start with a PROXY protocol header (v1 or v2) naming the real client, or it
    # is closed unanswered. Only for a listener nothing but the balancer can reach: anyone else
    # could name any address. The per-client cap counts the client the header names.
    proxy_protocol: bool = False

    @model_validator(mode="after")
    def _limits(self) -> SmtpSection:
        for name in ("idle_timeout", "timeout"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be longer than 0s; use one like '30s' or '5m'")
        if self.max_sessions_per_client > self.max_sessions:
            raise ValueError(
                f"max_sessions_per_client ({self.max_sessions_per_client}) is above max_sessions "
                f"({self.max_sessions}); use a number at most max_sessions"
            )
        return self

    @model_validator(mode="after")
    def _tls_when_exposed(self) -> SmtpSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together; use both or neither")
        if self.starttls_required and self.tls_cert is None:
            raise ValueError(
                f"STARTTLS is required on {self.host} but no certificate is set; use tls_cert and tls_key "
                "(or listen on 127.0.0.1 behind a relay that does TLS)"
            )
        return self

    @property
    def starttls_required(self) -> bool:
        if self.require_starttls is not None:
            return self.require_starttls
        return self.host not in ("127.0.0.1", "::1", "localhost")


def _network(value: object) -> IPv4Network | IPv6Network:
    text = str(value).strip()
    try:
        return ip_network(text)  # strict: "10.0.0.1/8" is a typo for a host or for 10.0.0.0/8
    except ValueError:
        raise ValueError(
            f'{text!r} is not an IP network; use one like "10.0.0.0/8", "192.0.2.7/32" or "2001:db8::/32" '
            "(an address with its prefix length, host bits zero)"
        ) from None


Network = Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)]


class HttpSection(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    # Reverse proxies whose X-Forwarded-For is believed (gateway.web.forwarded). Empty: nobody's,
    # every client is the connection's peer. Only networks that nothing but the proxies can send from.
    trusted_proxies: tuple[Network, ...] = ()

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(
                f"{value!r} is not a base web address; use a URL starting with http:// or https:// "
                "with no query or fragment, like https://referrals.council.example"
            )
        return value.rstrip("/")


class RelaySection(Strict):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True  # required when true: never falls back to plaintext
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None  # under keys/, mode 0600
    timeout: Duration = timedelta(seconds=30)


class MailSection(Strict):
    from_address: Email
    relay: RelaySection | None = None  # absent: everything goes to the maildir under data_dir


class SmsSection(Strict):
    """SMS in and out. `spool` (the default): alerts are written to <data_dir>/sms/ and there are
    no webhooks. `twilio`: alerts go through Twilio's API, and /sms/inbound and /sms/status take
    its webhooks, each checked against X-Twilio-Signature."""

    provider: Literal["spool", "twilio"] = "spool"
    account_sid: str = ""
    # The auth token: the TWILIO_AUTH_TOKEN environment variable, else this file under keys/
    # (mode 0600). Never in config/.
    auth_token_file: Path = Path("twilio-auth-token")
    from_number: Annotated[str, BeforeValidator(lambda v: normalise_mobile(v) if v else "")] = ""
    api_base_url: str = ""  # empty: Twilio's own; tests point it at a local stand-in
    timeout: Duration = timedelta(seconds=15)  # per API call
    # No final status (delivered, undelivered, failed) this long after sending: fetch the message
    # by its SID and take the status from Twilio.
    status_timeout: Duration = timedelta(minutes=15)
    # Per sending number: more messages than this in the window are stored and reported, not
    # acted on (a loop between two auto-responders, a flood), and get no reply. Alerts out are
    # not limited: they come from referrals, and holding one back could cost a child.
    inbound_limit: int = Field(default=20, ge=1)
    inbound_window: Duration = timedelta(hours=1)

    @model_validator(mode="after")
    def _twilio_needs(self) -> SmsSection:
        if self.provider == "twilio" and not re.fullmatch(r"AC[0-9a-fA-F]{32}", self.account_sid):
            raise ValueError('Twilio needs its account SID; use account_sid = "AC" followed by 32 hex digits')
        if self.provider == "twilio" and not self.from_number:
            raise ValueError('Twilio needs the number to send from; use from_number = "+447700900000"')
        return self


class OutboxSection(Strict):
    max_attempts: int = Field(default=8, ge=1, le=100)
    first_retry: Duration = timedelta(seconds=30)
    max_retry: Duration = timedelta(minutes=30)
    lease: Duration = timedelta(minutes=2)
    batch: int = Field(default=20, ge=1, le=1000)
    poll: Duration = timedelta(seconds=2)


class ProcessingSection(Strict):
    max_attempts: int = Field(default=5, ge=1, le=100)
    # Processing a batch takes milliseconds; a short lease means a crashed instance's messages
    # are picked up again within seconds of a restart.
    lease: Duration = timedelta(seconds=30)
    batch: int = Field(default=50, ge=1, le=1000)
    retry: Duration = timedelta(seconds=10)
    # During a burst of arriving mail, processing and sending wait for a lull, at most this
    # long, so that accepting (a sender waiting for its 250) gets the CPU first.
    max_defer: Duration = timedelta(seconds=5)


class DeadlinesSection(Strict):
    """Acknowledgement deadlines for teams that do not set their own ([teams.deadlines])."""

    immediate: Deadline = parse_deadline("15m")
    urgent: Deadline = parse_deadline("1h")
    standard: Deadline = parse_deadline("24h")
    # check-config warns when a deadline can take longer than this in clock hours for a referral
    # received in the next 28 days (a working-time deadline over a bank holiday weekend); unset: no check.
    warn_clock_hours: int | None = Field(default=None, ge=1, le=24 * 28)

    def for_urgency(self, urgency: Urgency | str | None) -> DeadlineRule:
        # A referral whose urgency is missing is treated as the most urgent: guessing low is
        # the mistake that costs a child; guessing high costs a duty worker a minute.
        level = Urgency(urgency) if urgency else Urgency.IMMEDIATE
        return {Urgency.IMMEDIATE: self.immediate, Urgency.URGENT: self.urgent, Urgency.STANDARD: self.standard}[level]


class ReferrerSection(Strict):
    """What the referrer is told beyond the receipt, acknowledgement and outcome."""

    # When a referral misses its first acknowledgement deadline, tell the referrer once that no
    # named worker has it yet and which number to call (gateway.track.follow_up).
    follow_up: bool = True


class AckSection(Strict):
    link_ttl: Duration = timedelta(days=7)


class RetentionSection(Strict):
    """What `purge` removes (gateway.report.retention): the content of referrals closed more than
    `closed_after` ago; metadata, events and the audit chain stay."""

    enabled: bool = True  # false: the running gateway never purges (the `purge` command still can)
    closed_after: Duration = timedelta(days=90)
    every: Duration = timedelta(hours=1)  # how often the running gateway looks for referrals to purge
    batch: int = Field(default=100, ge=1, le=1000)  # referrals per write transaction

    @field_validator("closed_after")
    @classmethod
    def _days(cls, value: timedelta) -> timedelta:
        # Under a day is surely a typo ("90m" for "90d"): it would purge referrals closed this morning.
        if value < timedelta(days=1):
            raise ValueError("under a day would purge referrals closed today; use days, like '90d'")
        return value

    @field_validator("every")
    @classmethod
    def _minutes(cls, value: timedelta) -> timedelta:
        if value < timedelta(minutes=1):
            raise ValueError("under a minute would keep the database busy; use one like '1h'")
        return value


class ConcernSection(Strict):
    """Cumulative concern (gateway.history.concern): `referrals` referrals about one child within
    `window`, from at least `organisations` different organisations, none of them urgent, alert the
    team's managers and the coordinators."""

    enabled: bool = True
    window: Duration = timedelta(days=30)
    referrals: int = Field(default=3, ge=2)
    organisations: int = Field(default=2, ge=1)

    @field_validator("window")
    @classmethod
    def _at_least_a_day(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=1):
            raise ValueError("under a day is surely a typo ('30m' for '30d'); use days, like '30d'")
        return value

    @model_validator(mode="after")
    def _organisations_fit(self) -> ConcernSection:
        if self.organisations > self.referrals:
            raise ValueError(
                "organisations is more than referrals, so a concern could never be raised; "
                "make organisations at most referrals"
            )
        return self


def _sender_pattern(value: str) -> str:
    text = str(value).strip().lower()
    if not re.fullmatch(r"(?:[^@\s<>]+)?@[^@\s<>]+\.[^@\s<>]+", text):
        raise ValueError(
            f"{value!r} is not an address; use an address (ann@trust.example) or a domain (@trust.example)"
        )
    return text


class Professional(Strict):
    """Someone registered to send quick referrals by SMS for a partner organisation."""

    name: str
    mobile: Mobile


class Partner(Strict):
    """A partner organisation whose staff send referrals: who may sign for it, from where."""

    name: str
    professionals: tuple[Professional, ...] = ()  # registered mobiles: SMS referrals from them
    # The sending addresses this block claims; no other block may claim them (gateway.config.partner_checks).
    addresses: tuple[Annotated[str, BeforeValidator(_sender_pattern)], ...]
    openpgp: tuple[Fingerprint, ...] = ()  # fingerprints of keys allowed to sign for this partner
    smime_anchors: tuple[Path, ...] = ()  # CA certificates (PEM) its staff's certificates chain to
    smime_pinned: tuple[Path, ...] = ()  # individual certificates (PEM) trusted as they are

    @field_validator("addresses")
    @classmethod
    def _claims_some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Empty is what `keys import` prints when a key names no address: it must be filled in.
        if not value:
            raise ValueError(
                "the partner has no sending addresses; use the addresses its staff send from: "
                '["@trust.example"] (a whole domain) or ["ann@trust.example"] (one address)'
            )
        return value

    def covers(self, address: str) -> bool:
        """Whether a sending address belongs to this partner (exact address, or its domain)."""
        address = address.strip().lower()
        domain = "@" + address.rpartition("@")[2]
        return any(pattern == address or pattern == domain for pattern in self.addresses)


class SecuritySection(Strict):
    # Neither required: accept and flag (the alert and the report say what was missing).
    require_encryption: bool = False
    require_signature: bool = False  # a valid signature by a known partner, sent from its own address


class KeysSection(Strict):
    """The gateway's own keys, under keys/. Absent: that kind of mail cannot be decrypted."""

    # Development only (the embedded default): make the gateway's keys on first run if missing.
    development: bool = False
    # "sequoia" (the default): pysequoia in worker processes, keys as armoured files (keys/openpgp), and gpg
    # over a private home (data_dir/gpg-fallback) for the few messages pysequoia cannot check (README).
    # "gnupg": gpg through python-gnupg, keys in a GnuPG home (keys/gnupg).
    openpgp_backend: Literal["sequoia", "gnupg"] = "sequoia"
    openpgp_home: Path | None = None  # under keys/; not given: the backend's own folder (above)
    openpgp_fingerprint: Fingerprint | None = None
    smime_key: Path | None = None
    smime_cert: Path | None = None

    def openpgp_dir(self) -> Path:
        """The OpenPGP keys' folder, relative to keys/ (as written) unless absolute."""
        if self.openpgp_home is not None:
            return self.openpgp_home
        return Path("openpgp") if self.openpgp_backend == "sequoia" else Path("gnupg")


class DigestSection(Strict):
    """The daily heartbeat digest to every coordinator with an email address (gateway.report.digest).
    It goes even when there is nothing to report: its absence is the alarm."""

    time: ClockTime = wall_time(7, 30)  # Europe/London wall clock, "HH:MM"
    # None: on when a coordinator has an email address. true with none is a config error.
    enabled: bool | None = None


class BackupSection(Strict):
    """`referral-gateway backup`: the keys go into every backup encrypted to this administrator's OpenPGP
    key (its public key imported with `keys import`); without it `backup` refuses, since the keys open
    everything the database holds sealed."""

    admin_openpgp: Fingerprint | None = None


def _until(value: object) -> object:
    # TOML gives a date for `until = 2027-01-31` and a datetime for a time with a zone: a date
    # means the start of that day, UTC (an overlap end is a planned date, not a minute).
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


Until = Annotated[AwareDatetime, BeforeValidator(_until)]


class PreviousOpenPGP(Strict):
    """A gateway OpenPGP key replaced by `keys rotate openpgp`: it still decrypts until `until`."""

    fingerprint: Fingerprint
    until: Until


class PreviousSMime(Strict):
    """A gateway S/MIME key and certificate replaced by `keys rotate smime`: still decrypts until `until`."""

    key: Path
    cert: Path
    until: Until


class RotationSection(Strict):
    """Key rotation: the background re-seal of data at rest, and the overlaps of replaced keys."""

    reseal_batch: int = Field(default=50, ge=1, le=10_000)  # rows a transaction
    reseal_pause: Duration = timedelta(0)  # between batches: gentler on a busy store, slower to finish
    key_check: Duration = timedelta(seconds=10)  # how often an idle gateway looks for a rotated key
    previous_openpgp: tuple[PreviousOpenPGP, ...] = ()
    previous_smime: tuple[PreviousSMime, ...] = ()
