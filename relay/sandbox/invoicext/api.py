"""The InvoiceXT sandbox's HTTP side: `/api/v1` as `invoicext-api.md` describes it, and the
`/_sandbox` control surface (state, clock, changes, faults, keys, requests) like Dext's.

Order for every API request: the edge's armed 502/503 faults (HTML, counted like any request:
the edge still saw it), the key (`401`), the request counted in its key's rolling hour and in
the month, `429 rate_limit_exceeded` (no `Retry-After`) or `429 monthly_limit_reached`, the
scope (`403 insufficient_scope`), then the handler.
"""

from __future__ import annotations

import secrets
import time
from decimal import Decimal
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from relay.sandbox.dext.practice import JSON, rfc3339
from relay.sandbox.invoicext.account import LEDGERS, InvoicextSandbox, IxtFault, Key

IXT: Final = web.AppKey("invoicext_sandbox", InvoicextSandbox)
PREFIX: Final = "/api/v1"
DOCS: Final = "https://docs.invoicext.com/errors/"
_HTML: Final = "<html><body><h1>{status} Bad Gateway</h1><hr>nginx</body></html>"
# The scope each path needs.
_SCOPES: Final = {
    "/invoices": "invoices:read",
    "/bank": "bank:read",
    "/integrations": "settings:read",
    "/usage": "settings:read",
}


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))  # money as the JSON number it is: 0.10 stays 0.10
    raise TypeError


def _json(status: int, payload: JSON, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload, default=_default),
        content_type="application/json",
        headers=headers,
    )


def _meta(now: float | None = None) -> JSON:
    """The upstream's clock (simulated, so a relay can tell where in the month it is)."""
    at = time.time() if now is None else now
    return {"timestamp": rfc3339(at), "request_id": f"req_{time.time_ns() % 10**12}"}


def ok(data: Any, now: float | None = None) -> web.Response:
    return _json(200, {"success": True, "data": data, "meta": _meta(now)})


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "success": False,
        "error": {"code": code, "message": message, "docs_url": DOCS + code},
        "meta": _meta(),
    }
    return _json(status, body, headers)


def _limit_headers(box: InvoicextSandbox, key: Key) -> dict[str, str]:
    used, reset = box.window_state(key)
    return {
        "X-RateLimit-Limit": str(key.limit),
        "X-RateLimit-Remaining": str(max(key.limit - used, 0)),
        "X-RateLimit-Reset": f"{reset:.3f}",
    }


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
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    key = box.keys.get(value.strip()) if scheme.lower() == "bearer" else None
    entry: JSON = {"at": time.time(), "path": sub, "status": 0}
    box.requests.append(entry)
    response = await _answer(request, handler, box, key, sub)
    entry["status"] = response.status
    return response


async def _answer(
    request: web.Request, handler: Handler, box: InvoicextSandbox, key: Key | None, sub: str
) -> web.StreamResponse:
    if key is not None and not key.revoked:
        key.hits.append(time.time())
        box.api_calls += 1
    for fault in box.faults:
        if fault.count > 0 and sub.startswith(fault.path) and fault.kind in ("500", "502", "503"):
            fault.count -= 1
            status = int(fault.kind)
            html = _HTML.format(status=status)
            headers = _limit_headers(box, key) if key is not None else None
            return web.Response(status=status, text=html, content_type="text/html", headers=headers)
    if key is None:
        return error(401, "authentication_required", "Authorization: Bearer <api key> required")
    if key.revoked:
        return error(401, "invalid_api_key", "The API key is invalid or has been revoked")
    headers = _limit_headers(box, key)
    if box.api_calls > box.monthly_limit:
        return error(
            429,
            "monthly_limit_reached",
            "Monthly API call limit reached for your plan.",
            headers,
        )
    used, reset = box.window_state(key)
    if used > key.limit:
        wait = max(1, round(reset - time.time()))
        return error(
            429, "rate_limit_exceeded", f"Rate limit exceeded. Retry after {wait} seconds.", headers
        )
    scope = next((s for p, s in _SCOPES.items() if sub.startswith(p)), None)
    if scope is not None and scope not in key.scopes:
        return error(403, "insufficient_scope", f"This API key lacks the {scope} scope", headers)
    for fault in box.faults:
        if fault.count > 0 and sub.startswith(fault.path) and fault.kind == "malformed":
            fault.count -= 1
            return web.Response(status=200, text="{not json", headers=headers)
    response = await handler(request)
    response.headers.update(headers)
    return response


