"""The shared aiohttp client session for upstream APIs, with explicit timeouts and orjson."""

from __future__ import annotations

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
