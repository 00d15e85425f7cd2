"""Read-only views for the console that no admin route serves: backlog, per-subscription
success rate and latency, deliveries per minute, and deliveries failed-first with their event.

Every change the console makes goes through the modules the admin API calls (accounts,
subscriptions, delivery.store, events); this module only reads. Deliveries' ids begin with the
milliseconds of their creation (`relay_id`), so "created in the last day" is a range on the
primary key rather than a scan, and attempts are read through their own primary key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

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
    row = await pool.fetchrow(
        "SELECT"
        " (SELECT count(*) FROM deliveries WHERE status = 'pending') AS pending,"
        " (SELECT count(*) FROM deliveries WHERE status = 'pending' AND attempt_count > 0)"
        "   AS retrying,"
        " (SELECT count(*) FROM deliveries WHERE status = 'failed') AS failed,"
        " (SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending'"
        "   AND next_attempt_at <= now()) AS oldest_due_at"
    )
    assert row is not None  # scalar subqueries always give one row
    return Backlog(row["pending"], row["retrying"], row["failed"], row["oldest_due_at"])


async def subscription_stats(pool: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    """Per subscription: attempts of the last day, success rate, p50/p95 latency, and how many
    deliveries are failed now (of any age)."""
    since = datetime.now(UTC) - DAY
    rows = await pool.fetch(
        "SELECT d.subscription_id AS id, count(*) AS attempts,"
        " count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS succeeded,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY a.latency_ms) AS p50,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency_ms) AS p95"
        " FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id"
        " WHERE d.id >= $1 AND a.at >= $2 GROUP BY d.subscription_id",
        id_floor("dlv", since),
        since,
    )
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
    for row in await pool.fetch(
        "SELECT subscription_id AS id, count(*) AS failed FROM deliveries "
        "WHERE status = 'failed' GROUP BY subscription_id"
    ):
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
    rows = await pool.fetch(
        "SELECT date_trunc('minute', a.at) AS minute,"
        " count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS ok,"
        " count(*) FILTER (WHERE a.status_code IS NULL OR a.status_code NOT BETWEEN 200 AND 299)"
        "   AS failed"
        " FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id"
        " WHERE d.id >= $1 AND a.at >= $2 GROUP BY 1",
        id_floor("dlv", start - DAY),  # a retry of the last minute may be of an older delivery
        start,
    )
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


_DELIVERY_VIEW = (
    "SELECT d.id, d.event_id, d.subscription_id, d.status, d.attempt_count, d.next_attempt_at,"
    " d.last_error, d.created_at, d.updated_at, e.type AS event_type, s.url, s.description,"
    " coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt, 'at', a.at,"
    "   'status_code', a.status_code, 'latency_ms', a.latency_ms, 'error', a.error,"
    "   'response_excerpt', a.response_excerpt) ORDER BY a.attempt)"
    "  FROM delivery_attempts a WHERE a.delivery_id = d.id), '[]'::jsonb) AS attempts"
    " FROM deliveries d JOIN events e ON e.id = d.event_id"
    " JOIN subscriptions s ON s.id = d.subscription_id"
)


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
        retry_clause = {"retrying": " AND d.attempt_count > 0", "pending": ""}.get(group, "")
        if group == "pending" and not status:
            retry_clause = " AND d.attempt_count = 0"  # retrying ones were listed already
        rows = await pool.fetch(
            _DELIVERY_VIEW
            + " WHERE d.status = $1"
            + retry_clause
            + " AND ($2::text IS NULL OR d.subscription_id = $2)"
            " AND ($3::text IS NULL OR d.event_id = $3)"
            " AND ($4::timestamptz IS NULL OR d.created_at >= $4)"
            " AND ($5::timestamptz IS NULL OR d.created_at < $5)"
            " ORDER BY d.id DESC LIMIT $6",
            db_status,
            subscription_id,
            event_id,
            since,
            until,
            limit - len(found),
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
    count = await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE status = 'failed' "
        "AND ($1::text IS NULL OR subscription_id = $1) "
        "AND ($2::timestamptz IS NULL OR created_at >= $2) "
        "AND ($3::timestamptz IS NULL OR created_at < $3)",
        subscription_id,
        since,
        until,
    )
    return int(count)
