"""Fixtures for delivery tests: programmable webhook endpoints on loopback, dispatchers, the API
(the factories they are built from are in tests/support/delivery.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from relay.api.app import create_app
from relay.delivery import Dispatcher, close_session, create_session
from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import Api, DispatcherFactory, Endpoint
from tests.support.loopback import serve
from tests.support.stores import AUTH
from tests.support.workers import worker_env as relay_worker_env


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ep.handle)
    runner, ep.base = await serve(app, handler_cancellation=True)
    yield ep
    ep.release.set()
    await runner.cleanup()


@pytest.fixture
def dsettings(settings: Settings) -> Settings:
    """The run's settings with a quick poll, so tests wait for nothing."""
    return settings.with_changes(delivery_poll_interval=0.2)


@pytest.fixture
async def start_dispatcher(
    pool: asyncpg.Pool, dsettings: Settings
) -> AsyncIterator[DispatcherFactory]:
    """Start real dispatchers (own session each); all are stopped and awaited at the end."""
    running: list[tuple[Dispatcher, asyncio.Task[None], Any]] = []

    async def start(settings: Settings | None = None) -> Dispatcher:
        s = settings or dsettings
        session = create_session(s)
        dispatcher = Dispatcher(pool, s, session, Vault(s.secret_keys))
        running.append((dispatcher, asyncio.create_task(dispatcher.run()), session))
        return dispatcher

    yield start
    for dispatcher, task, session in running:
        dispatcher.stop()
        await asyncio.wait_for(task, 15)
        await close_session(session)


@pytest.fixture
async def api(
    aiohttp_client: Callable[..., Awaitable[Api]],
    dsettings: Settings,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
) -> Api:
    """The admin API served on loopback (stores emptied first, by `pool` and `redis_client`)."""
    return await aiohttp_client(create_app(dsettings), headers=AUTH)


@pytest.fixture
async def api2(aiohttp_client: Callable[..., Awaitable[Api]], dsettings: Settings, api: Api) -> Api:
    """A second admin API app with its own pool, as a second `relay api` process would be."""
    return await aiohttp_client(create_app(dsettings), headers=AUTH)


@pytest.fixture
def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a `relay worker` subprocess on this run's stores."""
    return relay_worker_env(settings)
