"""The Dext contract's endpoints (dext-api.md), served from the simulated practice.

Choices where the contract leaves room: `per_page` over the maximum (100; 50 for /costs and
/sales) is a 400 validation_error rather than clamped, so a client learns the limit instead of
silently getting fewer items; a page past the end is an empty `data` with the true totals;
unknown query parameters are ignored; every list object carries `created_at` (its sort key).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any, Final

import orjson
from aiohttp import web

from relay.sandbox.control import ControlError
from relay.sandbox.dext import catalog
from relay.sandbox.dext.access import Session, Token
from relay.sandbox.dext.generate import make_capture
from relay.sandbox.dext.practice import summarize
from relay.sandbox.dext.state import SANDBOX, Sandbox
from relay.sandbox.wire import JSON, json_response, rfc3339

DEFAULT_PER_PAGE: Final = 25
MAX_PER_PAGE: Final = 100
MAX_PER_PAGE_FULL: Final = 50  # /costs and /sales objects are large
TOKEN: Final = web.RequestKey("sandbox_token", Token)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ApiError(ControlError):
    """An error answer in the contract's envelope: `{"error": {"code", "message"}}`."""

    def response(self) -> web.Response:
        return json_response({"error": {"code": self.code, "message": self.message}}, self.status)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "validation_error", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, "validation_error", f"{name} must be from {low} to {high}")
    return value


def paginate(request: web.Request, items: list[JSON], max_per_page: int) -> JSON:
    """One page of `items`, computed now: items created or deleted since shift the pages."""
    page = _int_param(request, "page", 1, 1, 10**9)
    per_page = _int_param(request, "per_page", DEFAULT_PER_PAGE, 1, max_per_page)
    total = len(items)
    start = (page - 1) * per_page
    return {
        "data": items[start : start + per_page],
        "pagination": {
            "page": page,
            "per_page": per_page,
            "total": total,
            "total_pages": (total + per_page - 1) // per_page,
        },
    }


def _client_id(request: web.Request, sandbox: Sandbox) -> str:
    client_id = request.query.get("client_id")
    if not client_id:
        raise ApiError(400, "validation_error", "client_id is required")
    _check_client(sandbox, client_id)
    return client_id


def _check_client(sandbox: Sandbox, client_id: str) -> None:
    if client_id not in sandbox.practice.clients:
        raise ApiError(404, "not_found", f"no client {client_id}")
    if client_id in sandbox.practice.forbidden:
        raise ApiError(403, "forbidden", f"access to client {client_id} was removed")


def _document_filter(request: web.Request) -> Callable[[JSON], bool]:
    """The contract's filters: status, supplier (partial), date range, category, workspace."""
    query = request.query
    status = query.get("status")
    if status is not None and status not in catalog.DOCUMENT_STATUSES:
        raise ApiError(
            400, "validation_error", f"status must be one of {catalog.DOCUMENT_STATUSES}"
        )
    workspace = query.get("workspace")
    if workspace is not None and workspace not in catalog.WORKSPACES:
        raise ApiError(400, "validation_error", "workspace must be costs or sales")
    date_from, date_to = query.get("date_from"), query.get("date_to")
    for name, value in (("date_from", date_from), ("date_to", date_to)):
        if value is not None and not _DATE.match(value):
            raise ApiError(400, "validation_error", f"{name} must be a date, YYYY-MM-DD")
    supplier = query.get("supplier")
    needle = supplier.casefold() if supplier else None
    category = query.get("category")

    def keep(doc: JSON) -> bool:
        return (
            (status is None or doc["status"] == status)
            and (workspace is None or doc["workspace"] == workspace)
            and (date_from is None or doc["date"] >= date_from)
            and (date_to is None or doc["date"] <= date_to)
            and (category is None or doc["category_code"] == category)
            and (needle is None or needle in (doc["supplier_name"] or "").casefold())
        )

    return keep


async def authenticate(request: web.Request) -> web.Response:
    # The edge has already read the body, found the token and refused revoked ones.
    sandbox = request.app[SANDBOX]
    value, session = sandbox.access.open_session(request[TOKEN])
    return json_response({"session_token": value, "expires_at": rfc3339(session.expires_at)})


