"""Fixtures for outage tests: private stores that tests stop, `relay worker` processes, a
receiver that records every webhook (the helpers are in tests/support/outages.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from relay.db import create_pool, migrate
from relay.settings import Settings
from tests.support.loopback import serve
from tests.support.outages import SPEED, Receiver, WorkerFactory, WorkerProcess
from tests.support.sandbox import SandboxFactory, SandboxHandle
from tests.support.stores import PrivateStores, make_settings
from tests.support.workers import spawn_worker as start_worker
from tests.support.workers import worker_env


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
    async with aioredis.Redis.from_url(stores.redis.url) as client:
        await client.flushdb()
    return make_settings(
        url,
        stores.redis.url,
        queue_name=f"relay:outage:{secrets.token_hex(4)}",
        upstream_speed=SPEED,
    )


@pytest.fixture
async def opool(osettings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The test's own pool on the private database (it survives the outages the test makes)."""
    pool = await create_pool(osettings, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def spawn_worker(tmp_path: Path) -> AsyncIterator[WorkerFactory]:
    """`await spawn_worker(settings, *args)`: a `relay worker` process, stopped after the test."""
    started: list[WorkerProcess] = []

    async def spawn(settings: Settings, *args: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        env = worker_env(
            settings,
            RELAY_RETRY_SCHEDULE="0.2,0.4,0.6,0.8,1.0",
            RELAY_DELIVERY_LEASE="30",
            RELAY_UPSTREAM_SPEED=str(SPEED),
            RELAY_LOG_LEVEL="info",
        )
        worker = WorkerProcess(await start_worker(env, log, *args), log)
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


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    app = web.Application()
    app.router.add_post("/hook", endpoint.handle)
    runner, base = await serve(app, access_log=None)
    endpoint.url = f"{base}/hook"
    yield endpoint
    await runner.cleanup()


@pytest.fixture
async def upstream(sandbox_factory: SandboxFactory) -> SandboxHandle:
    """A sandbox whose budget is Dext's (60 a window) in the workers' one-second window."""
    return await sandbox_factory(rate_limit=60, window_seconds=60.0 / SPEED)
