"""`relay listen`: follow the API's live event stream and forward each event to a local URL.

Like `stripe listen`: the developer's machine opens the connection (`GET /v1/events/stream`),
so it needs no public address and the relay makes no outbound call for it. Each event is
POSTed with Standard Webhooks headers signed by a secret printed at start, so the local
endpoint verifies exactly as it will in production. A dropped stream reconnects with
`Last-Event-ID`, so nothing stored meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from relay.delivery.signing import generate_secret, secret_key, webhook_headers
from relay.delivery.subscriptions import type_matches
from relay.errors import ConfigError, SignatureError
from relay.settings import Settings

_RECONNECT_DELAY = 1.0


@dataclass(frozen=True)
class ListenOptions:
    forward_to: str
    event_types: tuple[str, ...] = ("*",)
    secret: str | None = None
    timeout: float = 10.0


def _say(text: str) -> None:
    print(text, flush=True)


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The events of a server-sent event response, as parsed JSON bodies."""
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line:
            if data:
                body = orjson.loads("\n".join(data))
                if isinstance(body, dict):
                    yield body
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


class Listener:
    """One `relay listen` run: the stream, the forwarding and the printed lines."""

    def __init__(self, settings: Settings, options: ListenOptions) -> None:
        if not settings.admin_token:
            raise ConfigError("RELAY_ADMIN_TOKEN is not set; `relay listen` needs it")
        self.settings = settings
        self.options = options
        self.secret = options.secret or generate_secret()
        try:
            self.keys = [secret_key(self.secret)]
        except SignatureError as exc:
            raise ConfigError(f"--secret: {exc}") from exc
        self.last_event_id: str | None = None

    def _query(self) -> dict[str, str]:
        # The stream takes one type pattern; several are matched here instead.
        types = self.options.event_types
        return {"type": types[0]} if len(types) == 1 and types[0] != "*" else {}

    async def forward(self, http: aiohttp.ClientSession, event: dict[str, Any]) -> None:
        body = orjson.dumps(event)
        headers = webhook_headers(self.keys, str(event["id"]), body)
        started = time.perf_counter()
        try:
            async with http.post(
                self.options.forward_to, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                outcome = f"[{response.status}]"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            outcome = f"[failed: {type(exc).__name__}: {exc}]"
        elapsed = (time.perf_counter() - started) * 1000
        _say(f"{event.get('created_at')}  --> {event.get('type')} [{event['id']}]")
        _say(
            f"{event.get('created_at')}  <-- {outcome} POST {self.options.forward_to} "
            f"({elapsed:.0f} ms)"
        )

    async def follow_once(self, http: aiohttp.ClientSession) -> None:
        """One connection to the stream, until it ends; remembers the last event it forwarded."""
        headers = {
            "Authorization": f"Bearer {self.settings.admin_token}",
            "Accept": "text/event-stream",
        }
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        url = self.settings.api_url + "/v1/events/stream"
        async with http.get(
            url,
            params=self._query(),
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=10,
                sock_read=60,  # heartbeats come every 15 s
            ),
        ) as response:
            if response.status != 200:
                raw = await response.read()
                try:
                    message = orjson.loads(raw)["error"]["message"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    message = raw[:200].decode(errors="replace")
                raise ConfigError(f"the event stream answered {response.status}: {message}")
            async for event in read_events(response):
                if type_matches(self.options.event_types, str(event.get("type", ""))):
                    await self.forward(http, event)
                self.last_event_id = str(event["id"])

    async def run(self) -> int:
        _say(
            f"Ready! Forwarding events from {self.settings.api_url} to "
            f"{self.options.forward_to}\nYour webhook signing secret is {self.secret} "
            "(^C to quit)"
        )
        timeout = aiohttp.ClientTimeout(total=self.options.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    await self.follow_once(http)
                    reason = "the stream ended"
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                print(f"relay listen: {reason}; reconnecting", file=sys.stderr, flush=True)
                await asyncio.sleep(_RECONNECT_DELAY)


def run_listen(settings: Settings, options: ListenOptions) -> int:
    """Follow and forward until Ctrl-C."""
    listener = Listener(settings, options)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(listener.run())
    return 130


def parse_event_types(text: str | None) -> Sequence[str]:
    types = tuple(t.strip() for t in (text or "*").split(",") if t.strip())
    return types or ("*",)
