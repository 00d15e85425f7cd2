"""Fan-out: which subscriptions want each stored event, and the deliveries that follow.

Fan-out turns each event of the fan-out queue (`event_fanout_queue`, which storing an event
fills) into one delivery per matching subscription, in `FOR UPDATE SKIP LOCKED` batches,
inserting with `ON CONFLICT DO NOTHING` on (event_id, subscription_id, generation): concurrent
or repeated fan-outs never duplicate. A queue of pending events rather than a "last seq seen"
cursor, because `seq` values commit out of order.
Replays (one event again, to every matching subscription or to some) and test pings are
matched here too. The rows are the owners': events through `relay.events`, subscriptions
through `subscriptions`, deliveries through `store`; this module decides who gets what.

Every function that makes work due sends `NOTIFY relay_wake` so dispatchers start at once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from relay.db import Connection, Executor
from relay.delivery.ordering import FAN_OUT_LOCK, event_order_key
from relay.delivery.store import (
    get_delivery,
    index_scans_only,
    insert_claimed_deliveries,
    insert_deliveries,
    insert_delivery,
    insert_replays,
    notify_wake,
    promote,
)
from relay.delivery.subscriptions import (
    MatcherCache,
    MatcherIndex,
    get_subscription,
    load_matchers,
    share_subscription,
)
from relay.errors import Conflict, NotFound
from relay.events import (
    build_event,
    claim_unfanned_events,
    insert_ping_event,
    lock_event_for_replay,
)

FAN_OUT_BATCH = 500


def _matching(index: MatcherIndex, events: Sequence[asyncpg.Record]) -> tuple[list[str], list[str]]:
    event_ids: list[str] = []
    subscription_ids: list[str] = []
    for event in events:
        for matcher in index.candidates(event["type"], event["client_id"]):
            if (
                event["type"] == "subscription.disabled"
                and event["body"].get("object_id") == matcher.id
            ):
                continue  # never to the subscription it is about, even if re-enabled since
            if matcher.matches(
                event["type"], event["account_id"], event["client_id"], event["body"]
            ):
                event_ids.append(event["id"])
                subscription_ids.append(matcher.id)
    return event_ids, subscription_ids


def _order_keys(
    events: Sequence[asyncpg.Record],
    event_ids: Sequence[str],
    subscription_ids: Sequence[str],
    ordered: AbstractSet[str],
) -> list[str | None]:
    """Per (event, subscription) pair the event's queue when the subscription is ordered."""
    if not ordered:
        return [None] * len(event_ids)
    of_event = {e["id"]: event_order_key(e) for e in events}
    return [
        of_event[e] if s in ordered else None
        for e, s in zip(event_ids, subscription_ids, strict=True)
    ]


@dataclass
class Handoff:
    """Room a dispatcher offers for the deliveries its own fan-out creates.

    Those it has room for are inserted already claimed by it (leased, as a claim leaves them)
    and handed over at the commit, so a new event's first attempt waits for no claim: one
    transaction from the event to the send instead of two, and no claim's write of each row.
    `held` is the dispatcher's count of deliveries it holds per subscription; it takes at most
    `cap` per subscription and `room` in all, never for an ordered subscription (`promote`
    picks an ordered queue's head). The rest are left due for any dispatcher's claim, as
    without a hand-off.

    After `fan_out_events` returns or raises, `taken` holds each committed transaction's
    claim token with its rows (in `store.claim`'s shape), and `unanswered` the token of a
    transaction whose commit may have happened without its answer arriving (its rows, if any,
    are leased to nobody until handed back).
    """

    lease: float
    room: int
    cap: int
    held: Mapping[str, int]
    taken: list[tuple[uuid.UUID, list[asyncpg.Record]]] = field(default_factory=list)
    unanswered: list[uuid.UUID] = field(default_factory=list)
    _counts: dict[str, int] = field(default_factory=dict)

    def split(
        self, event_ids: Sequence[str], subscription_ids: Sequence[str], keys: Sequence[str | None]
    ) -> tuple[list[int], list[int]]:
        """Positions of the pairs to take, and of those to leave for claims."""
        take: list[int] = []
        leave: list[int] = []
        for n, (sub, key) in enumerate(zip(subscription_ids, keys, strict=True)):
            count = self._counts.get(sub, 0)
            if key is None and self.room > 0 and self.held.get(sub, 0) + count < self.cap:
                self._counts[sub] = count + 1
                self.room -= 1
                take.append(n)
            else:
                leave.append(n)
        return take, leave


