"""The `referral-gateway` command: serve, check-config, route --explain, report, verify."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import config as config_mod
from gateway.cli.database import with_engine
from gateway.config import Config, ConfigError
from gateway.config.partner_checks import partner_notes
from gateway.core import log_format
from gateway.core.clock import LONDON, SystemClock, uk_time
from gateway.core.keyfiles import KeyFileError
from gateway.open.crypto import CryptoError
from gateway.open.crypto.backends import preference_lines, read_keys
from gateway.open.dev_keys import refuse_gnupg_only
from gateway.open.mime import open_message
from gateway.open.mimebytes import MimeError
from gateway.parse.referral import parse_email, parse_json, parse_text
from gateway.report import undelivered as report
from gateway.route.coverage import calendar_warnings, gaps
from gateway.route.deadline_reach import long_deadlines
from gateway.route.explain import explain
from gateway.route.rules import Facts
from gateway.track.verify import verify
from gateway.web import monitoring

DEFAULT_CONFIG = Path("config/gateway.toml")
REQUIRED_TEMPLATES = (
    "email/alert.txt",
    "email/reminder.txt",
    "email/receipt.txt",
    "email/ack_notice.txt",
    "email/quarantine_notice.txt",
    "email/quarantine_alert.txt",
    "email/alert_secure.txt",
    "email/acknowledged_by.txt",
    "email/concern_alert.txt",
    "sms/alert.txt",
    "sms/ack_told.txt",
    "sms/ack_notice.txt",
    "email/outcome_notice.txt",
    "sms/outcome_notice.txt",
    "web/ack_confirm.html",
    "web/ack_done.html",
    "web/error.html",
)


def _load(path: Path) -> Config:
    cfg = config_mod.load(path)
    missing = [t for t in REQUIRED_TEMPLATES if not (cfg.templates_dir / t).is_file()]
    if missing:
        raise ConfigError(
            config_mod.ConfigIssue(
                path,
                "paths.templates_dir",
                f"{cfg.templates_dir} lacks {name}",
                "point paths.templates_dir at the checkout's templates/ folder",
            )
            for name in missing
        )
    return cfg


async def _serve(cfg: Config) -> None:
    from gateway.app import Gateway  # imported here: the other commands need no servers

    gateway = Gateway(cfg)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"referral-gateway serving: SMTP on {cfg.settings.smtp.host}:{gateway.smtp_port}, "
        f"HTTP on {cfg.settings.http.host}:{gateway.http_port}"
        + ("" if cfg.settings.mail.relay else f"; outbound mail in {cfg.maildir}"),
        flush=True,
    )
    await stop.wait()
    logging.getLogger("gateway").info("stopping")
    await gateway.stop()


def _raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one. systemd starts services with a soft limit of 1024
    (for programs that still use select(), which cannot watch a higher descriptor) and a hard one
    far above; asyncio uses epoll, so the hard limit is safe, and each SMTP or HTTP connection
    costs a descriptor. The unit's LimitNOFILE= sets both; this covers a start without it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logging.getLogger("gateway").warning("open files limit stays %d (%s)", soft, type(exc).__name__)
        return
    logging.getLogger("gateway").info("open files limit raised from %d to %d", soft, hard)


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    log_format.configure(cfg.settings.logging.format)
    _raise_open_files_limit()
    asyncio.run(_serve(cfg))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    s = cfg.settings
    unused = [t.id for t in s.teams if t.id not in {r.team for r in s.routes}]
    print(
        f"{args.config}: OK: {len(s.teams)} teams, {len(s.routes)} routes, "
        f"default route '{s.routes[-1].name}' to team '{s.routes[-1].team}'; "
        + (
            f"outbound mail via relay {s.mail.relay.host}:{s.mail.relay.port}"
            if s.mail.relay
            else f"outbound mail to the maildir {cfg.maildir}"
        )
    )
    smtp = s.smtp
    print(
        f"smtp: at most {smtp.max_sessions} sessions, {smtp.max_sessions_per_client} per client address; "
        f"idle timeout {_as_written(smtp.idle_timeout)} before DATA, {_as_written(smtp.timeout)} for DATA"
        # Said out loud: with it on, a sender connecting directly (not through the balancer) is
        # closed unanswered, which would otherwise look like an outage.
        + ("; PROXY protocol header required on every connection" if smtp.proxy_protocol else "")
    )
    print(monitoring.where(s))
    keys = s.keys
    refuse_gnupg_only(cfg)  # as `serve` does: keys only in keys/gnupg while the backend is sequoia
    home = cfg.keys_dir / keys.openpgp_dir()
    print(f"openpgp: the {keys.openpgp_backend} backend, keys in {home}")
    own = (
        [keys.openpgp_fingerprint]
        if keys.openpgp_fingerprint
        else [k.fingerprint for k in read_keys(keys.openpgp_backend, home)[0]]
    )
    notes, warnings = preference_lines(keys.openpgp_backend, home, own)
    for note in notes:
        print(f"openpgp: {note}")
    for warning in warnings:
        print(f"warning: {warning}")
    monitoring.metrics_token(cfg)  # a missing, short or world-readable token file fails here, as at start
    for team in unused:
        print(f"note: team '{team}' is in no route (it receives nothing until a route names it)")
    for note in partner_notes(s):
        print(f"note: {note}")
    for neighbour in s.neighbours:  # structured answers: "not ours, another authority" (README: "Safeguarding")
        how = (
            "the referral, encrypted to its key"
            if neighbour.openpgp or neighbour.smime_cert
            else "a notice with no personal data (no key: they must call us)"
        )
        print(f"neighbour: '{neighbour.name}' at {neighbour.address}: a forward carries {how}")
    start = _at(args.start) if args.start else SystemClock().now()
    for warning in calendar_warnings(s, start):
        print(f"warning: {warning}")
    for long in long_deadlines(s, start):
        print(f"warning: {long.text()}")
    found = gaps(s, start, args.days)
    for gap in found:
        for line in gap.lines():
            print(f"gap: {line}")
    if found:
        print(
            f"coverage: {len(found)} gap(s) in the {args.days} days from {uk_time(start)}. Fix: add rota shifts or "
            "overrides so that someone with an email or mobile is on duty then, or an out_of_hours team on the route"
        )
        return 1
    print(f"coverage: every route has someone reachable on duty for the {args.days} days from {uk_time(start)}")
    return 0


def _as_written(delta: timedelta) -> str:
    """A duration as the config writes it: the largest unit that divides it ("45s", "5m")."""
    ms = round(delta.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _at(text: str) -> datetime:
    """An ISO time; without a zone it is UK time: that is what a duty manager means by "16:55"."""
    given = datetime.fromisoformat(text)
    return (given if given.tzinfo else given.replace(tzinfo=LONDON)).astimezone(UTC)


def cmd_route(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    at = _at(args.at) if args.at else SystemClock().now()
    data = args.file.read_bytes()
    today = at.astimezone(LONDON).date()  # as processing does: a date of birth is a UK date
    if args.file.suffix.lower() == ".json":
        referral = parse_json(data, today)
    elif args.file.suffix.lower() == ".eml":
        try:
            opened = open_message(data)
        except MimeError as exc:  # nested too deep to read: processing quarantines it for the same reason
            print(f"error: {args.file}: {exc.reason}", file=sys.stderr)
            return 2
        referral, _ = parse_email(opened.text, opened.referral_json, today)
    else:
        referral = parse_text(data.decode("utf-8", errors="replace"), today)
    facts = Facts(at=at, channel=args.channel, organisation=referral.referrer.organisation)
    for line in explain(referral, cfg.settings, facts):
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    cfg = _load(args.config)

    async def undelivered(engine: AsyncEngine) -> str:
        rows = await report.undelivered(engine, cfg.settings, SystemClock().now())
        return report.render(rows, args.format, wide=args.wide)

    print(with_engine(cfg, undelivered), end="")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    problems = with_engine(_load(args.config), lambda engine: verify(engine, SystemClock().now()))
    for problem in problems:
        print(problem)
    print(
        "verify: OK: every accepted referral is tracked and the audit chain is intact"
        if not problems
        else f"verify: {len(problems)} problem(s) found"
    )
    return 1 if problems else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="referral-gateway",
        description="Secure referral gateway: takes safeguarding referrals by email, routes and alerts them, "
        "and tracks each until a named person acknowledges it.",
    )
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file (default: config/gateway.toml)")
        return p

    command("serve", "run the gateway (SMTP, HTTP, workers)").set_defaults(func=cmd_serve)
    p = command("check-config", "check the config and say what is wrong; prove duty coverage")
    p.add_argument("--from", dest="start", help="start of the coverage check (ISO time; default now)")
    p.add_argument("--days", type=int, default=28, help="how many days of coverage to check (default 28)")
    p.set_defaults(func=cmd_check_config)
    p = command("route", "show how a referral would be routed")
    p.add_argument(
        "--explain",
        dest="file",
        type=Path,
        required=True,
        help="a referral: .json (referral.json shape), .eml or a filled-in text template",
    )
    p.add_argument("--at", help="when it arrives (ISO time; UK local time if no zone; default now)")
    p.add_argument(
        "--channel", default="email", choices=("email", "web", "sms"), help="the channel it arrives by (default email)"
    )
    p.set_defaults(func=cmd_route)
    p = command("report", "reports for coordinators")
    p.add_argument("which", choices=["undelivered"])
    p.add_argument("--format", choices=report.FORMATS, default="table")
    p.add_argument(
        "--wide", action="store_true", help="a table: one line per item with every column in full (else 100 columns)"
    )
    p.set_defaults(func=cmd_report)
    command("verify", "check that every accepted referral is tracked").set_defaults(func=cmd_verify)
    # `backup`, `restore`, `purge`, `hold`, `reindex`, `keys ...`, `users ...`: their own modules
    from gateway.cli import backup as backup_cli
    from gateway.cli import keys as keys_cli
    from gateway.cli import reindex as reindex_cli
    from gateway.cli import retention as retention_cli
    from gateway.cli import users as users_cli

    keys_cli.register(sub, DEFAULT_CONFIG)
    users_cli.register(sub, DEFAULT_CONFIG)
    backup_cli.register(sub, DEFAULT_CONFIG)
    retention_cli.register(sub, DEFAULT_CONFIG)
    reindex_cli.register(sub, DEFAULT_CONFIG)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return 2
    except (KeyFileError, CryptoError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError) as exc:
        print(f"error: {exc.filename}: no such file", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print("interrupted", file=sys.stderr)
        return 130