def _paging(request: web.Request) -> tuple[int, int] | web.Response:
    try:
        page = int(request.query.get("page", "1"))
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        return error(400, "validation_error", "page and limit must be integers")
    if page < 1 or not 1 <= limit <= 100:
        return error(400, "validation_error", "page >= 1 and limit from 1 to 100")
    return page, limit


async def list_invoices(request: web.Request) -> web.Response:
    box = request.app[IXT]
    paging = _paging(request)
    if isinstance(paging, web.Response):
        return paging
    items = list(box.invoices.values())
    if (supplier := request.query.get("supplier")) is not None:
        items = [i for i in items if i["supplier"]["name"] == supplier]
    if (currency := request.query.get("currency")) is not None:
        items = [i for i in items if i["currency"] == currency]
    shown, pagination = box.listing(items, *paging)
    return ok({"invoices": shown, "pagination": pagination})


async def get_invoice(request: web.Request) -> web.Response:
    box = request.app[IXT]
    invoice = box.invoices.get(request.match_info["id"])
    if invoice is None:
        return error(404, "resource_not_found", "Invoice not found")
    return ok(box.shown(invoice))


async def list_reconciliations(request: web.Request) -> web.Response:
    box = request.app[IXT]
    paging = _paging(request)
    if isinstance(paging, web.Response):
        return paging
    shown, pagination = box.listing(list(box.reconciliations.values()), *paging)
    return ok({"reconciliations": shown, "pagination": pagination})


async def integrations(request: web.Request) -> web.Response:
    box = request.app[IXT]
    return ok({name: box.shown(ledger) for name, ledger in box.ledgers.items()})


async def usage(request: web.Request) -> web.Response:
    box = request.app[IXT]
    return ok(box.usage(), box.clock.now())


# -- control ---------------------------------------------------------------------------------


async def _body(request: web.Request) -> JSON:
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "body must be JSON"}') from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be an object"}')
    return body


async def get_state(request: web.Request) -> web.Response:
    return _json(200, request.app[IXT].state())


async def advance_clock(request: web.Request) -> web.Response:
    box = request.app[IXT]
    seconds = float((await _body(request)).get("seconds", 0))
    if not 0 <= seconds <= 90 * 86400:
        return _json(400, {"error": "seconds must be from 0 to 90 days"})
    changes = box.advance(seconds)
    return _json(200, {"now": rfc3339(box.clock.now()), "changes": changes})


async def set_simulation(request: web.Request) -> web.Response:
    box = request.app[IXT]
    body = await _body(request)
    box.sync()
    box.simulate = not bool(body.get("paused", False))
    if "change_rate" in body:
        box.change_rate = float(body["change_rate"])
    box.drift = bool(body.get("drift", box.drift))
    box.shift = bool(body.get("shift_pages", box.shift))
    return _json(200, box.state())


async def list_changes(request: web.Request) -> web.Response:
    box = request.app[IXT]
    box.sync()
    since = int(request.query.get("since", "0"))
    return _json(200, {"data": [e for e in box.log if e["seq"] > since]})


def _apply(box: InvoicextSandbox, body: JSON) -> JSON:
    """One scripted change, as tests drive them; returns the object it touched."""
    now = box.sync()
    action = body.get("action")
    target_id = str(body.get("id", ""))
    if action == "upload":
        return box.upload(now, body.get("status"))
    if action in ("process", "fail"):
        box.finish_extraction(target_id, "processed" if action == "process" else "failed", now)
        return box.invoices[target_id]
    if action == "publish":
        box.publish(target_id, str(body.get("target", LEDGERS[0])), now)
        return box.invoices[target_id]
    if action == "delete":
        box.delete(target_id, now)
        return {"id": target_id}
    if action == "edit":  # an undocumented field changes: never an event
        box.invoices[target_id]["confidence"] = body.get("confidence", 0.5)
        return box.invoices[target_id]
    if action == "reconcile":
        return box.start_reconciliation(now)
    if action == "complete_reconciliation":
        box.complete_reconciliation(target_id, now)
        return box.reconciliations[target_id]
    if action in ("connect", "disconnect"):
        box.set_connected(target_id, action == "connect", now)
        return box.ledgers[target_id]
    if action == "sync_ledgers":
        box.sync_ledgers(now)
        return {}
    raise web.HTTPBadRequest(text=f'{{"error": "unknown action {action!s}"}}')


