"""The one frozen configuration object: every section, the look-ups across them, and where the
config came from. Relative paths are relative to the gateway's home: the folder above the config
file's folder (config/gateway.toml -> the checkout). Read and checked by gateway.config.load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from gateway.config.duty import (
    DEFAULT_ESCALATION,
    Escalation,
    LocalAuthority,
    Person,
    Route,
    ScheduleConfig,
    Team,
)
from gateway.config.fields import Strict
from gateway.config.monitoring import HealthSection, LoggingSection, MetricsSection
from gateway.config.neighbours import Neighbour
from gateway.config.sections import (
    AckSection,
    BackupSection,
    ConcernSection,
    DatabaseSection,
    DeadlinesSection,
    DigestSection,
    GatewaySection,
    HttpSection,
    KeysSection,
    MailSection,
    OutboxSection,
    Partner,
    PathsSection,
    ProcessingSection,
    Professional,
    ReferrerSection,
    RetentionSection,
    RotationSection,
    SecuritySection,
    SmsSection,
    SmtpSection,
)
from gateway.core.model import Urgency
from gateway.duty.deadline_rules import DeadlineRule
from gateway.duty.schedule import ALWAYS_OPEN, Schedule


class Settings(Strict):
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
    referrer: ReferrerSection = ReferrerSection()
    retention: RetentionSection = RetentionSection()
    concern: ConcernSection = ConcernSection()
    teams: tuple[Team, ...] = Field(min_length=1)
    routes: tuple[Route, ...] = Field(min_length=1)
    security: SecuritySection = SecuritySection()
    keys: KeysSection = KeysSection()
    backup: BackupSection = BackupSection()
    rotation: RotationSection = RotationSection()
    partners: tuple[Partner, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()  # other authorities a referral may be forwarded to
    schedules: tuple[ScheduleConfig, ...] = ()
    escalations: tuple[Escalation, ...] = ()
    coordinators: tuple[Person, ...] = ()
    local_authorities: tuple[LocalAuthority, ...] = ()
    digest: DigestSection = DigestSection()
    metrics: MetricsSection = MetricsSection()
    health: HealthSection = HealthSection()
    logging: LoggingSection = LoggingSection()

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

    @property
    def digest_recipients(self) -> tuple[Person, ...]:
        """Who gets the daily digest: every coordinator with an email address, unless it is off."""
        if self.digest.enabled is False:
            return ()
        return tuple(c for c in self.coordinators if c.email)

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
