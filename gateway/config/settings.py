"""The one frozen configuration object, read from TOML and checked before anything starts.

Every error names the file, the key and the fix, because the person reading it is an administrator
at a council, not the author of this code. Relative paths are relative to the gateway's home: the
folder above the config file's folder (config/gateway.toml -> the checkout).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.config.checks import duty_checks
from gateway.config.duty import (
    DEFAULT_ESCALATION,
    Deadline,
    Email,
    Escalation,
    Fingerprint,
    LocalAuthority,
    Mobile,
    Person,
    Route,
    ScheduleConfig,
    Team,
    normalise_mobile,
)
from gateway.config.errors import ConfigError as ConfigError
from gateway.config.errors import ConfigIssue as ConfigIssue
from gateway.core.model import Urgency
from gateway.duty.deadline_rules import DeadlineRule, parse_deadline
from gateway.duty.schedule import ALWAYS_OPEN, Schedule

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB)?\s*$", re.IGNORECASE)


def parse_duration(value: Any) -> timedelta:
    """'15m', '1h', '24h', '7d', '30s' -> timedelta; a bare number is seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; use one like '30s', '15m', '1h' or '7d'")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size; use one like '25MB' or a number of bytes")
    scale = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[(match.group(2) or "").upper()]
    return int(match.group(1)) * scale


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    council: str = "Demo Borough Council"
    duty_phone: str = Field(description="the phone number referrers call to follow up")


class PathsSection(_Strict):
    data_dir: Path = Path("var")
    keys_dir: Path = Path("keys")
    templates_dir: Path = Path("templates")


class DatabaseSection(_Strict):
    # Empty: SQLite at <data_dir>/gateway.db. Otherwise a SQLAlchemy async URL
    # (postgresql+asyncpg://user@host/db); the password comes from keys/, never from here.
    url: str = ""
    # How long a writer waits for SQLite's write lock before giving up (then SMTP answers 451).
    busy_timeout: Duration = timedelta(seconds=10)


class SmtpSection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8025, ge=0, le=65535)
    hostname: str = "referrals.localhost"
    referral_addresses: tuple[Email, ...] = Field(min_length=1)
    max_message_size: Size = 25 * 1024 * 1024
    timeout: Duration = timedelta(minutes=5)
    # How long a batch of concurrent sessions may wait to share one commit (group commit).
    commit_window: Duration = timedelta(milliseconds=5)
    # STARTTLS: certificate and key (PEM; paths relative to keys/). Required by default on any
    # listener that is not loopback: referrals must not cross a network in clear.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_starttls: bool | None = None  # None: required unless host is loopback

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


class HttpSection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(
                f"{value!r} is not a base web address; use a URL starting with http:// or https:// "
                "with no query or fragment, like https://referrals.council.example"
            )
        return value.rstrip("/")


class RelaySection(_Strict):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True  # required when true: never falls back to plaintext
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None  # under keys/, mode 0600
    timeout: Duration = timedelta(seconds=30)


class MailSection(_Strict):
    from_address: Email
    relay: RelaySection | None = None  # absent: everything goes to the maildir under data_dir


class SmsSection(_Strict):
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


class OutboxSection(_Strict):
    max_attempts: int = Field(default=8, ge=1, le=100)
    first_retry: Duration = timedelta(seconds=30)
    max_retry: Duration = timedelta(minutes=30)
    lease: Duration = timedelta(minutes=2)
    batch: int = Field(default=20, ge=1, le=1000)
    poll: Duration = timedelta(seconds=2)


class ProcessingSection(_Strict):
    max_attempts: int = Field(default=5, ge=1, le=100)
    # Processing a batch takes milliseconds; a short lease means a crashed instance's messages
    # are picked up again within seconds of a restart.
    lease: Duration = timedelta(seconds=30)
    batch: int = Field(default=50, ge=1, le=1000)
    retry: Duration = timedelta(seconds=10)
    # During a burst of arriving mail, processing and sending wait for a lull, at most this
    # long, so that accepting (a sender waiting for its 250) gets the CPU first.
    max_defer: Duration = timedelta(seconds=5)


class DeadlinesSection(_Strict):
    """Acknowledgement deadlines for teams that do not set their own ([teams.deadlines])."""

    immediate: Deadline = parse_deadline("15m")
    urgent: Deadline = parse_deadline("1h")
    standard: Deadline = parse_deadline("24h")

    def for_urgency(self, urgency: Urgency | str | None) -> DeadlineRule:
        # A referral whose urgency is missing is treated as the most urgent: guessing low is
        # the mistake that costs a child; guessing high costs a duty worker a minute.
        level = Urgency(urgency) if urgency else Urgency.IMMEDIATE
        return {Urgency.IMMEDIATE: self.immediate, Urgency.URGENT: self.urgent, Urgency.STANDARD: self.standard}[level]


