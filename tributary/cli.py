"""`tributary` command line: run the embedded stack and inspect the settings.

Adding a subcommand is one function `(args, settings) -> exit code`, whose docstring's first line
is its help, plus one entry in COMMANDS (and, if it takes options, one in ARGUMENTS).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence

from tributary import stack
from tributary.airflow_env import admin_password, passwords_file
from tributary.settings import Settings, load_settings
from tributary.stack.report import render_table, status_table

Command = Callable[[argparse.Namespace, Settings], int]


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start the embedded platform (Postgres, Kafka, ES-API, Airflow) and wait until healthy."""
    started = time.monotonic()
    try:
        statuses = stack.up(settings)
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print(status_table(statuses))
    print()
    print(f"Airflow UI: {settings.airflow_url}")
    password = admin_password(settings)
    if password is None:
        print(f"Airflow login: {settings.airflow_user} (no password in {passwords_file(settings)} yet)")
    else:
        print(f"Airflow login: {settings.airflow_user} / {password}  (from {passwords_file(settings)})")
    print(f"ready in {time.monotonic() - started:.0f}s")
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    """Stop every process `up` started (nothing else)."""
    try:
        stack.down(settings)
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Show each component's state; exit 1 if any is not healthy."""
    statuses = stack.status(settings)
    print(status_table(statuses))
    return 0 if all(s.healthy for s in statuses) else 1


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    """Show every setting: environment variable, current value, meaning."""
    print(render_table(["variable", "value", "meaning"], settings.describe()))
    return 0


COMMANDS: dict[str, Command] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "settings": cmd_settings,
}

# Subcommands with options: name -> function adding them to the subcommand's parser.
ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per entry of COMMANDS."""
    parser = argparse.ArgumentParser(prog="tributary", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens in detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func in COMMANDS.items():
        summary = (func.__doc__ or "").strip().splitlines()[0]
        subparser = sub.add_parser(name, help=summary, description=summary)
        if name in ARGUMENTS:
            ARGUMENTS[name](subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tributary` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings()
    except ValueError as exc:  # a malformed TRIBUTARY_* variable; the message names it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
