"""The sandboxes on loopback, a pytest plugin registered in tests/conftest.py: the handles and
factories every stage's tests start them with, and a tiny Dext client for the sandbox's own tests.

async def test_x(sandbox):              # 3 clients, 60 items, paused, 10_000 req/window
    await sandbox.advance(3600)
async def test_y(sandbox_factory):
    box = await sandbox_factory(rate_limit=5, window_seconds=2)
async def test_z(ixt_factory):          # an InvoiceXT sandbox, paused, its own API key
    ixt = await ixt_factory(items=5)
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.sandbox.invoicext.account import InvoicextSandbox
from relay.sandbox.invoicext.api import create_invoicext_app
from relay.sandbox.server import SANDBOX, Sandbox, SandboxOptions, create_sandbox_app
from tests.support.loopback import serve

TEST_DEFAULTS: dict[str, Any] = {
    "clients": 3,
    "items": 60,
    "simulate": False,
    "rate_limit": 10_000,
    "window_seconds": 60.0,
}


@dataclass
class SandboxHandle:
    """A running sandbox: its URL, default api token, in-process state and control helpers."""

    url: str
    token: str
    sandbox: Sandbox
    http: aiohttp.ClientSession

    async def _control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, f"{self.url}/_sandbox{path}", json=body) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise AssertionError(f"sandbox control {path} failed: {resp.status} {data}")
            return data

    async def advance(self, seconds: float) -> dict[str, Any]:
        """Advance simulated time; returns {now, now_unix, changes}."""
        result: dict[str, Any] = await self._control("POST", "/clock/advance", {"seconds": seconds})
        return result

    async def changes(self, since: int = 0) -> list[dict[str, Any]]:
        result = await self._control("GET", f"/changes?since={since}")
        return list(result["data"])

    async def apply(self, change: dict[str, Any]) -> list[dict[str, Any]]:
        result = await self._control("POST", "/changes", change)
        return list(result["changes"])

    async def add_client(self, items: int) -> list[dict[str, Any]]:
        """A client joins mid-run with `items` documents of history; its change-log entries."""
        return await self.apply({"action": "create_client", "items": items})

    async def fault(self, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._control("POST", "/faults", kwargs)
        return result

    async def clear_faults(self) -> None:
        await self._control("DELETE", "/faults")

    async def simulate(self, paused: bool = False, change_rate: float | None = None) -> None:
        body: dict[str, Any] = {"paused": paused}
        if change_rate is not None:
            body["change_rate"] = change_rate
        await self._control("POST", "/simulation", body)

    async def drift(self, kinds: list[str] | str, rate: float | None = None) -> dict[str, Any]:
        """Switch the drift switches (relay/sandbox/dext/drift.py): `all`, `none` or a list."""
        body: dict[str, Any] = {"kinds": kinds}
        if rate is not None:
            body["rate"] = rate
        result: dict[str, Any] = await self._control("POST", "/drift", body)
        return result

    async def requests_summary(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._control("GET", "/requests/summary")
        return result

    async def state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._control("GET", "/state")
        return result


SandboxFactory = Callable[..., Awaitable[SandboxHandle]]


@pytest.fixture
async def sandbox_factory() -> AsyncIterator[SandboxFactory]:
    """`await sandbox_factory(**options)`: a sandbox on a free loopback port, closed after."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: Any) -> SandboxHandle:
        options = SandboxOptions(**{**TEST_DEFAULTS, "port": 0, **overrides})
        app = create_sandbox_app(options)
        runner, url = await serve(app, access_log=None)
        runners.append(runner)
        http = aiohttp.ClientSession()
        sessions.append(http)
        sandbox = app[SANDBOX]
        return SandboxHandle(url, sandbox.token.api_token, sandbox, http)

    yield start
    for http in sessions:
        await http.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def sandbox(sandbox_factory: SandboxFactory) -> SandboxHandle:
    """A small, paused sandbox with a generous rate limit."""
    return await sandbox_factory()


