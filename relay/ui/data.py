"""Read-only views for the console that no admin route serves: backlog, per-subscription
success rate and latency, deliveries per minute, and deliveries failed-first with their event.

Every change the console makes goes through the modules the admin API calls (accounts,
subscriptions, delivery.store, events); this module only reads, and reads through the tables'
owners too (`relay.delivery.store` runs the statements; this module shapes their rows).
Deliveries' ids begin with the milliseconds of their creation (`relay_id`), so "created in the
last day" is a range on the primary key rather than a scan, and attempts are read through
their own primary key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from relay.delivery import store

DAY = timedelta(days=1)
STATUS_FILTERS = ("failed", "retrying", "pending", "succeeded")


def id_floor(prefix: str, at: datetime) -> str:
    """The smallest id `relay_id(prefix)` could have given at `at` (ids sort by time)."""
    millis = int(at.timestamp() * 1000)
    return f"{prefix}_{millis:012x}"


@dataclass(frozen=True)
class Backlog:
    pending: int
    retrying: int
    failed: int
    oldest_due_at: datetime | None


async def backlog(pool: asyncpg.Pool) -> Backlog:
    row = await store.backlog_counts(pool)
    return Backlog(row["pending"], row["retrying"], row["failed"], row["oldest_due_at"])


async def subscription_stats(pool: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    """Per subscription: attempts of the last day, success rate, p50/p95 latency, and how many
    deliveries are failed now (of any age)."""
    since = datetime.now(UTC) - DAY
    rows = await store.attempt_stats(pool, id_floor("dlv", since), since)
    stats: dict[str, dict[str, Any]] = {}
    for row in rows:
        attempts = int(row["attempts"])
        stats[row["id"]] = {
            "attempts": attempts,
            "succeeded": int(row["succeeded"]),
            "success_rate": row["succeeded"] / attempts if attempts else None,
            "p50_ms": row["p50"],
            "p95_ms": row["p95"],
            "failed": 0,
        }
    for row in await store.failed_per_subscription(pool):
        entry = stats.setdefault(
            row["id"],
            {"attempts": 0, "succeeded": 0, "success_rate": None, "p50_ms": None, "p95_ms": None},
        )
        entry["failed"] = int(row["failed"])
    return stats


async def attempts_per_minute(pool: asyncpg.Pool, minutes: int = 60) -> list[dict[str, Any]]:
    """Attempts of the last `minutes`, per minute: succeeded and failed (oldest first)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=minutes - 1)
    # A retry of the last minute may be of an older delivery: a day's more ids.
    rows = await store.attempts_by_minute(pool, id_floor("dlv", start - DAY), start)
    found = {row["minute"]: row for row in rows}
    series = []
    for i in range(minutes):
        minute = start + timedelta(minutes=i)
        row = found.get(minute)
        series.append(
            {
                "minute": minute,
                "ok": int(row["ok"]) if row else 0,
                "failed": int(row["failed"]) if row else 0,
            }
        )
    return series


async def deliveries_failed_first(
    pool: asyncpg.Pool,
    *,
    status: str | None = None,
    subscription_id: str | None = None,
    event_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Deliveries newest first within each status, failed before retrying before the rest."""
    groups = [status] if status else list(STATUS_FILTERS)
    found: list[dict[str, Any]] = []
    for group in groups:
        if len(found) >= limit:
            break
        db_status = "pending" if group == "retrying" else group
        attempted = {"retrying": True, "pending": None}.get(group)
        if group == "pending" and not status:
            attempted = False  # retrying ones were listed already
        rows = await store.delivery_views(
            pool,
            db_status,
            attempted=attempted,
            subscription_id=subscription_id,
            event_id=event_id,
            since=since,
            until=until,
            limit=limit - len(found),
        )
        found.extend(dict(row) for row in rows)
    return found


async def count_failed(
    pool: asyncpg.Pool,
    *,
    subscription_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """How many deliveries `delivery.store.retry_failed` would queue with the same arguments."""
    return await store.count_failed(pool, subscription_id=subscription_id, since=since, until=until)
