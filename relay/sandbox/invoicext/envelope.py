"""InvoiceXT's answer envelope (`{"success", "data" | "error", "meta"}`) and money as JSON."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any, Final

import orjson
from aiohttp import web

from relay.sandbox.invoicext.account import InvoicextSandbox
from relay.sandbox.wire import JSON, json_response, rfc3339

IXT: Final = web.AppKey("invoicext_sandbox", InvoicextSandbox)
PREFIX: Final = "/api/v1"
DOCS: Final = "https://docs.invoicext.com/errors/"


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))  # money as the JSON number it is: 0.10 stays 0.10
    raise TypeError


def answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(payload, status, headers, default=_default)


def _meta(now: float | None = None) -> JSON:
    """The upstream's clock (simulated, so a relay can tell where in the month it is)."""
    at = time.time() if now is None else now
    return {"timestamp": rfc3339(at), "request_id": f"req_{time.time_ns() % 10**12}"}


def ok(data: Any, now: float | None = None) -> web.Response:
    return answer(200, {"success": True, "data": data, "meta": _meta(now)})


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "success": False,
        "error": {"code": code, "message": message, "docs_url": DOCS + code},
        "meta": _meta(),
    }
    return answer(status, body, headers)
