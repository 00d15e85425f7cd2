"""Delivery inside real arq workers: Redis flushed mid-run, and a worker killed with SIGKILL."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import (
    Endpoint,
    all_settled,
    delivery_rows,
    event_body,
    store_events,
    subscribe,
    wait_until,
)
from tests.support.workers import spawn_worker
from workers.main import build_worker


async def _received_ids(endpoint: Endpoint, path: str) -> set[str]:
    return {h.headers["webhook-id"] for h in endpoint.to(path)}


async def test_arq_worker_delivers_through_a_redis_flush(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    redis_client: aioredis.Redis,
) -> None:
    settings = dsettings.with_changes(retry_schedule=(0.2, 0.2, 0.2))
    await subscribe(pool, vault, settings, endpoint.url("/fail/5"))
    await subscribe(pool, vault, settings, endpoint.url("/ok"))
    # handle_signals off: the loop's SIGINT and SIGTERM stay pytest's (close() stops the
    # worker's loop and jobs either way).
    worker = build_worker(settings, poll_delay=0.05, handle_signals=False)
    running = asyncio.create_task(worker.async_run())
    try:
        first = await store_events(pool, *[event_body() for _ in range(40)])
        await wait_until(lambda: _hits(endpoint, "/ok", 10), what="first deliveries")
        await redis_client.flushdb()  # arq's queue, results, cron locks: all gone
        second = await store_events(pool, *[event_body() for _ in range(40)])
        await worker.pool.enqueue_job("wake_dispatcher", _job_id="wake_dispatcher")
        await wait_until(lambda: all_settled(pool, 160), seconds=20, what="every delivery")
        await wait_until(lambda: _jobs_done(worker), what="the wake-up job")
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)
    rows = await delivery_rows(pool)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert await _received_ids(endpoint, "/ok") == set(first + second)
    assert await _received_ids(endpoint, "/fail/5") == set(first + second)


async def _hits(endpoint: Endpoint, path: str, n: int) -> bool:
    return len(endpoint.to(path)) >= n


async def _jobs_done(worker: object) -> bool:
    return bool(getattr(worker, "jobs_complete", 0) >= 1)


async def test_sigkill_mid_delivery_loses_nothing(
    pool: asyncpg.Pool,
    vault: Vault,
    settings: Settings,
    endpoint: Endpoint,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await subscribe(pool, vault, settings, endpoint.url("/hold"))
    events = await store_events(pool, *[event_body() for _ in range(20)])
    log = tmp_path / "worker.log"
    first = await spawn_worker(worker_env, log)
    second: asyncio.subprocess.Process | None = None
    try:
        await wait_until(
            lambda: _hits(endpoint, "/hold", 20), seconds=20, what=f"held requests ({log})"
        )
        first.send_signal(signal.SIGKILL)  # mid-delivery: every request is in flight
        await first.wait()
        rows = await delivery_rows(pool)
        assert {r["status"] for r in rows} == {"pending"}
        assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == 0
        endpoint.release.set()
        second = await spawn_worker(worker_env, log)
        await wait_until(lambda: all_settled(pool, 20), seconds=20, what=f"recovery ({log})")
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()
    assert second is not None
    assert second.returncode == 0, log.read_text()[-2000:]
    rows = await delivery_rows(pool)
    assert {r["status"] for r in rows} == {"succeeded"}
    # At least once: everything arrived, and duplicates only ever repeat a webhook-id.
    assert await _received_ids(endpoint, "/hold") == set(events)
    assert len(endpoint.to("/hold")) >= 40
    codes = await pool.fetch("SELECT status_code FROM delivery_attempts")
    assert [c["status_code"] for c in codes] == [200] * 20
