"""The dispatcher's three statements on `deliveries`: claim, record and hand back.

A claim takes due deliveries under a lease (`lease_token`, `leased_until`); recording an
attempt and handing a delivery back both clear the lease, fenced by the claim's token so a
late result never overwrites a newer claim. Each is one statement for a whole batch; how each
is planned matters as much as what it says (the comments say why, with what was measured).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from relay.delivery.subscriptions import Querier

_CLAIM = """
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
SELECT c.id, c.event_id, c.subscription_id, c.attempt_count, c.order_key, l.expired, e.body,
       e.payload,
       s.url, s.kind, s.enabled AND s.deleted_at IS NULL AS live, s.disabled_reason,
       s.secret_enc, s.previous_secret_enc, s.previous_secret_expires_at, s.older_secrets,
       -- A Slack message names the client as the practice knows it: one primary-key lookup of
       -- its snapshot, only for Slack subscriptions (webhooks carry the ids alone).
       CASE WHEN s.kind = 'slack' AND e.client_id IS NOT NULL THEN (
           SELECT sn.data->>'name' FROM snapshots AS sn
           WHERE sn.account_id = e.account_id AND sn.object_type = 'client'
             AND sn.client_id = e.client_id AND sn.object_id = e.client_id
       ) END AS client_name
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
_CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"

_RELEASE = """
UPDATE deliveries AS d SET lease_token = NULL, leased_until = NULL
FROM unnest($1::text[], $2::uuid[]) AS r(id, token)
WHERE d.id = ANY($1::text[]) AND d.id = r.id AND d.lease_token = r.token
"""


async def claim(
    pool: asyncpg.Pool,
    *,
    room: int,
    lease: float,
    saturated: Sequence[str],
    partial: Sequence[tuple[str, int]],
    cap: int,
    token: uuid.UUID,
) -> list[asyncpg.Record]:
    """Claim up to `room` due deliveries for `lease` seconds under `token`, at most `cap` held
    per subscription: none of `saturated`, and `free` more of each (subscription, free) of
    `partial`. Rows carry the event body and what sending needs of the subscription."""
    async with pool.acquire() as conn, conn.transaction():
        # The due scan must walk `deliveries_due` in order and stop at its limit. Planned
        # from statistics that predate a backlog (mostly settled deliveries: "few are
        # pending"), Postgres bitmap-scans and sorts every due delivery on each claim
        # instead: 9 ms rather than 0.3 per claim on a 20,000-delivery backlog, just when
        # a backlog must drain fast. For the same reason (a table it believes tiny) it
        # found the claimed rows for the UPDATE with a sequential scan comparing every row
        # with every claimed id (110 ms a claim instead of 10, every other run of
        # bench/delivery_shape.py); every step of the claim is meant to be an index lookup.
        await conn.execute("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off")
        return await conn.fetch(
            _CLAIM,
            room,
            lease,
            list(saturated),
            room * 4,
            dict(partial),
            cap,
            token,
        )


async def record(conn: Querier, columns: Sequence[list[Any]]) -> None:
    """Record a batch of outcomes inside the caller's transaction. `columns`: delivery ids,
    claim tokens, attempted, at, status codes, latencies, errors, excerpts, new statuses,
    next attempt times, each a list in the same order."""
    await conn.execute(_CUSTOM_PLAN)
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
