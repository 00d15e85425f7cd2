"""Operator commands (`relay accounts|subscriptions|events|deliveries ...`) over the admin API.

They talk HTTP to `RELAY_API_URL` with `RELAY_ADMIN_TOKEN`, so they work against a remote
deployment exactly as against a local one, and print readable tables (or `--json`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from relay.errors import ConfigError, RelayError
from relay.settings import Settings


class AdminApiError(RelayError):
    """The admin API answered with an error envelope, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        self.status = status
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str]
    body: dict[str, Any] | None = None


async def _request(settings: Settings, call: Call) -> Any:
    if not settings.admin_token:
        raise ConfigError("RELAY_ADMIN_TOKEN is not set; the operator commands need it")
    url = settings.api_url + call.path
    headers = {"Authorization": f"Bearer {settings.admin_token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                call.method, url, params=call.params, json=call.body, headers=headers
            ) as response,
        ):
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise AdminApiError(
            f"cannot reach the admin API at {settings.api_url} ({exc or type(exc).__name__}); "
            "start it with `relay api` or set RELAY_API_URL"
        ) from exc
    try:
        payload = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise AdminApiError(
            f"the admin API answered {status} with a non-JSON body", status=status
        ) from None
    if status >= 400:
        error = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
        code = str(error.get("code", "error"))
        raise AdminApiError(
            f"{code}: {error.get('message', 'request failed')} (HTTP {status})",
            status=status,
            code=code,
        )
    return payload


