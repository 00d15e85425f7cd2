"""Delivery factories: a programmable webhook endpoint, event bodies stored as the events module
stores them, subscriptions, and waiting for deliveries to settle (no fixtures: those are in
tests/delivery/conftest.py, built from these)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.delivery import Dispatcher
from relay.delivery.subscriptions import create_subscription
from relay.ids import new_id
from relay.settings import Settings
from relay.vault import Vault
from tests.support import stores


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Endpoint:
    """A real HTTP server on 127.0.0.1 whose answer depends on the path:

    /ok                200
    /fail/N            500 for the first N requests to this path, then 200
    /gone              410
    /retry-after/S     first request 503 with `Retry-After: S`, then 200
    /slow/S            answers 200 after S seconds
    /redirect          302 to /ok (must not be followed)
    /endless           200 with a body that never ends
    /hold              waits until `release` is set, then 200
    """

    base: str = ""
    hits: list[Hit] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return self.base + path

    def to(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        self.hits.append(
            Hit(path, {k.lower(): v for k, v in request.headers.items()}, body, time.monotonic())
        )
        n = self.counts[path] = self.counts.get(path, 0) + 1
        parts = path.strip("/").split("/")
        kind = parts[0]
        if kind == "fail" and n <= int(parts[1]):
            return web.Response(status=500, text="boom")
        if kind == "gone":
            return web.Response(status=410, text="gone")
        if kind == "retry-after" and n == 1:
            return web.Response(status=503, headers={"Retry-After": parts[1]}, text="later")
        if kind == "slow":
            await asyncio.sleep(float(parts[1]))
        if kind == "redirect":
            raise web.HTTPFound(self.base + "/ok")
        if kind == "hold":
            await self.release.wait()
        if kind == "endless":
            response = web.StreamResponse(status=200)
            await response.prepare(request)
            chunk = b"x" * 65536
            while True:  # until the client hangs up
                await response.write(chunk)
        return web.Response(status=200, text="ok")


DispatcherFactory = Callable[..., Awaitable[Dispatcher]]


def event_body(
    type: str = "document.categorized",
    *,
    account_id: str | None = None,
    client_id: str | None = "cli_1",
    object_id: str = "doc_1",
    obj: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": new_id("evt"),
        "type": type,
        "created_at": "2026-11-21T10:00:00Z",
        "account_id": account_id,
        "client_id": client_id,
        "object_type": type.split(".", 1)[0],
        "object_id": object_id,
        "data": {
            "object": obj if obj is not None else {"id": object_id, "category_code": "400"},
            "previous": previous if previous is not None else {"category_code": "310"},
        },
    }


async def store_events(pool: asyncpg.Pool, *bodies: dict[str, Any]) -> list[str]:
    """Store events the way the events module does (in one transaction); returns their ids."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO events (id, type, account_id, client_id, object_type, object_id, body) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [
                (
                    b["id"],
                    b["type"],
                    b["account_id"],
                    b["client_id"],
                    b["object_type"],
                    b["object_id"],
                    b,
                )
                for b in bodies
            ],
        )
    return [b["id"] for b in bodies]


async def mark_fanned_out(pool: asyncpg.Pool) -> None:
    """Take every stored event off the fan-out queue, as if fanned out long ago: history that a
    replay or a backfill sends again, and no fan-out touches."""
    await pool.execute("DELETE FROM event_fanout_queue")


async def make_account(pool: asyncpg.Pool) -> str:
    """An account row for events to belong to, its baseline not yet done (the token is a dummy)."""
    return await stores.make_account(pool, baselined=False)


async def subscribe(
    pool: asyncpg.Pool, vault: Vault, settings: Settings, url: str, **kwargs: Any
) -> tuple[dict[str, Any], str]:
    kwargs.setdefault("event_types", ["*"])
    return await create_subscription(pool, vault, settings, url=url, **kwargs)


async def wait_until(
    check: Callable[[], Awaitable[bool]], seconds: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def delivery_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM deliveries ORDER BY id")


async def all_settled(pool: asyncpg.Pool, count: int | None = None) -> bool:
    rows = await delivery_rows(pool)
    if count is not None and len(rows) != count:
        return False
    return bool(rows) and all(r["status"] != "pending" for r in rows)


Api = TestClient[Any, Any]