@asynccontextmanager
async def _transaction(db: Executor) -> AsyncIterator[Connection]:
    """One fan-out batch's transaction, planned with index scans only (`claim_unfanned_events`
    says why): on a connection of the pool with `index_scans_only`, or on the caller's own
    connection, whose session has `CLAIM_SESSION` already."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            await index_scans_only(conn)
            yield conn
    else:
        async with db.transaction():
            yield db


async def fan_out_events(
    db: Executor,
    *,
    batch_size: int = FAN_OUT_BATCH,
    handoff: Handoff | None = None,
    matchers: MatcherCache | None = None,
) -> int:
    """Create the deliveries of every event not yet fanned out; returns how many were created.

    Safe to call from any number of processes at once, and again after a crash: each event
    leaves the fan-out queue in the same transaction as its deliveries are inserted. With a
    `handoff` the deliveries it has room for are created claimed by its dispatcher (see
    `Handoff`); with a `matchers` cache the subscriptions are read again only when they
    changed.

    `db` is a pool (each batch on a connection of its own), or a connection outside any
    transaction whose session runs `CLAIM_SESSION` (the dispatcher's claim connection: no
    acquire, no settings per batch), on which each batch is a transaction of its own.
    """
    created = 0
    while True:
        token = uuid.uuid4()
        taken: list[asyncpg.Record] = []
        try:
            async with _transaction(db) as conn:
                if matchers is None:
                    index = MatcherIndex(await load_matchers(conn))
                else:
                    index = await matchers.index(conn)
                ordered = index.ordered
                if ordered:
                    # One fan-out at a time, so each object's events queue in `seq` order.
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", FAN_OUT_LOCK)
                events = await claim_unfanned_events(conn, batch_size)
                if not events:
                    return created
                event_ids, subscription_ids = _matching(index, events)
                if event_ids:
                    keys = _order_keys(events, event_ids, subscription_ids, ordered)
                    if handoff is not None:
                        take, leave = handoff.split(event_ids, subscription_ids, keys)
                        if take:
                            taken = await insert_claimed_deliveries(
                                conn,
                                [event_ids[n] for n in take],
                                [subscription_ids[n] for n in take],
                                lease=handoff.lease,
                                token=token,
                            )
                            created += len(taken)
                        event_ids = [event_ids[n] for n in leave]
                        subscription_ids = [subscription_ids[n] for n in leave]
                        keys = [keys[n] for n in leave]
                    if event_ids:
                        created += await insert_deliveries(conn, event_ids, subscription_ids, keys)
                        queues = zip(subscription_ids, keys, strict=True)
                        await promote(conn, [(s, k) for s, k in queues if k])
        except BaseException:
            if taken and handoff is not None:
                handoff.unanswered.append(token)
            raise
        if taken and handoff is not None:
            handoff.taken.append((token, taken))
        if len(events) < batch_size:
            return created


async def replay_event(
    pool: asyncpg.Pool, event_id: str, subscription_ids: Sequence[str] | None = None
) -> int:
    """Deliver an event again to every matching enabled subscription (or only to those of
    `subscription_ids` that match); returns how many deliveries were created.

    Each replay is a new generation of the (event, subscription) delivery, sent under the same
    `webhook-id` (the event id). NotFound for an unknown event or subscription id.

    Concurrent replays of one event are N replays, never fewer: each takes the event row's lock
    (`FOR NO KEY UPDATE`, which fan-out's `FOR KEY SHARE` foreign-key checks do not wait for)
    before it reads the highest generation, so the next replay computes its generation only
    after this one's deliveries are committed. The matching subscriptions are read `FOR SHARE`,
    so a subscription deleted or disabled at the same moment is either counted and delivered
    to, or not counted. The count returned is exactly the rows inserted: no conflict can drop
    one silently (there is no `ON CONFLICT` to hide it).

    A replay of an event that is not fanned out yet creates generation 0, the delivery fan-out
    would have created: that first send is both the original and the replay, and fan-out then
    finds it there and adds none (its own `ON CONFLICT DO NOTHING`).
    """
    async with pool.acquire() as conn, conn.transaction():
        event = await lock_event_for_replay(conn, event_id)
        if event is None:
            raise NotFound("event", event_id)
        if subscription_ids is not None:
            for sid in subscription_ids:
                await get_subscription(conn, sid)
        index = MatcherIndex(await load_matchers(conn, subscription_ids, lock=True))
        _, targets = _matching(index, [event])
        if not targets:
            return 0
        keys = _order_keys([event], [event_id] * len(targets), targets, index.ordered)
        created = await insert_replays(conn, event_id, targets, keys)
        await promote(conn, [(s, k) for s, k in zip(targets, keys, strict=True) if k])
        await notify_wake(conn)
    return created


async def send_test_event(pool: asyncpg.Pool, subscription_id: str) -> dict[str, Any]:
    """Store a `relay.ping` event and queue it for this one subscription; returns the delivery.

    The ping is delivered even when the subscription's `event_types` would not match it, and
    goes to no other subscription (it is stored already marked as fanned out). Each call is one
    ping of its own: N concurrent tests are N pings. A disabled subscription is a Conflict.
    The subscription is read `FOR SHARE` in the same transaction, so a DELETE or a disabling
    PATCH racing the test either comes first (404 or 409 here) or waits until the ping is
    queued, and the dispatcher then records it as not sent, giving the reason.
    """
    body = build_event(
        "relay.ping",
        account_id=None,
        client_id=None,
        object_id=subscription_id,
        object={"message": "Test event from Relay", "subscription_id": subscription_id},
    )
    async with pool.acquire() as conn, conn.transaction():
        live = await share_subscription(conn, subscription_id)
        if live is None:
            raise NotFound("subscription", subscription_id)
        if not live["enabled"]:
            # Queued, it would only be failed as "not sent": a 202 for work that cannot happen.
            raise Conflict(
                f"subscription {subscription_id!r} is disabled "
                f"({live['disabled_reason'] or 'disabled'}); enable it to send a test"
            )
        await insert_ping_event(conn, body)
        delivery_id = await insert_delivery(conn, body["id"], subscription_id)
        await notify_wake(conn)
    return await get_delivery(pool, delivery_id)
