"""`relay accounts add|list|show|poll|update|delete`, and the baseline progress bar of `show`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from relay.cli.client import Call
from relay.cli.commands import add_command, add_paging, list_call
from relay.cli.output import print_record, show_done, show_list
from relay.errors import ConfigError

BAR_WIDTH = 30


def _duration(seconds: float) -> str:
    """A rough time for people: `~45 s`, `~18 min`, `~2 h 5 min`."""
    if seconds < 60:
        return f"~{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"~{minutes} min"
    return f"~{minutes // 60} h {minutes % 60} min"


def baseline_bar(progress: dict[str, Any]) -> str:
    """One line for an account's baseline progress, e.g.
    `[#########.....................] 12/30 clients, 4,210 items, ~18 min left`.

    The bar fills by items when their total is known (clients differ in size), else by
    clients; the text says what is known and nothing more.
    """
    done, total = progress.get("clients_done") or 0, progress.get("clients_total")
    seen, items = progress.get("items_seen") or 0, progress.get("items_total")
    if items:
        share = seen / items
    elif total:
        share = done / total
    else:
        share = 0.0
    filled = min(BAR_WIDTH, int(share * BAR_WIDTH))
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    clients = f"{done}/{total} clients" if total is not None else "client list not read yet"
    counted = f"{seen:,} of {items:,} items" if items is not None else f"{seen:,} items"
    left = progress.get("estimated_seconds_left")
    eta = f"{_duration(float(left))} left" if left is not None else "time left not known yet"
    return f"[{bar}] {clients}, {counted}, {eta}"


def _show_account(payload: Any) -> None:
    print_record(payload, skip=("baseline",))
    progress = payload.get("baseline")
    if progress:
        print(f"\nbaseline  {baseline_bar(progress)}")


def _account_add(a: argparse.Namespace) -> Call:
    read_stdin = a.api_token == "-"  # noqa: S105 - "-" means stdin, not a password
    token = sys.stdin.readline().strip() if read_stdin else a.api_token
    body: dict[str, Any] = {
        "provider": a.provider,
        "name": a.name,
        "base_url": a.base_url,
        "api_token": token,
    }
    if a.backfill:
        body["backfill"] = True
    return Call("POST", "/v1/accounts", {}, body)


def _account_update(a: argparse.Namespace) -> Call:
    body: dict[str, Any] = {}
    if a.name is not None:
        body["name"] = a.name
    if a.base_url is not None:
        body["base_url"] = a.base_url
    if a.api_token is not None:
        read_stdin = a.api_token == "-"  # noqa: S105 - "-" means stdin, not a password
        body["api_token"] = sys.stdin.readline().strip() if read_stdin else a.api_token
    if not body:
        raise ConfigError("nothing to change: give --name, --base-url or --api-token")
    return Call("PATCH", f"/v1/accounts/{a.id}", {}, body)


def add_account_commands(sub: Any, dispatch: Callable[..., int]) -> None:
    """Add `relay accounts ACTION` to the `relay` parser."""
    group = sub.add_parser(
        "accounts", help="upstream accounts: add, list, show, poll, update, delete"
    )
    group.set_defaults(func=dispatch)
    acts = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add_command(acts, "add", "add an upstream account", _account_add)
    p.add_argument("--provider", choices=["dext", "invoicext"], default="dext")
    p.add_argument("--name", required=True, help="a name people will recognise")
    p.add_argument("--base-url", required=True, help="the upstream API's base URL")
    p.add_argument("--api-token", required=True, help="the upstream token; '-' reads stdin")
    p.add_argument(
        "--backfill",
        action="store_true",
        help="send events for what the first scan finds, instead of a silent baseline",
    )
    add_paging(
        add_command(acts, "list", "list accounts", list_call("accounts", []), show_list("accounts"))
    )
    add_command(
        acts,
        "show",
        "show one account, with a bar of its baseline progress while it baselines",
        lambda a: Call("GET", f"/v1/accounts/{a.id}", {}),
        _show_account,
    ).add_argument("id", help="the account's id")
    add_command(
        acts, "poll", "poll an account now", lambda a: Call("POST", f"/v1/accounts/{a.id}/poll", {})
    ).add_argument("id", help="the account's id")
    p = add_command(acts, "update", "change an account's name, base URL or token", _account_update)
    p.add_argument("id", help="the account's id")
    p.add_argument("--name", help="a new name")
    p.add_argument("--base-url", help="a new upstream base URL")
    p.add_argument("--api-token", help="a new upstream token ('-' reads stdin); clears `broken`")
    add_command(
        acts,
        "delete",
        "delete an account: polling stops, its events are kept",
        lambda a: Call("DELETE", f"/v1/accounts/{a.id}", {}),
        show_done("deleted"),
        confirm=lambda a: f"Delete account {a.id} (polling stops for good)",
    ).add_argument("id", help="the account's id")