async def apply_change(request: web.Request) -> web.Response:
    box = request.app[IXT]
    body = await _body(request)
    mark = len(box.log)
    try:
        touched = _apply(box, body)
    except KeyError:
        return _json(404, {"error": "no such object"})
    return _json(200, {"object": touched, "changes": box.log[mark:]})


async def add_fault(request: web.Request) -> web.Response:
    body = await _body(request)
    fault = IxtFault(
        str(body.get("kind", "502")), str(body.get("path", "/")), int(body.get("count", 1))
    )
    request.app[IXT].faults.append(fault)
    return _json(200, {"kind": fault.kind, "path": fault.path, "count": fault.count})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[IXT].faults.clear()
    return _json(200, {"faults": []})


async def add_token(request: web.Request) -> web.Response:
    box = request.app[IXT]
    body = await _body(request)
    value = str(body.get("api_token") or f"sk_test_{secrets.token_hex(12)}")
    scopes = tuple(body.get("scopes") or ("invoices:read", "bank:read", "settings:read"))
    key = box.add_key(value, int(body.get("rate_limit", box.limit)), scopes)
    return _json(200, {"api_token": key.value, "scopes": list(key.scopes)})


def _set_revoked(revoked: bool) -> Any:
    async def handler(request: web.Request) -> web.Response:
        key = request.app[IXT].keys.get(request.match_info["token"])
        if key is None:
            return _json(404, {"error": "no such token"})
        key.revoked = revoked
        return _json(200, {"api_token": key.value, "revoked": key.revoked})

    return handler


async def list_requests(request: web.Request) -> web.Response:
    return _json(200, {"data": request.app[IXT].requests[-1000:]})


async def requests_summary(request: web.Request) -> web.Response:
    entries = request.app[IXT].requests
    by_status: dict[str, int] = {}
    for entry in entries:
        by_status[str(entry["status"])] = by_status.get(str(entry["status"]), 0) + 1
    return _json(200, {"total": len(entries), "by_status": by_status})


def create_invoicext_app(box: InvoicextSandbox) -> web.Application:
    """The InvoiceXT sandbox app; its state is `app[IXT]`."""
    app = web.Application(middlewares=[edge])
    app[IXT] = box
    app.router.add_get(f"{PREFIX}/ping", integrations)  # answered by the edge
    app.router.add_get(f"{PREFIX}/invoices", list_invoices)
    app.router.add_get(f"{PREFIX}/invoices/{{id}}", get_invoice)
    app.router.add_get(f"{PREFIX}/bank/reconciliations", list_reconciliations)
    app.router.add_get(f"{PREFIX}/integrations/status", integrations)
    app.router.add_get(f"{PREFIX}/usage/stats", usage)
    app.router.add_get("/_sandbox/state", get_state)
    app.router.add_post("/_sandbox/clock/advance", advance_clock)
    app.router.add_post("/_sandbox/simulation", set_simulation)
    app.router.add_get("/_sandbox/changes", list_changes)
    app.router.add_post("/_sandbox/changes", apply_change)
    app.router.add_post("/_sandbox/faults", add_fault)
    app.router.add_delete("/_sandbox/faults", clear_faults)
    app.router.add_post("/_sandbox/tokens", add_token)
    app.router.add_post("/_sandbox/tokens/{token}/revoke", _set_revoked(True))
    app.router.add_post("/_sandbox/tokens/{token}/restore", _set_revoked(False))
    app.router.add_get("/_sandbox/requests", list_requests)
    app.router.add_get("/_sandbox/requests/summary", requests_summary)
    return app
