"""Dext's control surface under /_sandbox/: the shared routes (`relay.sandbox.control`) in the
contract's error envelope, and Dext's own actions: scripted changes, the simulation's switches,
drift, tokens and sessions."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from relay.sandbox.control import Control, number, read_body
from relay.sandbox.dext import catalog
from relay.sandbox.dext.contract import ApiError, json_response
from relay.sandbox.dext.drift import DRIFT_KINDS, parse_drift
from relay.sandbox.dext.generate import extraction, make_capture
from relay.sandbox.dext.practice import OBJECT_TYPES
from relay.sandbox.dext.state import SANDBOX, Sandbox
from relay.sandbox.faults import KINDS
from relay.sandbox.wire import JSON

# Summary fields of a document that live inside a nested object of the full item.
_NESTED: Final = {
    "approval_status": ("approval", "status"),
    "publish_status": ("publish", "status"),
}
_IMMUTABLE: Final = frozenset({"id", "client_id", "created_at", "workspace"})
# `create_client` builds its backlog in the request: a bound keeps one call under a few seconds.
MAX_ITEMS: Final = 20_000


async def set_simulation(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    body = await read_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "validation_error", "body must be a JSON object")
    sandbox.sync()  # what happened before this call happens under the old settings
    if "paused" in body:
        if not isinstance(body["paused"], bool):
            raise ApiError(400, "validation_error", "paused must be true or false")
        sandbox.simulation.paused = body["paused"]
    if "change_rate" in body:
        sandbox.simulation.change_rate = number(body, "change_rate")
    return json_response(sandbox.simulation.describe())


def _document_values(sandbox: Sandbox, doc: JSON, values: JSON) -> JSON:
    """Turn a `set` on a document into full-object fields, keeping the summary consistent."""
    out = dict(values)
    for name, (parent, key) in _NESTED.items():
        if name in out:
            nested = out.get(parent, doc[parent])
            out[parent] = {**(nested if isinstance(nested, dict) else {}), key: out.pop(name)}
    if "category_code" in out:
        code = out.pop("category_code")
        names = dict(catalog.COST_CATEGORIES + catalog.SALES_CATEGORIES)
        out["category"] = None if code is None else {"code": code, "name": names.get(code, code)}
    if "supplier_name" in out:
        key = "customer" if doc["workspace"] == "sales" else "supplier"
        party = out.get(key, doc.get(key))
        name = out.pop("supplier_name")
        out[key] = {**(party if isinstance(party, dict) else {"id": None}), "name": name}
    return out


def _merge(old: JSON, values: JSON) -> JSON:
    """A partial object merges into an object field; anything else replaces the field."""
    return {
        k: {**old[k], **v} if isinstance(v, dict) and isinstance(old.get(k), dict) else v
        for k, v in values.items()
    }


def _apply(sandbox: Sandbox, body: Any) -> list[JSON]:
    if not isinstance(body, dict):
        raise ApiError(400, "validation_error", "body must be a JSON object")
    practice = sandbox.practice
    now = sandbox.sync()
    action = body.get("action")
    if action == "create_document":
        client_id = body.get("client_id")
        if client_id not in practice.clients:
            raise ApiError(404, "not_found", f"no client {client_id}")
        options = {
            k: body[k] for k in ("workspace", "doc_type", "source", "supplier_name") if k in body
        }
        if "type" in body:
            options["doc_type"] = body["type"]
        if options.get("workspace", "costs") not in catalog.WORKSPACES:
            raise ApiError(400, "validation_error", "workspace must be costs or sales")
        if options.get("doc_type", "receipt") not in catalog.DOCUMENT_TYPES:
            raise ApiError(400, "validation_error", f"type must be one of {catalog.DOCUMENT_TYPES}")
        if options.get("source", "api") not in catalog.SOURCES:
            raise ApiError(400, "validation_error", f"source must be one of {catalog.SOURCES}")
        if not isinstance(body.get("processed", False), bool):
            raise ApiError(400, "validation_error", "processed must be true or false")
        doc = make_capture(practice, sandbox.simulation.rng, client_id, now, **options)
        processed = body.get("processed", False)
        if processed:
            doc.update(extraction(practice, sandbox.simulation.rng, doc))
        skip = {"action", "client_id", "processed", "type", *options}
        fields = {k: v for k, v in body.items() if k not in skip}
        unknown = set(fields) - set(doc) - set(_NESTED) - {"category_code"}
        if unknown:
            raise ApiError(400, "validation_error", f"unknown fields {sorted(unknown)}")
        doc.update(_merge(doc, _document_values(sandbox, doc, fields)))
        entry = practice.create("document", client_id, doc, now)
        if doc["status"] == "processing":
            sandbox.simulation.after_capture(doc["id"], now)
        return [entry]
    if action == "create_client":
        items = body.get("items", 0)
        if isinstance(items, bool) or not isinstance(items, int) or not 0 <= items <= MAX_ITEMS:
            raise ApiError(400, "validation_error", f"items must be an integer 0..{MAX_ITEMS}")
        unknown = set(body) - {"action", "items"}
        if unknown:
            raise ApiError(400, "validation_error", f"unknown fields {sorted(unknown)}")
        return sandbox.simulation.add_client(items, now)
    object_type = body.get("object_type")
    object_id = body.get("object_id")
    if object_type not in OBJECT_TYPES:
        raise ApiError(400, "validation_error", f"object_type must be one of {OBJECT_TYPES}")
    if not isinstance(object_id, str):
        raise ApiError(400, "validation_error", "object_id must be a string")
    found = practice.find(object_type, object_id)
    if found is None:
        raise ApiError(404, "not_found", f"no {object_type} {object_id}")
    old = found[1]
    if action == "update":
        values = body.get("set")
        if not isinstance(values, dict) or not values:
            raise ApiError(400, "validation_error", "set must be a non-empty object")
        if object_type == "document":
            values = _document_values(sandbox, old, values)
        unknown = set(values) - set(old)
        if unknown or set(values) & _IMMUTABLE:
            bad = sorted(unknown | (set(values) & _IMMUTABLE))
            raise ApiError(400, "validation_error", f"cannot set {bad}")
        if object_type == "client" and "health_score" in values and "alert_level" not in values:
            score = values["health_score"]
            if isinstance(score, int) and not isinstance(score, bool) and 0 <= score <= 100:
                values["alert_level"] = catalog.alert_level(score)
        updated = practice.update(object_type, object_id, _merge(old, values), now)
        return [updated] if updated else []
    if action == "delete":
        if object_type == "connection":
            raise ApiError(400, "validation_error", "a connection cannot be deleted")
        return [practice.delete(object_type, object_id, now)]
    if action == "forbid":
        if object_type != "client":
            raise ApiError(400, "validation_error", "forbid applies to a client")
        forbidden = body.get("forbidden", True)
        (practice.forbidden.add if forbidden else practice.forbidden.discard)(object_id)
        return []
    raise ApiError(
        400,
        "validation_error",
        "action must be create_document, create_client, update, delete or forbid",
    )


async def apply_change(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return json_response({"changes": _apply(sandbox, await read_body(request))})


async def get_drift(request: web.Request) -> web.Response:
    return json_response(request.app[SANDBOX].drift.describe())


async def set_drift(request: web.Request) -> web.Response:
    """`{"kinds": "all" | "retype,unknown" | [...], "rate"?: 0..1}`: switch drift on or off."""
    drift = request.app[SANDBOX].drift
    body = await read_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "validation_error", "body must be a JSON object")
    kinds = body.get("kinds", sorted(drift.kinds))
    if isinstance(kinds, list) and all(isinstance(k, str) for k in kinds):
        kinds = ",".join(kinds) or "none"
    if not isinstance(kinds, str):
        raise ApiError(400, "validation_error", f"kinds must be all, none or some of {DRIFT_KINDS}")
    try:
        chosen = parse_drift(kinds)
    except ValueError as exc:
        raise ApiError(400, "validation_error", str(exc)) from None
    rate = number(body, "rate") if "rate" in body else drift.rate
    if rate > 1:
        raise ApiError(400, "validation_error", "rate must be from 0 to 1")
    drift.kinds, drift.rate = chosen, rate
    return json_response(drift.describe())


async def add_token(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    body = await read_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "validation_error", "body must be a JSON object")
    value = body.get("api_token")
    limit = body.get("rate_limit", sandbox.options.rate_limit)
    if value is not None and (not isinstance(value, str) or not value):
        raise ApiError(400, "validation_error", "api_token must be a non-empty string")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ApiError(400, "validation_error", "rate_limit must be a positive integer")
    try:
        token = sandbox.access.add_token(value, limit)
    except ValueError as exc:
        raise ApiError(400, "validation_error", str(exc)) from None
    return json_response(
        {"token_id": token.token_id, "api_token": token.api_token, "rate_limit": limit}, 201
    )


def _set_revoked(revoked: bool) -> Any:
    async def handler(request: web.Request) -> web.Response:
        sandbox = request.app[SANDBOX]
        value = request.match_info["token"]
        token = sandbox.access.tokens.get(value) or sandbox.access.by_id(value)
        if token is None:
            raise ApiError(404, "not_found", "no such token")
        token.revoked = revoked
        return json_response({"token_id": token.token_id, "revoked": token.revoked})

    return handler


async def expire_sessions(request: web.Request) -> web.Response:
    return json_response({"expired": request.app[SANDBOX].access.expire_sessions()})


class DextControl(Control):
    """The shared routes answer as they always have here; Dext's actions join them."""

    # Every shared kind but the bare 500 (Dext's edge fails with 502 or 503).
    fault_kinds = KINDS - {"500"}

    def error(self, status: int, code: str, message: str) -> web.Response:
        return ApiError(status, code, message).response()

    def summary_reply(self) -> JSON:
        sandbox = self.upstream
        assert isinstance(sandbox, Sandbox)
        return sandbox.access.summary()

    def provider_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/_sandbox/simulation", set_simulation)
        router.add_post("/_sandbox/changes", apply_change)
        router.add_get("/_sandbox/drift", get_drift)
        router.add_post("/_sandbox/drift", set_drift)
        router.add_post("/_sandbox/tokens", add_token)
        router.add_post("/_sandbox/tokens/{token}/revoke", _set_revoked(True))
        router.add_post("/_sandbox/tokens/{token}/restore", _set_revoked(False))
        router.add_post("/_sandbox/sessions/expire", expire_sessions)
