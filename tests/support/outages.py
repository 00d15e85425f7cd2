"""Outage-test helpers: `relay worker` processes and their JSON log lines, a receiver that
records every webhook, a polled account, and the checks the outage tests make.

Workers run as real `relay worker` processes against the private stores (never the shared
ones), with the upstream clock compressed 60 times (`RELAY_UPSTREAM_SPEED=60`: a one-second
rate-limit window, head polls every 0.3-5 s) so polling is visible within seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from relay.delivery.subscriptions import create_subscription
from relay.ids import new_id
from relay.settings import Settings
from relay.sources import accounts
from relay.vault import Vault
from tests.support import delivery
from tests.support.delivery import event_body
from tests.support.sandbox import SandboxHandle

SPEED = 60.0  # RELAY_UPSTREAM_SPEED of the workers: Dext's minute is one second here


@dataclass
class WorkerProcess:
    """A `relay worker` subprocess whose stderr goes to `log`."""

    process: asyncio.subprocess.Process
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def lines(self) -> list[dict[str, Any]]:
        """Every line written so far, parsed as JSON (a line that is not JSON fails the test)."""
        out = []
        for raw in self.log.read_bytes().splitlines():
            try:
                out.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                raise AssertionError(f"not a JSON log line in {self.log}: {raw[:300]!r}") from None
        return out

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines()
            if line.get("event") == name and all(line.get(k) == v for k, v in match.items())
        ]

    async def stop(self) -> int:
        """SIGTERM, as a supervisor stops it; the exit status (0: a clean shutdown)."""
        if self.alive:
            self.process.terminate()
        return await asyncio.wait_for(self.process.wait(), 30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


WorkerFactory = Callable[..., Awaitable[WorkerProcess]]


@dataclass
class Receiver:
    """A webhook endpoint on loopback that answers 200 and records every `webhook-id`."""

    url: str = ""
    received: list[tuple[str, float]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.received.append((request.headers["webhook-id"], time.time()))
        return web.Response(status=200)

    def ids(self) -> set[str]:
        return {event_id for event_id, _ in self.received}


async def setup_relay(
    pool: asyncpg.Pool, settings: Settings, upstream: SandboxHandle, receiver: Receiver
) -> str:
    """A polled account on the sandbox and a subscription to every event; returns the account."""
    vault = Vault(settings.secret_keys)
    account = await accounts.create_account(
        pool, vault, provider="dext", name="practice", base_url=upstream.url,
        api_token=upstream.token,
    )  # fmt: skip
    await create_subscription(pool, vault, settings, url=receiver.url, event_types=["*"])
    return account.id


async def store_events(pool: asyncpg.Pool, account_id: str, n: int) -> list[str]:
    """Store `n` events directly, as the events module does (work for the dispatcher alone)."""
    bodies = []
    for _ in range(n):
        object_id = new_id("doc")
        bodies.append(event_body(account_id=account_id, object_id=object_id, obj={"id": object_id}))
    return await delivery.store_events(pool, *bodies)


async def wait_for(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> float:
    """Poll `check` until true; returns the seconds it took, fails after `seconds`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def upstream_requests_after(upstream: SandboxHandle, at: float) -> list[dict[str, Any]]:
    return [e for e in upstream.sandbox.access.requests if e["real_at"] >= at]


async def event_ids(pool: asyncpg.Pool) -> set[str]:
    return {row["id"] for row in await pool.fetch("SELECT id FROM events")}


async def duplicate_events(pool: asyncpg.Pool) -> int:
    """Events that repeat another's object and sequence (a change stored twice)."""
    return int(
        await pool.fetchval(
            "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM events "
            "WHERE body ? 'sequence' "
            "GROUP BY account_id, object_type, object_id, body->>'sequence') AS g"
        )
    )


async def all_recorded(pool: asyncpg.Pool) -> bool:
    """Every delivery recorded as succeeded in Postgres (not only received by the endpoint)."""
    return not await pool.fetchval("SELECT count(*) FROM deliveries WHERE status <> 'succeeded'")
