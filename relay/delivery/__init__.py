"""Delivery: from stored events to subscriber endpoints, and the store behind /v1/deliveries.

Events come in from `relay.events` (the outbox the poller and the API write); each is fanned
out to the subscriptions that want it, and each delivery is sent, signed, retried and recorded
until it succeeds or runs out of attempts. In flow order:

fanout         fan_out_events (matching subscriptions to events), replay_event, send_test_event
subscriptions  the store behind /v1/subscriptions, secrets at rest, matchers
store          deliveries and delivery_attempts: list/get/retry, every insert, the dispatcher's
               claim, record and hand-back, promote/release_order, retention's and the
               console's statements
ordering       `ordering: "object"`: one head per object queue (keys, locks; store.py promotes)
recovery       replay-window and backfill jobs (delivery_jobs), queued in batches behind a window
dispatcher     Dispatcher: batched claims, per-endpoint caps, batched recording, leases
sender         create_session (the worker's one ClientSession), post (one bounded attempt)
signing        Standard Webhooks signatures and secrets
targets        which URLs may be delivered to (private addresses refused unless allowed)
slack          Slack incoming-webhook bodies for `kind: "slack"` subscriptions
policy         retry_delay (schedule, jitter, Retry-After: relay.http reads it)
endpoints      dead endpoints: failure streaks, disabling (streak or 410), `subscription.disabled`

May import: the foundation (settings, db, errors, logs, ids, vault, metrics, http, exactjson),
`relay.events`, the snapshots stage's rules and reads through their owners
(`relay.snapshots.rules`, `relay.snapshots.diff`), and `relay.sources.accounts`; never the
poller, api, ui or cli. Each table's SQL is its owner's: deliveries and attempts `store`,
subscriptions `subscriptions`, delivery_jobs `recovery`; events, snapshots and accounts are
read and written through `relay.events`, `relay.snapshots.diff` and `relay.sources.accounts`.
"""

from __future__ import annotations

from relay.delivery.dispatcher import Dispatcher
from relay.delivery.fanout import fan_out_events, replay_event, send_test_event
from relay.delivery.policy import retry_delay
from relay.delivery.sender import AttemptResult, close_session, create_session, post
from relay.delivery.store import (
    WAKE_CHANNEL,
    fail_pending_deliveries,
    get_delivery,
    list_deliveries,
    notify_wake,
    retry_delivery,
    retry_failed,
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
