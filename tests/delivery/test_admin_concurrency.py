"""Delivery-side admin writes called many times at once: replay, retry, bulk retry, test.

Every test fires real parallel HTTP calls (`asyncio.gather` of aiohttp requests) at the real
admin app on loopback over the real Postgres, with real dispatchers sending to a real endpoint,
then checks that each answer told the truth: what Postgres holds and what the endpoint received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from standardwebhooks import Webhook

from relay.delivery.fanout import fan_out_events
from relay.delivery.subscriptions import MAX_SIGNING_SECRETS
from relay.settings import Settings
from relay.vault import Vault
from tests.support.api import answer
from tests.support.delivery import (
    DispatcherFactory,
    Endpoint,
    event_body,
    store_events,
    subscribe,
    wait_until,
)

Api = TestClient[Any, Any]


async def in_waves(calls: list[Callable[[], Awaitable[Any]]], width: int) -> list[Any]:
    """Run the calls `width` at a time (each wave concurrently), answers in call order."""
    answers: list[Any] = []
    for start in range(0, len(calls), width):
        answers += await asyncio.gather(*(call() for call in calls[start : start + width]))
    return answers


async def settled(pool: asyncpg.Pool, expected: int) -> bool:
    """Exactly `expected` deliveries exist and none is pending."""
    row = await pool.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'pending') AS pending "
        "FROM deliveries"
    )
    assert row is not None
    return bool(row["n"] == expected and row["pending"] == 0)


async def test_100_replays_20_at_a_time_are_100_deliveries_per_subscription(
    api: Api,
    api2: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    """The issue's regression: all 100 replays answered 202, but only 14 were ever delivered."""
    a, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/a"))
    b, _ = await subscribe(
        pool, vault, dsettings, endpoint.url("/ok/b"), event_types=["document.*"]
    )
    await subscribe(pool, vault, dsettings, endpoint.url("/ok/other"), event_types=["client.*"])
    await start_dispatcher()
    [event_id] = await store_events(pool, event_body())
    await wait_until(lambda: settled(pool, 2), what="the original deliveries")
    # Half the calls go to each of two API apps: only Postgres can order them.
    answers = await in_waves(
        [
            lambda client=client: answer(client.post(f"/v1/events/{event_id}/replay"))
            for client in [api, api2] * 50
        ],
        20,
    )
    assert answers == [(202, {"queued": 2})] * 100

    await wait_until(lambda: settled(pool, 202), seconds=30, what="every delivery settled")
    rows = await pool.fetch(
        "SELECT subscription_id, array_agg(generation ORDER BY generation) AS generations, "
        "bool_and(status = 'succeeded') AS ok FROM deliveries GROUP BY subscription_id"
    )
    assert {r["subscription_id"]: (r["generations"], r["ok"]) for r in rows} == {
        a["id"]: (list(range(101)), True),
        b["id"]: (list(range(101)), True),
    }
    for path in ("/ok/a", "/ok/b"):
        hits = endpoint.to(path)
        assert len(hits) == 101  # the original delivery and 100 replays
        assert {h.headers["webhook-id"] for h in hits} == {event_id}
    assert endpoint.to("/ok/other") == []


