"""Deliveries and their attempts in Postgres: the store behind /v1/deliveries, and every
statement that writes or mainly reads `deliveries` and `delivery_attempts`.

Fan-out, replays and recovery jobs decide which deliveries to make (`fanout`, `recovery`);
the rows are inserted here. The dispatcher's claim, record and hand-back are here, and ordered
queues are promoted here too (`promote`, `release_order`): `ordering` explains the rule.
Retention and the console read and prune through this module.

Every function that makes work due sends `NOTIFY relay_wake` so dispatchers start at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypedDict, Unpack

import asyncpg

from relay.delivery.ordering import lock_queues
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


# ---- the dispatcher's statements: claim, record, hand back ------------------------------------
# A claim takes due deliveries under a lease (`lease_token`, `leased_until`); recording an
# attempt and handing a delivery back both clear the lease, fenced by the claim's token so a
# late result never overwrites a newer claim. Each is one statement for a whole batch; how each
# is planned matters as much as what it says (the comments say why, with what was measured).
# What sending a delivery needs, the same for a claim and for fan-out's hand-off (`c`: the
# deliveries, `e`: their events, `s`: their subscriptions).
# The body comes as its text, and only on one row of each event in the statement (the others
# carry NULL): one event goes to many subscriptions (a replay's 200 rows share one), and the
# dispatcher renders each event's request body once. Decoding the jsonb of every row was 2-4%
# of a worker; writing the same body out as text on every row cost Postgres about 2 us a row
# for a 360-byte body, and more for a real document's (`event_texts` gathers them for every row).
_SENDABLE = """c.id, c.event_id, c.subscription_id, c.attempt_count, c.order_key,
       CASE WHEN row_number() OVER (PARTITION BY c.event_id) = 1 THEN e.body::text END
           AS body_text,
       CASE WHEN row_number() OVER (PARTITION BY c.event_id) = 1 THEN e.payload END AS payload,
       s.url, s.kind, s.enabled AND s.deleted_at IS NULL AS live, s.disabled_reason,
       s.secret_enc, s.previous_secret_enc, s.previous_secret_expires_at, s.older_secrets,
       -- A Slack message names the client as the practice knows it: one primary-key lookup of
       -- its snapshot, only for Slack subscriptions (webhooks carry the ids alone).
       CASE WHEN s.kind = 'slack' AND e.client_id IS NOT NULL THEN (
           SELECT sn.data->>'name' FROM snapshots AS sn
           WHERE sn.account_id = e.account_id AND sn.object_type = 'client'
             AND sn.client_id = e.client_id AND sn.object_id = e.client_id
       ) END AS client_name"""

_CLAIM = f"""
WITH scan AS (
    SELECT id, subscription_id, next_attempt_at FROM deliveries
    WHERE status = 'pending' AND next_attempt_at <= now()
      AND (leased_until IS NULL OR leased_until <= now())
      AND NOT (subscription_id = ANY($3::text[]))
    ORDER BY next_attempt_at LIMIT $4
), picked AS (
    SELECT cand.id FROM (
        SELECT id, subscription_id, next_attempt_at,
               row_number() OVER (PARTITION BY subscription_id ORDER BY next_attempt_at) AS rn
        FROM scan
    ) AS cand
    -- $5 maps each subscription with room left under its cap to that room: a jsonb key
    -- lookup per row, never a join. Joined as unnest() rows, a generic plan looped over
    -- every partial subscription for every scanned row (1,024 x 200 comparisons, 100 ms a
    -- claim with 200 busy subscriptions: bench/delivery_shape.py).
    WHERE cand.rn <= coalesce(($5::jsonb ->> cand.subscription_id)::int, $6)
    ORDER BY cand.next_attempt_at LIMIT $1
), locked AS (
    -- A lease token on a claimable row is a claim whose lease expired (its worker died).
    -- `= ANY(ARRAY(...))` keeps these lookups on the primary key: joined to the CTE instead,
    -- the planner hashes a sequential scan of the whole table on every claim. The re-check
    -- (evaluated again on the locked row version) is wrapped in `IS TRUE` so that no other
    -- index can serve it: planned from statistics that predate a backlog, Postgres walked
    -- `deliveries_due` and compared every due row with every picked id instead (60-250 ms
    -- a claim on a 20,000-delivery backlog, the worker's one claim connection saturated).
    SELECT d.id, d.lease_token IS NOT NULL AS expired FROM deliveries AS d
    WHERE d.id = ANY(ARRAY(SELECT id FROM picked))
      AND (d.status = 'pending' AND d.next_attempt_at <= now()
           AND (d.leased_until IS NULL OR d.leased_until <= now())) IS TRUE
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE deliveries AS d
    -- Only unindexed columns change: a HOT update, no index entries written (schema.sql).
    SET leased_until = now() + make_interval(secs => $2), lease_token = $7
    WHERE d.id = ANY(ARRAY(SELECT id FROM locked))
    RETURNING d.id, d.event_id, d.subscription_id, d.attempt_count, d.order_key,
              d.next_attempt_at
)
SELECT {_SENDABLE}, l.expired
FROM claimed AS c
JOIN locked AS l ON l.id = c.id
JOIN events AS e ON e.id = c.event_id
JOIN subscriptions AS s ON s.id = c.subscription_id
-- Handed out oldest due first, as `picked` chose them, and deliveries due at the same moment
-- (one fan-out or replay statement stamps them all with its now()) in the order their events
-- were stored: without this the order is whatever the join's plan gives (with sequential scans
-- off, the primary key's), and a replay window or an object's events to an unordered
-- subscription would start out of order.
ORDER BY c.next_attempt_at, e.seq, c.id
"""

# Fan-out handing its new deliveries straight to the dispatcher that fans out: inserted already
# claimed by it (due now and leased under its token, exactly as `_CLAIM` would leave them), and
# returned in `_CLAIM`'s shape, so the send starts at the commit, with no claim between. A pair
# already there (a replay made it first) is left alone and not returned.
_INSERT_CLAIMED = f"""
WITH ins AS (
    INSERT INTO deliveries AS d
        (event_id, subscription_id, next_attempt_at, leased_until, lease_token)
    SELECT e, s, now(), now() + make_interval(secs => $3), $4
    FROM unnest($1::text[], $2::text[]) AS t(e, s)
    ON CONFLICT (event_id, subscription_id, generation) DO NOTHING
    RETURNING d.id, d.event_id, d.subscription_id, d.attempt_count, d.order_key
)
SELECT {_SENDABLE}, false AS expired
FROM ins AS c
JOIN events AS e ON e.id = c.event_id
JOIN subscriptions AS s ON s.id = c.subscription_id
ORDER BY e.seq, c.id
"""

_RECORD = """
WITH r AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::bool[], $4::timestamptz[], $5::int[],
                         $6::int[], $7::text[], $8::text[], $9::text[], $10::timestamptz[])
        AS r(id, token, attempted, at, status_code, latency_ms, error, excerpt, outcome, next_at)
), u AS (
    UPDATE deliveries AS d
    SET attempt_count = d.attempt_count + r.attempted::int, status = r.outcome,
        next_attempt_at = r.next_at, lease_token = NULL, leased_until = NULL,
        last_error = r.error, updated_at = now()
    -- Found by primary key alone: `d.id = ANY($1)` keeps the planner there (joined on r alone
    -- it hashed a sequential scan of every pending delivery). No `status = 'pending'` here:
    -- from statistics that predate a backlog it made the planner walk every pending delivery
    -- and loop over the batch for each. The token is the fence: only a claim sets it, and
    -- recording, handing back and failing a subscription's deliveries all clear it, so a row
    -- still holding this claim's token is pending and still ours.
    FROM r WHERE d.id = ANY($1::text[]) AND d.id = r.id AND d.lease_token = r.token
    RETURNING d.id, d.attempt_count
)
INSERT INTO delivery_attempts
    (delivery_id, attempt, at, status_code, latency_ms, error, response_excerpt)
