"""The one injection path: what stands between a request and a provider's handler.

For every request of the contract, in this order: the provider identifies the caller (nothing
counted yet; a bad credential is kept, not answered), the armed faults of `BEFORE` kinds fire,
the provider counts the request in its caller's window (every request of a known caller counts,
faulted or refused) and may refuse it there (Dext's 429), then the faults play (`slow` waits,
`500`/`502`/`503` answer the provider's edge HTML, `drop` closes the connection, a
provider-specific kind answers as the provider says), then the provider admits the caller or
refuses it (authentication, scope, the limits it checks late), then the handler runs, the
provider dresses its answer (drift) and the `AFTER` faults spoil a successful one.

What the request log records, and when, is the provider's: it gets the `Outcome`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from relay.sandbox.faults import AFTER, BEFORE, Fault, Faults

EDGE_STATUSES: Final = ("500", "502", "503")


class Dropped(Exception):
    """The connection is to be closed on purpose; there is no response to send."""

    def __init__(self, faults: str) -> None:
        super().__init__(faults)
        self.faults = faults


@dataclass
class Outcome:
    response: web.StreamResponse
    headers: dict[str, str] = field(default_factory=dict)
    faults: str | None = None  # the kinds that shaped this answer, comma-separated


class Gate(Protocol):
    """A provider's part of the edge (see the module docstring for when each is called)."""

    faults: Faults

    def identify(self, request: web.Request, body: bytes | None) -> Any: ...

    def count(
        self, caller: Any, fired: list[Fault]
    ) -> tuple[dict[str, str], web.Response | None]: ...

    def edge_page(self, status: int) -> web.Response: ...

    def fault_answer(self, kind: str) -> web.Response | None: ...

    def admit(self, request: web.Request, caller: Any) -> web.Response | None: ...

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse: ...


def kinds(faults: list[Fault]) -> str | None:
    return ",".join(f.kind for f in faults) or None


async def play(
    request: web.Request, handler: Handler, gate: Gate, path: str, body: bytes | None = None
) -> Outcome:
    """Answer one contract request to `path` (the provider's own path, without any prefix)."""
    caller = gate.identify(request, body)
    fired = gate.faults.fire(path, BEFORE)
    headers, refusal = gate.count(caller, fired)
    if refusal is not None:
        return Outcome(refusal, headers)
    played = kinds(fired)
    for fault in fired:
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
    terminal = next((f.kind for f in fired if f.kind not in ("slow", "consume_budget")), None)
    if terminal in EDGE_STATUSES:
        return Outcome(gate.edge_page(int(terminal or 0)), headers, played)
    if terminal == "drop":
        raise Dropped(played or "drop")
    if terminal is not None and (answer := gate.fault_answer(terminal)) is not None:
        return Outcome(answer, headers, played)
    refusal = gate.admit(request, caller)
    if refusal is not None:
        return Outcome(refusal, headers, played)
    response = await gate.handle(request, handler)
    if response.status in (200, 201) and isinstance(response, web.Response):
        spoilers = gate.faults.fire(path, AFTER)
        if spoilers:
            return Outcome(spoil(response, spoilers), headers, kinds(spoilers))
    return Outcome(response, headers, played)


def drop(request: web.Request) -> web.Response:
    """Close the connection without a byte of response; aiohttp then finds nothing to write to
    and treats it as a premature disconnection (quietly)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


def spoil(response: web.Response, faults: list[Fault]) -> web.Response:
    """Apply the answer-spoiling faults to a successful JSON answer."""
    assert isinstance(response.body, bytes)
    body = response.body
    for fault in faults:
        if fault.kind == "malformed_json":
            body = body[: max(1, len(body) // 2)]
            continue
        data = orjson.loads(body)
        objects = data["data"] if isinstance(data, dict) and "data" in data else [data]
        for obj in objects:
            if not isinstance(obj, dict):
                continue
            if fault.kind == "extra_fields":
                obj["x_sandbox_unknown"] = {"note": "an unknown field; ignore it"}
                obj["x_sandbox_flag"] = True
            else:
                _wrong_types(obj)
        body = orjson.dumps(data)
    return web.Response(body=body, status=response.status, content_type="application/json")


def _wrong_types(obj: dict[str, Any]) -> None:
    """Put a string where the contract promises an object (or a number)."""
    for key, value in obj.items():
        if isinstance(value, dict):
            obj[key] = f"<{key}>"
            return
    for key, value in obj.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            obj[key] = str(value)
            return
