"""`RelayWorker`, in process: arq's loop and job slots survive Redis failing under them, and
closing it leaves no connection open whatever the loop, its jobs or Redis were doing."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, result_key_prefix
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.settings import Settings
from tests.support.outages import wait_for
from tests.support.stores import PrivateStores
from workers.main import build_worker

# What `startup` opens: all closed, and gone from ctx, once the worker is closed.
RESOURCES = {"pool", "redis_client", "upstream_http", "delivery_session", "dispatcher"}


async def _started(worker: Worker) -> bool:
    return "dispatcher_task" in worker.ctx


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


async def test_closing_a_running_worker_in_a_redis_outage_still_shuts_it_down(
    osettings: Settings, stores: PrivateStores
) -> None:
    # Signal handling on, as in `relay worker`: arq's close() then leaves the loop running.
    worker = build_worker(osettings, poll_delay=0.05)
    running = asyncio.create_task(worker.async_run())
    try:
        await wait_for(lambda: _started(worker), 20, "the worker's startup")
        await stores.redis.stop()
        await asyncio.sleep(0.3)  # the loop is failing on Redis and backing off
    finally:
        await worker.close()  # arq's raised on the health key, before its on_shutdown
        await asyncio.gather(running, return_exceptions=True)
    assert worker.main_task is not None
    assert worker.main_task.done()
    assert RESOURCES.isdisjoint(worker.ctx)


async def test_close_waits_for_the_record_of_a_job_it_cancels(
    osettings: Settings, stores: PrivateStores
) -> None:
    started, release, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held(ctx: dict[str, Any]) -> None:
        started.set()
        await release.wait()

    async def on_job_end(ctx: dict[str, Any]) -> None:
        ended.set()  # arq records the job's end next, shielded from a cancellation

    worker = build_worker(
        osettings,
        functions=[func(held, name="held")],
        cron_jobs=[],
        poll_delay=0.05,
        handle_signals=False,
        on_job_end=on_job_end,
    )
    admin = aioredis.Redis.from_url(osettings.redis_url)
    await admin.client_setname("test-admin")
    running = asyncio.create_task(worker.async_run())
    try:
        await wait_for(lambda: _started(worker), 20, "the worker's startup")
        job = await worker.pool.enqueue_job("held")
        assert job is not None
        await asyncio.wait_for(started.wait(), 10)
        # Writes wait for a second, so the job's record is still being written when close()
        # cancels the job: arq's close() let that CancelledError out and closed nothing.
        await admin.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
        release.set()
        await asyncio.wait_for(ended.wait(), 5)
        await asyncio.sleep(0.1)
    finally:
        # The paused writes also hold arq's poll loop inside a MULTI (its health and abort
        # bookkeeping). Once in a few dozen runs close() cancels it at the point where redis-py
        # has disconnected the pipeline's connection but not yet let go of it, and its __del__
        # warns "Unclosed client session" (as in tests/poller/test_resilience.py) with no
        # socket open. That warning is ignored while the worker dies; whether a socket is
        # left open is asked of Redis itself below.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Unclosed client session", ResourceWarning)
            await worker.close()
            await asyncio.gather(running, return_exceptions=True)
            gc.collect()
    try:
        assert RESOURCES.isdisjoint(worker.ctx)
        assert not await admin.exists(in_progress_key_prefix + job.job_id)
        assert await admin.exists(result_key_prefix + job.job_id)
        await wait_for(lambda: _only_admin(admin), 5, "the worker's Redis connections to close")
    finally:
        await admin.aclose()


async def _only_admin(admin: aioredis.Redis) -> bool:
    """True once Redis lists no client but `admin` (named "test-admin")."""
    return [c.get("name") for c in await admin.client_list()] == ["test-admin"]
