"""What both simulated upstreams speak: the JSON object type, RFC 3339 times, JSON answers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

JSON = dict[str, Any]


def rfc3339(at: float) -> str:
    """Unix seconds as `2026-04-14T09:00:00Z` (whole seconds, UTC), as both contracts spell it."""
    return datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def json_response(
    data: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    default: Callable[[Any], Any] | None = None,
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=default),
        status=status,
        content_type="application/json",
        headers=headers,
    )
