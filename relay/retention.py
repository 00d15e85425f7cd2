"""Retention: deletes events (with their deliveries and attempts) and gone snapshots past
`RELAY_RETENTION_DAYS`, in small batches.

Why batches and not one `DELETE ... WHERE created_at < cutoff`: one statement over months of
history holds its row locks and its snapshot for minutes, blocks the dispatcher's updates of the
same deliveries, and leaves a burst of dead tuples that autovacuum reclaims only afterwards (the
table bloats by the whole slice at once). A batch of a few hundred events is a short
transaction; a pause between batches lets autovacuum and the dispatcher keep up. Several workers
may run it at once: each batch claims its events with `FOR UPDATE SKIP LOCKED`, so two runs
split the work instead of waiting on each other.

What is never deleted:
- an event not fanned out yet, still in the fan-out queue (its deliveries do not exist yet);
- an event with a pending delivery, or with a delivery touched inside the retention window (a
  recent replay or retry of an old event keeps the whole event, its history stays readable);
- the snapshot of a live object (only rows whose object was reported gone before the cutoff).

Each table's rows are deleted by its owner (`relay.events`, `relay.delivery.store`,
`relay.snapshots.diff`); this module orchestrates the batches, their transactions and their
pacing. Deliveries and attempts are deleted explicitly, before their events (the `ON DELETE
CASCADE` and the attempts trigger of schema.sql, which would do the same, then find nothing),
so the counts it reports are exact.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import structlog

from relay.delivery.store import delete_deliveries_of, lock_settled_deliveries
from relay.events import claim_prunable_events, delete_events, still_prunable
from relay.snapshots.diff import prune_gone_snapshots

log = structlog.get_logger("relay.retention")

EVENT_BATCH = 200
SNAPSHOT_BATCH = 1000
# Pacing: after each batch, pause long enough that pruning holds a Postgres backend at most
# this fraction of the time (and never less than BATCH_PAUSE). Postgres' CPU is what the
# dispatcher needs too: bench/retention.py measured a 30% drop in delivery rate on 2 cores with
# back-to-back batches, and no measurable one at 10%. Even at 10%, pruning removes about a
# thousand attempts a second, far above what tens of millions a month add (~20 a second).
DUTY = 0.1
BATCH_PAUSE = 0.05
# A run stops after this long and leaves the rest for the next one (the cron runs it often), so
# it never outlives its arq job timeout.
RUN_BUDGET = 120.0


@dataclass
class PruneResult:
    """What one run deleted; `complete` is false when it stopped at its time budget."""

    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    snapshots: int = 0
    batches: int = 0
    complete: bool = True
    seconds: float = field(default=0.0, compare=False)


async def prune(
    pool: asyncpg.Pool,
    retention_days: float,
    *,
    event_batch: int = EVENT_BATCH,
    snapshot_batch: int = SNAPSHOT_BATCH,
    pause: float = BATCH_PAUSE,
    duty: float = DUTY,
    budget: float = RUN_BUDGET,
    delete_attempts: bool = True,
) -> PruneResult:
    """Delete what is older than `retention_days`, batch by batch, until nothing is left or
    `budget` seconds have passed. Returns the counts; safe to run from several workers at once.

    `delete_attempts=False` is for a schema whose attempts are partitioned by time and leave by
    whole partitions (the prototype in bench/retention.py); the product's schema needs True."""
    result = PruneResult()
    started = time.monotonic()
    cutoff_at = await pool.fetchval("SELECT now() - $1::interval", timedelta(days=retention_days))
    while time.monotonic() - started < budget:
        batch_started = time.monotonic()
        claimed, deleted = await _prune_event_batch(
            pool, cutoff_at, event_batch, result, delete_attempts
        )
        if claimed < event_batch:
            break
        if deleted == 0:
            break  # every candidate was kept by a race; the next run looks again
        await _pace(batch_started, pause, duty)
    else:
        result.complete = False
    while result.complete and time.monotonic() - started < budget:
        batch_started = time.monotonic()
        async with pool.acquire() as conn:
            n = await prune_gone_snapshots(conn, cutoff_at, snapshot_batch)
        result.snapshots += n
        result.batches += 1
        if n < snapshot_batch:
            break
        await _pace(batch_started, pause, duty)
    else:
        if result.complete:
            result.complete = False
    result.seconds = time.monotonic() - started
    if result.events or result.snapshots or not result.complete:
        log.info(
            "retention_pruned",
            events=result.events,
            deliveries=result.deliveries,
            attempts=result.attempts,
            snapshots=result.snapshots,
            batches=result.batches,
            complete=result.complete,
            seconds=round(result.seconds, 3),
            retention_days=retention_days,
        )
    return result


async def _pace(batch_started: float, pause: float, duty: float) -> None:
    """Sleep so that the batch just done is at most `duty` of the time since it started."""
    spent = time.monotonic() - batch_started
    await asyncio.sleep(max(pause, spent * (1 - duty) / duty) if duty < 1 else pause)


async def _prune_event_batch(
    pool: asyncpg.Pool, cutoff_at: datetime, limit: int, result: PruneResult, attempts: bool
) -> tuple[int, int]:
    """One short transaction: claim, lock, re-check and delete. Returns (claimed, deleted).

    1. claim a batch of candidate events (a concurrent run skips them);
    2. lock their settled deliveries, so a retry racing us either commits first (its delivery
       is pending when step 3 looks, so the event stays) or waits and then finds it gone;
    3. re-check, with a snapshot taken after both locks are held, then delete the deliveries
       and attempts of the events still prunable, then the events (`attempts` false leaves
       attempts alone: partitions drop them)."""
    async with pool.acquire() as conn, conn.transaction():
        ids = await claim_prunable_events(conn, cutoff_at, limit)
        if not ids:
            return 0, 0
        await lock_settled_deliveries(conn, ids)
        gone = await still_prunable(conn, ids, cutoff_at)
        deliveries, deleted_attempts = await delete_deliveries_of(conn, gone, attempts=attempts)
        events = await delete_events(conn, gone)
    result.events += events
    result.deliveries += deliveries
    result.attempts += deleted_attempts
    result.batches += 1
    return len(ids), events