@dataclass
class IxtHandle:
    """A running InvoiceXT sandbox: its API root, default key and in-process state."""

    url: str
    token: str
    box: InvoicextSandbox


@pytest.fixture
async def ixt_factory() -> AsyncIterator[Callable[..., Awaitable[IxtHandle]]]:
    """`await ixt_factory(**options)`: a paused InvoiceXT sandbox on loopback, closed after."""
    runners: list[web.AppRunner] = []

    async def start(**options: Any) -> IxtHandle:
        defaults: dict[str, Any] = {
            "items": 30,
            "simulate": False,
            "rate_limit": 100_000,
            "monthly_limit": 10_000_000,
            "speed": 3600.0,
            # Limiter state lives in Redis per key: every sandbox its own key.
            "api_token": f"sk_test_{secrets.token_hex(8)}",
        }
        box = InvoicextSandbox(**{**defaults, **options})
        runner, url = await serve(create_invoicext_app(box), access_log=None)
        runners.append(runner)
        return IxtHandle(f"{url}/api/v1", box.token.value, box)

    yield start
    for runner in runners:
        await runner.cleanup()


# A tiny Dext client for the sandbox's tests: log in, page through lists, snapshot everything.

Snapshot = dict[tuple[str, str], dict[str, Any]]


class Dext:
    """Talks to a sandbox the way the contract says a client must (one session, Bearer auth)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, api_token: str) -> None:
        self.http = http
        self.url = url
        self.api_token = api_token
        self.session: str | None = None

    async def login(self) -> dict[str, Any]:
        async with self.http.post(
            f"{self.url}/authenticate", json={"api_token": self.api_token}
        ) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 200, body
        self.session = body["session_token"]
        return body

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session}"}

    async def get(self, path: str, **params: Any) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        """(status, JSON body, headers) of one GET."""
        query = {k: str(v) for k, v in params.items()}
        async with self.http.get(f"{self.url}{path}", params=query, headers=self.headers) as r:
            if r.content_type == "application/json":
                return r.status, await r.json(), r.headers
            return r.status, await r.text(), r.headers

    async def ok(self, path: str, **params: Any) -> Any:
        status, body, _ = await self.get(path, **params)
        assert status == 200, (path, status, body)
        return body

    async def all_pages(self, path: str, per_page: int = 50, **params: Any) -> list[Any]:
        items: list[Any] = []
        page = 1
        while True:
            body = await self.ok(path, page=page, per_page=per_page, **params)
            items.extend(body["data"])
            if page >= body["pagination"]["total_pages"]:
                return items
            page += 1

    async def snapshot(self) -> Snapshot:
        """Every object the API serves, keyed by (object_type, id); connections by client id."""
        out: Snapshot = {}
        for client in await self.all_pages("/clients", per_page=100):
            cid = client["id"]
            out[("client", cid)] = client
            out[("connection", cid)] = await self.ok("/connections", client_id=cid)
            for path in ("/costs", "/sales"):
                for item in await self.all_pages(path, client_id=cid):
                    out[("document", item["id"])] = item
            for supplier in await self.all_pages("/suppliers", per_page=100, client_id=cid):
                out[("supplier", supplier["id"])] = supplier
            for report in await self.all_pages("/expense_reports", per_page=100, client_id=cid):
                out[("expense_report", report["id"])] = report
        return out


def replay(before: Snapshot, changes: list[dict[str, Any]]) -> Snapshot:
    """Apply change-log entries to a snapshot, checking each `old` value against the state."""
    state = {key: dict(value) for key, value in before.items()}
    for entry in changes:
        key = (entry["object_type"], entry["object_id"])
        if entry["kind"] in ("created", "existing"):
            assert key not in state, entry
            state[key] = dict(entry["object"])
        elif entry["kind"] == "deleted":
            assert state.pop(key) == entry["object"], entry
        else:
            current = state[key]
            for field, (old, new) in entry["changes"].items():
                assert current.get(field) == old, (entry["seq"], field, current.get(field), old)
                assert old != new, entry
                current[field] = new
            assert current == entry["object"], entry["seq"]
    return state
