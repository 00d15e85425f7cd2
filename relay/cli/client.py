"""The admin API client of the operator commands: one `Call`, sent by `request`.

The commands talk HTTP to `RELAY_API_URL` with `RELAY_ADMIN_TOKEN`, so they work against a remote
deployment exactly as against a local one. A failure, of the network or an error envelope, is
an `AdminApiError` (relay/errors.py) carrying the status and the envelope's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from relay.errors import AdminApiError, ConfigError
from relay.settings import Settings


@dataclass(frozen=True)
class Call:
    """One admin API request: a method, a path under the API's base URL, query and body."""

    method: str
    path: str
    params: dict[str, str]
    body: dict[str, Any] | None = None


async def request(settings: Settings, call: Call) -> Any:
    """Send `call`; the decoded JSON answer (None for an empty body), or AdminApiError."""
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
