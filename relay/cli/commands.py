"""What every operator command is built from: `add_command` (its `--json`, `build`, `show`
and, for a destructive one, `--yes` and the question), list calls with paging, and `confirmed`.

Each resource group (accounts, subscriptions, events, deliveries, jobs) adds its commands with
these; `relay.cli.operator` runs whichever one was parsed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from relay.cli.client import Call
from relay.cli.output import show_one
from relay.errors import ConfigError


def csv_list(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def query_params(args: argparse.Namespace, names: Sequence[str]) -> dict[str, str]:
    params = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            params[name] = str(value)
    return params


def list_call(resource: str, filters: Sequence[str]) -> Callable[[argparse.Namespace], Call]:
    return lambda a: Call("GET", f"/v1/{resource}", query_params(a, [*filters, "limit", "cursor"]))


def add_command(
    sub: Any,
    name: str,
    help_text: str,
    build: Callable[[argparse.Namespace], Call],
    show: Callable[[Any], None] = show_one,
    *,
    confirm: Callable[[argparse.Namespace], str] | None = None,
) -> argparse.ArgumentParser:
    """One command. `confirm` makes it destructive: it gives the question asked on a terminal
    before anything is sent, and the command takes `--yes` to skip it (and needs it when stdin
    is not a terminal: a script must say so rather than hang on a prompt or guess)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    if confirm is not None:
        parser.add_argument("--yes", action="store_true", help="do it without asking")
    parser.set_defaults(build=build, show=show, confirm=confirm)
    return parser


def add_paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, help="how many to list (default 50, at most 200)")
    parser.add_argument("--cursor", help="continue from the cursor a previous page printed")


def confirmed(args: argparse.Namespace) -> bool:
    """Whether a destructive command may go ahead: `--yes`, or "y" typed at the prompt.

    Raises ConfigError when stdin is not a terminal and `--yes` was not given."""
    question: Callable[[argparse.Namespace], str] | None = getattr(args, "confirm", None)
    if question is None or getattr(args, "yes", False):
        return True
    if not sys.stdin.isatty():
        raise ConfigError(
            f"{question(args)}: refusing without --yes, because stdin is not a terminal to ask on"
        )
    answer = input(f"{question(args)}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")
