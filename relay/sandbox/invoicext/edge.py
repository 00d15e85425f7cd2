"""What InvoiceXT puts in front of `/api/v1`: its part of the shared edge.

`relay.sandbox.edge.play` runs the order; InvoiceXT's parts: `/ping` is answered first (no
key, never counted); the key is found from `Authorization: Bearer`; a request of a live key is
counted in its rolling hour and in the month; the armed faults play (`500`/`502`/`503` as the
edge's HTML, counted like any request: the edge still saw it); then `401` (no key, or a revoked
one), `429 monthly_limit_reached`, `429 rate_limit_exceeded` (no `Retry-After`), the scope
(`403 insufficient_scope`), and the handler. The request log records each request on arrival.
"""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.sandbox.edge import Dropped, drop, play
from relay.sandbox.faults import Fault
from relay.sandbox.invoicext.account import InvoicextSandbox, Key
from relay.sandbox.invoicext.envelope import IXT, PREFIX, error, ok
from relay.sandbox.wire import JSON

_HTML: Final = "<html><body><h1>{status} Bad Gateway</h1><hr>nginx</body></html>"
# The scope each path needs.
_SCOPES: Final = {
    "/invoices": "invoices:read",
    "/bank": "bank:read",
    "/integrations": "settings:read",
    "/usage": "settings:read",
}


class IxtGate:
    """InvoiceXT's part of the shared edge (`relay.sandbox.edge.Gate`)."""

    def __init__(self, box: InvoicextSandbox, sub: str) -> None:
        self.box = box
        self.faults = box.faults
        self.sub = sub

    def identify(self, request: web.Request, body: bytes | None) -> Key | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return self.box.keys.get(value.strip()) if scheme.lower() == "bearer" else None

    def count(
        self, key: Key | None, fired: list[Fault]
    ) -> tuple[dict[str, str], web.Response | None]:
        if key is None or key.revoked:
            return {}, None
        quota = self.box.limiter.count(key.usage, key.limit, time.time())
        self.box.api_calls += 1
        return quota.headers(reset_decimals=3), None

    def edge_page(self, status: int) -> web.Response:
        html = _HTML.format(status=status)
        return web.Response(status=status, text=html, content_type="text/html")

    def fault_answer(self, kind: str) -> web.Response | None:
        return None

    def admit(self, request: web.Request, key: Key | None) -> web.Response | None:
        box = self.box
        if key is None:
            return error(401, "authentication_required", "Authorization: Bearer <api key> required")
        if key.revoked:
            return error(401, "invalid_api_key", "The API key is invalid or has been revoked")
        if box.api_calls > box.monthly_limit:
            return error(
                429, "monthly_limit_reached", "Monthly API call limit reached for your plan."
            )
        used, reset = box.window_state(key)
        if used > key.limit:
            wait = max(1, round(reset - time.time()))
            return error(
                429, "rate_limit_exceeded", f"Rate limit exceeded. Retry after {wait} seconds."
            )
        scope = next((s for p, s in _SCOPES.items() if self.sub.startswith(p)), None)
        if scope is not None and scope not in key.scopes:
            return error(403, "insufficient_scope", f"This API key lacks the {scope} scope")
        return None

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request)


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    box = request.app[IXT]
    path = request.path
    if not path.startswith(PREFIX):
        return await handler(request)
    sub = path[len(PREFIX) :] or "/"
    box.sync()
    if sub == "/ping":
        return ok({"pong": True})
    entry: JSON = box.request_log.record({"at": time.time(), "path": sub, "status": 0})
    try:
        outcome = await play(request, handler, IxtGate(box, sub), sub)
    except Dropped:
        return drop(request)
    outcome.response.headers.update(outcome.headers)
    entry["status"] = outcome.response.status
    return outcome.response