class AckSection(_Strict):
    link_ttl: Duration = timedelta(days=7)


def _sender_pattern(value: str) -> str:
    text = str(value).strip().lower()
    if not re.fullmatch(r"(?:[^@\s<>]+)?@[^@\s<>]+\.[^@\s<>]+", text):
        raise ValueError(
            f"{value!r} is not an address; use an address (ann@trust.example) or a domain (@trust.example)"
        )
    return text


class Professional(_Strict):
    """Someone registered to send quick referrals by SMS for a partner organisation."""

    name: str
    mobile: Mobile


class Partner(_Strict):
    """A partner organisation whose staff send referrals: who may sign for it, from where."""

    name: str
    professionals: tuple[Professional, ...] = ()  # registered mobiles: SMS referrals from them
    addresses: tuple[Annotated[str, BeforeValidator(_sender_pattern)], ...] = Field(min_length=1)
    openpgp: tuple[Fingerprint, ...] = ()  # fingerprints of keys allowed to sign for this partner
    smime_anchors: tuple[Path, ...] = ()  # CA certificates (PEM) its staff's certificates chain to
    smime_pinned: tuple[Path, ...] = ()  # individual certificates (PEM) trusted as they are

    def covers(self, address: str) -> bool:
        """Whether a sending address belongs to this partner (exact address, or its domain)."""
        address = address.strip().lower()
        domain = "@" + address.rpartition("@")[2]
        return any(pattern == address or pattern == domain for pattern in self.addresses)


class SecuritySection(_Strict):
    # Neither required: accept and flag (the alert and the report say what was missing).
    require_encryption: bool = False
    require_signature: bool = False  # a valid signature by a known partner, sent from its own address


class KeysSection(_Strict):
    """The gateway's own keys, under keys/. Absent: that kind of mail cannot be decrypted."""

    # Development only (the embedded default): make the gateway's keys on first run if missing.
    development: bool = False
    openpgp_home: Path = Path("gnupg")
    openpgp_fingerprint: Fingerprint | None = None
    smime_key: Path | None = None
    smime_cert: Path | None = None


class Settings(_Strict):
    gateway: GatewaySection
    paths: PathsSection = PathsSection()
    database: DatabaseSection = DatabaseSection()
    smtp: SmtpSection
    http: HttpSection = HttpSection()
    mail: MailSection
    outbox: OutboxSection = OutboxSection()
    sms: SmsSection = SmsSection()
    processing: ProcessingSection = ProcessingSection()
    deadlines: DeadlinesSection = DeadlinesSection()
    ack: AckSection = AckSection()
    teams: tuple[Team, ...] = Field(min_length=1)
    routes: tuple[Route, ...] = Field(min_length=1)
    security: SecuritySection = SecuritySection()
    keys: KeysSection = KeysSection()
    partners: tuple[Partner, ...] = ()
    schedules: tuple[ScheduleConfig, ...] = ()
    escalations: tuple[Escalation, ...] = ()
    coordinators: tuple[Person, ...] = ()
    local_authorities: tuple[LocalAuthority, ...] = ()

    def team(self, team_id: str) -> Team:
        team = self.find_team(team_id)
        if team is None:
            raise KeyError(team_id)
        return team

    def find_team(self, team_id: str) -> Team | None:
        """None for a team id no longer in the config (renamed or removed since routing)."""
        return next((team for team in self.teams if team.id == team_id), None)

    def schedule_of(self, team: Team) -> ScheduleConfig | None:
        return next((s for s in self.schedules if s.id == team.schedule), None) if team.schedule else None

    def schedule_for(self, team: Team) -> Schedule:
        """The team's office hours as the pure schedule; open at all hours without one."""
        config = self.schedule_of(team)
        return config.to_schedule() if config else ALWAYS_OPEN

    def escalation_of(self, team: Team, urgency: Urgency | None) -> Escalation:
        wanted = team.escalation_for(urgency)
        return next((e for e in self.escalations if e.id == wanted), DEFAULT_ESCALATION)

    def deadline_rule(self, team: Team, urgency: Urgency | str | None) -> DeadlineRule:
        level = Urgency(urgency) if urgency else Urgency.IMMEDIATE
        own: DeadlineRule | None = getattr(team.deadlines, level.value)
        return own or self.deadlines.for_urgency(level)

    def person_at(self, address: str) -> Person | None:
        """The team member or coordinator an email address or E.164 mobile belongs to, if any."""
        for someone in [*(m for team in self.teams for m in team.members), *self.coordinators]:
            if address in (someone.email, someone.mobile):
                return someone
        return None

    def professional(self, mobile: str) -> tuple[Partner, Professional] | None:
        """The partner and professional a mobile number is registered to, if any."""
        for partner in self.partners:
            for person in partner.professionals:
                if person.mobile == mobile:
                    return partner, person
        return None

    def team_name(self, team_id: str) -> str:
        team = self.find_team(team_id)
        return team.name if team else f"{team_id} (no longer in config)"


