"""Recovery jobs: a replay window and a backfill, streamed to one subscription in batches.

`POST /v1/subscriptions/{id}/replay` sends every matching stored event of a window again (same
`webhook-id`s: new generations of their deliveries, in `seq` order) after a receiver lost data
it had acknowledged. `POST /v1/subscriptions/{id}/backfill` sends the current state of every
object Relay holds as `<object_type>.snapshot` events, built in Postgres from `snapshots`, with
no upstream request at all; each carries the `sequence` of the object's last event, so a
receiver can tell the snapshot from the live changes that follow it.

A job is a row in `delivery_jobs`. It queues its deliveries in batches (`BATCH`), resuming
from its `cursor`, which is committed with each batch: a crash repeats nothing and loses
nothing. A batch is queued only while fewer than `WINDOW` of the job's deliveries are still
pending, so a million-event replay never stands in front of live traffic: live deliveries are
due as soon as they are stored and interleave with the job's next small batch. Dispatchers
advance running jobs on every pass (`advance_jobs`); the first batch is queued by the request
itself, so a small window is queued whole when the answer comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import structlog

from relay.db import Connection
from relay.delivery.ordering import event_order_key
from relay.delivery.store import (
    count_job_pending,
    insert_job_deliveries,
    insert_job_replays,
    job_status_counts,
    notify_wake,
    promote,
)
from relay.delivery.subscriptions import Querier, load_matchers, share_subscription
from relay.errors import Conflict, InvalidInput, NotFound
from relay.events import count_replay_window, insert_snapshot_events, replay_window_batch
from relay.snapshots.diff import count_live_snapshots, live_snapshots_after
from relay.snapshots.rules import OBJECT_TYPES

log = structlog.get_logger("relay.delivery")

BATCH = 1000
WINDOW = 2000
_JOB_COLUMNS = (
    "id, subscription_id, kind, params, status, total, queued, error, created_at, updated_at, "
    "finished_at"
)


def _types_filter(event_types: Sequence[str] | None) -> tuple[list[str] | None, list[str]]:
    """Exact types and prefixes (`document.` of `document.*`); (None, []) matches every type."""
    if event_types is None or "*" in event_types:
        return None, []
    exact = [t for t in event_types if not t.endswith(".*")]
    prefixes = [t[:-1] for t in event_types if t.endswith(".*")]
    return exact, prefixes


async def _live_subscription(conn: Querier, subscription_id: str) -> asyncpg.Record:
    row = await share_subscription(conn, subscription_id)
    if row is None:
        raise NotFound("subscription", subscription_id)
    if not row["enabled"]:
        raise Conflict(
            f"subscription {subscription_id!r} is disabled "
            f"({row['disabled_reason'] or 'disabled'}); enable it first"
        )
    return row


async def start_replay(
    pool: asyncpg.Pool,
    subscription_id: str,
    *,
    since: datetime,
    until: datetime | None = None,
    event_types: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Create a replay job for the window [since, until) and queue its first batch; returns the
    job (`total`: stored events of the window and types; the subscription's own event types,
    accounts, clients and filter still decide which of them go). N calls are N replays."""
    if until is not None and until <= since:
        raise InvalidInput("until must be later than since", "until")
    exact, prefixes = _types_filter(event_types)
    async with pool.acquire() as conn, conn.transaction():
        await _live_subscription(conn, subscription_id)
        total = await count_replay_window(conn, since, until, exact, prefixes)
        params = {
            "since": since.isoformat(),
            "until": until.isoformat() if until else None,
            "event_types": list(event_types) if event_types is not None else None,
        }
        job_id = await _create_job(conn, subscription_id, "replay", params, total, {"seq": 0})
    await advance_job(pool, job_id, wait=True)
    return await get_job(pool, job_id)


