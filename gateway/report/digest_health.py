"""The digest's warnings about the gateway itself: keys and certificates expiring within 30 days,
bank-holiday data running out within 60, and rota gaps in the next 7 days.

Each is something that fails quietly weeks later (a partner's signed mail quarantined, a deadline
counted over a bank holiday it does not know, a referral routed to nobody), so it is said every day
until someone fixes it. The same checks as `keys list` and `check-config`, said in one line each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

from gateway.config import Config
from gateway.core.clock import LONDON
from gateway.duty.schedule import Nation, calendar_warning
from gateway.open.crypto import CryptoKeyError
from gateway.open.crypto.smime import certificate_info, load_certificates
from gateway.open.identity import EXPIRY_WARNING, Identity
from gateway.outbox.protect import KeyHolder
from gateway.route.coverage import Gap, gaps

log = logging.getLogger(__name__)
HOLIDAY_HORIZON = timedelta(days=60)
GAP_DAYS = 7
MOST_GAP_LINES = 20  # past this, the digest says how many more and points to check-config


def _expiry(what: str, expires: datetime | None, now: datetime) -> str | None:
    if expires is None:
        return None
    if expires <= now:
        return f"{what} expired on {expires.date().isoformat()}: renew or replace it now"
    if expires - now <= EXPIRY_WARNING:
        return f"{what} expires on {expires.date().isoformat()} (in {(expires - now).days} days): renew it"
    return None


def _certificates(config: Config, what: str, path: Path, now: datetime) -> list[str]:
    try:
        infos = [certificate_info(cert) for cert in load_certificates(config.path(path).read_bytes())]
    except (OSError, ValueError, CryptoKeyError):
        return [f"{what} cannot be read: replace it (`referral-gateway keys list` shows it)"]
    found = [_expiry(what, info.not_after, now) for info in infos]
    return [line for line in found if line]


async def expiring_keys(config: Config, identity: Identity, now: datetime) -> list[str]:
    """The gateway's own keys, partners' keys, anchors and pins, and the keys of teams, members and
    coordinators alerts are encrypted to: those expired or expiring within EXPIRY_WARNING."""
    s = config.settings
    lines: list[str | None] = []
    if identity.smime is not None:
        lines.append(_expiry("the gateway's S/MIME certificate", identity.smime.info.not_after, now))
    holders: list[tuple[str, KeyHolder]] = [(f"team {t.id}", t) for t in s.teams]
    holders += [(f"member {t.id}/{m.id}", m) for t in s.teams for m in t.members]
    holders += [(f"coordinator {c.id}", c) for c in s.coordinators]
    if identity.pgp is not None:
        pgp = identity.pgp
        # Each listing runs gpg: off the loop.
        secret = {k.fingerprint: k for k in await asyncio.to_thread(pgp.keys, True)}
        public = {k.fingerprint: k for k in await asyncio.to_thread(pgp.keys)}
        if identity.openpgp_fingerprint in secret:
            lines.append(_expiry("the gateway's OpenPGP key", secret[identity.openpgp_fingerprint].expires, now))
        wanted = [(f"partner {p.name}'s OpenPGP key {f}", f) for p in s.partners for f in p.openpgp]
        wanted += [(f"{who}'s OpenPGP key {h.openpgp}", h.openpgp) for who, h in holders if h.openpgp]
        for what, fingerprint in wanted:
            key = public.get(fingerprint)
            if key is not None:
                lines.append(_expiry(what, key.expires, now))
    found = [line for line in lines if line]
    for partner in s.partners:
        for path in (*partner.smime_anchors, *partner.smime_pinned):
            found += _certificates(config, f"partner {partner.name}'s certificate {path}", path, now)
    for who, holder in holders:
        if holder.smime_cert is not None:
            found += _certificates(config, f"{who}'s S/MIME certificate", holder.smime_cert, now)
    return found


def holiday_warnings(config: Config, now: datetime) -> list[str]:
    nations = sorted({sc.nation for sc in config.settings.schedules}, key=lambda n: list(Nation).index(n))
    today = now.astimezone(LONDON).date()
    return [w for w in (calendar_warning(n, today, HOLIDAY_HORIZON) for n in nations) if w]


def rota_gaps(config: Config, now: datetime) -> list[str]:
    """Each gap once, with the routes it leaves without anyone (one team's gap is usually every
    route's that sends to it then)."""
    routes: dict[tuple[str, datetime, datetime], list[str]] = {}
    for gap in gaps(config.settings, now, days=GAP_DAYS):
        routes.setdefault((gap.team, gap.start, gap.end), []).append(gap.route)
    lines = []
    for (team, begin, end), names in routes.items():
        for line in Gap("", team, begin, end).lines():
            lines.append(line.removeprefix("route '': ") + f" (routes: {', '.join(names)})")
    if len(lines) > MOST_GAP_LINES:
        more = len(lines) - MOST_GAP_LINES
        lines = [*lines[:MOST_GAP_LINES], f"... and {more} more: run `referral-gateway check-config`"]
    return lines


async def warnings(config: Config, identity: Identity, now: datetime) -> list[str]:
    found: list[str] = []
    checks: list[tuple[str, Callable[[], Awaitable[list[str]]]]] = [
        ("keys and certificates", lambda: expiring_keys(config, identity, now)),
        ("bank holiday data", lambda: asyncio.to_thread(holiday_warnings, config, now)),
        ("rota cover", lambda: asyncio.to_thread(rota_gaps, config, now)),
    ]
    for what, check in checks:
        try:
            found += await check()
        except Exception as exc:  # noqa: BLE001
            # A check that fails (gpg gone, a bug) must not stop the digest: a digest that does
            # not come reads as the gateway being down. It says which check failed instead.
            log.error("digest: the %s check failed (%s)", what, type(exc).__name__)
            found.append(f"the {what} check failed ({type(exc).__name__}): see the gateway's log")
    return found
