"""The InvoiceXT sandbox keeps the contract's unpleasant parts (invoicext-api.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from relay.errors import ConfigError
from relay.sandbox.faults import Fault
from relay.sandbox.invoicext.account import InvoicextSandbox
from relay.sandbox.server import SandboxOptions, create_sandbox_app
from tests.support.sandbox import IxtHandle

IxtFactory = Callable[..., Awaitable[IxtHandle]]


async def _get(
    http: aiohttp.ClientSession, ixt: IxtHandle, path: str, key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {key or ixt.token}"}
    async with http.get(f"{ixt.url}{path}", headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_the_rolling_hour_counts_every_request_and_429_has_no_retry_after(
    http: aiohttp.ClientSession, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(rate_limit=3, window_seconds=30.0, items=2)
    statuses = [(await _get(http, ixt, "/invoices"))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    status, headers, body = await _get(http, ixt, "/invoices")
    assert status == 429
    assert "Retry-After" not in headers
    assert headers["X-RateLimit-Limit"] == "3"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert float(headers["X-RateLimit-Reset"]) > 0
    assert b'"rate_limit_exceeded"' in body
    assert b"Retry after" in body
    async with http.get(f"{ixt.url}/ping") as resp:  # /ping does not count, needs no key
        assert resp.status == 200
    assert len(ixt.box.token.usage.hits) == 6  # the 429s counted too


async def test_the_month_ends_in_monthly_limit_reached(
    http: aiohttp.ClientSession, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(monthly_limit=3, items=2)
    statuses = [(await _get(http, ixt, "/usage/stats"))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    status, _, body = await _get(http, ixt, "/invoices")
    assert status == 429
    assert b'"monthly_limit_reached"' in body
    ixt.box.advance(31 * 86400)  # the next billing period
    assert (await _get(http, ixt, "/invoices"))[0] == 200


async def test_scopes_revoked_keys_and_edge_html(
    http: aiohttp.ClientSession, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(items=2)
    limited = ixt.box.add_key("sk_test_limited", 100, ("invoices:read",))
    status, _, body = await _get(http, ixt, "/bank/reconciliations", limited.value)
    assert status == 403
    assert b"insufficient_scope" in body
    assert b"bank:read" in body
    assert (await _get(http, ixt, "/invoices", limited.value))[0] == 200
    limited.revoked = True
    status, _, body = await _get(http, ixt, "/invoices", limited.value)
    assert status == 401
    assert b"invalid_api_key" in body
    ixt.box.faults.add(Fault("503", "/invoices", 1))
    status, headers, body = await _get(http, ixt, "/invoices")
    assert status == 503
    assert headers["Content-Type"].startswith("text/html")
    assert (await _get(http, ixt, "/invoices"))[0] == 200


async def test_money_is_a_json_number_spelled_exactly_and_drift_adds_fields(
    http: aiohttp.ClientSession, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(items=3)
    ixt.box.drift = True
    status, _, body = await _get(http, ixt, "/invoices?limit=100")
    assert status == 200
    assert b'"tax_rate":0.20' in body
    assert b'"ai_tags"' in body
    invoice = next(iter(ixt.box.invoices.values()))
    assert f'"total":{invoice["totals"]["total"]}'.encode() in body


def test_plans_and_options() -> None:
    assert InvoicextSandbox(plan="pro", items=0).limit == 1000
    assert InvoicextSandbox(plan="starter", rate_limit=7, items=0).limit == 7
    with pytest.raises(ConfigError):
        InvoicextSandbox(plan="gold", items=0)
    app = create_sandbox_app(SandboxOptions(provider="invoicext", items=1, plan="business"))
    assert any(
        r.resource and r.resource.canonical == "/api/v1/invoices" for r in app.router.routes()
    )
