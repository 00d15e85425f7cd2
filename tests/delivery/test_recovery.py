"""Replay windows and backfills through the real admin API, dispatchers and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.delivery import recovery
from relay.events import build_event, insert_events
from relay.exactjson import ExactNumber
from relay.settings import Settings
from relay.snapshots import diff_objects
from relay.vault import Vault
from tests.support.delivery import (
    DispatcherFactory,
    Endpoint,
    make_account,
    mark_fanned_out,
    subscribe,
    wait_until,
)

Api = TestClient[Any, Any]


async def answer(request: Awaitable[aiohttp.ClientResponse]) -> tuple[int, Any]:
    response = await request
    try:
        return response.status, await response.json()
    finally:
        response.release()


async def store(pool: asyncpg.Pool, account: str, *object_ids: str) -> list[dict[str, Any]]:
    """One event per object id, in order, stored as the events module stores them."""
    bodies = [
        build_event(
            "document.status_changed",
            account_id=account,
            client_id="cli_1",
            object_id=oid,
            object={"id": oid},
        )
        for oid in object_ids
    ]
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, bodies)
    return bodies


async def job_done(api: Api, job_id: str, sent: int) -> bool:
    status, job = await answer(api.get(f"/v1/jobs/{job_id}"))
    assert status == 200
    return bool(job["status"] == "done" and job["succeeded"] == sent)


def sent_ids(endpoint: Endpoint, path: str) -> list[str]:
    return [h.headers["webhook-id"] for h in endpoint.to(path)]


async def test_replay_window_resends_the_same_ids_in_order_with_progress(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    account = await make_account(pool)
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/a"))
    other, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/b"))
    await start_dispatcher()
    since = datetime.now(UTC) - timedelta(seconds=1)
    bodies = await store(pool, account, "d1", "d2", "d1", "d3")
    await wait_until(lambda: _count(pool, "succeeded", 8), what="the originals")
    originals = sent_ids(endpoint, "/ok/a")

    status, job = await answer(
        api.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": since.isoformat()})
    )
    assert status == 202
    assert (job["kind"], job["total"], job["queued"]) == ("replay", 4, 4)
    await wait_until(lambda: job_done(api, job["id"], 4), what="the replay sent")
    assert sent_ids(endpoint, "/ok/a")[4:] == [b["id"] for b in bodies]  # same ids, in order
    assert sorted(originals) == sorted(b["id"] for b in bodies)
    assert len(endpoint.to("/ok/b")) == 4  # the other subscription got nothing again
    assert other["id"] != sub["id"]

    # A window and a type filter: nothing matches, nothing is queued, the job is done.
    status, empty = await answer(
        api.post(
            f"/v1/subscriptions/{sub['id']}/replay",
            json={"since": since.isoformat(), "event_types": ["client.*"]},
        )
    )
    assert status == 202
    assert (empty["total"], empty["queued"], empty["status"]) == (0, 0, "done")


async def test_a_large_window_streams_in_batches_and_concurrent_replays_all_count(
    api: Api,
    api2: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recovery, "BATCH", 5)
    monkeypatch.setattr(recovery, "WINDOW", 5)
    account = await make_account(pool)
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/a"))
    since = datetime.now(UTC) - timedelta(seconds=1)
    bodies = await store(pool, account, *(f"d{n}" for n in range(23)))
    await mark_fanned_out(pool)  # history, already sent

    # No dispatcher yet: each call queues only its first batch of five.
    path = f"/v1/subscriptions/{sub['id']}/replay"
    answers = await asyncio.gather(
        *(answer(c.post(path, json={"since": since.isoformat()})) for c in [api, api2] * 2)
    )
    assert [(s, j["total"], j["queued"]) for s, j in answers] == [(202, 23, 5)] * 4
    await start_dispatcher()
    for _, job in answers:
        await wait_until(lambda job=job: job_done(api, job["id"], 23), what="each replay")
    # Four replays, each every event once, each in stored order.
    hits = sent_ids(endpoint, "/ok/a")
    assert len(hits) == 4 * 23
    gens = await pool.fetch(
        "SELECT event_id, array_agg(generation ORDER BY generation) AS g FROM deliveries "
        "GROUP BY event_id"
    )
    assert {tuple(r["g"]) for r in gens} == {(0, 1, 2, 3)}
    assert len(gens) == 23
    rows = await pool.fetch(
        "SELECT d.job_id, e.seq FROM deliveries AS d JOIN events AS e ON e.id = d.event_id "
        "JOIN delivery_attempts AS a ON a.delivery_id = d.id ORDER BY a.at, e.seq"
    )
    per_job: dict[str, list[int]] = {}
    for r in rows:
        per_job.setdefault(r["job_id"], []).append(r["seq"])
    assert all(seqs == sorted(seqs) for seqs in per_job.values())
    assert len(bodies) == 23


async def test_backfill_sends_every_snapshot_with_its_sequence_and_no_upstream_request(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    # The account's base_url points at a closed port: any upstream request would fail.
    account = await make_account(pool)
    docs = [{"id": f"doc_{n}", "status": "review"} for n in range(3)]
    async with pool.acquire() as conn:
        for emit, objects in ((False, docs), (True, [{**docs[0], "status": "ready"}, *docs[1:]])):
            await diff_objects(
                conn,
                account_id=account,
                object_type="document",
                objects=objects,
                client_id="cli_1",
                emit=emit,
            )
        await diff_objects(
            conn,
            account_id=account,
            object_type="client",
            objects=[{"id": "cli_1", "name": "Smith"}],
            client_id=None,
            emit=False,
        )
    sub, _ = await subscribe(
        pool, vault, dsettings, endpoint.url("/ok/wh"), event_types=["document.created"]
    )
    await mark_fanned_out(pool)
    await start_dispatcher()

    status, job = await answer(
        api.post(f"/v1/subscriptions/{sub['id']}/backfill", json={"object_types": ["document"]})
    )
    assert status == 202
    assert (job["kind"], job["total"], job["queued"]) == ("backfill", 3, 3)
    await wait_until(lambda: job_done(api, job["id"], 3), what="the backfill sent")
    got = {b["object_id"]: b for b in (orjson.loads(h.body) for h in endpoint.to("/ok/wh"))}
    assert set(got) == {"doc_0", "doc_1", "doc_2"}
    assert {b["type"] for b in got.values()} == {"document.snapshot"}
    assert got["doc_0"]["data"] == {"object": {"id": "doc_0", "status": "ready"}, "previous": {}}
    # doc_0 changed once (sequence 1); the others never had an event (0).
    assert {k: b["sequence"] for k, b in got.items()} == {"doc_0": 1, "doc_1": 0, "doc_2": 0}
    stored = await pool.fetchval("SELECT body FROM events WHERE id = $1", got["doc_0"]["id"])
    assert stored == got["doc_0"]  # the body as GET /v1/events shows it

    # All object types by default: the client snapshot too.
    status, job = await answer(api.post(f"/v1/subscriptions/{sub['id']}/backfill", json={}))
    assert (status, job["total"]) == (202, 4)


async def test_recovery_routes_refuse_bad_input_clearly(
    api: Api, pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    base = f"/v1/subscriptions/{sub['id']}"
    cases = [
        (f"{base}/replay", {}, 400),
        (f"{base}/replay", {"since": "yesterday"}, 400),
        (f"{base}/replay", {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 400),
        (f"{base}/replay", {"since": "2026-01-01T00:00:00Z", "event_types": ["BAD"]}, 400),
        (f"{base}/backfill", {"object_types": ["widget"]}, 400),
        ("/v1/subscriptions/sub_missing/backfill", {}, 404),
        ("/v1/subscriptions/sub_missing/replay", {"since": "2026-01-01T00:00:00Z"}, 404),
    ]
    for path, body, expected in cases:
        status, error = await answer(api.post(path, json=body))
        assert status == expected, (path, body, error)
        assert set(error["error"]) >= {"code", "message"}
    status, _ = await answer(api.get("/v1/jobs/job_missing"))
    assert status == 404
    await answer(api.patch(base, json={"enabled": False}))
    status, error = await answer(api.post(f"{base}/backfill", json={}))
    assert status == 409


async def _count(pool: asyncpg.Pool, status: str, n: int) -> bool:
    got = await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = $1", status)
    return bool(got == n)


async def test_a_replay_to_an_ordered_subscription_keeps_each_objects_order(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    account = await make_account(pool)
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/l"), ordering="object")
    since = datetime.now(UTC) - timedelta(seconds=1)
    for _ in range(4):
        await store(pool, account, "d1", "d2", "d3")
    await mark_fanned_out(pool)  # history, already sent
    status, job = await answer(
        api.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": since.isoformat()})
    )
    assert (status, job["queued"]) == (202, 12)
    # Only one head per object is due; the rest wait parked.
    due = await pool.fetchval("SELECT count(*) FROM deliveries WHERE next_attempt_at IS NOT NULL")
    assert due == 3
    await start_dispatcher()
    await wait_until(lambda: job_done(api, job["id"], 12), what="the replay sent")
    by_object: dict[str, list[int]] = {}
    for hit in endpoint.to("/ok/l"):
        body = orjson.loads(hit.body)
        by_object.setdefault(body["object_id"], []).append(body["sequence"])
    assert by_object == {oid: [1, 2, 3, 4] for oid in ("d1", "d2", "d3")}


async def test_live_events_do_not_wait_behind_a_large_replay(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recovery, "BATCH", 5)
    monkeypatch.setattr(recovery, "WINDOW", 5)
    account = await make_account(pool)
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/slow/0.02"))
    since = datetime.now(UTC) - timedelta(seconds=1)
    await store(pool, account, *(f"old_{n}" for n in range(60)))
    await mark_fanned_out(pool)
    status, job = await answer(
        api.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": since.isoformat()})
    )
    assert (status, job["total"]) == (202, 60)
    await start_dispatcher()
    await wait_until(lambda: _hits_at_least(endpoint, 10), what="the replay under way")
    [live] = await store(pool, account, "live")
    await wait_until(lambda: job_done(api, job["id"], 60), seconds=20, what="the replay sent")
    await wait_until(lambda: _count(pool, "succeeded", 61), what="the live event")
    ids = sent_ids(endpoint, "/slow/0.02")
    position = ids.index(live["id"])
    # Stored after ~10 replayed sends, it went within the next window, not after all 60.
    assert position < 10 + 2 * recovery.WINDOW, position


async def test_concurrent_backfills_are_each_whole(
    api: Api,
    api2: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    account = await make_account(pool)
    async with pool.acquire() as conn:
        await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=[{"id": f"doc_{n}"} for n in range(30)],
            client_id="cli_1",
            emit=False,
        )
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/bf"))
    path = f"/v1/subscriptions/{sub['id']}/backfill"
    answers = await asyncio.gather(*(answer(c.post(path, json={})) for c in [api, api2] * 3))
    assert [(s, j["total"], j["queued"]) for s, j in answers] == [(202, 30, 30)] * 6
    await start_dispatcher()
    for _, job in answers:
        await wait_until(lambda job=job: job_done(api, job["id"], 30), what="each backfill")
    rows = await pool.fetch(
        "SELECT object_id, count(DISTINCT id) AS n FROM events "
        "WHERE type = 'document.snapshot' GROUP BY object_id"
    )
    assert {r["object_id"]: r["n"] for r in rows} == {f"doc_{n}": 6 for n in range(30)}
    assert len(endpoint.to("/ok/bf")) == 180


async def _hits_at_least(endpoint: Endpoint, n: int) -> bool:
    return len(endpoint.hits) >= n


async def test_a_backfill_carries_each_snapshots_numbers_as_stored(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings
) -> None:
    # The snapshot rows reach the events as jsonb text: `0.10` keeps its spelling (a trip
    # through Python floats would make it `0.1`), as the live events of InvoiceXT money do.
    account = await make_account(pool)
    async with pool.acquire() as conn:
        await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=[{"id": "doc_0", "total": ExactNumber("0.10"), "net": ExactNumber("1332.00")}],
            client_id="cli_1",
            emit=False,
        )
    sub, _ = await subscribe(pool, vault, dsettings, "http://127.0.0.1:9/wh")
    job = await recovery.start_backfill(pool, sub["id"])
    assert (job["total"], job["queued"], job["status"]) == (1, 1, "done")
    stored, sent = await pool.fetchrow(
        "SELECT s.data::text, (e.body -> 'data' -> 'object')::text FROM snapshots AS s "
        "JOIN events AS e ON e.object_id = s.object_id AND e.type = 'document.snapshot'"
    )
    assert '"total": 0.10' in stored
    assert '"net": 1332.00' in stored
    assert sent == stored


async def test_concurrent_backfills_each_answer_what_they_queued_while_dispatchers_advance(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    """Ten backfills at once, with two dispatchers advancing running jobs every tenth of a
    second: each 202 says what really was queued by then (all of a small backfill), never 0
    because a dispatcher held the job when its creator looked."""
    account = await make_account(pool)
    docs = [{"id": f"doc_{n}", "status": "review"} for n in range(3)]
    async with pool.acquire() as conn:
        await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=docs,
            client_id="cli_1",
            emit=False,
        )
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/bf"))
    await start_dispatcher()
    await start_dispatcher()
    body = {"object_types": ["document"]}
    answers = await asyncio.gather(
        *[answer(api.post(f"/v1/subscriptions/{sub['id']}/backfill", json=body)) for _ in range(10)]
    )
    assert [(status, job["total"], job["queued"]) for status, job in answers] == [(202, 3, 3)] * 10
    assert len({job["id"] for _, job in answers}) == 10
    await wait_until(lambda: _count(pool, "succeeded", 30), what="every backfilled snapshot")
    assert len(endpoint.to("/ok/bf")) == 30
