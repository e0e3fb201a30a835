"""Read the config file and check it before anything starts; every problem in one go.

Every error names the file, the key and the fix, because the person reading it is an administrator
at a council, not the author of this code.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.config.checks import duty_checks
from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.neighbours import neighbour_checks
from gateway.config.partner_checks import partner_checks
from gateway.config.settings import Config, Settings


def _key(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _fix_for(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "add this key (see config/gateway.example.toml and the README's config reference)"
    if kind == "extra_forbidden":
        return "remove it, or correct its spelling (the README lists every key)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "; use " in message:  # our validators say what is wrong, then "; use" what is right
        return "use " + message.split("; use ", 1)[1]
    return f"correct the value ({message})"


Table = dict[str, object]


def _tables(raw: Table, key: str) -> list[Table]:
    """The [[key]] tables of the raw TOML, skipping anything that is not a table (the model's
    validation reports those)."""
    value = raw.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _cross_checks(raw: Table, file: Path) -> list[ConfigIssue]:
    """Checks across keys, on the raw TOML so that they run even when a field is invalid: an
    administrator should see every problem in one go, not one per start."""
    issues: list[ConfigIssue] = []
    teams = _tables(raw, "teams")
    routes = _tables(raw, "routes")
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
    mail = raw.get("mail")
    relay = mail.get("relay") if isinstance(mail, dict) else None
    if isinstance(relay, dict) and relay.get("username") and not relay.get("password_file"):
        issues.append(
            ConfigIssue(
                file,
                "mail.relay.password_file",
                "a username is set but no password file",
                "put the password in a file under keys/ (mode 0600) and name it here",
            )
        )
    issues += partner_checks(_tables(raw, "partners"), file)
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
        home = file.resolve().parent.parent  # as Config.home below: relative paths start there
        issues += neighbour_checks(settings.neighbours, {t.email.lower() for t in settings.teams}, file, home)
    if issues or settings is None:
        raise ConfigError(issues)
    home = file.resolve().parent.parent
    return Config(settings=settings, file=file, home=home)
