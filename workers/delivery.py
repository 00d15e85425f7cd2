"""Delivery in the worker: the dispatcher's lifetime, an arq wake-up job and the sweeper cron.

Each worker process runs one `Dispatcher` (started at worker startup, stopped and awaited at
shutdown) with one shared aiohttp session. Redis only carries wake-ups: the dispatcher also
listens to Postgres NOTIFY and polls, so a flushed Redis delays nothing and loses nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from arq import cron

from relay.db import store_outage
from relay.delivery import Dispatcher, close_session, create_session, fan_out_events
from relay.delivery.subscriptions import MatcherCache
from relay.metrics import WorkerMetrics
from relay.settings import Settings
from relay.vault import Vault
from workers.outages import outage, recovered

log = structlog.get_logger("workers.delivery")

SWEEP_SECONDS = {0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55}


async def start_delivery(ctx: dict[str, Any]) -> None:
    """Open the delivery session and start this process's dispatcher (called at startup)."""
    settings: Settings = ctx["settings"]
    # In ctx at once: `stop_delivery` closes it even if the rest of startup fails.
    session = ctx["delivery_session"] = create_session(settings)
    # One buffer per worker process: the dispatcher, the sweeper and poll jobs flush into Redis.
    metrics = ctx["metrics"] = WorkerMetrics(ctx["redis_client"])
    dispatcher = Dispatcher(ctx["pool"], settings, session, Vault(settings.secret_keys), metrics)
    ctx["dispatcher"] = dispatcher
    ctx["dispatcher_task"] = asyncio.create_task(dispatcher.run(), name="delivery-dispatcher")


async def stop_delivery(ctx: dict[str, Any]) -> None:
    """Stop the dispatcher, wait for its sends in flight to be recorded, close the session."""
    dispatcher: Dispatcher | None = ctx.pop("dispatcher", None)
    task: asyncio.Task[None] | None = ctx.pop("dispatcher_task", None)
    session = ctx.pop("delivery_session", None)
    try:
        if dispatcher is not None and task is not None:
            dispatcher.stop()
            settings: Settings = ctx["settings"]
            try:
                await asyncio.wait_for(asyncio.shield(task), settings.delivery_timeout + 10.0)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        if session is not None:
            await close_session(session)
    metrics: WorkerMetrics | None = ctx.get("metrics")
    if metrics is not None:
        await metrics.flush()


async def wake_dispatcher(ctx: dict[str, Any]) -> None:
    """arq job: events were stored or deliveries made due; look now instead of at the next poll.

    Enqueue it with a fixed `_job_id` (e.g. "wake_dispatcher") so bursts collapse into one job.
    """
    dispatcher: Dispatcher | None = ctx.get("dispatcher")
    if dispatcher is not None:
        dispatcher.wake(fan_out=True)  # events stored
        dispatcher.wake(fan_out=False)  # or deliveries made due: both are looked for
        return
    try:
        await fan_out_events(ctx["pool"])
    except Exception as exc:
        service = store_outage(exc)
        if service is None:
            raise
        outage(ctx, service, "sweeper").failed(exc)  # the sweeper fans it out later


async def sweep_deliveries(ctx: dict[str, Any]) -> int:
    """Cron safety net: fan out anything stored but not yet fanned out, then wake the dispatcher
    so deliveries due (or whose lease expired with a dead worker) are claimed. Returns how many
    deliveries the fan-out created.

    While Postgres is down a tick does nothing (one line per outage): the dispatcher retries on
    its own, and the first tick after Postgres returns fans out what was stored before."""
    dispatcher: Dispatcher | None = ctx.get("dispatcher")
    # The dispatcher's matchers, read again only when subscriptions changed: loaded afresh, a
    # tick stalled this process's loop for 80-100 ms with 10,000 subscriptions (the p99 of
    # bench/delivery_shape.py --latency-subscriptions 10000).
    cache = (
        dispatcher.matchers
        if dispatcher is not None
        else ctx.setdefault("matchers", MatcherCache())
    )
    try:
        created = await fan_out_events(ctx["pool"], matchers=cache)
    except Exception as exc:
        service = store_outage(exc)
        if service is None:
            raise
        outage(ctx, service, "sweeper").failed(exc)
        return 0
    recovered(ctx, "sweeper")
    if dispatcher is not None:
        dispatcher.wake(fan_out=False)
    if created:
        log.info("sweep_fanned_out", deliveries=created)
        metrics: WorkerMetrics | None = ctx.get("metrics")
        if metrics is not None:
            metrics.recovered("fanned_out", created)
            await metrics.flush()
    return created


def delivery_cron_jobs() -> list[Any]:
    """The sweeper, every five seconds and once at startup."""
    return [
        cron(
            sweep_deliveries,
            name="sweep_deliveries",
            second=SWEEP_SECONDS,
            run_at_startup=True,
            unique=True,
            timeout=60,
        )
    ]
