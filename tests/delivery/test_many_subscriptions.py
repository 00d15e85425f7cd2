"""Two dispatchers, many subscriptions, deliveries made by replays while they dispatch (the
shape of bench/delivery_shape.py, small): every delivery sent once, every attempt recorded,
each signed with its own subscription's secret."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
from standardwebhooks.webhooks import Webhook

from relay.delivery import replay_event
from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import (
    DispatcherFactory,
    Endpoint,
    all_settled,
    event_body,
    mark_fanned_out,
    store_events,
    subscribe,
    wait_until,
)


async def test_two_dispatchers_deliver_replays_to_many_subscriptions_once_each(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    # Small batches and caps, so claims are many, short and partly capped per subscription.
    settings = dsettings.with_changes(
        delivery_batch_size=16, delivery_concurrency=8, delivery_endpoint_concurrency=2
    )
    secrets = {}
    for i in range(40):
        _, secret = await subscribe(pool, vault, settings, endpoint.url(f"/many/{i}"))
        secrets[f"/many/{i}"] = secret
    event_ids = await store_events(pool, *[event_body() for _ in range(10)])
    await mark_fanned_out(pool)  # replays make them all
    await start_dispatcher(settings)
    await start_dispatcher(settings)
    replays = await asyncio.gather(*[replay_event(pool, e) for e in event_ids])
    assert replays == [40] * 10
    await wait_until(lambda: all_settled(pool, 400), what="400 deliveries")
    rows = await pool.fetch(
        "SELECT d.status, d.attempt_count, (SELECT count(*) FROM delivery_attempts a "
        "WHERE a.delivery_id = d.id AND a.status_code = 200) AS ok FROM deliveries d"
    )
    assert all(r["status"] == "succeeded" for r in rows)
    assert all(r["attempt_count"] == 1 and r["ok"] == 1 for r in rows)
    seen = Counter((hit.path, hit.headers["webhook-id"]) for hit in endpoint.hits)
    assert len(seen) == 400
    assert set(seen.values()) == {1}  # no duplicate
    for hit in endpoint.hits:
        Webhook(secrets[hit.path]).verify(hit.body, dict(hit.headers))
