"""Retention against the real Postgres: what ages out goes, in batches; what is live stays."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from relay.api.app import create_app
from relay.ids import new_id
from relay.retention import prune
from relay.settings import Settings
from tests.support.stores import make_account
from workers.main import build_worker


async def _account(pool: asyncpg.Pool) -> str:
    return await make_account(pool, base_url="https://dext.example", baselined=False)


async def _subscription(pool: asyncpg.Pool) -> str:
    sub_id: str = await pool.fetchval(
        "INSERT INTO subscriptions (url, event_types, secret_enc) "
        "VALUES ('https://hooks.example/x', '{*}', 'x') RETURNING id"
    )
    return sub_id


async def _event(
    pool: asyncpg.Pool,
    sub_id: str,
    *,
    age_days: float,
    status: str | None = "succeeded",
    attempts: int = 2,
    touched_days: float | None = None,
    fanned_out: bool = True,
) -> str:
    """An event `age_days` old with one delivery (unless `status` is None) and its attempts,
    taken off the fan-out queue as fan-out does (unless not `fanned_out`)."""
    event_id = new_id("evt")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO events (id, type, object_type, object_id, body, created_at) "
            "VALUES ($1, 'document.created', 'document', 'doc_1', '{}', "
            "now() - $2 * interval '1 day')",
            event_id,
            age_days,
        )
        if fanned_out:
            await conn.execute("DELETE FROM event_fanout_queue WHERE event_id = $1", event_id)
        if status is None:
            return event_id
        touched = age_days if touched_days is None else touched_days
        delivery_id = new_id("dlv")
        await conn.execute(
            "INSERT INTO deliveries (id, event_id, subscription_id, status, attempt_count, "
            "next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, "
            "CASE WHEN $4 = 'pending' THEN now() END, now() - $6 * interval '1 day', "
            "now() - $7 * interval '1 day')",
            delivery_id,
            event_id,
            sub_id,
            status,
            attempts,
            age_days,
            touched,
        )
        await conn.executemany(
            "INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code) "
            "VALUES ($1, $2, now(), 200)",
            [(delivery_id, n) for n in range(1, attempts + 1)],
        )
    return event_id


async def _snapshot(
    pool: asyncpg.Pool, account_id: str, object_id: str, gone_days: float | None
) -> None:
    await pool.execute(
        "INSERT INTO snapshots (account_id, object_type, client_id, object_id, data, hash, "
        "first_seen_at, deleted_at) VALUES ($1, 'document', 'cli_1', $2, '{}', '\\x00', "
        "now() - interval '400 days', now() - $3 * interval '1 day')",
        account_id,
        object_id,
        gone_days,
    )


async def _ids(pool: asyncpg.Pool, table: str, column: str) -> set[str]:
    return {r[0] for r in await pool.fetch(f"SELECT {column} FROM {table}")}


async def test_prune_deletes_old_history_and_keeps_what_is_live(pool: asyncpg.Pool) -> None:
    account_id = await _account(pool)
    sub_id = await _subscription(pool)
    old_done = await _event(pool, sub_id, age_days=40)
    old_failed = await _event(pool, sub_id, age_days=35, status="failed", attempts=6)
    old_no_delivery = await _event(pool, sub_id, age_days=60, status=None)
    old_pending = await _event(pool, sub_id, age_days=45, status="pending")
    old_retried = await _event(pool, sub_id, age_days=50, status="failed", touched_days=1)
    old_not_fanned = await _event(pool, sub_id, age_days=50, status=None, fanned_out=False)
    young = await _event(pool, sub_id, age_days=29)
    for object_id, gone in (("gone_old", 31.0), ("gone_recent", 2.0), ("live", None)):
        await _snapshot(pool, account_id, object_id, gone)

    result = await prune(pool, 30)

    assert (result.events, result.deliveries, result.attempts) == (3, 2, 8)
    assert result.snapshots == 1
    assert result.complete
    kept = {old_pending, old_retried, old_not_fanned, young}
    assert await _ids(pool, "events", "id") == kept
    assert old_done not in await _ids(pool, "deliveries", "event_id")
    assert old_failed not in await _ids(pool, "deliveries", "event_id")
    assert old_no_delivery not in kept
    # Attempts of deleted deliveries are gone with them; the kept ones keep theirs.
    orphans = await pool.fetchval(
        "SELECT count(*) FROM delivery_attempts a "
        "WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)"
    )
    assert orphans == 0
    assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == 2 + 2 + 2
    assert await _ids(pool, "snapshots", "object_id") == {"gone_recent", "live"}

    again = await prune(pool, 30)
    assert (again.events, again.snapshots) == (0, 0)


async def test_prune_goes_in_batches_and_runs_split_the_work(pool: asyncpg.Pool) -> None:
    sub_id = await _subscription(pool)
    for _ in range(40):
        await _event(pool, sub_id, age_days=31, attempts=1)
    keep = await _event(pool, sub_id, age_days=31, status="pending")

    results = await asyncio.gather(
        *(prune(pool, 30, event_batch=4, pause=0.0, duty=1.0) for _ in range(3))
    )

    assert sum(r.events for r in results) == 40
    assert sum(r.attempts for r in results) == 40
    # 4 at a time, never one big statement: at least 10 event batches, plus each run's
    # snapshot batch. (Under load one run may find everything claimed by the other two.)
    assert sum(r.batches for r in results) >= 10 + 3
    assert await _ids(pool, "events", "id") == {keep}


async def test_prune_never_takes_a_queued_event_nor_one_whose_fan_out_is_committing(
    pool: asyncpg.Pool,
) -> None:
    sub_id = await _subscription(pool)
    # Old enough to go, but queued: one behind a hundred prunable ones, two being fanned out.
    for _ in range(100):
        await _event(pool, sub_id, age_days=40, attempts=1)
    waiting = await _event(pool, sub_id, age_days=45, status=None, fanned_out=False)
    wanted = await _event(pool, sub_id, age_days=45, status=None, fanned_out=False)
    unwanted = await _event(pool, sub_id, age_days=45, status=None, fanned_out=False)
    async with pool.acquire() as fan_out:
        async with fan_out.transaction():
            # Off the queue in a fan-out not yet committed: its deliveries are still coming.
            await fan_out.execute(
                "DELETE FROM event_fanout_queue WHERE event_id = ANY($1::text[])",
                [wanted, unwanted],
            )
            await fan_out.execute(
                "INSERT INTO deliveries (event_id, subscription_id, next_attempt_at) "
                "VALUES ($1, $2, now())",
                wanted,
                sub_id,
            )
            during = await prune(pool, 30, event_batch=20, pause=0.0, duty=1.0)
        after = await prune(pool, 30, pause=0.0, duty=1.0)
    assert (during.events, after.events) == (100, 1)  # the one no subscription wanted
    assert await _ids(pool, "events", "id") == {waiting, wanted}


async def test_prune_stops_at_its_budget_and_the_next_run_finishes(pool: asyncpg.Pool) -> None:
    sub_id = await _subscription(pool)
    for _ in range(12):
        await _event(pool, sub_id, age_days=90, attempts=1)

    first = await prune(pool, 30, event_batch=2, pause=0.2, budget=0.1)
    assert not first.complete
    assert 0 < first.events < 12
    rest = await prune(pool, 30, event_batch=2, pause=0.0, duty=1.0)
    assert rest.complete
    assert first.events + rest.events == 12


async def test_the_worker_prunes_at_startup_unless_retention_is_off(
    pool: asyncpg.Pool, settings: Settings, redis_client: Any
) -> None:
    sub_id = await _subscription(pool)
    old = await _event(pool, sub_id, age_days=8)
    young = await _event(pool, sub_id, age_days=1)

    for days, expected in ((0.0, {old, young}), (7.0, {young})):
        worker = build_worker(settings.with_changes(retention_days=days), burst=True)
        try:
            await worker.async_run()
        finally:
            await worker.close()
        assert await _ids(pool, "events", "id") == expected


def test_retention_days_setting() -> None:
    assert Settings.from_env({}).retention_days == 30.0
    assert Settings.from_env({"RELAY_RETENTION_DAYS": "7"}).retention_days == 7.0
    assert Settings.from_env({"RELAY_RETENTION_DAYS": "0"}).retention_days == 0.0
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(Exception, match="RELAY_RETENTION_DAYS"):
            Settings.from_env({"RELAY_RETENTION_DAYS": bad})


async def test_metrics_show_table_sizes(
    aiohttp_client: Any, settings: Settings, pool: asyncpg.Pool, redis_client: Any
) -> None:
    sub_id = await _subscription(pool)
    for _ in range(5):
        await _event(pool, sub_id, age_days=1, attempts=3)
    await pool.execute("ANALYZE events, deliveries, delivery_attempts, snapshots")
    api: TestClient[Any, Any] = await aiohttp_client(create_app(settings))

    response = await api.get("/metrics")
    assert response.status == 200
    samples = {
        (s.name, s.labels.get("table")): s.value
        for family in text_string_to_metric_families(await response.text())
        for s in family.samples
    }
    assert samples[("relay_table_rows", "events")] == 5
    assert samples[("relay_table_rows", "delivery_attempts")] == 15
    assert samples[("relay_table_rows", "snapshots")] == 0
    assert samples[("relay_table_bytes", "delivery_attempts")] > 0
