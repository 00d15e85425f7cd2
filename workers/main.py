"""The arq worker: resources opened once per worker process and the jobs it runs.

`relay worker` builds it with `build_worker(settings)`; tests build it the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog
import uvloop
from arq.connections import RedisSettings
from arq.worker import Worker

from relay.db import create_pool, create_redis
from relay.http import create_client_session
from relay.runtime import tune_gc
from relay.settings import Settings
from workers.delivery import (
    delivery_cron_jobs,
    start_delivery,
    stop_delivery,
    sweep_deliveries,
    wake_dispatcher,
)
from workers.polling import cron_jobs as polling_cron_jobs
from workers.polling import functions as polling_functions
from workers.retention import retention_cron_jobs

log = structlog.get_logger("workers.main")


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    ctx["pool"] = await create_pool(settings)
    ctx["redis_client"] = await create_redis(settings)
    # One upstream session per worker process, shared by every poll job it runs.
    ctx["upstream_http"] = create_client_session()
    await start_delivery(ctx)
    log.info("worker_started", queue=settings.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    await stop_delivery(ctx)  # first: its sends in flight are recorded through the pool
    for key in ("upstream_http", "pool"):
        if key in ctx:
            await ctx[key].close()
    if "redis_client" in ctx:
        await ctx["redis_client"].aclose()
    log.info("worker_stopped")


def worker_functions() -> list[Any]:
    """Every job this worker runs; each takes ids, loads state from Postgres, calls `relay`."""
    return [wake_dispatcher, sweep_deliveries, *polling_functions()]


def cron_jobs() -> list[Any]:
    """Periodic jobs (arq runs each once across all workers per tick)."""
    return [*delivery_cron_jobs(), *polling_cron_jobs(), *retention_cron_jobs()]


def build_worker(settings: Settings, *, burst: bool = False, **overrides: Any) -> Worker:
    """An arq Worker for these settings (tests call this with `burst=True`)."""
    options: dict[str, Any] = {
        "functions": worker_functions(),
        "cron_jobs": cron_jobs(),
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": settings.queue_name,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings},
        "burst": burst,
        "handle_signals": not burst,
        "max_jobs": 20,
        # Jobs carry ids only; orjson keeps them readable in Redis and never unpickles anything.
        "job_serializer": orjson.dumps,
        "job_deserializer": orjson.loads,
    }
    options.update(overrides)
    return Worker(**options)


def run_worker(settings: Settings, *, burst: bool = False) -> int:
    # uvloop: about a fifth less CPU per delivery in the dispatcher (bench/delivery_throughput.py);
    # arq runs on the loop set here.
    asyncio.set_event_loop(uvloop.new_event_loop())
    worker = build_worker(settings, burst=burst)
    tune_gc()
    worker.run()
    return 0
