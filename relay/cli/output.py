"""How the operator commands print: tables padded to fit a terminal, records, JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson


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


def show_list(resource: str) -> Callable[[Any], None]:
    def show(payload: Any) -> None:
        print_table(payload["data"], LIST_COLUMNS[resource])
        if payload.get("next_cursor"):
            print(f"\nmore: --cursor {payload['next_cursor']}")

    return show


def show_one(payload: Any) -> None:
    print_record(payload, skip=("attempts",))
    attempts = payload.get("attempts")
    if attempts:
        print("\nattempts:")
        print_table(attempts, ["at", "status_code", "latency_ms", "error", "response_excerpt"])


def show_done(what: str) -> Callable[[Any], None]:
    return lambda payload: print(what)
