"""`relay events list|show|replay` and `relay event-types` (the catalogue of what Relay emits)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from relay.cli.client import Call
from relay.cli.commands import add_command, add_paging, csv_list, list_call
from relay.cli.output import print_json, show_list
from relay.errors import ConfigError


def _event_replay(a: argparse.Namespace) -> Call:
    ids = csv_list(a.subscription_ids)
    return Call("POST", f"/v1/events/{a.id}/replay", {}, {"subscription_ids": ids} if ids else {})


def show_event_types(payload: Any, only: str | None) -> None:
    """The catalogue as one line per type; with `only`, that type and its example bodies."""
    entries = [e for e in payload["data"] if only in (None, e["type"])]
    if only is not None and not entries:
        raise ConfigError(f"no event type {only!r}; `relay event-types` lists them all")
    width = max((len(e["type"]) for e in entries), default=0)
    for entry in entries:
        providers = ",".join(entry["providers"])
        print(f"{entry['type'].ljust(width)}  {providers.ljust(14)}  {entry['description']}")
        if only is not None:
            for key in ("example", "webhook_example", "invoicext_example"):
                if key in entry:
                    print(f"\n{key.replace('_', ' ')}:")
                    print_json(entry[key])


def add_event_commands(sub: Any, dispatch: Callable[..., int]) -> None:
    """Add `relay events ACTION` to the `relay` parser."""
    group = sub.add_parser("events", help="detected changes: list, show, replay")
    group.set_defaults(func=dispatch)
    acts = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    filters = ["type", "account_id", "client_id", "object_id", "since", "until"]
    p = add_command(
        acts,
        "list",
        "list events, newest first",
        list_call("events", filters),
        show_list("events"),
    )
    for name in filters:
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            help="RFC 3339 time" if name in ("since", "until") else None,
        )
    add_paging(p)
    add_command(
        acts, "show", "show one event", lambda a: Call("GET", f"/v1/events/{a.id}", {})
    ).add_argument("id", help="the event's id")
    p = add_command(acts, "replay", "deliver an event again (same webhook-id)", _event_replay)
    p.add_argument("id", help="the event's id")
    p.add_argument("--subscription-ids", help="comma-separated; default all matching")


def add_event_type_commands(sub: Any, dispatch: Callable[..., int]) -> None:
    """Add `relay event-types [--type T] [--json]` to the `relay` parser."""
    p = sub.add_parser(
        "event-types",
        help="every event type Relay emits, with a description (and example bodies)",
        description="Lists GET /v1/event-types: each type, who emits it and when. --type shows "
        "one type with its example body; --json prints the whole catalogue with every example.",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    p.add_argument("--type", dest="event_type", help="only this type, with its example body")
    p.set_defaults(
        func=dispatch,
        build=lambda a: Call("GET", "/v1/event-types", {}),
        show=None,
    )
