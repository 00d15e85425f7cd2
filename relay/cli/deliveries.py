"""`relay deliveries list|show|retry`, with `retry --all-failed` sent in steps."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from relay.cli.client import Call, request
from relay.cli.commands import add_command, add_paging, list_call
from relay.cli.output import show_list
from relay.errors import ConfigError
from relay.settings import Settings

# `deliveries retry --all-failed` queues this many per call, so thousands show progress and no
# single call holds thousands of row locks for long.
RETRY_STEP = 500


def _delivery_retry(a: argparse.Namespace) -> Call:
    if a.all_failed:
        body: dict[str, Any] = {"status": "failed", "limit": a.step}
        for key in ("subscription_id", "since", "until"):
            if getattr(a, key) is not None:
                body[key] = getattr(a, key)
        return Call("POST", "/v1/deliveries/retry", {}, body)
    if not a.id:
        raise ConfigError("give a delivery id, or --all-failed")
    return Call("POST", f"/v1/deliveries/{a.id}/retry", {})


async def _retry_in_steps(settings: Settings, call: Call) -> dict[str, int]:
    """Repeat a bulk retry of `limit` deliveries until a step queues fewer; progress on stderr.

    Deliveries queued by one step are `pending`, so the next step cannot pick them again; a
    step that queues fewer than `limit` found no more."""
    from relay.cli.progress import ProgressLine

    assert call.body is not None
    step = int(call.body["limit"])
    line = ProgressLine()
    total = 0
    try:
        while True:
            payload = await request(settings, call)
            total += int(payload["queued"])
            line.update(f"retry: {total:,} failed deliveries queued")
            if payload["queued"] < step:
                break
    finally:
        line.finish()
    return {"queued": total}


async def send_retry(settings: Settings, call: Call) -> Any:
    """`deliveries retry`: one request for one delivery, steps of `--step` for `--all-failed`."""
    if call.body is not None and "limit" in call.body and call.path == "/v1/deliveries/retry":
        return await _retry_in_steps(settings, call)
    return await request(settings, call)


def add_delivery_commands(sub: Any, dispatch: Callable[..., int]) -> None:
    """Add `relay deliveries ACTION` to the `relay` parser."""
    group = sub.add_parser("deliveries", help="webhook deliveries: list, show, retry")
    group.set_defaults(func=dispatch)
    acts = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    filters = ["status", "subscription_id", "event_id"]
    p = add_command(
        acts,
        "list",
        "list deliveries, newest first",
        list_call("deliveries", filters),
        show_list("deliveries"),
    )
    p.add_argument("--status", choices=["pending", "succeeded", "failed"])
    p.add_argument("--subscription-id", dest="subscription_id")
    p.add_argument("--event-id", dest="event_id")
    add_paging(p)
    add_command(
        acts,
        "show",
        "show one delivery with every attempt",
        lambda a: Call("GET", f"/v1/deliveries/{a.id}", {}),
    ).add_argument("id", help="the delivery's id")
    p = add_command(acts, "retry", "retry one delivery now, or every failed one", _delivery_retry)
    p.add_argument("id", nargs="?", help="the delivery's id (or --all-failed)")
    p.add_argument(
        "--all-failed",
        action="store_true",
        help="retry every failed delivery of an enabled subscription",
    )
    p.add_argument("--subscription-id", dest="subscription_id")
    p.add_argument("--since", help="with --all-failed: created at or after (RFC 3339)")
    p.add_argument("--until", help="with --all-failed: created before (RFC 3339)")
    p.add_argument(
        "--step",
        type=int,
        default=RETRY_STEP,
        help=f"with --all-failed: deliveries queued per request (default {RETRY_STEP}); "
        "progress is shown after each",
    )
    p.set_defaults(send=send_retry)
