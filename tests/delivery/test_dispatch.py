"""The dispatcher end to end: real Postgres, real aiohttp endpoints on loopback, real sessions."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import orjson
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from relay.db import connect
from relay.delivery import (
    fan_out_events,
    get_delivery,
    list_deliveries,
    replay_event,
    retry_delivery,
    retry_failed,
    send_test_event,
)
from relay.delivery.store import (
    CLAIM_SESSION,
    claim,
    insert_deliveries,
    insert_replays,
    release_unanswered,
)
from relay.delivery.subscriptions import get_subscription, rotate_secret, update_subscription
from relay.events import claim_unfanned_events, insert_events, lock_event_for_replay, outbox
from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import (
    DispatcherFactory,
    Endpoint,
    all_settled,
    delivery_rows,
    event_body,
    make_account,
    store_events,
    subscribe,
    wait_until,
)
from tests.support.loopback import serve


async def test_event_is_delivered_signed_and_recorded(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    sub, secret = await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    await start_dispatcher()
    body = event_body()
    [event_id] = await store_events(pool, body)
    await wait_until(lambda: all_settled(pool, 1), what="delivery")
    [hit] = endpoint.to("/ok")
    assert hit.headers["webhook-id"] == event_id
    assert hit.headers["content-type"] == "application/json"
    # The bytes sent are the bytes signed; jsonb keeps the event, not its key order.
    assert orjson.loads(hit.body) == body
    assert Webhook(secret).verify(hit.body, hit.headers) == body
    [row] = await delivery_rows(pool)
    delivery = await get_delivery(pool, row["id"])
    assert delivery["status"] == "succeeded"
    assert delivery["attempt_count"] == 1
    assert delivery["next_attempt_at"] is None
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] == 200
    assert attempt["error"] is None
    assert attempt["response_excerpt"] == "ok"
    assert attempt["latency_ms"] >= 0
    assert sub["id"] == delivery["subscription_id"]


async def test_fails_twice_then_succeeds_with_three_attempts(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(retry_schedule=(0.3, 0.6, 5.0))
    _, secret = await subscribe(pool, vault, settings, endpoint.url("/fail/2"))
    await start_dispatcher(settings)
    [event_id] = await store_events(pool, event_body())
    await wait_until(lambda: all_settled(pool, 1), what="delivery")
    hits = endpoint.to("/fail/2")
    assert len(hits) == 3
    assert {h.headers["webhook-id"] for h in hits} == {event_id}
    for hit in hits:
        Webhook(secret).verify(hit.body, hit.headers)
    # The schedule is followed: waits of at least 0.3 s then 0.6 s, plus at most 10 % jitter.
    first_wait = hits[1].at - hits[0].at
    second_wait = hits[2].at - hits[1].at
    assert 0.29 <= first_wait < 0.3 * 1.1 + 0.35
    assert 0.59 <= second_wait < 0.6 * 1.1 + 0.35
    [row] = await delivery_rows(pool)
    delivery = await get_delivery(pool, row["id"])
    assert (delivery["status"], delivery["attempt_count"]) == ("succeeded", 3)
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert delivery["attempts"][0]["error"] == "HTTP 500"
    assert delivery["attempts"][0]["response_excerpt"] == "boom"


async def test_exhausted_schedule_fails_then_manual_retry_sends_same_id(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(retry_schedule=(0.05, 0.05))
    await subscribe(pool, vault, settings, endpoint.url("/fail/3"))
    await start_dispatcher(settings)
    [event_id] = await store_events(pool, event_body())
    await wait_until(lambda: all_settled(pool, 1), what="failure")
    [row] = await delivery_rows(pool)
    assert (row["status"], row["attempt_count"]) == ("failed", 3)
    failed, _ = await list_deliveries(pool, status="failed")
    assert [d["id"] for d in failed] == [row["id"]]
    retried = await retry_delivery(pool, row["id"])
    assert retried["status"] == "pending"
    await wait_until(lambda: all_settled(pool, 1), what="manual retry")
    delivery = await get_delivery(pool, row["id"])
    assert (delivery["status"], delivery["attempt_count"]) == ("succeeded", 4)
    assert {h.headers["webhook-id"] for h in endpoint.hits} == {event_id}


async def test_gone_disables_the_subscription_and_stops_pending(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/gone"))
    await store_events(pool, event_body())
    await fan_out_events(pool)
    await store_events(pool, event_body())
    # The second event's delivery is not yet due when the first answers 410.
    await pool.execute("UPDATE deliveries SET next_attempt_at = now() + interval '1 hour'")
    await fan_out_events(pool)
    await start_dispatcher()
    await wait_until(lambda: all_settled(pool, 2), what="410 handling")
    record = await get_subscription(pool, sub["id"])
    assert record["enabled"] is False
    assert "410" in record["disabled_reason"]
    rows = await delivery_rows(pool)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert len(endpoint.hits) == 1
    assert sorted(r["attempt_count"] for r in rows) == [0, 1]


async def test_retry_after_is_honoured_within_the_schedule(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(retry_schedule=(0.1, 1.5))
    await subscribe(pool, vault, settings, endpoint.url("/retry-after/1"))
    await start_dispatcher(settings)
    await store_events(pool, event_body())
    await wait_until(lambda: all_settled(pool, 1), what="delivery")
    first, second = endpoint.hits
    # Retry-After 1 s beats the 0.1 s step and stays under the 1.5 s cap.
    assert 0.95 <= second.at - first.at < 1.5


async def test_timeout_redirect_and_endless_body_are_bounded_failures(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(delivery_timeout=0.5, retry_schedule=(30.0,))
    for path in ("/slow/3", "/redirect", "/endless"):
        await subscribe(pool, vault, settings, endpoint.url(path), description=path)
    await start_dispatcher(settings)
    await store_events(pool, event_body())
    await wait_until(lambda: delivery_count_with_attempts(pool, 3), seconds=5, what="attempts")
    by_path = {}
    for row in await delivery_rows(pool):
        sub = await get_subscription(pool, row["subscription_id"])
        by_path[sub["description"]] = await get_delivery(pool, row["id"])
    slow = by_path["/slow/3"]["attempts"][0]
    assert slow["error"].startswith("timed out")
    assert slow["status_code"] is None
    redirect = by_path["/redirect"]["attempts"][0]
    assert redirect["status_code"] == 302
    assert "not followed" in redirect["error"]
    assert endpoint.to("/ok") == []
    endless = by_path["/endless"]
    assert endless["status"] == "succeeded"
    assert len(endless["attempts"][0]["response_excerpt"]) == 1024
    assert by_path["/redirect"]["status"] == "pending"  # retried later per the schedule


async def delivery_count_with_attempts(pool: asyncpg.Pool, count: int) -> bool:
    done = await pool.fetchval("SELECT count(DISTINCT delivery_id) FROM delivery_attempts")
    return bool(done == count)


async def test_private_targets_are_refused_at_send_time(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    # Created while allowed, sent while not: the check after DNS must still refuse.
    port = endpoint.base.rsplit(":", 1)[1]
    for url in (endpoint.url("/ok"), f"http://localhost:{port}/ok", f"http://vm:{port}/ok"):
        await subscribe(pool, vault, dsettings, url)
    strict = dsettings.with_changes(allow_private_targets=False, retry_schedule=(30.0,))
    await start_dispatcher(strict)
    await store_events(pool, event_body())
    await wait_until(lambda: delivery_count_with_attempts(pool, 3), what="refusals")
    errors = await pool.fetch("SELECT error, status_code FROM delivery_attempts")
    assert all(e["error"].startswith("target refused") for e in errors), errors
    assert all(e["status_code"] is None for e in errors)
    assert endpoint.hits == []


async def test_matching_by_type_account_client_filter_and_enabled(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
) -> None:
    account = await make_account(pool)
    url = endpoint.url("/ok")
    subs = {
        "all": await subscribe(pool, vault, dsettings, url),
        "docs": await subscribe(pool, vault, dsettings, url, event_types=["document.*"]),
        "exact": await subscribe(pool, vault, dsettings, url, event_types=["supplier.created"]),
        "account": await subscribe(pool, vault, dsettings, url, account_ids=[account]),
        "client": await subscribe(pool, vault, dsettings, url, client_ids=["c2"]),
        "filter": await subscribe(
            pool,
            vault,
            dsettings,
            url,
            event_types=["client.health_changed"],
            filter=(
                "data.object.alert_level == 'high' && contains(keys(data.previous), 'alert_level')"
            ),
        ),
        "off": await subscribe(pool, vault, dsettings, url),
    }
    await update_subscription(pool, dsettings, subs["off"][0]["id"], {"enabled": False})
    events = {
        "doc": event_body("document.created", account_id=account, client_id="c1"),
        "supplier": event_body("supplier.created", client_id="c2"),
        "high": event_body(
            "client.health_changed",
            client_id="c3",
            obj={"alert_level": "high"},
            previous={"alert_level": "medium"},
        ),
        "not_high": event_body(
            "client.health_changed",
            client_id="c3",
            obj={"alert_level": "medium"},
            previous={"alert_level": "none"},
        ),
    }
    await store_events(pool, *events.values())
    assert await fan_out_events(pool) > 0
    rows = await pool.fetch("SELECT event_id, subscription_id FROM deliveries")
    got = {(r["event_id"], r["subscription_id"]) for r in rows}
    names = {v[0]["id"]: k for k, v in subs.items()}
    evnames = {v["id"]: k for k, v in events.items()}
    assert {(evnames[e], names[s]) for e, s in got} == {
        ("doc", "all"),
        ("doc", "docs"),
        ("doc", "account"),
        ("supplier", "all"),
        ("supplier", "exact"),
        ("supplier", "client"),
        ("high", "all"),
        ("high", "filter"),
        ("not_high", "all"),
    }


async def test_fan_out_is_idempotent_under_concurrency(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
) -> None:
    for _ in range(3):
        await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    await store_events(pool, *[event_body() for _ in range(300)])
    # Through the pool, as the sweeper fans out, and on connections of their own with the
    # claims' session, as dispatchers do.
    own = [await connect(dsettings, setup=CLAIM_SESSION) for _ in range(3)]
    try:
        created = await asyncio.gather(
            *[fan_out_events(db, batch_size=40) for db in [pool, *own, pool, pool]]
        )
    finally:
        for conn in own:
            await conn.close()
    assert sum(created) == 900
    assert await fan_out_events(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 900
    assert await pool.fetchval("SELECT count(*) FROM event_fanout_queue") == 0
    # Events queued again (as if their deliveries' commit had been a crash): no duplicates.
    await pool.execute("INSERT INTO event_fanout_queue SELECT seq, id FROM events")
    assert await fan_out_events(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM event_fanout_queue") == 0


async def test_the_fan_out_and_a_replay_of_one_event_take_turns(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    """A replay numbers its generation after the fan-out of the same event commits (it would
    otherwise make a second generation 0 and fail on the unique key), and a fan-out leaves an
    event a replay holds queued for later instead of waiting for it."""
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    [first, second] = await store_events(pool, event_body(), event_body())
    async with pool.acquire() as fan_out:
        async with fan_out.transaction():
            claimed = await claim_unfanned_events(fan_out, 1)
            assert [e["id"] for e in claimed] == [first]
            await insert_deliveries(fan_out, [first], [sub["id"]], [None])
            replay = asyncio.create_task(replay_event(pool, first))
            await asyncio.sleep(0.3)
            assert not replay.done()  # waiting for the fan-out's lock
        assert await replay == 1
    generations = "SELECT generation FROM deliveries WHERE event_id = $1 ORDER BY 1"
    assert [r[0] for r in await pool.fetch(generations, first)] == [0, 1]

    async with pool.acquire() as replaying, replaying.transaction():
        await lock_event_for_replay(replaying, second)
        await insert_replays(replaying, second, [sub["id"]], [None])
        assert await fan_out_events(pool) == 0  # skipped, not waited for
        assert await pool.fetchval("SELECT event_id FROM event_fanout_queue") == second
    assert await fan_out_events(pool) == 0  # the replay's generation 0 is the fan-out's
    assert await pool.fetchval("SELECT count(*) FROM event_fanout_queue") == 0
    assert [r[0] for r in await pool.fetch(generations, second)] == [0]


async def test_replay_and_bulk_retry_and_test_event(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(retry_schedule=(0.05,))
    good, secret = await subscribe(pool, vault, settings, endpoint.url("/ok"))
    bad, _ = await subscribe(pool, vault, settings, endpoint.url("/fail/2"))
    other, _ = await subscribe(pool, vault, settings, endpoint.url("/ok"), event_types=["x.*"])
    await start_dispatcher(settings)
    [event_id] = await store_events(pool, event_body())
    await wait_until(lambda: all_settled(pool, 2), what="first round")
    assert await replay_event(pool, event_id, [good["id"]]) == 1
    assert await replay_event(pool, event_id, [other["id"]]) == 0  # does not match
    await wait_until(lambda: all_settled(pool, 3), what="replay")
    assert [h.headers["webhook-id"] for h in endpoint.to("/ok")] == [event_id, event_id]
    failed, _ = await list_deliveries(pool, status="failed", subscription_id=bad["id"])
    assert len(failed) == 1
    assert await retry_failed(pool, subscription_id=bad["id"]) == 1
    await wait_until(lambda: all_settled(pool, 3), what="bulk retry")
    assert len(endpoint.to("/fail/2")) == 3
    ping = await send_test_event(pool, good["id"])
    await wait_until(lambda: all_settled(pool, 4), what="ping")
    delivered = await get_delivery(pool, ping["id"])
    assert delivered["status"] == "succeeded"
    last = endpoint.to("/ok")[-1]
    ping_body = Webhook(secret).verify(last.body, last.headers)
    assert (ping_body["type"], ping_body["object_id"]) == ("relay.ping", good["id"])
    assert last.headers["webhook-id"] == delivered["event_id"]
    by_event, _ = await list_deliveries(pool, event_id=event_id)
    assert len(by_event) == 3


async def test_rotation_signs_with_both_secrets(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    sub, old = await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    _, new = await rotate_secret(pool, vault, sub["id"])
    await start_dispatcher()
    await store_events(pool, event_body())
    await wait_until(lambda: all_settled(pool, 1), what="delivery")
    [hit] = endpoint.hits
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(hit.body, hit.headers)
    Webhook(new).verify(hit.body, hit.headers)


async def test_slack_subscription_gets_a_message(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    await subscribe(pool, vault, dsettings, endpoint.url("/ok"), kind="slack")
    await start_dispatcher()
    await store_events(
        pool,
        event_body(
            "client.health_changed",
            client_id="cli_42",
            object_id="cli_42",
            obj={"id": "cli_42", "name": "Acme & Co", "alert_level": "high", "health_score": 20},
            previous={"alert_level": "medium", "health_score": 55},
        ),
    )
    await wait_until(lambda: all_settled(pool, 1), what="slack")
    [hit] = endpoint.hits
    message = orjson.loads(hit.body)
    assert "Acme &amp; Co" in message["blocks"][0]["text"]["text"]
    assert "health changed" in message["text"]
    changes = message["blocks"][2]["text"]["text"]
    assert "*alert level*: medium → high" in changes
    assert "*health score*: 55 → 20" in changes
    assert "cli_42" in message["blocks"][1]["elements"][0]["text"]
    assert "http" not in hit.body.decode()
    assert "webhook-signature" not in hit.headers


async def test_slow_endpoint_does_not_hold_back_healthy_ones(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(
        delivery_concurrency=8, delivery_endpoint_concurrency=4, delivery_timeout=5.0
    )
    await subscribe(pool, vault, settings, endpoint.url("/hold"))
    await subscribe(pool, vault, settings, endpoint.url("/ok"))
    await store_events(pool, *[event_body() for _ in range(30)])
    await start_dispatcher(settings)
    await wait_until(lambda: _count(endpoint, "/ok", 30), what="healthy endpoint")
    assert len(endpoint.to("/hold")) == 4  # capped, while the healthy one got everything
    endpoint.release.set()
    await wait_until(lambda: all_settled(pool, 60), what="held deliveries")


async def _count(endpoint: Endpoint, path: str, n: int) -> bool:
    return len(endpoint.to(path)) >= n


async def test_disabled_subscription_pending_deliveries_fail_without_sending(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    sub, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    await store_events(pool, event_body())
    await fan_out_events(pool)
    await update_subscription(pool, dsettings, sub["id"], {"enabled": False})
    await start_dispatcher()
    await wait_until(lambda: all_settled(pool, 1), what="disabled")
    [row] = await delivery_rows(pool)
    assert row["status"] == "failed"
    assert row["attempt_count"] == 0
    assert "subscription disabled" in row["last_error"]
    assert endpoint.hits == []


async def test_claims_queued_ahead_are_handed_back_at_shutdown(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    # One send at a time: the other deliveries are claimed ahead and wait in the local queue.
    settings = dsettings.with_changes(delivery_concurrency=1, delivery_endpoint_concurrency=1)
    await subscribe(pool, vault, settings, endpoint.url("/hold"))
    await store_events(pool, *[event_body() for _ in range(6)])
    dispatcher = await start_dispatcher(settings)
    await wait_until(lambda: _count(endpoint, "/hold", 1), what="first send")
    leased = await pool.fetchval("SELECT count(*) FROM deliveries WHERE lease_token IS NOT NULL")
    assert leased > 1  # claimed ahead of the one send in flight
    dispatcher.stop()
    await asyncio.sleep(0.2)
    endpoint.release.set()
    await wait_until(lambda: all_settled_but(pool, 1), what="hand-back")
    rows = await delivery_rows(pool)
    assert len(endpoint.hits) == 1  # nothing queued was sent after stop()
    handed_back = [r for r in rows if r["status"] == "pending"]
    assert len(handed_back) == 5
    assert all(r["lease_token"] is None and r["attempt_count"] == 0 for r in handed_back)
    due = await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE status = 'pending' AND next_attempt_at <= now() "
        "AND leased_until IS NULL"
    )
    assert due == 5  # due at once for the next worker, not after the lease


async def test_a_live_lease_is_left_alone_and_an_expired_one_is_claimed_again(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    await store_events(pool, event_body(), event_body())
    assert await fan_out_events(pool) == 2
    # Both were claimed by another worker: one is still sending (lease ends in a minute), the
    # other's worker died (its lease ended a second ago).
    await pool.execute(
        "UPDATE deliveries SET lease_token = gen_random_uuid(), leased_until = now() + "
        "CASE WHEN id = (SELECT min(id) FROM deliveries) THEN interval '1 minute' "
        "ELSE interval '-1 second' END"
    )
    live, expired = [r["id"] for r in await delivery_rows(pool)]
    await start_dispatcher()
    await wait_until(lambda: _count(endpoint, "/ok", 1), what="the expired claim sent")
    await asyncio.sleep(0.5)  # several claim rounds
    assert len(endpoint.hits) == 1
    rows = {r["id"]: r for r in await delivery_rows(pool)}
    assert rows[expired]["status"] == "succeeded"
    assert rows[expired]["lease_token"] is None
    assert rows[expired]["leased_until"] is None
    assert rows[live]["status"] == "pending"
    assert rows[live]["attempt_count"] == 0


async def test_deleting_an_event_deletes_its_deliveries_and_their_attempts(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    kept, dropped = await store_events(pool, event_body(), event_body())
    await start_dispatcher()
    await wait_until(lambda: all_settled(pool, 2), what="both delivered")
    assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == 2
    await pool.execute("DELETE FROM events WHERE id = $1", dropped)
    rows = await pool.fetch(
        "SELECT d.event_id, a.attempt FROM delivery_attempts a "
        "LEFT JOIN deliveries d ON d.id = a.delivery_id"
    )
    assert [(r["event_id"], r["attempt"]) for r in rows] == [(kept, 1)]


async def all_settled_but(pool: asyncpg.Pool, succeeded: int) -> bool:
    rows = await delivery_rows(pool)
    done = [r for r in rows if r["status"] == "succeeded"]
    return len(done) == succeeded and all(r["lease_token"] is None for r in rows)


async def test_a_claim_whose_answer_was_lost_is_handed_back_not_left_to_its_lease(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    """A claim that committed while its connection broke (a Postgres restart) leaves its rows
    leased to nobody; the dispatcher hands them back by token instead of waiting out the lease
    (60 s here), and they are sent once."""
    await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    await store_events(pool, event_body(), event_body())
    assert await fan_out_events(pool) == 2
    token = uuid.uuid4()
    # The claim commits; its rows never reach the dispatcher (the answer was lost).
    lost = await claim(pool, room=10, lease=60, saturated=[], partial=[], cap=10, token=token)
    assert len(lost) == 2
    # Not claimable again: without a hand-back they wait a minute.
    again = await claim(pool, room=10, lease=60, saturated=[], partial=[], cap=10, token=token)
    assert again == []
    assert await release_unanswered(pool, token) == 2
    assert await release_unanswered(pool, token) == 0  # nothing left under that token
    rows = await delivery_rows(pool)
    assert all(r["lease_token"] is None and r["leased_until"] is None for r in rows)
    await start_dispatcher()
    await wait_until(lambda: _count(endpoint, "/ok", 2), what="both sent at once")
    await asyncio.sleep(0.3)
    assert len(endpoint.hits) == 2


async def store_quietly(pool: asyncpg.Pool, *bodies: dict[str, object]) -> list[str]:
    """Store events as `outbox` does but never announce them: a lost wake-up."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('relay.announce_events', 'after_commit', true)")
        await insert_events(conn, list(bodies))
    return [str(b["id"]) for b in bodies]


