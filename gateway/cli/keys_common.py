"""What the `keys` commands share: their error, and how they show paths, dates, status and config lines."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from gateway.config import Config
from gateway.open.crypto.smime import CertInfo
from gateway.open.identity import EXPIRY_WARNING

PARTNERS_DIR = "partners"
TEAMS_DIR = "teams"  # the council's own mailboxes' certificates: alerts are encrypted to them


class KeysError(Exception):
    """A problem the administrator can fix: the message names the file or key and says how."""


def toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string: quotes and backslashes in names are escaped the same way.
    return json.dumps(value, ensure_ascii=False)


def toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(toml_string(v) for v in values) + "]"


def shown(config: Config, path: Path) -> str:
    """A path as the administrator would type it: relative to the gateway's home when under it."""
    try:
        return str(path.relative_to(config.home))
    except ValueError:
        return str(path)


def keys_relative(config: Config, path: Path) -> str:
    """A [keys] path: relative to keys_dir (that is how identity.py resolves it) when under it."""
    try:
        return str(path.relative_to(config.keys_dir))
    except ValueError:
        return str(path)


def expiry_status(expires: datetime | None, now: datetime, revoked: bool = False) -> str:
    """The STATUS of `keys list` and `keys import`: warned from EXPIRY_WARNING, as the gateway warns at start."""
    if revoked:
        return "REVOKED"
    if expires is None:
        return "OK"
    if expires <= now:
        return "EXPIRED"
    if expires - now <= EXPIRY_WARNING:
        # Rounded up: a certificate made "for 10 days" a moment ago has 9.99 days left, and its owner
        # (and anyone counting on a calendar) calls that 10 days.
        days = math.ceil((expires - now).total_seconds() / 86400)
        return f"EXPIRES IN {days} DAY{'' if days == 1 else 'S'}"
    return "OK"


def subject(info: CertInfo) -> str:
    # RFC 4514 has no short name for emailAddress, so CertInfo shows its OID; administrators know the name.
    return info.subject.replace("1.2.840.113549.1.9.1=", "emailAddress=")


def date(when: datetime | None) -> str:
    return when.date().isoformat() if when is not None else "never"
