"""Operator commands (`relay accounts|subscriptions|events|deliveries|jobs|event-types ...`) over
the admin API: this module adds them to the parser and runs the one that was parsed.

They talk HTTP to `RELAY_API_URL` with `RELAY_ADMIN_TOKEN`, so they work against a remote
deployment exactly as against a local one, and print readable tables (or `--json`). One module
per resource group builds them (`accounts`, `subscriptions`, `events`, `deliveries`, `jobs`), from
the parts in `commands` (building), `client` (sending) and `output` (printing); none of those
imports this one.

Every `/v1` route of the admin API has a command here: tests/cli/test_operator_complete.py
builds each command's `Call` and compares them with `GET /openapi.json`. A command that sends
something other than one `Call` (a stream, say) declares what it calls with
`set_defaults(routes=[("GET", "/v1/...")])`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from relay.cli.accounts import add_account_commands
from relay.cli.client import Call, request
from relay.cli.commands import confirmed
from relay.cli.deliveries import add_delivery_commands
from relay.cli.events import add_event_commands, add_event_type_commands, show_event_types
from relay.cli.jobs import add_job_commands
from relay.cli.output import print_json
from relay.cli.subscriptions import OUTREACH_FILTER, add_subscription_commands
from relay.errors import AdminApiError, ConfigError
from relay.settings import Settings

# OUTREACH_FILTER is re-exported: the outreach tests (tests/poller, tests/delivery) import it here.
__all__ = ["OUTREACH_FILTER", "add_operator_commands", "run_operator_command"]


def add_operator_commands(sub: Any, dispatch: Callable[..., int]) -> None:
    """Add `accounts`, `subscriptions`, `events`, `deliveries`, `jobs` and `event-types` to the
    `relay` parser (in the order `relay --help` lists them)."""
    add_account_commands(sub, dispatch)
    add_subscription_commands(sub, dispatch)
    add_event_commands(sub, dispatch)
    add_delivery_commands(sub, dispatch)
    add_job_commands(sub, dispatch)
    add_event_type_commands(sub, dispatch)


def run_operator_command(args: argparse.Namespace, settings: Settings) -> int:
    """Build the call from the arguments, confirm it if destructive, send it, print the answer."""
    try:
        call: Call = args.build(args)
        if not confirmed(args):
            print("relay: not done", file=sys.stderr)
            return 1
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    send: Callable[[Settings, Call], Coroutine[Any, Any, Any]] = (
        getattr(args, "send", None) or request
    )
    try:
        payload = asyncio.run(send(settings, call))
    except AdminApiError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(payload)
    elif args.show is None:  # `relay event-types`
        show_event_types(payload, args.event_type)
    else:
        args.show(payload)
    follow: Callable[..., int] | None = getattr(args, "follow", None)
    return follow(args, settings, payload) if follow is not None else 0
