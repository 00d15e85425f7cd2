"""The arq worker: resources opened once per worker process and the jobs it runs.

`relay worker` builds it with `build_worker(settings)`; tests build it the same way.

The worker outlives its stores. Started while Postgres or Redis is down, it says so in one
`store_unavailable` line and waits for them (`--exit-on-unavailable` exits instead, for a
supervisor to restart it). Running, a Redis outage no longer ends arq's loop: `RelayWorker`
logs it once, retries with capped backoff and carries on when Redis answers, while the
dispatcher keeps delivering from Postgres; jobs catch their own store failures (see
`workers.polling`, `workers.delivery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import orjson
import structlog
import uvloop
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import Worker

from relay.db import (
    REDIS_OUTAGE_ERRORS,
    Backoff,
    Outage,
    create_pool,
    create_redis,
    wait_for_stores,
)
from relay.http import create_client_session
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
from workers.runtime import tune_gc

log = structlog.get_logger("workers.main")


class RelayWorker(Worker):
    """arq's Worker, made to ride out Redis outages instead of ending the process.

    arq lets a Redis error in its poll loop (reading the queue, the health key, cron enqueues)
    or in a job's bookkeeping (`finish_job`) escape `main()`, and the worker exits with status
    1 after a Redis blip (issue 10). Here each loop iteration that fails on Redis is one
    incident (`store_unavailable` once, `store_recovered` when it answers) followed by a capped
    backoff; nothing else changes. Redis only carries wake-ups: what a lost wake-up or job
    record would have done, Postgres and the crons redo once Redis is back.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings: Settings = self.ctx["settings"]
        self._redis_outage = Outage("Redis", settings.redis_url, "arq")
        self._redis_backoff = Backoff(first=0.1, cap=2.0)
        # Jobs whose end arq could not record in Redis; their records are cleared on recovery.
        self._unrecorded: set[str] = set()
        # arq's record of a job's end, shielded from the job's cancellation (see `close`).
        self._bookkeeping: set[asyncio.Task[Any]] = set()

    async def _poll_iteration(self) -> None:
        try:
            if self._unrecorded:
                await self._clear_unrecorded()
            await super()._poll_iteration()
        except REDIS_OUTAGE_ERRORS as exc:
            self._redis_outage.failed(exc)
            await asyncio.sleep(self._redis_backoff.next())
            return
        self._redis_outage.recovered()
        self._redis_backoff.reset()

    async def _clear_unrecorded(self) -> None:
        """Do for the jobs that ended during the outage what `finish_job` could not.

        A Redis that kept its keys through the outage (a stock Redis snapshots on shutdown)
        still holds their queue entries and in-progress marks: arq would skip them as
        running elsewhere, and refuse their ids (a poll's id is its account and period), for
        up to the job timeout. Every job here ran at most once and is re-seeded from Postgres
        by the crons, so its records simply go.
        """
        ended = [job_id for job_id in self._unrecorded if job_id not in self.tasks]
        if not ended:
            return
        async with self.pool.pipeline(transaction=True) as pipe:
            for job_id in ended:
                pipe.delete(
                    in_progress_key_prefix + job_id,
                    job_key_prefix + job_id,
                    retry_key_prefix + job_id,
                )
                pipe.zrem(self.queue_name, job_id)
            await pipe.execute()
        self._unrecorded.difference_update(ended)
        log.info("job_records_cleared", jobs=len(ended))

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        try:
            await super().start_jobs(job_ids)
        except REDIS_OUTAGE_ERRORS:
            # arq took a slot (semaphore and counter) for the job it was starting when Redis
            # failed, and only a started task gives it back: give it back here, or every
            # outage would shrink this worker's capacity by one until it ran nothing.
            self._release_sem_dec_counter_on_complete()
            raise

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except REDIS_OUTAGE_ERRORS as exc:
            # The job ran (or could not start); only arq's record of it is lost. Its effects
            # live in Postgres, and every job here is idempotent, so a rerun is harmless.
            self._redis_outage.failed(exc)
            self._unrecorded.add(job_id)

    async def finish_job(self, *args: Any, **kwargs: Any) -> None:
        with self._in_bookkeeping():
            await super().finish_job(*args, **kwargs)

    async def finish_failed_job(self, *args: Any, **kwargs: Any) -> None:
        with self._in_bookkeeping():
            await super().finish_failed_job(*args, **kwargs)

    @contextlib.contextmanager
    def _in_bookkeeping(self) -> Iterator[None]:
        # arq runs these under asyncio.shield: a cancelled job leaves them running on the pool.
        task = asyncio.current_task()
        assert task is not None
        self._bookkeeping.add(task)
        try:
            yield
        finally:
            self._bookkeeping.discard(task)

    async def close(self) -> None:
        """Stop the loop and the jobs, wait until nothing uses Redis, shut down, close the pool.

        arq's own `close()` leaks connections. It closes the pool while tasks still use it
        (with signal handling on, the whole poll loop; always, the bookkeeping of a cancelled
        job, which arq shields from the cancellation), and their next command opens a
        connection nobody closes. And the CancelledError of a job cancelled mid-bookkeeping,
        or a Redis error on its health-key delete, ends it before `on_shutdown`: the
        dispatcher, the Postgres pool and the Redis client were then never closed either.
        """
        if self.main_task is not None and not self.main_task.done():
            self.handle_sig(signal.SIGUSR1)  # what SIGTERM does: cancel the loop and the jobs
        if self._pool is None:
            return
        users = [
            t for t in (self.main_task, *self.tasks.values(), *self._bookkeeping) if t is not None
        ]
        while users:
            await asyncio.gather(*users, return_exceptions=True)
            users = [t for t in self._bookkeeping if not t.done()]
        try:
            with contextlib.suppress(*REDIS_OUTAGE_ERRORS):  # the key expires by itself
                await self.pool.delete(self.health_check_key)
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)
        finally:
            await self.pool.aclose(close_connection_pool=True)
            self._pool = None


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    # Outage trackers shared by every job of this process (arq gives each job a shallow copy
    # of this ctx, so the dict must exist here, not be created by the first job).
    ctx["outages"] = {}
    ctx["pool"] = await create_pool(settings)
    ctx["redis_client"] = await create_redis(settings)
    # One upstream session per worker process, shared by every poll job it runs.
    ctx["upstream_http"] = create_client_session()
    await start_delivery(ctx)
    log.info("worker_started", queue=settings.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Stop the dispatcher, then close what `startup` opened. Each close runs whether or not
    the step before it failed, was cancelled or never happened (a startup cut short), so a
    worker stopped mid-outage leaves no connection open; closed resources leave `ctx`."""
    async with contextlib.AsyncExitStack() as closing:  # closes in the reverse order
        if (redis_client := ctx.pop("redis_client", None)) is not None:
            closing.push_async_callback(redis_client.aclose)
        for key in ("pool", "upstream_http"):
            if (resource := ctx.pop(key, None)) is not None:
                closing.push_async_callback(resource.close)
        await stop_delivery(ctx)  # first: its sends in flight are recorded through the pool
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
    return RelayWorker(**options)


def run_worker(
    settings: Settings, *, burst: bool = False, exit_on_unavailable: bool = False
) -> int:
    """`relay worker`: wait for the stores (or raise ServiceUnavailable with
    `exit_on_unavailable`), then run until a signal."""
    # uvloop: about a fifth less CPU per delivery in the dispatcher (bench/delivery_throughput.py);
    # arq runs on the loop set here.
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(wait_for_stores(settings, wait=not exit_on_unavailable))
    worker = build_worker(settings, burst=burst)
    tune_gc()
    worker.run()
    return 0
