"""Commands for the `referral-gateway` parser, in a group (`keys ...`, `users ...`) or at the top
level (`backup`, `purge`, ...): each takes --config, and the commands' own error type becomes
"error: ..." and exit 2, the message saying what to do (the administrator reads it, not a
traceback)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

Command = Callable[[argparse.Namespace], int]


def guarded(func: Command, errors: type[Exception]) -> Command:
    """`func`, with `errors` printed as "error: ..." and exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except errors as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def _commands(
    parsers: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path, errors: type[Exception]
) -> Callable[[str, str, Command], argparse.ArgumentParser]:
    def command(name: str, helptext: str, func: Command) -> argparse.ArgumentParser:
        p = parsers.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--config", type=Path, default=default_config, help=f"config file (default: {default_config})")
        p.set_defaults(func=guarded(func, errors))
        return p

    return command


def top_level(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path, errors: type[Exception]
) -> Callable[[str, str, Command], argparse.ArgumentParser]:
    """Returns a function that adds one command at the top level."""
    return _commands(sub, default_config, errors)


def command_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    helptext: str,
    default_config: Path,
    errors: type[Exception],
) -> Callable[[str, str, Command], argparse.ArgumentParser]:
    """Adds the group; returns a function that adds one subcommand to it."""
    group = sub.add_parser(name, help=helptext)
    return _commands(group.add_subparsers(dest=f"{name}_command", required=True), default_config, errors)
