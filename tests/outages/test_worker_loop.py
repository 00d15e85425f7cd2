"""`RelayWorker`, in process: arq's loop and job slots survive Redis failing under them."""

from __future__ import annotations

import asyncio

import pytest
from arq.connections import RedisSettings, create_pool
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.settings import Settings
from tests.support.stores import PrivateStores
from workers.main import build_worker


async def test_the_loop_and_its_job_slots_outlive_redis_failures(
    osettings: Settings, stores: PrivateStores
) -> None:
    worker = build_worker(osettings, poll_delay=0.05, max_jobs=5)
    worker._pool = await create_pool(RedisSettings.from_dsn(osettings.redis_url))
    try:
        await stores.redis.stop()
        # arq takes a slot before each start and only a started job gives it back: without
        # the worker returning it on a Redis error, the sixth try would wait forever.
        for _ in range(12):
            with pytest.raises(RedisConnectionError):
                await asyncio.wait_for(worker.start_jobs([b"some-job"]), 2)
        assert worker.job_counter == 0
        # A whole loop iteration against a dead Redis ends normally (and backs off).
        await asyncio.wait_for(worker._poll_iteration(), 5)
        await stores.redis.start()
        await asyncio.wait_for(worker._poll_iteration(), 5)  # and works again once it is back
        assert await worker.pool.ping()
    finally:
        await worker.pool.aclose()