async def list_clients(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return json_response(paginate(request, sandbox.practice.ordered("client", ""), MAX_PER_PAGE))


async def get_connections(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return json_response(sandbox.practice.connections[_client_id(request, sandbox)])


def _documents(request: web.Request, workspace: str | None) -> list[JSON]:
    sandbox = request.app[SANDBOX]
    client_id = _client_id(request, sandbox)
    keep = _document_filter(request)
    return [
        d
        for d in sandbox.practice.ordered("document", client_id)
        if (workspace is None or d["workspace"] == workspace) and keep(d)
    ]


async def list_documents(request: web.Request) -> web.Response:
    page = paginate(request, _documents(request, None), MAX_PER_PAGE)
    page["data"] = [summarize(d) for d in page["data"]]
    return json_response(page)


async def list_costs(request: web.Request) -> web.Response:
    return json_response(paginate(request, _documents(request, "costs"), MAX_PER_PAGE_FULL))


async def list_sales(request: web.Request) -> web.Response:
    return json_response(paginate(request, _documents(request, "sales"), MAX_PER_PAGE_FULL))


def _item(request: web.Request, workspace: str) -> web.Response:
    sandbox = request.app[SANDBOX]
    item_id = request.match_info["id"]
    found = sandbox.practice.find("document", item_id)
    if found is None or found[1]["workspace"] != workspace:
        raise ApiError(404, "not_found", f"no {workspace} item {item_id}")
    _check_client(sandbox, found[0])
    return json_response(found[1])


async def get_cost(request: web.Request) -> web.Response:
    return _item(request, "costs")


async def get_sale(request: web.Request) -> web.Response:
    return _item(request, "sales")


async def list_suppliers(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    items = sandbox.practice.ordered("supplier", _client_id(request, sandbox))
    return json_response(paginate(request, items, MAX_PER_PAGE))


async def list_expense_reports(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    items = sandbox.practice.ordered("expense_report", _client_id(request, sandbox))
    return json_response(paginate(request, items, MAX_PER_PAGE))


def _parse_capture(body: Any) -> JSON:
    if not isinstance(body, dict):
        raise ApiError(400, "validation_error", "body must be a JSON object")
    workspace = body.get("workspace")
    if workspace not in catalog.WORKSPACES:
        raise ApiError(400, "validation_error", "workspace must be costs or sales")
    doc_type = body.get("type")
    allowed = catalog.SALES_TYPES if workspace == "sales" else catalog.DOCUMENT_TYPES
    if doc_type not in allowed:
        raise ApiError(400, "validation_error", f"type must be one of {allowed} for {workspace}")
    filename = body.get("filename")
    if not isinstance(filename, str) or not filename.strip() or len(filename) > 255:
        raise ApiError(400, "validation_error", "filename must be a non-empty string")
    content = body.get("content_base64")
    try:
        if not isinstance(content, str) or not base64.b64decode(content, validate=True):
            raise ValueError
    except (ValueError, binascii.Error):
        raise ApiError(400, "validation_error", "content_base64 must be non-empty base64") from None
    supplier_name = body.get("supplier_name")
    if supplier_name is not None and (
        not isinstance(supplier_name, str) or len(supplier_name) > 200
    ):
        raise ApiError(400, "validation_error", "supplier_name must be a string")
    return {
        "workspace": workspace,
        "doc_type": doc_type,
        "filename": filename,
        "supplier_name": supplier_name or None,
    }


async def create_document(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    client_id = _client_id(request, sandbox)
    token = request[TOKEN]
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        if not key or len(key) > 255:
            raise ApiError(400, "validation_error", "Idempotency-Key must be 1 to 255 characters")
        remembered = sandbox.recall((token.token_id, key))
        if remembered is not None:
            return web.Response(
                body=remembered[1], status=remembered[0], content_type="application/json"
            )
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "validation_error", "body must be JSON") from None
    fields = _parse_capture(body)
    now = sandbox.sync()
    doc = make_capture(
        sandbox.practice,
        sandbox.simulation.rng,
        client_id,
        now,
        workspace=fields["workspace"],
        doc_type=fields["doc_type"],
        source="api",
        supplier_name=fields["supplier_name"],
        filename=fields["filename"],
    )
    sandbox.practice.create("document", client_id, doc, now)
    sandbox.simulation.after_capture(doc["id"], now)
    payload = orjson.dumps(doc)
    if key is not None:
        sandbox.remember((token.token_id, key), 201, payload)
    return web.Response(body=payload, status=201, content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/authenticate", authenticate)
    app.router.add_get("/clients", list_clients)
    app.router.add_get("/connections", get_connections)
    app.router.add_get("/documents", list_documents)
    app.router.add_get("/costs", list_costs)
    app.router.add_get("/sales", list_sales)
    app.router.add_get("/costs/{id}", get_cost)
    app.router.add_get("/sales/{id}", get_sale)
    app.router.add_get("/suppliers", list_suppliers)
    app.router.add_get("/expense_reports", list_expense_reports)
    app.router.add_post("/create_document", create_document)


__all__ = ["TOKEN", "ApiError", "Session", "add_routes", "json_response"]
