"""arq worker settings: resources opened once per worker process and the jobs it runs."""

from __future__ import annotations

from typing import Any, ClassVar

import structlog
from arq.connections import RedisSettings
from arq.worker import Worker

from relay.db import create_pool, create_redis
from relay.settings import Settings

log = structlog.get_logger("workers.main")


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    ctx["pool"] = await create_pool(settings)
    ctx["redis_client"] = await create_redis(settings)
    log.info("worker_started", queue=settings.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    for key in ("pool",):
        if key in ctx:
            await ctx[key].close()
    if "redis_client" in ctx:
        await ctx["redis_client"].aclose()
    log.info("worker_stopped")


def worker_functions() -> list[Any]:
    """Every job this worker runs; each takes ids, loads state from Postgres, calls `relay`."""
    return []


def build_worker(settings: Settings, *, burst: bool = False, **overrides: Any) -> Worker:
    """An arq Worker for these settings (tests call this with `burst=True`)."""
    options: dict[str, Any] = {
        "functions": worker_functions(),
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": settings.queue_name,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings},
        "burst": burst,
        "handle_signals": not burst,
        "max_jobs": 20,
    }
    options.update(overrides)
    return Worker(**options)


class WorkerSettings:
    """Defaults for `arq workers.main.WorkerSettings`; `relay worker` fills in the settings."""

    functions: ClassVar[list[Any]] = []


def run_worker(settings: Settings, *, burst: bool = False) -> int:
    worker = build_worker(settings, burst=burst)
    worker.run()
    return 0