@dataclass(frozen=True)
class Config:
    """Settings plus where they came from; the one object every stage is given."""

    settings: Settings
    file: Path
    home: Path

    def path(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.home / relative

    @property
    def data_dir(self) -> Path:
        return self.path(self.settings.paths.data_dir)

    @property
    def keys_dir(self) -> Path:
        return self.path(self.settings.paths.keys_dir)

    @property
    def templates_dir(self) -> Path:
        return self.path(self.settings.paths.templates_dir)

    @property
    def maildir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def database_url(self) -> str:
        return self.settings.database.url or f"sqlite+aiosqlite:///{self.data_dir / 'gateway.db'}"


def _key(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _fix_for(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "add this key (see config/gateway.example.toml and the README's config reference)"
    if kind == "extra_forbidden":
        return "remove it, or correct its spelling (the README lists every key)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "; use " in message:  # our validators say what is wrong, then "; use" what is right
        return "use " + message.split("; use ", 1)[1]
    return f"correct the value ({message})"


def _cross_checks(raw: dict[str, Any], file: Path) -> list[ConfigIssue]:
    """Checks across keys, on the raw TOML so that they run even when a field is invalid: an
    administrator should see every problem in one go, not one per start."""
    issues: list[ConfigIssue] = []
    teams = [t for t in raw.get("teams") or [] if isinstance(t, dict)]
    routes = [r for r in raw.get("routes") or [] if isinstance(r, dict)]
    team_ids = [str(t.get("id")) for t in teams]
    known = ", ".join(dict.fromkeys(team_ids))
    for index, team_id in enumerate(team_ids):
        if team_ids.index(team_id) != index:
            issues.append(
                ConfigIssue(
                    file, f"teams[{index}].id", f"team '{team_id}' is defined twice", "give each team a unique id"
                )
            )
    for index, route in enumerate(routes):
        if teams and route.get("team") not in team_ids:
            issues.append(
                ConfigIssue(
                    file, f"routes[{index}].team", f"unknown team '{route.get('team')}'", f"use one of: {known}"
                )
            )
    defaults = [i for i, r in enumerate(routes) if r.get("default") is True]
    if routes and not defaults:
        issues.append(
            ConfigIssue(
                file,
                "routes",
                "there is no default route",
                "add a last [[routes]] with default = true and team = the triage team",
            )
        )
    elif defaults and (len(defaults) > 1 or defaults[0] != len(routes) - 1):
        later = [str(r.get("name")) for r in routes[defaults[0] + 1 :]]
        issues.append(
            ConfigIssue(
                file,
                f"routes[{defaults[0]}].default",
                "the default route must be the only default and the last route"
                + (f"; these routes after it can never match: {', '.join(later)}" if later else ""),
                "move the default route to the end and keep just one",
            )
        )
    names = [str(r.get("name")) for r in routes]
    for index, name in enumerate(names):
        if names.index(name) != index:
            issues.append(
                ConfigIssue(
                    file,
                    f"routes[{index}].name",
                    f"route name '{name}' is used twice",
                    "give each route a unique name (reports and --explain show it)",
                )
            )
    relay = (raw.get("mail") or {}).get("relay") if isinstance(raw.get("mail"), dict) else None
    if isinstance(relay, dict) and relay.get("username") and not relay.get("password_file"):
        issues.append(
            ConfigIssue(
                file,
                "mail.relay.password_file",
                "a username is set but no password file",
                "put the password in a file under keys/ (mode 0600) and name it here",
            )
        )
    return issues


def load(file: Path) -> Config:
    """Read and check the config; raises ConfigError listing every problem found."""
    file = Path(file)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    "(file)",
                    "the config file does not exist",
                    "pass --config PATH, or copy config/gateway.example.toml",
                )
            ]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [ConfigIssue(file, "(syntax)", f"not valid TOML ({exc})", "correct the TOML syntax at that line")]
        ) from None
    issues: list[ConfigIssue] = []
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        issues += [
            ConfigIssue(file, _key(e["loc"]), e["msg"].removeprefix("Value error, ").split("; use ")[0], _fix_for(e))
            for e in exc.errors()
        ]
    issues += _cross_checks(raw, file)
    if settings is not None:
        issues += duty_checks(settings, file)
    if issues or settings is None:
        raise ConfigError(issues)
    home = file.resolve().parent.parent
    return Config(settings=settings, file=file, home=home)
