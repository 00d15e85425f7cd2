"""Redis stopped under load, twice (once losing its keys, once keeping them): the workers stay
up and keep delivering from Postgres, polling resumes within seconds of Redis returning, and
nothing is lost, duplicated or spent beyond the upstream's budget.

The issue's outages last 30 s; these last `OUTAGE` = 8 s each, because nothing changes after
the first few seconds: arq's loop backs off 0.1, 0.2 ... 1.6 s (3.1 s in all) to its 2 s cap
and then retries every 2 s until Redis answers; the limiter refuses every grant from the first
failed call; the dispatcher never needs Redis. A longer outage only repeats that steady state.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from relay.settings import Settings
from tests.support.outages import (
    Receiver,
    WorkerFactory,
    WorkerProcess,
    all_recorded,
    duplicate_events,
    event_ids,
    setup_relay,
    store_events,
    upstream_requests_after,
    wait_for,
)
from tests.support.sandbox import SandboxHandle
from tests.support.stores import PrivateStores

OUTAGE = 8.0


async def _baselined(pool: asyncpg.Pool, account_id: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT baseline_completed_at IS NOT NULL FROM accounts WHERE id = $1", account_id
        )
    )


async def _created_events(pool: asyncpg.Pool, object_id: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM events WHERE type = 'document.created' AND object_id = $1",
            object_id,
        )
    )


async def test_workers_ride_out_redis_stopped_twice_under_load(
    osettings: Settings,
    opool: asyncpg.Pool,
    stores: PrivateStores,
    spawn_worker: WorkerFactory,
    receiver: Receiver,
    upstream: SandboxHandle,
) -> None:
    account_id = await setup_relay(opool, osettings, upstream, receiver)
    workers = [await spawn_worker(osettings) for _ in range(2)]
    await wait_for(lambda: _baselined(opool, account_id), 60, "the account's baseline")
    client_id = sorted(upstream.sandbox.practice.clients)[0]
    created: list[str] = []
    figures: list[dict[str, float]] = []

    async def received(ids: list[str]) -> bool:
        return set(ids) <= receiver.ids()

    for _round in range(2):
        before = await store_events(opool, account_id, 20)
        await wait_for(lambda ids=before: received(ids), 15, "deliveries before the outage")
        # The first outage loses Redis's keys (a flushed or replaced Redis); the second keeps
        # them (a stock Redis snapshots on shutdown), with arq's records of the jobs that
        # were running when it went away.
        await stores.redis.stop(save=_round == 1)
        down_at = time.time()
        # Load during the outage: stored in Postgres, so the dispatcher must deliver them now.
        during = await store_events(opool, account_id, 50)
        flowing = await wait_for(lambda ids=during: received(ids), OUTAGE - 2, "delivery w/o Redis")
        await asyncio.sleep(max(0.0, down_at + OUTAGE - time.time()))
        assert all(w.alive for w in workers), [w.tail() for w in workers]
        # Fail-safe limiter: nothing granted while it cannot count (a request in flight at the
        # moment Redis stopped may still finish within the first second).
        assert upstream_requests_after(upstream, down_at + 1.0) == []
        await stores.redis.start()
        up_at = time.time()
        change = await upstream.apply({"action": "create_document", "client_id": client_id})
        doc_id = change[0]["object_id"]
        created.append(doc_id)
        polling = await wait_for(
            lambda at=up_at: _any_request_after(upstream, at), 10, "polling after Redis returned"
        )
        await wait_for(lambda d=doc_id: _created_events(opool, d), 20, "the new document's event")
        detected = time.time() - up_at
        # Every worker's arq loop is back too (its backoff is capped at 2 s).
        await wait_for(lambda n=_round + 1: _loops_back(workers, n), 10, "every worker's arq loop")
        figures.append(
            {
                "delivered_during_s": round(flowing, 2),
                "polling_s": round(polling, 2),
                "event_s": round(detected, 2),
                "loops_s": round(time.time() - up_at, 2),  # at most this
            }
        )

    stored = await event_ids(opool)
    await wait_for(lambda: received(sorted(stored)), 20, "every stored event delivered")
    await wait_for(lambda: all_recorded(opool), 20, "every delivery recorded")
    ids = [event_id for event_id, _ in receiver.received]
    summary = (await upstream.requests_summary())["tokens"]
    print(f"redis outage x2 ({OUTAGE} s each): {figures}; stored={len(stored)} "
          f"delivered={len(set(ids) & stored)} lost={len(stored - set(ids))} "
          f"duplicate_webhooks={len(ids) - len(set(ids))} "
          f"duplicate_events={await duplicate_events(opool)}")  # fmt: skip
    assert all(w.alive for w in workers)
    assert stored - set(ids) == set()  # nothing lost
    assert len(ids) == len(set(ids))  # nothing sent twice
    assert await duplicate_events(opool) == 0
    for doc_id in created:
        assert await _created_events(opool, doc_id) == 1
    for stats in summary.values():
        assert stats["rate_limited"] == 0
        assert stats["max_in_window"] <= 60
    for worker in workers:
        assert await worker.stop() == 0, worker.tail()  # and it shuts down cleanly after
        lines = worker.lines()  # every line is JSON
        assert not any("Traceback" in str(line) for line in lines)
        arq_lines = worker.events("store_unavailable", service="Redis", component="arq")
        assert len(arq_lines) == 2, worker.tail()  # one line per outage
        assert len(worker.events("store_recovered", service="Redis", component="arq")) == len(
            arq_lines
        )
        assert len(worker.events("store_unavailable")) <= 8  # a few components, once each


async def _loops_back(workers: list[WorkerProcess], outages: int) -> bool:
    return all(
        len(w.events("store_recovered", service="Redis", component="arq")) >= outages
        for w in workers
    )


async def _any_request_after(upstream: SandboxHandle, at: float) -> bool:
    return bool(upstream_requests_after(upstream, at))
