"""Fixtures that start the sandbox on loopback (owned by the sandbox's tests).

async def test_x(sandbox):              # 3 clients, 60 items, paused, 10_000 req/window
    await sandbox.advance(3600)
async def test_y(sandbox_factory):
    box = await sandbox_factory(rate_limit=5, window_seconds=2)
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
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession()
        sessions.append(http)
        sandbox = app[SANDBOX]
        return SandboxHandle(f"http://127.0.0.1:{port}", sandbox.token.api_token, sandbox, http)

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
        runner = web.AppRunner(create_invoicext_app(box), access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        return IxtHandle(f"http://127.0.0.1:{port}/api/v1", box.token.value, box)

    yield start
    for runner in runners:
        await runner.cleanup()
