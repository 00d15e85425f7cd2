"""`relay subscriptions add|list|show|rotate-secret|update|enable|disable|delete|test`, and
the recovery jobs they start (`replay`, `backfill`: relay/cli/jobs.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from relay.cli.client import Call
from relay.cli.commands import add_command, add_paging, csv_list, list_call
from relay.cli.jobs import add_recovery_commands
from relay.cli.output import print_record, show_done, show_list
from relay.errors import ConfigError

# Shown under `relay subscriptions add --help`. `previous` holds only the fields that changed,
# so asking whether `alert_level` is among them fires once, when the client *became* high; a
# score refresh while it stays high does not match (tests/delivery/test_outreach.py).
OUTREACH_FILTER = (
    "data.object.alert_level == 'high' && contains(keys(data.previous), 'alert_level')"
)

OUTREACH_EXAMPLE = f"""example: a Slack message when a client's alert level becomes high
  relay subscriptions add --kind slack --url https://hooks.slack.com/services/... \\
      --event-types client.health_changed \\
      --filter "{OUTREACH_FILTER}"
"""


def _show_secret(payload: Any) -> None:
    print_record(payload)
    print("\nKeep the secret now: it is shown only once.")


def _subscription_add(a: argparse.Namespace) -> Call:
    body: dict[str, Any] = {"url": a.url, "kind": a.kind, "event_types": csv_list(a.event_types)}
    for key, value in (
        ("account_ids", csv_list(a.account_ids)),
        ("client_ids", csv_list(a.client_ids)),
        ("filter", a.filter),
        ("description", a.description),
        ("ordering", a.ordering),
    ):
        if value is not None:
            body[key] = value
    return Call("POST", "/v1/subscriptions", {}, body)


def _nullable_csv(text: str | None) -> list[str] | str | None:
    """`--account-ids any` (or '') clears the list (null: any); None: not given."""
    if text is None:
        return "unset"
    if text.strip().lower() in ("", "any"):
        return None
    return csv_list(text)


def _subscription_update(a: argparse.Namespace) -> Call:
    body: dict[str, Any] = {}
    for key in ("url", "kind", "description"):
        if getattr(a, key) is not None:
            body[key] = getattr(a, key)
    if a.event_types is not None:
        body["event_types"] = csv_list(a.event_types)
    for key in ("account_ids", "client_ids"):
        value = _nullable_csv(getattr(a, key))
        if value != "unset":
            body[key] = value
    if a.filter is not None:
        body["filter"] = a.filter or None  # --filter '' removes it
    if not body:
        raise ConfigError("nothing to change: give at least one option (see --help)")
    return Call("PATCH", f"/v1/subscriptions/{a.id}", {}, body)


def _subscription_enabled(enabled: bool) -> Callable[[argparse.Namespace], Call]:
    return lambda a: Call("PATCH", f"/v1/subscriptions/{a.id}", {}, {"enabled": enabled})


def add_subscription_commands(sub: Any, dispatch: Callable[..., int]) -> None:
    """Add `relay subscriptions ACTION` to the `relay` parser."""
    group = sub.add_parser("subscriptions", help="webhook and Slack subscriptions")
    group.set_defaults(func=dispatch)
    acts = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add_command(
        acts, "add", "add a subscription (prints its secret once)", _subscription_add, _show_secret
    )
    p.add_argument("--url", required=True, help="the endpoint (http or https)")
    p.add_argument("--kind", choices=["webhook", "slack"], default="webhook")
    p.add_argument(
        "--event-types",
        default="*",
        help="comma-separated types or wildcards, e.g. 'document.*,client.health_changed'",
    )
    p.add_argument("--account-ids", help="comma-separated account ids to limit it to")
    p.add_argument("--client-ids", help="comma-separated client ids to limit it to")
    p.add_argument("--filter", help="a JMESPath expression on the event body")
    p.add_argument("--description")
    p.add_argument(
        "--ordering",
        choices=["none", "object"],
        help="object: the events of one object one at a time, in sequence order (default none)",
    )
    p.epilog = OUTREACH_EXAMPLE
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_paging(
        add_command(
            acts,
            "list",
            "list subscriptions",
            list_call("subscriptions", []),
            show_list("subscriptions"),
        )
    )
    add_command(
        acts,
        "show",
        "show one subscription",
        lambda a: Call("GET", f"/v1/subscriptions/{a.id}", {}),
    ).add_argument("id", help="the subscription's id")
    add_command(
        acts,
        "rotate-secret",
        "new secret; the old one keeps signing for 24 h",
        lambda a: Call("POST", f"/v1/subscriptions/{a.id}/rotate-secret", {}),
        _show_secret,
    ).add_argument("id", help="the subscription's id")
    p = add_command(acts, "update", "change a subscription", _subscription_update)
    p.add_argument("id", help="the subscription's id")
    p.add_argument("--url", help="a new endpoint (http or https)")
    p.add_argument("--kind", choices=["webhook", "slack"])
    p.add_argument("--event-types", help="comma-separated types or wildcards (replaces them)")
    p.add_argument("--account-ids", help="comma-separated account ids; 'any' removes the limit")
    p.add_argument("--client-ids", help="comma-separated client ids; 'any' removes the limit")
    p.add_argument("--filter", help="a JMESPath expression; '' removes the filter")
    p.add_argument("--description")
    add_command(
        acts,
        "enable",
        "resume deliveries to a subscription",
        _subscription_enabled(True),
    ).add_argument("id", help="the subscription's id")
    add_command(
        acts,
        "disable",
        "pause deliveries to a subscription (queued ones are recorded as not sent)",
        _subscription_enabled(False),
        confirm=lambda a: f"Disable subscription {a.id} (its queued deliveries will not be sent)",
    ).add_argument("id", help="the subscription's id")
    add_command(
        acts,
        "delete",
        "delete a subscription (its deliveries stay readable)",
        lambda a: Call("DELETE", f"/v1/subscriptions/{a.id}", {}),
        show_done("deleted"),
        confirm=lambda a: f"Delete subscription {a.id} (no more webhooks to it)",
    ).add_argument("id", help="the subscription's id")
    add_command(
        acts,
        "test",
        "send a relay.ping event",
        lambda a: Call("POST", f"/v1/subscriptions/{a.id}/test", {}),
    ).add_argument("id", help="the subscription's id")
    add_recovery_commands(acts)
