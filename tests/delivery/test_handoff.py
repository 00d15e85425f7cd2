"""Fan-out handing its new deliveries straight to the dispatcher that fans out (issue 16).

The deliveries it has room for are inserted already claimed (leased under its token) and
returned in the claim's shape; the rest stay due for any dispatcher's claim. Nothing may be
sent twice or lost on the way.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import orjson

from relay.delivery import Dispatcher, fan_out_events, replay_event
from relay.delivery.fanout import Handoff
from relay.delivery.store import claim, event_texts
from relay.events import insert_events, outbox
from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import (
    DispatcherFactory,
    Endpoint,
    all_settled,
    delivery_rows,
    event_body,
    store_events,
    subscribe,
    wait_until,
)


async def test_fan_out_hands_over_what_the_dispatcher_has_room_for(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    a, _ = await subscribe(pool, vault, dsettings, endpoint.url("/a"))
    b, _ = await subscribe(pool, vault, dsettings, endpoint.url("/b"))
    c, _ = await subscribe(pool, vault, dsettings, endpoint.url("/c"), ordering="object")
    await store_events(pool, *[event_body(object_id=f"doc_{n}") for n in range(4)])
    # The dispatcher holds one of A's already; its cap is 2 a subscription and 5 in all.
    handoff = Handoff(lease=60, room=5, cap=2, held={a["id"]: 1})
    assert await fan_out_events(pool, handoff=handoff) == 12
    assert len(handoff.taken) == 1
    assert handoff.unanswered == []
    token, rows = handoff.taken[0]
    by_sub = sorted((r["subscription_id"], r["url"]) for r in rows)
    assert by_sub == [(a["id"], a["url"]), (b["id"], b["url"]), (b["id"], b["url"])]
    # Each event's body comes once, on one of its rows; every row's event has it.
    texts = event_texts(rows)
    assert set(texts) == {r["event_id"] for r in rows}
    assert sum(r["body_text"] is not None for r in rows) == len(texts) < len(rows)
    assert {orjson.loads(text)["type"] for text, _ in texts.values()} == {"document.categorized"}
    assert not any(r["expired"] for r in rows)
    assert all(r["live"] and r["secret_enc"] and r["attempt_count"] == 0 for r in rows)

    now = datetime.now(UTC)
    stored = {r["id"]: r for r in await delivery_rows(pool)}
    for row in rows:
        d = stored.pop(row["id"])
        assert d["lease_token"] == token
        assert d["leased_until"] > now
        assert d["status"] == "pending"
        assert d["next_attempt_at"] is not None
    # Everything else is as a plain fan-out leaves it: A's other three and B's other two due
    # and unleased, C's (ordered) queues each with its head due and the rest parked.
    assert all(d["lease_token"] is None for d in stored.values())
    claimable = await claim(pool, room=50, lease=60, saturated=[], partial=[], cap=50, token=token)
    assert sorted(r["subscription_id"] for r in claimable) == sorted(
        [a["id"]] * 3 + [b["id"]] * 2 + [c["id"]] * 4
    )
    assert await fan_out_events(pool, handoff=Handoff(lease=60, room=5, cap=2, held={})) == 0


async def test_a_pair_a_replay_made_first_is_neither_duplicated_nor_handed_over(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    _sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/a"))
    first, second = await store_events(pool, event_body(), event_body())
    assert await replay_event(pool, first) == 1  # generation 0, before fan-out got to it
    handoff = Handoff(lease=60, room=10, cap=10, held={})
    assert await fan_out_events(pool, handoff=handoff) == 1
    [(_, rows)] = handoff.taken
    assert [r["event_id"] for r in rows] == [second]
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 2


async def test_a_full_dispatcher_takes_nothing(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    _sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/a"))
    await store_events(pool, event_body(), event_body())
    handoff = Handoff(lease=60, room=0, cap=10, held={})
    assert await fan_out_events(pool, handoff=handoff) == 2
    assert handoff.taken == []
    assert all(d["lease_token"] is None for d in await delivery_rows(pool))


async def test_two_dispatchers_fanning_out_send_every_event_exactly_once(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    for n in range(3):
        await subscribe(pool, vault, dsettings, endpoint.url(f"/s{n}"))
    # Small caps, so hand-offs fill up and claims carry the rest, both at once.
    small = dsettings.with_changes(delivery_concurrency=8, delivery_endpoint_concurrency=2)
    await start_dispatcher(small)
    await start_dispatcher(small)

    async def store(k: int) -> None:
        for i in range(10):
            async with pool.acquire() as conn, outbox(conn):
                await insert_events(
                    conn, [event_body(object_id=f"doc_{k}_{i}_{j}") for j in range(5)]
                )
            await asyncio.sleep(0.01)

    await asyncio.gather(*[store(k) for k in range(4)])
    total = 4 * 10 * 5 * 3
    await wait_until(lambda: all_settled(pool, total), seconds=30, what="every delivery settled")
    rows = await delivery_rows(pool)
    assert all(r["status"] == "succeeded" and r["attempt_count"] == 1 for r in rows)
    assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == total
    sent = [(h.headers["webhook-id"], h.path) for h in endpoint.hits]
    assert len(sent) == len(set(sent)) == total


async def test_a_subscription_holding_its_share_keeps_draining_without_the_poll(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    """A claim cut short by a subscription's cap proves nothing is left: when its sends free
    room, the dispatcher claims again at once, not at its next poll (here 60 s away). Seen
    as 250 deliveries a second in bench/delivery_throughput.py's one-subscription backlog."""
    await subscribe(pool, vault, dsettings, endpoint.url("/one"))
    small = dsettings.with_changes(
        delivery_concurrency=4, delivery_endpoint_concurrency=2, delivery_poll_interval=60.0
    )
    # A first claim exactly as big as the subscription's share: full, so the next one runs
    # at once, finds the subscription saturated and comes back empty.
    share = Dispatcher(pool, small, None, vault)._hold_cap  # type: ignore[arg-type]
    await store_events(pool, *[event_body(object_id=f"doc_{n}") for n in range(60)])
    assert await fan_out_events(pool) == 60  # a backlog before the dispatcher starts
    await start_dispatcher(small.with_changes(delivery_batch_size=share))
    await wait_until(lambda: all_settled(pool, 60), seconds=15, what="the backlog drained")
    assert len(endpoint.to("/one")) == 60
