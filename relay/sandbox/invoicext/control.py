"""InvoiceXT's control surface under /_sandbox/: the shared routes (`relay.sandbox.control`) in
its own JSON (`{"error": message}` for errors), and its own actions: scripted changes, the
simulation's switches (drift, shifting pages) and keys."""

from __future__ import annotations

import secrets
from typing import Any, Final

from aiohttp import web

from relay.sandbox.control import Control, ControlError, number, read_object
from relay.sandbox.faults import Fault
from relay.sandbox.invoicext.account import LEDGERS, SCOPES, InvoicextSandbox
from relay.sandbox.invoicext.envelope import IXT, answer
from relay.sandbox.wire import JSON, rfc3339

# The kinds InvoiceXT's edge serves; `malformed` is its older name for `malformed_json`.
FAULT_KINDS: Final = frozenset({"500", "502", "503", "slow", "drop", "malformed_json"})
FAULT_ALIASES: Final = {"malformed": "malformed_json"}


class IxtControl(Control):
    fault_kinds = FAULT_KINDS
    fault_aliases = FAULT_ALIASES
    too_far = "seconds must be from 0 to 90 days"

    def __init__(self, box: InvoicextSandbox) -> None:
        super().__init__(box)
        self.box = box

    def error(self, status: int, code: str, message: str) -> web.Response:
        return answer(status, {"error": message})

    def reply(self, payload: Any, status: int = 200) -> web.Response:
        return answer(status, payload)

    def advanced_reply(self, changes: list[JSON]) -> JSON:
        return {"now": rfc3339(self.box.clock.now()), "changes": changes}

    def changes_reply(self, entries: list[JSON]) -> JSON:
        return {"data": entries}

    def fault_reply(self, fault: Fault) -> tuple[JSON, int]:
        return {"kind": fault.kind, "path": fault.path, "count": fault.count}, 200

    def cleared_reply(self, cleared: int) -> JSON:
        return {"faults": []}

    def requests_reply(self, since: int) -> JSON:
        return {"data": self.box.requests[since:][-1000:]}

    def provider_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/_sandbox/simulation", set_simulation)
        router.add_post("/_sandbox/changes", apply_change)
        router.add_post("/_sandbox/tokens", add_token)
        router.add_post("/_sandbox/tokens/{token}/revoke", _set_revoked(True))
        router.add_post("/_sandbox/tokens/{token}/restore", _set_revoked(False))


async def set_simulation(request: web.Request) -> web.Response:
    box = request.app[IXT]
    body = await read_object(request)
    box.sync()
    box.simulate = not bool(body.get("paused", False))
    if "change_rate" in body:
        box.change_rate = number(body, "change_rate")
    box.drift = bool(body.get("drift", box.drift))
    box.shift = bool(body.get("shift_pages", box.shift))
    return answer(200, box.state())


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
    raise ControlError(400, "validation_error", f"unknown action {action!s}")


async def apply_change(request: web.Request) -> web.Response:
    box = request.app[IXT]
    body = await read_object(request)
    mark = box.log.seq
    try:
        touched = _apply(box, body)
    except KeyError:
        raise ControlError(404, "not_found", "no such object") from None
    return answer(200, {"object": touched, "changes": box.log.since(mark)})


async def add_token(request: web.Request) -> web.Response:
    box = request.app[IXT]
    body = await read_object(request)
    value = body.get("api_token") or f"sk_test_{secrets.token_hex(12)}"
    limit = body.get("rate_limit", box.limit)
    scopes = body.get("scopes") or SCOPES
    if not isinstance(value, str):
        raise ControlError(400, "validation_error", "api_token must be a string")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ControlError(400, "validation_error", "rate_limit must be a positive integer")
    if not isinstance(scopes, list | tuple) or not all(isinstance(s, str) for s in scopes):
        raise ControlError(400, "validation_error", "scopes must be a list of strings")
    key = box.add_key(value, limit, tuple(scopes))
    return answer(200, {"api_token": key.value, "scopes": list(key.scopes)})


def _set_revoked(revoked: bool) -> Any:
    async def handler(request: web.Request) -> web.Response:
        key = request.app[IXT].keys.get(request.match_info["token"])
        if key is None:
            raise ControlError(404, "not_found", "no such token")
        key.revoked = revoked
        return answer(200, {"api_token": key.value, "revoked": key.revoked})

    return handler
