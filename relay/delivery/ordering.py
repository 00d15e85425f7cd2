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

`promote` and `release` write `deliveries`, so their statements live in `store` (the table's
owner); they are re-exported here, where the rule they keep is described.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from relay.delivery.store import promote, release
from relay.delivery.subscriptions import ORDERINGS

__all__ = ["FAN_OUT_LOCK", "ORDERINGS", "event_order_key", "order_key", "promote", "release"]
# pg_advisory_xact_lock(bigint) key of ordered fan-out; queue locks use the two-int form.
FAN_OUT_LOCK = 0x52454C41590F  # "RELAY" 15


def order_key(account_id: str | None, object_type: str, object_id: str) -> str:
    """The queue of an event's object (account, object type, object id), as `sequence` counts."""
    return f"{account_id or ''}\x1f{object_type}\x1f{object_id}"


def event_order_key(event: Mapping[str, Any] | asyncpg.Record) -> str:
    """`order_key` of an `events` row (or body) with account_id, object_type and object_id."""
    return order_key(event["account_id"], event["object_type"], event["object_id"])