async def start_backfill(
    pool: asyncpg.Pool,
    subscription_id: str,
    *,
    account_ids: Sequence[str] | None = None,
    object_types: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Create a backfill job (every live snapshot of these accounts and object types, by
    default those of the subscription's accounts, always only of its clients if it names
    any, as `<object_type>.snapshot` events) and queue its first batch; returns the job. Its
    event types and filter do not apply: a backfill is asked for. No upstream request."""
    for object_type in object_types or ():
        if object_type not in OBJECT_TYPES:
            raise InvalidInput(
                f"object_types: {object_type!r} is not one of {', '.join(OBJECT_TYPES)}",
                "object_types",
            )
    async with pool.acquire() as conn, conn.transaction():
        sub = await _live_subscription(conn, subscription_id)
        if account_ids is None and sub["account_ids"] is not None:
            account_ids = list(sub["account_ids"])
        accounts = list(account_ids) if account_ids is not None else None
        types = list(object_types) if object_types is not None else None
        clients = list(sub["client_ids"]) if sub["client_ids"] is not None else None
        total = await count_live_snapshots(conn, accounts, types, clients)
        params = {"account_ids": accounts, "object_types": types, "client_ids": clients}
        job_id = await _create_job(
            conn, subscription_id, "backfill", params, total, {"key": ["", "", "", ""]}
        )
    await advance_job(pool, job_id, wait=True)
    return await get_job(pool, job_id)


async def _create_job(
    conn: Querier,
    subscription_id: str,
    kind: str,
    params: dict[str, Any],
    total: int,
    cursor: dict[str, Any],
) -> str:
    job_id: str = await conn.fetchval(
        "INSERT INTO delivery_jobs (subscription_id, kind, params, total, cursor) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id",
        subscription_id,
        kind,
        params,
        total,
        cursor,
    )
    log.info(
        "delivery_job_started",
        job_id=job_id,
        kind=kind,
        subscription_id=subscription_id,
        total=total,
    )
    return job_id


async def advance_jobs(pool: asyncpg.Pool) -> int:
    """Queue the next batch of every running job that has room in its window; returns how many
    deliveries were queued. Safe from any number of dispatchers at once (each job row is
    taken `FOR UPDATE SKIP LOCKED`)."""
    ids = await pool.fetch(
        "SELECT id FROM delivery_jobs WHERE status = 'running' ORDER BY created_at LIMIT 20"
    )
    queued = 0
    for row in ids:
        queued += await advance_job(pool, row["id"])
    return queued


async def advance_job(pool: asyncpg.Pool, job_id: str, *, wait: bool = False) -> int:
    """One batch of one job, if it is running, not being advanced elsewhere, and fewer than
    `WINDOW` of its deliveries are pending; returns how many deliveries it queued.

    `wait` (the job's creator, answering with what was queued) waits for a dispatcher that is
    advancing the job at that moment instead of skipping it: skipped, the 202 said `queued: 0`
    for a batch that was being queued that very moment."""
    async with pool.acquire() as conn, conn.transaction():
        job = await conn.fetchrow(
            "SELECT id, subscription_id, kind, params, cursor FROM delivery_jobs "
            "WHERE id = $1 AND status = 'running' FOR UPDATE" + ("" if wait else " SKIP LOCKED"),
            job_id,
        )
        if job is None:
            return 0
        if await count_job_pending(conn, job_id) >= WINDOW:
            return 0
        matchers = await load_matchers(conn, [job["subscription_id"]], lock=True)
        if not matchers:
            await _finish(conn, job_id, "cancelled", "the subscription was disabled or deleted")
            return 0
        ordered = matchers[0].ordering == "object"
        if job["kind"] == "replay":
            queued, cursor, done = await _replay_batch(conn, job, matchers[0], ordered)
        else:
            queued, cursor, done = await _backfill_batch(conn, job, ordered)
        await conn.execute(
            "UPDATE delivery_jobs SET queued = queued + $2, cursor = $3, updated_at = now() "
            "WHERE id = $1",
            job_id,
            queued,
            cursor,
        )
        if done:
            await _finish(conn, job_id, "done", None)
        if queued:
            await notify_wake(conn)
    return queued


async def _replay_batch(
    conn: Connection, job: asyncpg.Record, matcher: Any, ordered: bool
) -> tuple[int, dict[str, Any], bool]:
    params = job["params"]
    exact, prefixes = _types_filter(params["event_types"])
    rows = await replay_window_batch(
        conn,
        datetime.fromisoformat(params["since"]),
        datetime.fromisoformat(params["until"]) if params["until"] else None,
        exact,
        prefixes,
        after_seq=job["cursor"]["seq"],
        limit=BATCH,
    )
    if not rows:
        return 0, dict(job["cursor"]), True
    picked = [
        r for r in rows if matcher.matches(r["type"], r["account_id"], r["client_id"], r["body"])
    ]
    keys = [event_order_key(r) if ordered else None for r in picked]
    queued = 0
    if picked:
        queued = await insert_job_replays(
            conn, job["id"], job["subscription_id"], [r["id"] for r in picked], keys
        )
        await promote(conn, [(job["subscription_id"], k) for k in keys if k])
    return queued, {"seq": rows[-1]["seq"]}, len(rows) < BATCH


async def _backfill_batch(
    conn: Connection, job: asyncpg.Record, ordered: bool
) -> tuple[int, dict[str, Any], bool]:
    params = job["params"]
    key = job["cursor"]["key"]
    picked = await live_snapshots_after(
        conn,
        params["account_ids"],
        params["object_types"],
        params.get("client_ids"),
        after=key,
        limit=BATCH,
    )
    if not picked:
        return 0, {"key": key}, True
    made = await insert_snapshot_events(conn, picked)
    keys = [event_order_key(m) if ordered else None for m in made]
    queued = await insert_job_deliveries(
        conn, job["id"], job["subscription_id"], [m["id"] for m in made], keys
    )
    await promote(conn, [(job["subscription_id"], k) for k in keys if k])
    last = picked[-1]
    cursor = [last["account_id"], last["object_type"], last["client_id"], last["object_id"]]
    return queued, {"key": cursor}, queued < BATCH


async def _finish(conn: Querier, job_id: str, status: str, error: str | None) -> None:
    await conn.execute(
        "UPDATE delivery_jobs SET status = $2, error = $3, finished_at = now(), "
        "updated_at = now() WHERE id = $1",
        job_id,
        status,
        error,
    )
    log.info("delivery_job_finished", job_id=job_id, status=status, error=error)


async def get_job(pool: Querier, job_id: str) -> dict[str, Any]:
    """A job with its progress: `total`, `queued` so far, and of those how many are
    `pending`, `succeeded` and `failed` now."""
    row = await pool.fetchrow(f"SELECT {_JOB_COLUMNS} FROM delivery_jobs WHERE id = $1", job_id)
    if row is None:
        raise NotFound("job", job_id)
    counts = await job_status_counts(pool, job_id)
    params = row["params"]
    return {
        "id": row["id"],
        "subscription_id": row["subscription_id"],
        "kind": row["kind"],
        "params": orjson.loads(params) if isinstance(params, str) else params,
        "status": row["status"],
        "total": row["total"],
        "queued": row["queued"],
        "pending": counts.get("pending", 0),
        "succeeded": counts.get("succeeded", 0),
        "failed": counts.get("failed", 0),
        "error": row["error"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "finished_at": row["finished_at"],
    }
