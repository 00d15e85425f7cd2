"""Fixtures for outage tests: private stores that tests stop, `relay worker` processes, a
receiver that records every webhook, and the JSON log lines the workers wrote.

Workers run as real `relay worker` processes against the private stores (never the shared
ones), with the upstream clock compressed 60 times (`RELAY_UPSTREAM_SPEED=60`: a one-second
rate-limit window, head polls every 0.3-5 s) so polling is visible within seconds.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from relay.db import create_pool, migrate
from relay.delivery.subscriptions import create_subscription
from relay.ids import new_id
from relay.settings import Settings
from relay.sources import accounts
from relay.vault import Vault
from tests.conftest import TEST_ADMIN_TOKEN, TEST_SECRET_KEY
from tests.plugins.sandbox import SandboxFactory, SandboxHandle
from tests.support.stores import PrivateStores

ROOT = Path(__file__).resolve().parents[2]
SPEED = 60.0  # RELAY_UPSTREAM_SPEED of the workers: Dext's minute is one second here


@pytest.fixture(scope="session")
def private_stores() -> Iterator[PrivateStores]:
    """One private Redis and Postgres for the outage tests of this run, removed at the end."""
    stores = PrivateStores()
    try:
        stores.start_sync()
        yield stores
    finally:
        stores.close_sync()


@pytest.fixture
def stores(private_stores: PrivateStores) -> Iterator[PrivateStores]:
    """The private stores, running at the start of the test and again after it."""
    private_stores.ensure_running_sync()
    yield private_stores
    private_stores.ensure_running_sync()


@pytest.fixture
async def osettings(stores: PrivateStores) -> Settings:
    """Settings on a fresh database of the private Postgres and the (flushed) private Redis."""
    import redis.asyncio as aioredis

    url = f"{stores.postgres.server_url}/relay_outage_{secrets.token_hex(4)}"
    await migrate(Settings(database_url=url))
    client = aioredis.Redis.from_url(stores.redis.url)
    await client.flushdb()
    await client.aclose()
    return Settings(
        database_url=url,
        redis_url=stores.redis.url,
        admin_token=TEST_ADMIN_TOKEN,
        secret_keys=(TEST_SECRET_KEY,),
        allow_private_targets=True,
        log_format="console",
        log_level="warning",
        retry_schedule=(0.2, 0.4, 0.6, 0.8, 1.0),
        delivery_timeout=2.0,
        queue_name=f"relay:outage:{secrets.token_hex(4)}",
        upstream_speed=SPEED,
    )


@pytest.fixture
async def opool(osettings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The test's own pool on the private database (it survives the outages the test makes)."""
    pool = await create_pool(osettings, min_size=1, max_size=4)
    yield pool
    await pool.close()


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RELAY_SECRET_KEY": TEST_SECRET_KEY,
        "RELAY_ALLOW_PRIVATE_TARGETS": "true",
        "RELAY_RETRY_SCHEDULE": "0.2,0.4,0.6,0.8,1.0",
        "RELAY_DELIVERY_TIMEOUT": "2",
        "RELAY_DELIVERY_LEASE": "30",
        "RELAY_DELIVERY_POLL_INTERVAL": "0.2",
        "RELAY_QUEUE_NAME": settings.queue_name,
        "RELAY_UPSTREAM_SPEED": str(SPEED),
        "RELAY_LOG_FORMAT": "json",
        "RELAY_LOG_LEVEL": "info",
    }


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


@pytest.fixture
async def spawn_worker(tmp_path: Path) -> AsyncIterator[WorkerFactory]:
    """`await spawn_worker(settings, *args)`: a `relay worker` process, stopped after the test."""
    started: list[WorkerProcess] = []

    async def spawn(settings: Settings, *args: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay", "worker", *args,
                env=worker_env(settings), cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        worker = WorkerProcess(process, log)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        if worker.alive:
            worker.process.terminate()
    for worker in started:
        try:
            await asyncio.wait_for(worker.process.wait(), 20)
        except TimeoutError:
            worker.process.kill()
            await worker.process.wait()


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


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    app = web.Application()
    app.router.add_post("/hook", endpoint.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    endpoint.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield endpoint
    await runner.cleanup()


@pytest.fixture
async def upstream(sandbox_factory: SandboxFactory) -> SandboxHandle:
    """A sandbox whose budget is Dext's (60 a window) in the workers' one-second window."""
    return await sandbox_factory(rate_limit=60, window_seconds=60.0 / SPEED)


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
    rows = []
    for _ in range(n):
        object_id = new_id("doc")
        body = {
            "id": new_id("evt"), "type": "document.categorized",
            "created_at": "2026-11-21T10:00:00Z", "account_id": account_id,
            "client_id": "cli_1", "object_type": "document", "object_id": object_id,
            "data": {"object": {"id": object_id}, "previous": {"category_code": "310"}},
        }  # fmt: skip
        rows.append((body["id"], body["type"], account_id, "cli_1", "document", object_id, body))
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO events (id, type, account_id, client_id, object_type, object_id, body) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            rows,
        )
    return [row[0] for row in rows]


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
