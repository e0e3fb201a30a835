"""A command group (`keys ...`, `users ...`) for the `referral-gateway` parser: each subcommand
takes --config, and the group's own error type becomes "error: ..." and exit 2, the message
saying what to do (the administrator reads it, not a traceback)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

Command = Callable[[argparse.Namespace], int]


def command_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    helptext: str,
    default_config: Path,
    errors: type[Exception],
) -> Callable[[str, str, Command], argparse.ArgumentParser]:
    """Adds the group; returns a function that adds one subcommand to it."""
    group = sub.add_parser(name, help=helptext)
    commands = group.add_subparsers(dest=f"{name}_command", required=True)

    def guarded(func: Command) -> Command:
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except errors as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2

        return run

    def command(command_name: str, command_help: str, func: Command) -> argparse.ArgumentParser:
        p = commands.add_parser(command_name, help=command_help, description=command_help)
        p.add_argument("--config", type=Path, default=default_config, help=f"config file (default: {default_config})")
        p.set_defaults(func=guarded(func))
        return p

    return command
