"""The control surface under `/_sandbox/` both upstreams serve (outside the contract, no auth).

Shared where the semantics are the same: the state, the clock (`/clock/advance`), the ground-
truth change log (`GET /changes`), faults (`/faults`: arm, list, clear) and the requests served
(`/requests`, `/requests/summary`). Each provider subclasses `Control` to answer these in its
own JSON (the `*_reply` methods) and to register its own actions (`provider_routes`: scripted
changes, tokens, simulation switches, drift, sessions). Errors are `ControlError`s, answered in
the provider's envelope (`error`) by `control_errors`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from relay.sandbox.clock import SimClock
from relay.sandbox.faults import KINDS, Fault, Faults, parse_fault
from relay.sandbox.records import ChangeLog, RequestLog
from relay.sandbox.wire import JSON, json_response

PREFIX: Final = "/_sandbox"
# One advance may cover at most this much simulated time, so a typo cannot hang the server.
MAX_ADVANCE: Final = 90 * 86400.0


class ControlError(Exception):
    """A refused control (or contract) request: status, a snake_case code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)


class Upstream(Protocol):
    """What the shared routes need of a provider's in-process state."""

    clock: SimClock
    faults: Faults

    @property
    def changes_log(self) -> ChangeLog: ...

    @property
    def request_log(self) -> RequestLog: ...

    def sync(self) -> float: ...

    def advance(self, seconds: float) -> list[JSON]: ...

    def state(self) -> JSON: ...


async def read_body(request: web.Request) -> Any:
    """The request's JSON body (`{}` when empty)."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ControlError(400, "validation_error", "body must be JSON") from None


async def read_object(request: web.Request) -> JSON:
    body = await read_body(request)
    if not isinstance(body, dict):
        raise ControlError(400, "validation_error", "body must be a JSON object")
    return body


def number(body: JSON, name: str, *, low: float = 0.0) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ControlError(400, "validation_error", f"{name} must be a number")
    if value < low:
        raise ControlError(400, "validation_error", f"{name} must be at least {low}")
    return float(value)


def query_int(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ControlError(400, "validation_error", f"{name} must be an integer") from None
    if value < 0:
        raise ControlError(400, "validation_error", f"{name} must not be negative")
    return value


class Control:
    """The shared `/_sandbox` routes over one provider's `upstream`."""

    fault_kinds: frozenset[str] = KINDS
    fault_aliases: Mapping[str, str] | None = None
    too_far: str = f"seconds must be from 0 to {MAX_ADVANCE:.0f}"

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    # -- the provider's JSON --------------------------------------------------------------

    def error(self, status: int, code: str, message: str) -> web.Response:
        return json_response({"error": {"code": code, "message": message}}, status)

    def reply(self, payload: Any, status: int = 200) -> web.Response:
        return json_response(payload, status)

    def advanced_reply(self, changes: list[JSON]) -> JSON:
        state = self.upstream.state()
        return {"now": state["now"], "now_unix": state["now_unix"], "changes": changes}

    def changes_reply(self, entries: list[JSON]) -> JSON:
        return {"data": entries, "change_seq": self.upstream.changes_log.seq}

    def fault_reply(self, fault: Fault) -> tuple[JSON, int]:
        return {"armed": [f.describe() for f in self.upstream.faults.armed]}, 201

    def cleared_reply(self, cleared: int) -> JSON:
        return {"cleared": cleared}

    def requests_reply(self, since: int) -> JSON:
        entries = self.upstream.request_log.entries
        return {"data": entries[since:], "last": len(entries)}

    def summary_reply(self) -> JSON:
        log = self.upstream.request_log
        return {"total": len(log.entries), "by_status": log.by_status()}

    def provider_routes(self, router: web.UrlDispatcher) -> None:
        """The provider's own actions."""

    # -- the shared routes ----------------------------------------------------------------

    async def get_state(self, request: web.Request) -> web.Response:
        return self.reply(self.upstream.state())

    async def advance_clock(self, request: web.Request) -> web.Response:
        seconds = number(await read_object(request), "seconds")
        if seconds > MAX_ADVANCE:
            raise ControlError(400, "validation_error", self.too_far)
        return self.reply(self.advanced_reply(self.upstream.advance(seconds)))

    async def list_changes(self, request: web.Request) -> web.Response:
        self.upstream.sync()
        since = query_int(request, "since", 0) or 0
        limit = query_int(request, "limit", None)
        return self.reply(self.changes_reply(self.upstream.changes_log.since(since, limit)))

    async def add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = parse_fault(await read_body(request), self.fault_kinds, self.fault_aliases)
        except ValueError as exc:
            raise ControlError(400, "validation_error", str(exc)) from None
        self.upstream.faults.add(fault)
        return self.reply(*self.fault_reply(fault))

    async def list_faults(self, request: web.Request) -> web.Response:
        return self.reply({"armed": [f.describe() for f in self.upstream.faults.armed]})

    async def clear_faults(self, request: web.Request) -> web.Response:
        return self.reply(self.cleared_reply(self.upstream.faults.clear()))

    async def list_requests(self, request: web.Request) -> web.Response:
        return self.reply(self.requests_reply(query_int(request, "since", 0) or 0))

    async def requests_summary(self, request: web.Request) -> web.Response:
        return self.reply(self.summary_reply())

    def add_routes(self, app: web.Application) -> None:
        """Serve the shared routes and the provider's; the app needs `control_errors` first
        among its middlewares."""
        router = app.router
        router.add_get(f"{PREFIX}/state", self.get_state)
        router.add_post(f"{PREFIX}/clock/advance", self.advance_clock)
        router.add_get(f"{PREFIX}/changes", self.list_changes)
        router.add_post(f"{PREFIX}/faults", self.add_fault)
        router.add_get(f"{PREFIX}/faults", self.list_faults)
        router.add_delete(f"{PREFIX}/faults", self.clear_faults)
        router.add_get(f"{PREFIX}/requests", self.list_requests)
        router.add_get(f"{PREFIX}/requests/summary", self.requests_summary)
        self.provider_routes(router)
        app[CONTROL] = self


CONTROL: Final = web.AppKey("sandbox_control", Control)


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The control surface answers its errors in the provider's envelope, never a 500."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    control = request.app[CONTROL]
    try:
        return await handler(request)
    except ControlError as exc:
        return control.error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        code = "not_found" if exc.status == 404 else "validation_error"
        return control.error(exc.status, code, exc.reason)