async def test_replays_racing_a_delete_count_exactly_what_they_created(
    api: Api, pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    """A replay and a DELETE of one of its subscriptions at once: the `queued` answers add up
    to exactly the deliveries created, whichever of them the DELETE overtook."""
    keep, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/keep"))
    gone, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/gone"))
    [event_id] = await store_events(pool, event_body())
    await fan_out_events(pool)

    calls: list[Callable[[], Awaitable[tuple[int, Any]]]] = [
        lambda: answer(api.post(f"/v1/events/{event_id}/replay")) for _ in range(30)
    ]
    calls.insert(15, lambda: answer(api.delete(f"/v1/subscriptions/{gone['id']}")))
    answers = await asyncio.gather(*(call() for call in calls))
    deleted = answers.pop(15)
    assert deleted == (204, None)
    assert all(status == 202 for status, _ in answers)
    queued = sum(body["queued"] for _, body in answers)

    counts = dict(
        await pool.fetch(
            "SELECT subscription_id, count(*) FILTER (WHERE generation > 0) FROM deliveries "
            "GROUP BY subscription_id"
        )
    )
    assert counts[keep["id"]] == 30
    assert queued == counts[keep["id"]] + counts[gone["id"]]


async def test_concurrent_retries_of_a_queued_delivery_join_one_attempt(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(retry_schedule=())
    await subscribe(pool, vault, settings, endpoint.url("/fail/1"))
    first = await start_dispatcher(settings)
    await store_events(pool, event_body())
    await wait_until(lambda: settled(pool, 1), what="the first attempt failed")
    first.stop()
    await asyncio.sleep(0.1)  # it finishes its pass; nothing is pending for it to claim
    [delivery_id] = [r["id"] for r in await pool.fetch("SELECT id FROM deliveries")]
    assert await pool.fetchval("SELECT status FROM deliveries") == "failed"

    # No dispatcher runs: every retry finds the delivery failed or already due, none is lost.
    answers = await asyncio.gather(
        *(answer(api.post(f"/v1/deliveries/{delivery_id}/retry")) for _ in range(20))
    )
    assert {status for status, _ in answers} == {202}
    assert {(body["status"], body["attempt_count"]) for _, body in answers} == {("pending", 1)}
    # All joined one queued attempt: the same `next_attempt_at` in every answer.
    assert len({body["next_attempt_at"] for _, body in answers}) == 1

    await start_dispatcher(settings)
    await wait_until(lambda: settled(pool, 1), what="the retry")
    await asyncio.sleep(0.3)  # room for a second send, were one queued
    assert len(endpoint.to("/fail/1")) == 2
    row = await pool.fetchrow("SELECT status, attempt_count FROM deliveries")
    assert row is not None
    assert (row["status"], row["attempt_count"]) == ("succeeded", 2)


async def test_concurrent_retries_of_a_delivery_being_sent_are_conflicts(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    # The held send must outlast the 20 retries on a busy machine: no timeout cuts it short.
    settings = dsettings.with_changes(delivery_timeout=10.0)
    await subscribe(pool, vault, settings, endpoint.url("/hold"))
    await start_dispatcher(settings)
    await store_events(pool, event_body())
    await wait_until(lambda: asyncio.sleep(0, result=len(endpoint.to("/hold")) == 1), what="send")
    delivery_id = await pool.fetchval("SELECT id FROM deliveries")

    answers = await asyncio.gather(
        *(answer(api.post(f"/v1/deliveries/{delivery_id}/retry")) for _ in range(20))
    )
    assert {status for status, _ in answers} == {409}
    assert all(body["error"]["code"] == "conflict" for _, body in answers)
    endpoint.release.set()
    await wait_until(lambda: settled(pool, 1), what="the held attempt recorded")
    await asyncio.sleep(0.3)
    assert len(endpoint.to("/hold")) == 1
    assert await pool.fetchval("SELECT attempt_count FROM deliveries") == 1

    # Once recorded, a retry is one more attempt of its own.
    status, body = await answer(api.post(f"/v1/deliveries/{delivery_id}/retry"))
    assert (status, body["status"]) == (202, "pending")
    await wait_until(
        lambda: asyncio.sleep(0, result=len(endpoint.to("/hold")) == 2), what="the retry"
    )


async def test_concurrent_bulk_retries_queue_each_failed_delivery_once(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(retry_schedule=())
    one, _ = await subscribe(pool, vault, settings, endpoint.url("/fail/1000/one"))
    await subscribe(pool, vault, settings, endpoint.url("/fail/1000/two"))
    first = await start_dispatcher(settings)
    await store_events(pool, *(event_body(object_id=f"doc_{n}") for n in range(20)))
    await wait_until(lambda: settled(pool, 40), what="40 failed deliveries")
    first.stop()
    await asyncio.sleep(0.1)  # it finishes its pass; nothing is pending for it to claim
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 'failed'") == 40

    # Some calls narrow to one subscription: their plans differ, their locks must not deadlock.
    bodies: list[dict[str, Any]] = [{"status": "failed"}] * 6 + [
        {"status": "failed", "subscription_id": one["id"]}
    ] * 6
    answers = await asyncio.gather(
        *(answer(api.post("/v1/deliveries/retry", json=body)) for body in bodies)
    )
    assert {status for status, _ in answers} == {202}
    assert sum(body["queued"] for _, body in answers) == 40
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 'pending'") == 40

    await start_dispatcher(settings)
    await wait_until(lambda: settled(pool, 40), what="the retries")
    await asyncio.sleep(0.3)
    assert set(await pool.fetch("SELECT DISTINCT attempt_count FROM deliveries")) == {(2,)}
    assert len(endpoint.hits) == 80


async def test_concurrent_tests_are_one_ping_each_and_a_racing_delete_loses_none(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    await start_dispatcher()
    answers = await asyncio.gather(
        *(answer(api.post(f"/v1/subscriptions/{sub['id']}/test")) for _ in range(10))
    )
    assert {status for status, _ in answers} == {202}
    assert len({body["event_id"] for _, body in answers}) == 10
    await wait_until(lambda: settled(pool, 10), what="ten pings")
    assert len(endpoint.to("/ok")) == 10

    calls = [lambda: answer(api.post(f"/v1/subscriptions/{sub['id']}/test")) for _ in range(20)]
    calls.insert(10, lambda: answer(api.delete(f"/v1/subscriptions/{sub['id']}")))
    raced = await asyncio.gather(*(call() for call in calls))
    assert raced.pop(10) == (204, None)
    assert {status for status, _ in raced} <= {202, 404}
    accepted = [body["id"] for status, body in raced if status == 202]
    await wait_until(lambda: settled(pool, 10 + len(accepted)), what="every accepted ping")
    # An accepted ping was queued before the DELETE committed: sent, or recorded as not sent.
    rows = await pool.fetch(
        "SELECT status, last_error FROM deliveries WHERE id = ANY($1::text[])", accepted
    )
    assert len(rows) == len(accepted)
    for row in rows:
        assert row["status"] == "succeeded" or "subscription disabled" in row["last_error"]

    disabled, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok/off"))
    status, body = await answer(
        api.patch(f"/v1/subscriptions/{disabled['id']}", json={"enabled": False})
    )
    assert status == 200
    status, body = await answer(api.post(f"/v1/subscriptions/{disabled['id']}/test"))
    assert (status, body["error"]["code"]) == (409, "conflict")


async def test_concurrent_rotations_keep_every_replaced_secret_signing(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    """Twelve rotations at once: nine fit under MAX_SIGNING_SECRETS (ten signing), three are
    told why not; the original secret and every secret handed out verify the next webhook."""
    sub, original = await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    answers = await asyncio.gather(
        *(answer(api.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")) for _ in range(12))
    )
    given = [body["secret"] for status, body in answers if status == 200]
    refused = [body["error"] for status, body in answers if status == 409]
    assert (len(given), len(refused)) == (MAX_SIGNING_SECRETS - 1, 3)
    assert len(set(given)) == len(given)
    assert all("already signs with 10 secrets" in e["message"] for e in refused)

    await start_dispatcher()
    await store_events(pool, event_body())
    await wait_until(lambda: settled(pool, 1), what="the delivery")
    [hit] = endpoint.hits
    assert len(hit.headers["webhook-signature"].split(" ")) == MAX_SIGNING_SECRETS
    for secret in [original, *given]:
        Webhook(secret).verify(hit.body, hit.headers)


async def test_retries_of_a_disabled_subscription_are_refused_not_queued(
    api: Api,
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    """Retries racing a PATCH that disables the subscription: a single retry answers 202 only
    for a delivery that was queued, a bulk retry counts only what it queued; once disabled,
    both refuse or skip (a queued delivery could only be recorded as not sent)."""
    settings = dsettings.with_changes(retry_schedule=())
    sub, _ = await subscribe(pool, vault, settings, endpoint.url("/fail/1000"))
    first = await start_dispatcher(settings)
    await store_events(pool, *(event_body(object_id=f"doc_{n}") for n in range(10)))
    await wait_until(lambda: settled(pool, 10), what="ten failed deliveries")
    first.stop()
    await asyncio.sleep(0.1)
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM deliveries ORDER BY id")]

    calls = [lambda i=i: answer(api.post(f"/v1/deliveries/{i}/retry")) for i in ids]
    calls += [lambda: answer(api.post("/v1/deliveries/retry", json={"status": "failed"}))] * 3
    calls.insert(
        5, lambda: answer(api.patch(f"/v1/subscriptions/{sub['id']}", json={"enabled": False}))
    )
    answers = await asyncio.gather(*(call() for call in calls))
    assert answers.pop(5)[0] == 200
    singles, bulks = answers[:10], answers[10:]
    assert {status for status, _ in singles} <= {202, 409}
    for status, body in singles:
        if status == 409:
            assert (
                "its subscription is disabled (disabled by an operator)" in body["error"]["message"]
            )
        else:
            assert body["status"] == "pending"
    assert {status for status, _ in bulks} == {202}
    pending = {
        r["id"] for r in await pool.fetch("SELECT id FROM deliveries WHERE status = 'pending'")
    }
    assert {body["id"] for status, body in singles if status == 202} <= pending
    assert sum(body["queued"] for _, body in bulks) <= len(pending)

    # Disabled now: nothing more is queued, and every answer says so.
    status, body = await answer(api.post(f"/v1/deliveries/{ids[0]}/retry"))
    assert status == 409 or (status == 202 and ids[0] in pending)
    assert await answer(api.post("/v1/deliveries/retry", json={"status": "failed"})) == (
        202,
        {"queued": 0},
    )
    await answer(api.patch(f"/v1/subscriptions/{sub['id']}", json={"enabled": True}))
    assert await answer(api.post("/v1/deliveries/retry", json={"status": "failed"})) == (
        202,
        {"queued": 10 - len(pending)},
    )