# ------------------------------------------------------------------------------------- output
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Columns padded to their widest cell; long cells cut so a row fits a terminal."""
    cells = [[_cell(row.get(col))[:60] for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    print("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_record(record: dict[str, Any], *, skip: Sequence[str] = ()) -> None:
    width = max((len(k) for k in record), default=0)
    for key, value in record.items():
        if key in skip:
            continue
        text = (
            orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
            if isinstance(value, dict | list) and value
            else _cell(value)
        )
        print(f"{key.ljust(width)}  {text}")


def print_json(payload: Any) -> None:
    print(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())


# ------------------------------------------------------------------------------------ commands
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

LIST_COLUMNS = {
    "accounts": ["id", "provider", "name", "status", "last_poll_at", "last_error"],
    "subscriptions": ["id", "kind", "url", "event_types", "enabled", "disabled_reason"],
    "events": ["id", "type", "created_at", "client_id", "object_id"],
    "deliveries": [
        "id",
        "status",
        "attempt_count",
        "event_id",
        "subscription_id",
        "next_attempt_at",
    ],
}


def _params(args: argparse.Namespace, names: Sequence[str]) -> dict[str, str]:
    params = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            params[name] = str(value)
    return params


def _list_call(resource: str, filters: Sequence[str]) -> Callable[[argparse.Namespace], Call]:
    return lambda a: Call("GET", f"/v1/{resource}", _params(a, [*filters, "limit", "cursor"]))


def _show_list(resource: str) -> Callable[[Any], None]:
    def show(payload: Any) -> None:
        print_table(payload["data"], LIST_COLUMNS[resource])
        if payload.get("next_cursor"):
            print(f"\nmore: --cursor {payload['next_cursor']}")

    return show


def _show_one(payload: Any) -> None:
    print_record(payload, skip=("attempts",))
    attempts = payload.get("attempts")
    if attempts:
        print("\nattempts:")
        print_table(attempts, ["at", "status_code", "latency_ms", "error", "response_excerpt"])


def _show_secret(payload: Any) -> None:
    print_record(payload)
    print("\nKeep the secret now: it is shown only once.")


def _csv(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


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


def _subscription_add(a: argparse.Namespace) -> Call:
    body: dict[str, Any] = {"url": a.url, "kind": a.kind, "event_types": _csv(a.event_types)}
    for key, value in (
        ("account_ids", _csv(a.account_ids)),
        ("client_ids", _csv(a.client_ids)),
        ("filter", a.filter),
        ("description", a.description),
    ):
        if value is not None:
            body[key] = value
    return Call("POST", "/v1/subscriptions", {}, body)


def _delivery_retry(a: argparse.Namespace) -> Call:
    if a.all_failed:
        body: dict[str, Any] = {"status": "failed"}
        for key in ("subscription_id", "since", "until"):
            if getattr(a, key) is not None:
                body[key] = getattr(a, key)
        return Call("POST", "/v1/deliveries/retry", {}, body)
    if not a.id:
        raise ConfigError("give a delivery id, or --all-failed")
    return Call("POST", f"/v1/deliveries/{a.id}/retry", {})


def _event_replay(a: argparse.Namespace) -> Call:
    ids = _csv(a.subscription_ids)
    return Call("POST", f"/v1/events/{a.id}/replay", {}, {"subscription_ids": ids} if ids else {})


def _add(
    sub: Any,
    name: str,
    help_text: str,
    build: Callable[[argparse.Namespace], Call],
    show: Callable[[Any], None] = _show_one,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    parser.set_defaults(build=build, show=show)
    return parser


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, help="how many to list (default 50, at most 200)")
    parser.add_argument("--cursor", help="continue from the cursor a previous page printed")


def add_operator_commands(sub: Any, dispatch: Callable[..., int]) -> None:
    """Add `accounts`, `subscriptions`, `events` and `deliveries` to the `relay` parser."""
    # ---- accounts
    group = sub.add_parser("accounts", help="upstream accounts: add, list, show, poll")
    group.set_defaults(func=dispatch)
    acts = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(acts, "add", "add an upstream account", _account_add)
    p.add_argument("--provider", choices=["dext", "invoicext"], default="dext")
    p.add_argument("--name", required=True, help="a name people will recognise")
    p.add_argument("--base-url", required=True, help="the upstream API's base URL")
    p.add_argument("--api-token", required=True, help="the upstream token; '-' reads stdin")
    p.add_argument(
        "--backfill",
        action="store_true",
        help="send events for what the first scan finds, instead of a silent baseline",
    )
    _paging(_add(acts, "list", "list accounts", _list_call("accounts", []), _show_list("accounts")))
    _add(
        acts, "show", "show one account", lambda a: Call("GET", f"/v1/accounts/{a.id}", {})
    ).add_argument("id", help="the account's id")
    _add(
        acts, "poll", "poll an account now", lambda a: Call("POST", f"/v1/accounts/{a.id}/poll", {})
    ).add_argument("id", help="the account's id")

    # ---- subscriptions
    group = sub.add_parser("subscriptions", help="webhook and Slack subscriptions")
    group.set_defaults(func=dispatch)
    acts = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(
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
    p.epilog = OUTREACH_EXAMPLE
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    _paging(
        _add(
            acts,
            "list",
            "list subscriptions",
            _list_call("subscriptions", []),
            _show_list("subscriptions"),
        )
    )
    _add(
        acts,
        "show",
        "show one subscription",
        lambda a: Call("GET", f"/v1/subscriptions/{a.id}", {}),
    ).add_argument("id", help="the subscription's id")
    _add(
        acts,
        "rotate-secret",
        "new secret; the old one keeps signing for 24 h",
        lambda a: Call("POST", f"/v1/subscriptions/{a.id}/rotate-secret", {}),
        _show_secret,
    ).add_argument("id", help="the subscription's id")
    _add(
        acts,
        "test",
        "send a relay.ping event",
        lambda a: Call("POST", f"/v1/subscriptions/{a.id}/test", {}),
    ).add_argument("id", help="the subscription's id")

    # ---- events
    group = sub.add_parser("events", help="detected changes: list, show, replay")
    group.set_defaults(func=dispatch)
    acts = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    filters = ["type", "account_id", "client_id", "object_id", "since", "until"]
    p = _add(
        acts,
        "list",
        "list events, newest first",
        _list_call("events", filters),
        _show_list("events"),
    )
    for name in filters:
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            help="RFC 3339 time" if name in ("since", "until") else None,
        )
    _paging(p)
    _add(
        acts, "show", "show one event", lambda a: Call("GET", f"/v1/events/{a.id}", {})
    ).add_argument("id", help="the event's id")
    p = _add(acts, "replay", "deliver an event again (same webhook-id)", _event_replay)
    p.add_argument("id", help="the event's id")
    p.add_argument("--subscription-ids", help="comma-separated; default all matching")

    # ---- deliveries
    group = sub.add_parser("deliveries", help="webhook deliveries: list, show, retry")
    group.set_defaults(func=dispatch)
    acts = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    filters = ["status", "subscription_id", "event_id"]
    p = _add(
        acts,
        "list",
        "list deliveries, newest first",
        _list_call("deliveries", filters),
        _show_list("deliveries"),
    )
    p.add_argument("--status", choices=["pending", "succeeded", "failed"])
    p.add_argument("--subscription-id", dest="subscription_id")
    p.add_argument("--event-id", dest="event_id")
    _paging(p)
    _add(
        acts,
        "show",
        "show one delivery with every attempt",
        lambda a: Call("GET", f"/v1/deliveries/{a.id}", {}),
    ).add_argument("id", help="the delivery's id")
    p = _add(acts, "retry", "retry one delivery now, or every failed one", _delivery_retry)
    p.add_argument("id", nargs="?", help="the delivery's id (or --all-failed)")
    p.add_argument(
        "--all-failed",
        action="store_true",
        help="retry every failed delivery of an enabled subscription",
    )
    p.add_argument("--subscription-id", dest="subscription_id")
    p.add_argument("--since", help="with --all-failed: created at or after (RFC 3339)")
    p.add_argument("--until", help="with --all-failed: created before (RFC 3339)")

    # ---- event types
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


def _show_event_types(payload: Any, only: str | None) -> None:
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


def run_operator_command(args: argparse.Namespace, settings: Settings) -> int:
    """Build the call from the arguments, send it, and print the answer."""
    call: Call = args.build(args)
    try:
        payload = asyncio.run(_request(settings, call))
    except AdminApiError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(payload)
    elif args.show is None:  # `relay event-types`
        _show_event_types(payload, args.event_type)
    else:
        args.show(payload)
    return 0
