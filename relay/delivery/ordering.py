"""Per-object order for `ordering: "object"` subscriptions: which delivery heads each queue.

The deliveries of an ordered subscription carry `order_key`, the event's object. Of one
(subscription, order_key) only the head has a `next_attempt_at`; the others are *parked*
(pending, with none), so the claim, which only takes rows due by `next_attempt_at`, cannot
hand them out, and the unordered claim stays exactly what it was. Retries keep the head's
`next_attempt_at` in the future: the object waits, no other does. When the head settles
(succeeded, or failed after its last attempt), `promote` (relay/delivery/store.py, which owns
`deliveries`) makes the earliest parked delivery of
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

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from relay.delivery.subscriptions import ORDERINGS, Querier

__all__ = ["FAN_OUT_LOCK", "ORDERINGS", "event_order_key", "lock_queues", "order_key"]
# pg_advisory_xact_lock(bigint) key of ordered fan-out; queue locks use the two-int form.
FAN_OUT_LOCK = 0x52454C41590F  # "RELAY" 15

_LOCK_QUEUES = """
SELECT count(pg_advisory_xact_lock(15, hashtext(q))) FROM (
    SELECT DISTINCT s || chr(31) || k AS q FROM unnest($1::text[], $2::text[]) AS t(s, k)
    ORDER BY 1
) AS queues
"""


def order_key(account_id: str | None, object_type: str, object_id: str) -> str:
    """The queue of an event's object (account, object type, object id), as `sequence` counts."""
    return f"{account_id or ''}\x1f{object_type}\x1f{object_id}"


def event_order_key(event: Mapping[str, Any] | asyncpg.Record) -> str:
    """`order_key` of an `events` row (or body) with account_id, object_type and object_id."""
    return order_key(event["account_id"], event["object_type"], event["object_id"])


async def lock_queues(conn: Querier, queues: Sequence[tuple[str, str]]) -> None:
    """Take the advisory lock of each (subscription_id, order_key) queue, in key order, for
    the rest of the transaction: whoever may make a head of a queue holds its lock first."""
    await conn.execute(_LOCK_QUEUES, [s for s, _ in queues], [k for _, k in queues])
