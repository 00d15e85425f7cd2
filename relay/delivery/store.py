"""Deliveries and their attempts in Postgres: the store behind /v1/deliveries, and every
statement that writes or mainly reads `deliveries` and `delivery_attempts`.

Fan-out, replays and recovery jobs decide which deliveries to make (`fanout`, `recovery`);
the rows are inserted here. Ordered queues are promoted here too (`promote`, `release`):
`ordering` explains the rule. Retention and the console read and prune through this module.

Every function that makes work due sends `NOTIFY relay_wake` so dispatchers start at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from relay.delivery.subscriptions import Querier
from relay.errors import Conflict, InvalidInput, NotFound
from relay.paging import check_limit, decode_cursor, encode_cursor

WAKE_CHANNEL = "relay_wake"
STATUSES = ("pending", "succeeded", "failed")

_DELIVERY_COLUMNS = (
    "id, event_id, subscription_id, generation, status, attempt_count, next_attempt_at, "
    "last_error, created_at, updated_at"
)


async def notify_wake(conn: Querier, what: str = "deliveries") -> None:
    """Wake every dispatcher (delivered at commit when inside a transaction)."""
    await conn.execute("SELECT pg_notify($1, $2)", WAKE_CHANNEL, what)


async def _attempts(conn: Querier, ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    rows = await conn.fetch(
        "SELECT delivery_id, at, status_code, latency_ms, error, response_excerpt "
        "FROM delivery_attempts WHERE delivery_id = ANY($1::text[]) ORDER BY delivery_id, attempt",
        list(ids),
    )
    found: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for r in rows:
        found[r["delivery_id"]].append(
            {
                "at": r["at"],
                "status_code": r["status_code"],
                "latency_ms": r["latency_ms"],
                "error": r["error"],
                "response_excerpt": r["response_excerpt"],
            }
        )
    return found


def _record(row: asyncpg.Record, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The public shape of a delivery; `next_attempt_at` is null unless it is pending."""
    return {
        "id": row["id"],
        "event_id": row["event_id"],
        "subscription_id": row["subscription_id"],
        "status": row["status"],
        "attempt_count": row["attempt_count"],
        "next_attempt_at": row["next_attempt_at"] if row["status"] == "pending" else None,
        "generation": row["generation"],
        "last_error": row["last_error"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "attempts": attempts,
    }


async def get_delivery(pool: Querier, id: str) -> dict[str, Any]:
    """One delivery with every attempt (time, status code, latency, error, response excerpt)."""
    row = await pool.fetchrow(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id = $1", id)
    if row is None:
        raise NotFound("delivery", id)
    return _record(row, (await _attempts(pool, [id]))[id])


async def list_deliveries(
    pool: asyncpg.Pool,
    *,
    status: str | None = None,
    subscription_id: str | None = None,
    event_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Deliveries newest first, filtered; (page with attempts, next_cursor or None)."""
    if status is not None and status not in STATUSES:
        raise InvalidInput("status must be pending, succeeded or failed", "status")
    after = decode_cursor(cursor, str)[0] if cursor else None
    rows = await pool.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries "
        "WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR subscription_id = $2) "
        "AND ($3::text IS NULL OR event_id = $3) AND ($4::text IS NULL OR id < $4) "
        "ORDER BY id DESC LIMIT $5",
        status,
        subscription_id,
        event_id,
        after,
        check_limit(limit) + 1,
    )
    page_rows = rows[:limit]
    attempts = await _attempts(pool, [r["id"] for r in page_rows])
    page = [_record(r, attempts[r["id"]]) for r in page_rows]
    return page, encode_cursor(page[-1]["id"]) if len(rows) > limit else None


# Due now, or for an ordered delivery parked behind its queue's head (`promote` then decides):
# a retry or replay must not make a second head of one object.
_DUE_OR_PARKED = "CASE WHEN d.order_key IS NULL THEN now() END"

# A delivery whose subscription could take it: a retry of any other would only be recorded as
# "not sent", so it is refused (one) or left out (bulk). Read without a lock on purpose: the
# dispatcher locks deliveries and then their subscription (410 Gone), and a retry locking in the
# other order could deadlock with it. A subscription disabled just after the check is the
# dispatcher's to report: it records the delivery as not sent, giving the reason.
_LIVE_SUBSCRIPTION = (
    "EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.id = d.subscription_id "
    "AND s.enabled AND s.deleted_at IS NULL)"
)


async def retry_delivery(pool: asyncpg.Pool, id: str) -> dict[str, Any]:
    """Make one delivery due now, whatever its status (same event, same `webhook-id`).

    A manual retry is one more attempt: if it fails the delivery is `failed` again. A delivery
    being sent right now (under a live lease) is a Conflict: its attempt is about to be
    recorded, and a retry then would send it twice. One whose worker died is retried at once.
    A delivery of a disabled or deleted subscription is a Conflict too: it could not be sent.

    Concurrent retries of one delivery send it once. The update takes the row's lock and only
    changes a delivery that is not already due: the first retry makes it due, and every retry
    that arrives before a dispatcher claims it finds it due and joins that one attempt (202
    with the same delivery, nothing changed); once it is claimed the answer is the Conflict.
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE deliveries AS d SET status = 'pending', next_attempt_at = "
            f"{_DUE_OR_PARKED}, "
            "updated_at = now() WHERE d.id = $1 AND (d.lease_token IS NULL "
            "OR d.leased_until IS NULL OR d.leased_until <= now()) "
            "AND NOT (d.status = 'pending' AND d.next_attempt_at IS NOT NULL "
            f"AND d.next_attempt_at <= now()) AND {_LIVE_SUBSCRIPTION} "
            "RETURNING d.id, d.subscription_id, d.order_key",
            id,
        )
        if row is None:
            # Nothing changed: say why, from the row as it is now (after any racing writer).
            current = await conn.fetchrow(
                "SELECT d.leased_until, d.lease_token IS NOT NULL AND d.leased_until > now() "
                f"AS leased, {_LIVE_SUBSCRIPTION} AS live, s.disabled_reason "
                "FROM deliveries AS d JOIN subscriptions AS s ON s.id = d.subscription_id "
                "WHERE d.id = $1",
                id,
            )
            if current is None:
                raise NotFound("delivery", id)
            if current["leased"]:
                raise Conflict(
                    f"delivery {id!r} is being sent right now; its attempt is recorded by "
                    f"{current['leased_until']:%Y-%m-%dT%H:%M:%SZ} at the latest, retry it "
                    "after that if it failed"
                )
            if not current["live"]:
                raise Conflict(
                    f"delivery {id!r} cannot be sent: its subscription is disabled "
                    f"({current['disabled_reason'] or 'disabled'}); enable it, then retry"
                )
            # Already due and not yet claimed: that attempt is this retry's attempt too.
        else:
            if row["order_key"] is not None:
                await promote(conn, [(row["subscription_id"], row["order_key"])])
            await notify_wake(conn)
    return await get_delivery(pool, id)


async def retry_failed(
    pool: asyncpg.Pool,
    *,
    subscription_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> int:
    """Make every `failed` delivery (optionally of one subscription, created in [since, until))
    due now; returns how many were queued. Deliveries of disabled or deleted subscriptions are
    left `failed`: queued, they could only be recorded as not sent. `limit` queues at most that
    many, the oldest first, so a caller can go in steps and report progress (`relay deliveries
    retry --all-failed` does); a step queues fewer only when fewer are left.

    Concurrent bulk retries never queue a delivery twice and their counts add up to the
    deliveries really queued: the rows are locked in id order (so two bulk retries wait for
    each other instead of deadlocking), and a row another retry made `pending` meanwhile is
    re-checked after its lock is granted and no longer matches `status = 'failed'`.
    """
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "WITH picked AS (SELECT d.id FROM deliveries AS d WHERE d.status = 'failed' "
            "AND ($1::text IS NULL OR d.subscription_id = $1) "
            "AND ($2::timestamptz IS NULL OR d.created_at >= $2) "
            "AND ($3::timestamptz IS NULL OR d.created_at < $3) "
            f"AND {_LIVE_SUBSCRIPTION} ORDER BY d.id LIMIT $4 FOR UPDATE OF d) "
            f"UPDATE deliveries AS d SET status = 'pending', next_attempt_at = {_DUE_OR_PARKED}, "
            "updated_at = now() FROM picked WHERE d.id = picked.id AND d.status = 'failed' "
            "RETURNING d.subscription_id, d.order_key",
            subscription_id,
            since,
            until,
            limit,
        )
        count = len(rows)
        await promote(conn, [(r[0], r[1]) for r in rows if r[1] is not None])
        if count:
            await notify_wake(conn)
    return count


async def fail_pending_deliveries(conn: Querier, subscription_id: str, reason: str) -> int:
    """Stop every pending delivery of a subscription (410 Gone): `failed` with `reason`.

    Deliveries being sent at this moment are included; their outcome, if it arrives, is not
    recorded over this. They can be retried by hand once the subscription is enabled again.
    """
    status = await conn.execute(
        "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, lease_token = NULL, "
        "leased_until = NULL, "
        "last_error = $2, updated_at = now() WHERE subscription_id = $1 AND status = 'pending'",
        subscription_id,
        reason,
    )
    return int(status.rsplit(" ", 1)[1])


# ---- /metrics reads (relay/api/metrics.py runs them under its statement timeout) -------------

_BACKLOG = """
SELECT
    (SELECT count(*) FROM deliveries WHERE status = 'pending') AS pending,
    (SELECT count(*) FROM deliveries WHERE status = 'failed') AS failed,
    (SELECT extract(epoch FROM now() - created_at) FROM deliveries
     WHERE status = 'pending' ORDER BY id LIMIT 1) AS oldest_pending,
    (SELECT extract(epoch FROM now() - min(next_attempt_at)) FROM deliveries
     WHERE status = 'pending' AND next_attempt_at <= now()
       AND (leased_until IS NULL OR leased_until <= now())) AS oldest_due
"""


async def backlog(conn: Querier) -> asyncpg.Record:
    """`pending` and `failed` counts, the age of the oldest pending delivery and how long the
    most overdue one has been due (seconds; None when there is none)."""
    row = await conn.fetchrow(_BACKLOG)
    assert row is not None  # an aggregate of scalar subqueries always returns one row
    return row


async def count_succeeded(conn: Querier) -> int:
    """Deliveries that succeeded; the count grows without end, so callers bound its time."""
    return int(await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'succeeded'"))


# ---- inserts for fan-out, replays and test pings (`fanout` decides who gets what) -------------


async def insert_deliveries(
    conn: Querier,
    event_ids: Sequence[str],
    subscription_ids: Sequence[str],
    order_keys: Sequence[str | None],
) -> int:
    """Generation 0 of each (event, subscription) pair, due now or (with an order key) parked
    for `promote`; a pair already there is left alone. Returns how many were created."""
    status = await conn.execute(
        "INSERT INTO deliveries (event_id, subscription_id, next_attempt_at, "
        "order_key) SELECT e, s, CASE WHEN k IS NULL THEN now() END, k "
        "FROM unnest($1::text[], $2::text[], $3::text[]) AS t(e, s, k) "
        "ON CONFLICT (event_id, subscription_id, generation) DO NOTHING",
        list(event_ids),
        list(subscription_ids),
        list(order_keys),
    )
    return int(status.rsplit(" ", 1)[1])


async def insert_replays(
    conn: Querier,
    event_id: str,
    subscription_ids: Sequence[str],
    order_keys: Sequence[str | None],
) -> int:
    """The next generation of the event's delivery to each subscription (0 if it has none);
    the caller holds the event's lock, so concurrent replays number in turn. Returns how many
    were created: every one (no conflict can drop one)."""
    status = await conn.execute(
        "INSERT INTO deliveries (event_id, subscription_id, generation, next_attempt_at, "
        "order_key) SELECT $1, s, coalesce((SELECT max(generation) + 1 FROM deliveries "
        "WHERE event_id = $1 AND subscription_id = s), 0), "
        "CASE WHEN k IS NULL THEN now() END, k "
        "FROM unnest($2::text[], $3::text[]) AS t(s, k)",
        event_id,
        list(subscription_ids),
        list(order_keys),
    )
    return int(status.rsplit(" ", 1)[1])


async def insert_delivery(conn: Querier, event_id: str, subscription_id: str) -> str:
    """One delivery due now (a test ping's); returns its id."""
    delivery_id: str = await conn.fetchval(
        "INSERT INTO deliveries (event_id, subscription_id, next_attempt_at) "
        "VALUES ($1, $2, now()) RETURNING id",
        event_id,
        subscription_id,
    )
    return delivery_id


# ---- ordered queues: the statements of `ordering`'s rule ---------------------------------------

_LOCK_QUEUES = """
SELECT count(pg_advisory_xact_lock(15, hashtext(q))) FROM (
    SELECT DISTINCT s || chr(31) || k AS q FROM unnest($1::text[], $2::text[]) AS t(s, k)
    ORDER BY 1
) AS queues
"""

# Per queue the first pending delivery, heads (with a next_attempt_at) before parked ones, then
# in sequence order (events before sequences existed have none: first), then `seq`, then the
# replay generation. Only where that first one is parked is there no head: promote it.
_PROMOTE = """
WITH queues AS (
    SELECT DISTINCT s, k FROM unnest($1::text[], $2::text[]) AS t(s, k)
), first AS (
    SELECT DISTINCT ON (d.subscription_id, d.order_key) d.id, d.next_attempt_at
    FROM queues
    JOIN deliveries AS d ON d.subscription_id = queues.s AND d.order_key = queues.k
         AND d.status = 'pending' AND d.order_key IS NOT NULL
    JOIN events AS e ON e.id = d.event_id
    ORDER BY d.subscription_id, d.order_key, d.next_attempt_at IS NULL,
             e.sequence NULLS FIRST, e.seq, d.generation
)
UPDATE deliveries AS d SET next_attempt_at = now(), updated_at = now()
FROM first WHERE d.id = first.id AND first.next_attempt_at IS NULL
"""


async def promote(conn: Querier, queues: Iterable[tuple[str, str]]) -> int:
    """Make the next delivery of each (subscription_id, order_key) queue due where the queue
    has no head; returns how many were made due. Run it in the transaction that settled or
    parked the deliveries, so the promotion commits with them."""
    pairs = sorted(set(queues))
    if not pairs:
        return 0
    subs = [s for s, _ in pairs]
    keys = [k for _, k in pairs]
    await conn.execute(_LOCK_QUEUES, subs, keys)
    status = await conn.execute(_PROMOTE, subs, keys)
    return int(status.rsplit(" ", 1)[1])


async def release(conn: Querier, subscription_id: str) -> int:
    """Ordering turned off: every pending delivery of the subscription is unordered from now
    on, and the parked ones are due at once (their heads keep their own due time)."""
    status = await conn.execute(
        "UPDATE deliveries SET order_key = NULL, "
        "next_attempt_at = coalesce(next_attempt_at, now()), updated_at = now() "
        "WHERE subscription_id = $1 AND status = 'pending' AND order_key IS NOT NULL",
        subscription_id,
    )
    return int(status.rsplit(" ", 1)[1])


# ---- recovery jobs' deliveries (`recovery` owns the jobs) --------------------------------------

# The next generation of each (event, subscription) delivery (the caller holds the event rows'
# locks), due in `seq` order (a microsecond apart, so the claim, which takes the earliest due
# first, sends them in order), or parked for an ordered subscription and promoted by `promote`.
_INSERT_JOB_REPLAYS = """
INSERT INTO deliveries (event_id, subscription_id, generation, next_attempt_at, order_key, job_id)
SELECT t.e, $2, coalesce((SELECT max(generation) + 1 FROM deliveries
                          WHERE event_id = t.e AND subscription_id = $2), 0),
       CASE WHEN t.k IS NULL THEN now() + make_interval(secs => t.o / 1e6) END, t.k, $3
FROM unnest($1::text[], $4::text[]) WITH ORDINALITY AS t(e, k, o)
"""


async def insert_job_replays(
    conn: Querier,
    job_id: str,
    subscription_id: str,
    event_ids: Sequence[str],
    order_keys: Sequence[str | None],
) -> int:
    """A replay job's batch: the next generation of each event's delivery to the subscription,
    due in the order given; returns how many were created."""
    status = await conn.execute(
        _INSERT_JOB_REPLAYS, list(event_ids), subscription_id, job_id, list(order_keys)
    )
    return int(status.rsplit(" ", 1)[1])


async def insert_job_deliveries(
    conn: Querier,
    job_id: str,
    subscription_id: str,
    event_ids: Sequence[str],
    order_keys: Sequence[str | None],
) -> int:
    """A backfill job's batch: one delivery of each (new) event, due now or (with an order
    key) parked for `promote`; returns how many were created."""
    status = await conn.execute(
        "INSERT INTO deliveries (event_id, subscription_id, next_attempt_at, order_key, job_id) "
        "SELECT t.e, $2, CASE WHEN t.k IS NULL THEN now() END, t.k, $3 "
        "FROM unnest($1::text[], $4::text[]) AS t(e, k)",
        list(event_ids),
        subscription_id,
        job_id,
        list(order_keys),
    )
    return int(status.rsplit(" ", 1)[1])


async def count_job_pending(conn: Querier, job_id: str) -> int:
    """How many of a job's deliveries are still pending (its window)."""
    count = await conn.fetchval(
        "SELECT count(*) FROM deliveries WHERE job_id = $1 AND status = 'pending'", job_id
    )
    return int(count)


async def job_status_counts(conn: Querier, job_id: str) -> dict[str, int]:
    """A job's deliveries per status (statuses with none left out)."""
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM deliveries WHERE job_id = $1 GROUP BY status",
        job_id,
    )
    return {r["status"]: int(r["n"]) for r in rows}


# ---- retention (`relay.retention` orchestrates; each owner deletes its own rows) ---------------


async def lock_settled_deliveries(conn: Querier, event_ids: Sequence[str]) -> None:
    """Lock the settled deliveries of these events, so a retry racing retention either commits
    first (its delivery is pending when retention re-checks, so the event stays) or waits and
    then finds the delivery gone."""
    await conn.execute(
        "SELECT 1 FROM deliveries WHERE event_id = ANY($1::text[]) AND status <> 'pending' "
        "FOR UPDATE",
        list(event_ids),
    )


async def delete_deliveries_of(
    conn: Querier, event_ids: Sequence[str], *, attempts: bool = True
) -> tuple[int, int]:
    """Delete every delivery of these events and, with `attempts`, their attempts, in one
    statement that counts both (the attempts trigger then finds nothing left; without
    `attempts`, for attempts partitioned by time, it is the trigger's or the partitions' to
    drop them). Returns (deliveries, attempts) deleted."""
    row = await conn.fetchrow(
        "WITH dels AS (DELETE FROM deliveries d WHERE d.event_id = ANY($1::text[]) "
        "RETURNING d.id), atts AS (DELETE FROM delivery_attempts a USING dels "
        "WHERE $2 AND a.delivery_id = dels.id RETURNING 1) "
        "SELECT (SELECT count(*) FROM dels) AS deliveries, (SELECT count(*) FROM atts) AS attempts",
        list(event_ids),
        attempts,
    )
    assert row is not None  # an aggregate always gives one row
    return int(row["deliveries"]), int(row["attempts"])


# ---- the console's read-only views (`relay.ui.data` shapes them) -------------------------------


async def backlog_counts(db: Querier) -> asyncpg.Record:
    """pending, retrying (pending after an attempt), failed, and oldest_due_at (the earliest
    `next_attempt_at` already due)."""
    row = await db.fetchrow(
        "SELECT"
        " (SELECT count(*) FROM deliveries WHERE status = 'pending') AS pending,"
        " (SELECT count(*) FROM deliveries WHERE status = 'pending' AND attempt_count > 0)"
        "   AS retrying,"
        " (SELECT count(*) FROM deliveries WHERE status = 'failed') AS failed,"
        " (SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending'"
        "   AND next_attempt_at <= now()) AS oldest_due_at"
    )
    assert row is not None  # scalar subqueries always give one row
    return row


async def attempt_stats(db: Querier, id_floor: str, since: datetime) -> list[asyncpg.Record]:
    """Per subscription (`id`): attempts made since `since` of deliveries with ids from
    `id_floor` on, how many `succeeded` (2xx), and latency percentiles `p50` and `p95`."""
    return await db.fetch(
        "SELECT d.subscription_id AS id, count(*) AS attempts,"
        " count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS succeeded,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY a.latency_ms) AS p50,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency_ms) AS p95"
        " FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id"
        " WHERE d.id >= $1 AND a.at >= $2 GROUP BY d.subscription_id",
        id_floor,
        since,
    )


async def failed_per_subscription(db: Querier) -> list[asyncpg.Record]:
    """(id, failed): how many deliveries of each subscription are failed now, of any age."""
    return await db.fetch(
        "SELECT subscription_id AS id, count(*) AS failed FROM deliveries "
        "WHERE status = 'failed' GROUP BY subscription_id"
    )


async def attempts_by_minute(db: Querier, id_floor: str, start: datetime) -> list[asyncpg.Record]:
    """(minute, ok, failed) of the attempts made since `start` of deliveries with ids from
    `id_floor` on; minutes without attempts are left out."""
    return await db.fetch(
        "SELECT date_trunc('minute', a.at) AS minute,"
        " count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS ok,"
        " count(*) FILTER (WHERE a.status_code IS NULL OR a.status_code NOT BETWEEN 200 AND 299)"
        "   AS failed"
        " FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id"
        " WHERE d.id >= $1 AND a.at >= $2 GROUP BY 1",
        id_floor,
        start,
    )


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
_ATTEMPTED = {True: " AND d.attempt_count > 0", False: " AND d.attempt_count = 0", None: ""}


async def delivery_views(
    db: Querier,
    status: str,
    *,
    attempted: bool | None = None,
    subscription_id: str | None = None,
    event_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[asyncpg.Record]:
    """Deliveries of one status, newest first, each with its event's type, its subscription's
    url and description, and its attempts (a jsonb list); `attempted` True keeps those with
    an attempt, False those with none. Filters as `list_deliveries`, plus a creation window."""
    return await db.fetch(
        _DELIVERY_VIEW
        + " WHERE d.status = $1"
        + _ATTEMPTED[attempted]
        + " AND ($2::text IS NULL OR d.subscription_id = $2)"
        " AND ($3::text IS NULL OR d.event_id = $3)"
        " AND ($4::timestamptz IS NULL OR d.created_at >= $4)"
        " AND ($5::timestamptz IS NULL OR d.created_at < $5)"
        " ORDER BY d.id DESC LIMIT $6",
        status,
        subscription_id,
        event_id,
        since,
        until,
        limit,
    )


async def count_failed(
    db: Querier,
    *,
    subscription_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """How many deliveries are failed (of a subscription, created in [since, until))."""
    count = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE status = 'failed' "
        "AND ($1::text IS NULL OR subscription_id = $1) "
        "AND ($2::timestamptz IS NULL OR created_at >= $2) "
        "AND ($3::timestamptz IS NULL OR created_at < $3)",
        subscription_id,
        since,
        until,
    )
    return int(count)
