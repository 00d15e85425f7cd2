"""Operator commands (`relay accounts|subscriptions|events|deliveries ...`) over the admin API.

They talk HTTP to `RELAY_API_URL` with `RELAY_ADMIN_TOKEN`, so they work against a remote
deployment exactly as against a local one, and print readable tables (or `--json`).

Every `/v1` route of the admin API has a command here: tests/cli/test_operator_complete.py
builds each command's `Call` and compares them with `GET /openapi.json`. A command that sends
something other than one `Call` (a stream, say) declares what it calls with
`set_defaults(routes=[("GET", "/v1/...")])`.
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
    return _csv(text)


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


def _subscription_update(a: argparse.Namespace) -> Call:
    body: dict[str, Any] = {}
    for key in ("url", "kind", "description"):
        if getattr(a, key) is not None:
            body[key] = getattr(a, key)
    if a.event_types is not None:
        body["event_types"] = _csv(a.event_types)
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


def _event_replay(a: argparse.Namespace) -> Call:
    ids = _csv(a.subscription_ids)
    return Call("POST", f"/v1/events/{a.id}/replay", {}, {"subscription_ids": ids} if ids else {})


def _add(
    sub: Any,
    name: str,
    help_text: str,
    build: Callable[[argparse.Namespace], Call],
    show: Callable[[Any], None] = _show_one,
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


def _show_done(what: str) -> Callable[[Any], None]:
    return lambda payload: print(what)


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


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, help="how many to list (default 50, at most 200)")
    parser.add_argument("--cursor", help="continue from the cursor a previous page printed")


def add_operator_commands(sub: Any, dispatch: Callable[..., int]) -> None:
    """Add `accounts`, `subscriptions`, `events` and `deliveries` to the `relay` parser."""
    # ---- accounts
    group = sub.add_parser(
        "accounts", help="upstream accounts: add, list, show, poll, update, delete"
    )
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
        acts,
        "show",
        "show one account, with a bar of its baseline progress while it baselines",
        lambda a: Call("GET", f"/v1/accounts/{a.id}", {}),
        _show_account,
    ).add_argument("id", help="the account's id")
    _add(
        acts, "poll", "poll an account now", lambda a: Call("POST", f"/v1/accounts/{a.id}/poll", {})
    ).add_argument("id", help="the account's id")
    p = _add(acts, "update", "change an account's name, base URL or token", _account_update)
    p.add_argument("id", help="the account's id")
    p.add_argument("--name", help="a new name")
    p.add_argument("--base-url", help="a new upstream base URL")
    p.add_argument("--api-token", help="a new upstream token ('-' reads stdin); clears `broken`")
    _add(
        acts,
        "delete",
        "delete an account: polling stops, its events are kept",
        lambda a: Call("DELETE", f"/v1/accounts/{a.id}", {}),
        _show_done("deleted"),
        confirm=lambda a: f"Delete account {a.id} (polling stops for good)",
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
    p.add_argument(
        "--ordering",
        choices=["none", "object"],
        help="object: the events of one object one at a time, in sequence order (default none)",
    )
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
    p = _add(acts, "update", "change a subscription", _subscription_update)
    p.add_argument("id", help="the subscription's id")
    p.add_argument("--url", help="a new endpoint (http or https)")
    p.add_argument("--kind", choices=["webhook", "slack"])
    p.add_argument("--event-types", help="comma-separated types or wildcards (replaces them)")
    p.add_argument("--account-ids", help="comma-separated account ids; 'any' removes the limit")
    p.add_argument("--client-ids", help="comma-separated client ids; 'any' removes the limit")
    p.add_argument("--filter", help="a JMESPath expression; '' removes the filter")
    p.add_argument("--description")
    _add(
        acts,
        "enable",
        "resume deliveries to a subscription",
        _subscription_enabled(True),
    ).add_argument("id", help="the subscription's id")
    _add(
        acts,
        "disable",
        "pause deliveries to a subscription (queued ones are recorded as not sent)",
        _subscription_enabled(False),
        confirm=lambda a: f"Disable subscription {a.id} (its queued deliveries will not be sent)",
    ).add_argument("id", help="the subscription's id")
    _add(
        acts,
        "delete",
        "delete a subscription (its deliveries stay readable)",
        lambda a: Call("DELETE", f"/v1/subscriptions/{a.id}", {}),
        _show_done("deleted"),
        confirm=lambda a: f"Delete subscription {a.id} (no more webhooks to it)",
    ).add_argument("id", help="the subscription's id")
    _add(
        acts,
        "test",
        "send a relay.ping event",
        lambda a: Call("POST", f"/v1/subscriptions/{a.id}/test", {}),
    ).add_argument("id", help="the subscription's id")
    from relay.cli.jobs import add_recovery_commands

    add_recovery_commands(acts, _add)

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
    p.add_argument(
        "--step",
        type=int,
        default=RETRY_STEP,
        help=f"with --all-failed: deliveries queued per request (default {RETRY_STEP}); "
        "progress is shown after each",
    )

    # ---- jobs (replays and backfills started by `relay subscriptions replay|backfill`)
    from relay.cli.jobs import add_job_commands

    add_job_commands(sub, dispatch, _add)

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
            payload = await _request(settings, call)
            total += int(payload["queued"])
            line.update(f"retry: {total:,} failed deliveries queued")
            if payload["queued"] < step:
                break
    finally:
        line.finish()
    return {"queued": total}


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
    """Build the call from the arguments, confirm it if destructive, send it, print the answer."""
    try:
        call: Call = args.build(args)
        if not confirmed(args):
            print("relay: not done", file=sys.stderr)
            return 1
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    try:
        if call.body is not None and "limit" in call.body and call.path == "/v1/deliveries/retry":
            payload = asyncio.run(_retry_in_steps(settings, call))
        else:
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
    follow: Callable[..., int] | None = getattr(args, "follow", None)
    return follow(args, settings, payload) if follow is not None else 0
