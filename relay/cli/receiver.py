"""`relay receiver`: a development endpoint that verifies and prints webhooks (`stripe listen`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from relay.delivery.signing import SECRET_PREFIX, secret_key, verify
from relay.errors import ConfigError, SignatureError

MAX_BODY = 5 * 1024 * 1024


@dataclass(frozen=True)
class ReceiverOptions:
    """What `relay receiver` was asked to do; `fail` first requests answer `status`."""

    host: str = "127.0.0.1"
    port: int = 9000
    secret: str = ""
    fail: int = 0
    delay: float = 0.0
    status: int = 500


@dataclass(frozen=True)
class Received:
    """One request as it arrived; `verified` says whether its signature checked out."""

    at: datetime
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int
    event: dict[str, Any] | None = field(default=None)

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


RECEIVED = web.AppKey("received", list[Received])
OPTIONS = web.AppKey("options", ReceiverOptions)
_COUNT = web.AppKey("count", list[int])


def _show(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("status", "name", "code", "id"):
            if key in value and not isinstance(value[key], dict | list):
                return str(value[key])
        return "{…}"
    if isinstance(value, list):
        return f"[{len(value)}]"
    return "null" if value is None else str(value)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def describe(event: dict[str, Any]) -> str:
    """One readable line: time, type, id, client, object and what changed (old -> new)."""
    if "webhook_id" in event and "event" in event:
        return _describe_seed_payload(event)
    data = _mapping(event.get("data"))
    obj = _mapping(data.get("object"))
    previous = _mapping(data.get("previous"))
    changes = ", ".join(f"{k}: {_show(v)} -> {_show(obj.get(k))}" for k, v in previous.items())
    parts = [
        str(event.get("created_at") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
        str(event.get("type", "?")),
        str(event.get("id", "?")),
        f"client={event.get('client_id') or '-'}",
        f"{event.get('object_type', 'object')}={event.get('object_id') or '-'}",
    ]
    if changes:
        parts.append(changes)
    return "  ".join(parts)


def _describe_seed_payload(body: dict[str, Any]) -> str:
    """InvoiceXT's webhook body (seed 004's payload): time, event, id and its data in brief."""
    data = _mapping(body.get("data"))
    shown = ", ".join(f"{k}: {_show(v)}" for k, v in data.items() if k != "id")
    parts = [
        str(body.get("timestamp", "?")),
        str(body.get("event", "?")),
        str(body.get("webhook_id", "?")),
        f"account={body.get('account_id') or '-'}",
        f"id={data.get('id') or '-'}",
    ]
    if shown:
        parts.append(shown)
    return "  ".join(parts)


async def _handle(request: web.Request) -> web.Response:
    options = request.app[OPTIONS]
    body = await request.read()
    headers = {k.lower(): v for k, v in request.headers.items()}
    count = request.app[_COUNT]
    if options.delay > 0:
        await asyncio.sleep(options.delay)
    try:
        verify(options.secret, request.headers, body)
        verified = True
    except SignatureError as exc:
        print(
            f"rejected  {headers.get('webhook-id', '-')}  bad signature: {exc.reason}", flush=True
        )
        verified = False
    event: dict[str, Any] | None = None
    if verified:
        try:
            parsed = orjson.loads(body)
            event = parsed if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            event = None
    status = 401 if not verified else 200
    if verified:
        count[0] += 1  # --fail counts webhooks that verified, not stray requests
        if count[0] <= options.fail:
            status = options.status
    request.app[RECEIVED].append(
        Received(
            at=datetime.now(UTC),
            path=request.path,
            headers=headers,
            body=body,
            verified=verified,
            status=status,
            event=event,
        )
    )
    if verified:
        line = describe(event) if event is not None else f"{headers.get('webhook-id')} (not JSON)"
        suffix = f"  -> answered {status} (--fail)" if status != 200 else ""
        print(line + suffix, flush=True)
    if status == 401:
        return web.json_response({"error": "invalid signature"}, status=401)
    return web.json_response({"received": status == 200}, status=status)


def create_receiver_app(options: ReceiverOptions) -> web.Application:
    """The receiver as an aiohttp app; `app[RECEIVED]` lists every request, for tests and demo."""
    problem = "--secret must be the subscription's whsec_... secret"
    if not options.secret.startswith(SECRET_PREFIX):
        raise ConfigError(problem)
    try:
        secret_key(options.secret)  # a malformed secret fails here, not on the first webhook
    except SignatureError as exc:
        raise ConfigError(problem) from exc
    app = web.Application(client_max_size=MAX_BODY)
    app[OPTIONS] = options
    app[RECEIVED] = []
    app[_COUNT] = [0]
    app.router.add_post("/{tail:.*}", _handle)
    return app


def run_receiver(options: ReceiverOptions) -> None:
    """Serve until Ctrl-C, printing one line per webhook."""
    app = create_receiver_app(options)
    print(f"relay receiver listening on http://{options.host}:{options.port}/", flush=True)
    web.run_app(app, host=options.host, port=options.port, print=None)