async def test_a_batch_stored_through_the_outbox_wakes_the_dispatcher(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    # It polls once a minute: what it sends within seconds, a wake-up told it about.
    await start_dispatcher(dsettings.with_changes(delivery_poll_interval=60.0))
    [first] = await store_events(pool, event_body())  # the trigger's wake-up: it listens
    await wait_until(lambda: all_settled(pool, 1), what="the first delivery")
    batch = [event_body(object_id=f"doc_{i}") for i in range(5)]
    async with pool.acquire() as conn, outbox(conn):
        await insert_events(conn, batch)
    await wait_until(lambda: all_settled(pool, 6), what="the outbox's deliveries")
    sent = [hit.headers["webhook-id"] for hit in endpoint.to("/ok")]
    assert sorted(sent) == sorted([first, *(b["id"] for b in batch)])


async def test_a_lost_wake_up_is_caught_by_the_dispatchers_poll(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    await start_dispatcher()  # polls every 0.2 s (dsettings)
    ids = await store_quietly(pool, *(event_body(object_id=f"doc_{i}") for i in range(3)))
    await wait_until(lambda: all_settled(pool, 3), what="deliveries found by the poll")
    assert sorted(hit.headers["webhook-id"] for hit in endpoint.to("/ok")) == sorted(ids)
    assert [r["attempt_count"] for r in await delivery_rows(pool)] == [1, 1, 1]


async def test_an_endpoint_that_compresses_its_answers_is_not_asked_to(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, start_dispatcher: DispatcherFactory
) -> None:
    """Relay never inflates a response (a compression bomb must not be), so it must not
    advertise gzip either: the excerpt of an answer compressed because we asked would be
    binary noise where the operator expects the endpoint's words."""
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("accept-encoding"))
        await request.read()
        resp = web.Response(status=500, text="endpoint says no " * 20)
        resp.enable_compression()  # compresses only if the request accepts it
        return resp

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner, base = await serve(app)
    try:
        await subscribe(pool, vault, dsettings, f"{base}/hook")
        await start_dispatcher(dsettings.with_changes(retry_schedule=(3600.0,)))
        await store_events(pool, event_body())
        await wait_until(lambda: _attempted(pool), what="the attempt recorded")
        [row] = await delivery_rows(pool)
        [attempt] = (await get_delivery(pool, row["id"]))["attempts"]
        assert seen == [None]
        assert attempt["status_code"] == 500
        assert attempt["response_excerpt"] == "endpoint says no " * 20
    finally:
        await runner.cleanup()


async def _attempted(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM delivery_attempts"))


async def test_a_full_key_cache_drops_its_oldest_keys_and_signs_right(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decrypted-key cache is bounded (more subscriptions than it holds evict its oldest
    entries, not all of them), and whatever it evicted, every delivery is signed with its own
    subscription's secret."""
    from relay.delivery import dispatcher as dispatcher_module

    monkeypatch.setattr(dispatcher_module, "_KEY_CACHE", 2)
    secrets = {}
    for name in ("a", "b", "c"):
        _, secrets[name] = await subscribe(pool, vault, dsettings, endpoint.url(f"/{name}"))
    dispatcher = await start_dispatcher()
    for n in range(2):
        await store_events(pool, event_body(object_id=f"doc_{n}"))
        await wait_until(lambda n=n: all_settled(pool, 3 * (n + 1)), what="deliveries")
        assert len(dispatcher._keys) <= 2
    for name, secret in secrets.items():
        hits = endpoint.to(f"/{name}")
        assert len(hits) == 2
        for hit in hits:
            Webhook(secret).verify(hit.body, hit.headers)


async def test_a_claim_that_fills_one_endpoints_share_is_followed_by_the_next(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backlog for one endpoint drains claim after claim as its sends free room. A claim
    made with nothing held comes back with the endpoint's share only, short of the claim's
    room: that is the cap, not the end of the backlog. The dispatcher took it for the end and
    waited for its short-claim look, once per share; here that look and the safety-net poll
    are 30 s away, so only the next claims can deliver the rest in time."""
    from relay.delivery import dispatcher as dispatcher_module

    monkeypatch.setattr(dispatcher_module, "_SHORT_CLAIM_RECHECK", 30.0)
    settings = dsettings.with_changes(
        delivery_concurrency=4, delivery_endpoint_concurrency=2, delivery_poll_interval=30.0
    )
    await subscribe(pool, vault, settings, endpoint.url("/ok"))
    await store_events(pool, *[event_body(object_id=f"doc_{n}") for n in range(40)])
    assert await fan_out_events(pool) == 40  # all due before the dispatcher starts
    dispatcher = await start_dispatcher(settings)
    assert dispatcher._hold_cap < min(dispatcher._batch, dispatcher._hold_capacity)
    await wait_until(lambda: all_settled(pool, 40), seconds=10, what="the whole backlog")
    rows = await delivery_rows(pool)
    assert all(r["status"] == "succeeded" and r["attempt_count"] == 1 for r in rows)
    assert sorted(hit.headers["webhook-id"] for hit in endpoint.to("/ok")) == sorted(
        r["event_id"] for r in rows
    )