SELECT u.id, u.attempt_count, r.at, r.status_code, r.latency_ms, r.error, r.excerpt
FROM u JOIN r ON r.id = u.id
WHERE r.attempted
ON CONFLICT DO NOTHING
"""

# The record is prepared once per connection and runs thousands of times. After five runs
# Postgres may switch to a generic plan, made without the batch's size: it estimates 10 rows and
# loops over the whole batch for every delivery (a 952-row record took 340 ms instead of about
# 20, and a long-lived dispatcher slowed from about 5,000 to 3,000 a second). The claim's
# generic plan is the custom one, so the claim keeps it and saves ~1 ms of planning a claim.
# The dispatcher records on a connection of its own whose session runs this once.
RECORD_SESSION = "SET plan_cache_mode = force_custom_plan"

_RELEASE = """
UPDATE deliveries AS d SET lease_token = NULL, leased_until = NULL
FROM unnest($1::text[], $2::uuid[]) AS r(id, token)
WHERE d.id = ANY($1::text[]) AND d.id = r.id AND d.lease_token = r.token
"""


# The due scan must walk `deliveries_due` in order and stop at its limit. Planned from
# statistics that predate a backlog (mostly settled deliveries: "few are pending"), Postgres
# bitmap-scans and sorts every due delivery on each claim instead: 9 ms rather than 0.3 per
# claim on a 20,000-delivery backlog, just when a backlog must drain fast. For the same reason
# (a table it believes tiny) it found the claimed rows for the UPDATE with a sequential scan
# comparing every row with every claimed id (110 ms a claim instead of 10, every other run of
# bench/delivery_shape.py); every step of the claim is meant to be an index lookup.
CLAIM_SESSION = "SET enable_bitmapscan = off; SET enable_seqscan = off"
# The same, for one transaction on a pool connection.
_INDEX_SCANS_ONLY = CLAIM_SESSION.replace("SET ", "SET LOCAL ")


async def index_scans_only(conn: Querier) -> None:
    """Plan the rest of the caller's transaction as a `CLAIM_SESSION` connection is planned:
    for a claim or a fan-out on a pool connection (one round trip the dispatcher's own
    connection, set up once, does not pay)."""
    await conn.execute(_INDEX_SCANS_ONLY)


class ClaimArgs(TypedDict):
    """What a claim asks for: up to `room` due deliveries for `lease` seconds under `token`, at
    most `cap` held per subscription: none of `saturated`, and `free` more of each
    (subscription, free) of `partial`."""

    room: int
    lease: float
    saturated: Sequence[str]
    partial: Sequence[tuple[str, int]]
    cap: int
    token: uuid.UUID


def event_texts(rows: Sequence[asyncpg.Record]) -> dict[str, tuple[str, bytes | None]]:
    """(body text, payload) of each event in the rows of one claim or hand-off: the statement
    writes them on one row of each event only (`_SENDABLE`)."""
    return {
        row["event_id"]: (row["body_text"], row["payload"])
        for row in rows
        if row["body_text"] is not None
    }


async def claim(pool: asyncpg.Pool, **args: Unpack[ClaimArgs]) -> list[asyncpg.Record]:
    """Claim through a pool (`ClaimArgs` says what). Rows carry the event body and what
    sending needs of the subscription."""
    async with pool.acquire() as conn, conn.transaction():
        await index_scans_only(conn)
        return await claim_on(conn, **args)


async def claim_on(conn: Querier, **args: Unpack[ClaimArgs]) -> list[asyncpg.Record]:
    """`claim` as one statement on a connection whose session runs `CLAIM_SESSION` (the
    dispatcher keeps one for its claims): one round trip where the pool's claim takes five
    (acquire's reset, BEGIN, the settings, the claim, COMMIT). Outside a transaction the
    statement is its own, committed when it returns."""
    room = args["room"]
    return await conn.fetch(
        _CLAIM,
        room,
        args["lease"],
        list(args["saturated"]),
        room * 4,
        dict(args["partial"]),
        args["cap"],
        args["token"],
    )


async def record(conn: Querier, columns: Sequence[list[Any]]) -> None:
    """Record a batch of outcomes inside the caller's transaction, on a connection whose
    session runs `RECORD_SESSION`. `columns`: delivery ids, claim tokens, attempted, at, status
    codes, latencies, errors, excerpts, new statuses, next attempt times, each a list in the
    same order."""
    await conn.execute(_RECORD, *columns)


async def release_unanswered(pool: asyncpg.Pool, token: uuid.UUID) -> int:
    """Hand back every delivery still leased under a claim whose answer never arrived (the
    connection broke after the claim committed, as in a Postgres restart): due now, no lease,
    as if never claimed. Without this they would wait out the whole lease (60 s) before
    anyone sent them. Runs only after such a failure, so the scan of a column no index may
    cover (schema.sql says why) is a rare cost."""
    status = await pool.execute(
        "UPDATE deliveries SET leased_until = NULL, lease_token = NULL "
        "WHERE lease_token = $1 AND status = 'pending'",
        token,
    )
    return int(status.split()[-1])


async def release(pool: asyncpg.Pool, ids: list[str], tokens: list[uuid.UUID]) -> None:
    """Hand claimed deliveries back, due as they were, if they are still under these claims."""
    await pool.execute(_RELEASE, ids, tokens)


# ---- ordered queues (relay/delivery/ordering.py says how they work) ---------------------------

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
    await lock_queues(conn, pairs)
    status = await conn.execute(_PROMOTE, [s for s, _ in pairs], [k for _, k in pairs])
    return int(status.rsplit(" ", 1)[1])


async def release_order(conn: Querier, subscription_id: str) -> int:
    """Ordering turned off: every pending delivery of the subscription is unordered from now
    on, and the parked ones are due at once (their heads keep their own due time)."""
    status = await conn.execute(
        "UPDATE deliveries SET order_key = NULL, "
        "next_attempt_at = coalesce(next_attempt_at, now()), updated_at = now() "
        "WHERE subscription_id = $1 AND status = 'pending' AND order_key IS NOT NULL",
        subscription_id,
    )
    return int(status.rsplit(" ", 1)[1])


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


async def insert_claimed_deliveries(
    conn: Querier,
    event_ids: Sequence[str],
    subscription_ids: Sequence[str],
    *,
    lease: float,
    token: uuid.UUID,
) -> list[asyncpg.Record]:
    """Generation 0 of each (event, subscription) pair, claimed already for `lease` seconds
    under `token` (fan-out handing them to its own dispatcher); the new rows, in `claim`'s
    shape. Only for unordered subscriptions: an ordered queue's head is chosen by `promote`.
    Run it where the claim's planner settings hold (`CLAIM_SESSION`, or `index_scans_only`
    for the transaction), as fan-out's transactions all do."""
    # Each join must be a primary-key lookup. Planned from statistics that predate the events
    # just stored, Postgres hashed a sequential scan of all of `events` into every fan-out
    # instead (the claim says the same of `deliveries`).
    return await conn.fetch(_INSERT_CLAIMED, list(event_ids), list(subscription_ids), lease, token)


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
