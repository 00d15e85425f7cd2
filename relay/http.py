"""HTTP helpers every stage shares: the aiohttp client session for upstream APIs (explicit
timeouts, orjson) and the one `Retry-After` parser (upstream 429s and subscriber endpoints)."""

from __future__ import annotations

import math
from datetime import UTC
from email.utils import parsedate_to_datetime

import aiohttp
import orjson

USER_AGENT = "relay/0.1"


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def create_client_session(
    *,
    timeout: float = 30.0,
    connect_timeout: float = 10.0,
    limit: int = 100,
    limit_per_host: int = 20,
) -> aiohttp.ClientSession:
    """One session per process (open it in a startup hook or cleanup_ctx, close it on shutdown).

    Every upstream call gets a total timeout; callers may pass a shorter one per request.
    Redirects are the caller's choice per request; upstream connectors use plain GETs and POSTs.
    """
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout, connect=connect_timeout),
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host),
        headers={"User-Agent": USER_AGENT},
        json_serialize=_dumps,
        raise_for_status=False,
    )


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header, or None when it is absent or garbled.

    RFC 9110 allows delta-seconds or an HTTP date; `now` (epoch seconds) turns a date into a
    delay. Liberal in what it reads: a decimal number of seconds is taken too, and a past date or
    a negative number means "now" (0.0). Callers cap the result to what they will wait.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(when.timestamp() - now, 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None
