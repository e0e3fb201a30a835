"""Config: the one frozen object every stage is given, read from config/gateway.toml and checked
before anything starts.

Takes: the TOML file. Gives: `load(path) -> Config` (Settings plus where they came from), or
`ConfigError` listing every problem with its file, key and fix. May import: gateway.duty (schedules,
rotas and deadlines it builds), gateway.parse (postcode patterns), gateway.core.

Modules: `fields` (value types), `duty` (teams, rotas, routes, escalation chains), `sections` (the
rest), `monitoring` ([metrics], [health], [logging]), `settings` (Settings and Config), `checks`
(checks across the duty sections), `partner_checks` (each partner, address and signing key in one
[[partners]] block only), `load`.
"""

from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.load import load
from gateway.config.settings import Config, Settings

__all__ = ["Config", "ConfigError", "ConfigIssue", "Settings", "load"]
