"""Per-object order for `ordering: "object"` subscriptions: which delivery heads each queue.

The deliveries of an ordered subscription carry `order_key`, the event's object. Of one
(subscription, order_key) only the head has a `next_attempt_at`; the others are *parked*
(pending, with none), so the claim, which only takes rows due by `next_attempt_at`, cannot
hand them out, and the unordered claim stays exactly what it was. Retries keep the head's
`next_attempt_at` in the future: the object waits, no other does. When the head settles
(succeeded, or failed after its last attempt), `promote` makes the earliest parked delivery of
that queue due, in the transaction that records the outcome, so a crash never loses a
promotion and a dead worker's lease simply hands the same head to another worker.

Everything that may create a head (fan-out, promotion after a record, retries, replays, the
recovery jobs) calls `promote` for the queues it touched, under one advisory lock per queue
(taken in key order), so two of them can never make two heads of one queue. Fan-out also
takes `FAN_OUT_LOCK` while any ordered subscription exists, so events are fanned out one batch
after another in `seq` order (which, per object, is `sequence` order): a later event of an
object is never queued ahead of an earlier one by a faster parallel fan-out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from relay.delivery.subscriptions import ORDERINGS, Querier

__all__ = ["FAN_OUT_LOCK", "ORDERINGS", "event_order_key", "order_key", "promote", "release"]
# pg_advisory_xact_lock(bigint) key of ordered fan-out; queue locks use the two-int form.
FAN_OUT_LOCK = 0x52454C41590F  # "RELAY" 15

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


def order_key(account_id: str | None, object_type: str, object_id: str) -> str:
    """The queue of an event's object (account, object type, object id), as `sequence` counts."""
    return f"{account_id or ''}\x1f{object_type}\x1f{object_id}"


def event_order_key(event: Mapping[str, Any] | asyncpg.Record) -> str:
    """`order_key` of an `events` row (or body) with account_id, object_type and object_id."""
    return order_key(event["account_id"], event["object_type"], event["object_id"])


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
