"""The config's sections for watching the gateway: where /metrics is served ([metrics]), when
/readyz says not ready ([health]) and how log lines are written ([logging])."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from gateway.config.fields import Duration, Strict

_LISTEN = re.compile(r"^(?P<host>[^\s:]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


class MetricsSection(Strict):
    """/metrics is off unless one of these is set. `listen`: its own listener (host:port; keep it
    on loopback or a monitoring network). `token_file`: on the main HTTP port, behind a bearer token
    read from this file (under keys/, mode 0600). Both may be set: each then serves it."""

    listen: str | None = None
    token_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _LISTEN.match(value)
        if not match or not 0 <= int(match.group("port")) <= 65535:
            raise ValueError(f"{value!r} is not host:port; use one like '127.0.0.1:9464'")
        return value

    @property
    def listen_host(self) -> str:
        assert self.listen is not None
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def listen_port(self) -> int:
        assert self.listen is not None
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def enabled(self) -> bool:
        return self.listen is not None or self.token_file is not None


class HealthSection(Strict):
    """What /readyz checks besides the database answering within `database_timeout`."""

    # Every background loop finishes a step at least every 30 s when healthy (the deadline loop's
    # longest wait); one that has not for this long is stuck.
    worker_stale_after: Duration = timedelta(minutes=5)
    # The oldest stored message not yet processed (decrypted, parsed, routed) may be this old.
    max_processing_lag: Duration = timedelta(minutes=5)
    database_timeout: Duration = timedelta(seconds=2)

    @model_validator(mode="after")
    def _positive(self) -> HealthSection:
        for name in ("worker_stale_after", "max_processing_lag", "database_timeout"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"health.{name} must be longer than zero; use one like '5m'")
        return self


class LoggingSection(Strict):
    # "json": one JSON object per line (time, level, logger, message, exception), for log shippers.
    format: Literal["text", "json"] = "text"
