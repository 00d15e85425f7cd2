"""Delivery: fan-out of stored events, the store behind /v1/deliveries, and the dispatcher.

store       fan_out_events, list/get/retry deliveries, replay_event, send_test_event; the
            dispatcher's claim, record and hand-back, ordered queues' promote and release_order:
            every write of deliveries and delivery_attempts
policy      retry_delay (schedule, jitter, Retry-After: relay.http reads it)
sender      create_session (the worker's one ClientSession), post (one bounded attempt)
dispatcher  Dispatcher: batched claims, per-endpoint caps, batched recording, leases
ordering    `ordering: "object"`: one head per object queue (keys, locks; store.py promotes)
recovery    replay-window and backfill jobs, queued in batches behind a window
endpoints   dead endpoints: failure streaks, disabling (streak or 410), `subscription.disabled`
"""

from __future__ import annotations

from relay.delivery.dispatcher import Dispatcher
from relay.delivery.policy import retry_delay
from relay.delivery.sender import AttemptResult, close_session, create_session, post
from relay.delivery.store import (
    WAKE_CHANNEL,
    fail_pending_deliveries,
    fan_out_events,
    get_delivery,
    list_deliveries,
    notify_wake,
    replay_event,
    retry_delivery,
    retry_failed,
    send_test_event,
)

__all__ = [
    "WAKE_CHANNEL",
    "AttemptResult",
    "Dispatcher",
    "close_session",
    "create_session",
    "fail_pending_deliveries",
    "fan_out_events",
    "get_delivery",
    "list_deliveries",
    "notify_wake",
    "post",
    "replay_event",
    "retry_delay",
    "retry_delivery",
    "retry_failed",
    "send_test_event",
]
