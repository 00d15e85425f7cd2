"""Dead endpoints: a failure streak (or a 410) disables a subscription once, tells the others.

Real dispatchers (two at once, as two workers would) against a real endpoint on loopback whose
answer the test switches; time is compressed with a short retry schedule and a short
`endpoint_disable_after`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from relay.delivery import fan_out_events, retry_failed
from relay.delivery.endpoints import MIN_FAILED_ATTEMPTS, streaks
from relay.delivery.subscriptions import get_subscription, update_subscription
from relay.errors import ConfigError
from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import (
    DispatcherFactory,
    Endpoint,
    event_body,
    store_events,
    subscribe,
    wait_until,
)

# RELAY_ENDPOINT_DISABLE_AFTER for these tests: longer than 12 quick attempts take on a busy
# machine (their retries are about 0.3 s apart), short enough to wait out.
LIMIT = 2.0


class Switch:
    """An endpoint that answers 500 while `failing` (200 always on /ops), and keeps what it
    was sent."""

    def __init__(self) -> None:
        self.failing = True
        self.base = ""
        self.bodies: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append((request.path, dict(request.headers), body))
        failing = self.failing and request.path != "/ops"
        return web.Response(status=500 if failing else 200, text="x")


@pytest.fixture
async def switch() -> AsyncIterator[Switch]:
    sw = Switch()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", sw.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sw.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield sw
    await runner.cleanup()


async def _attempts(pool: asyncpg.Pool, subscription_id: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id "
            "WHERE d.subscription_id = $1",
            subscription_id,
        )
    )


async def _settled(pool: asyncpg.Pool, subscription_id: str, attempts: int) -> bool:
    pending = await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE subscription_id = $1 AND status = 'pending'",
        subscription_id,
    )
    return pending == 0 and await _attempts(pool, subscription_id) >= attempts


async def _outlast(pool: asyncpg.Pool, subscription_id: str) -> None:
    """Sleep until the subscription's failure streak is older than LIMIT."""
    since = await pool.fetchval(
        "SELECT failing_since FROM subscriptions WHERE id = $1", subscription_id
    )
    wait = (since + timedelta(seconds=LIMIT + 0.1) - datetime.now(UTC)).total_seconds()
    await asyncio.sleep(max(0.0, wait))


async def _disabled_events(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT body FROM events WHERE type = 'subscription.disabled'")
    return [r["body"] for r in rows]


def test_streaks_follow_the_last_success_of_each_batch() -> None:
    t = datetime(2026, 11, 21, tzinfo=UTC)
    at = [t + timedelta(seconds=n) for n in range(6)]
    got = streaks(
        [
            ("a", True, False, at[0]),
            ("a", True, True, at[1]),
            ("a", True, False, at[3]),
            ("a", True, False, at[2]),
            ("b", True, False, at[4]),
            ("b", False, False, at[0]),  # refused, not sent: says nothing of the endpoint
            ("c", True, True, at[5]),
        ]
    )
    assert [(s.subscription_id, s.reset, s.failures, s.first_failed_at) for s in got] == [
        ("a", True, 2, at[2]),
        ("b", False, 1, at[4]),
        ("c", True, 0, None),
    ]


async def test_a_dead_endpoint_is_disabled_once_and_the_others_are_told(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    switch: Switch,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(retry_schedule=(0.02, 0.02), endpoint_disable_after=LIMIT)
    dead, _ = await subscribe(pool, vault, settings, switch.base + "/dead?token=s3cret")
    ops, ops_secret = await subscribe(
        pool, vault, settings, switch.base + "/ops", event_types=["subscription.disabled"]
    )
    docs, _ = await subscribe(pool, vault, settings, switch.base + "/docs", event_types=["x.*"])
    for _ in range(2):  # two workers recording the same subscription's failures
        await start_dispatcher(settings)
    await store_events(pool, *[event_body() for _ in range(4)])
    await wait_until(lambda: _settled(pool, dead["id"], 12), what="12 failed attempts")
    row = await pool.fetchrow(
        "SELECT enabled, failing_since, failed_attempts FROM subscriptions WHERE id = $1",
        dead["id"],
    )
    assert row is not None
    # Enough attempts, but not yet failing for long enough.
    assert (row["enabled"], row["failed_attempts"]) == (True, 12)
    assert MIN_FAILED_ATTEMPTS <= 12
    await _outlast(pool, dead["id"])

    # A delivery queued for later, and new events whose attempts now end the subscription.
    async with pool.acquire() as conn, conn.transaction():
        later = event_body()
        await conn.execute(
            "INSERT INTO events (id, type, client_id, object_type, object_id, body, fanned_out_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, now())",
            *(later[k] for k in ("id", "type", "client_id", "object_type", "object_id")),
            later,
        )
        await conn.execute(
            "INSERT INTO deliveries (event_id, subscription_id, next_attempt_at) "
            "VALUES ($1, $2, now() + interval '1 hour')",
            later["id"],
            dead["id"],
        )
    await store_events(pool, *[event_body() for _ in range(3)])

    async def disabled() -> bool:
        return (await get_subscription(pool, dead["id"]))["enabled"] is False

    await wait_until(disabled, what="the dead endpoint disabled")
    record = await get_subscription(pool, dead["id"])
    assert record["disabled_reason"].startswith("every attempt failed since ")
    await wait_until(lambda: _settled(pool, ops["id"], 1), what="the ops notice")
    await asyncio.sleep(0.3)  # room for a second disabling, were one possible
    [event] = await _disabled_events(pool)
    assert event["object_type"] == "subscription"
    assert event["object_id"] == dead["id"]
    assert event["data"]["object"]["disabled_reason"] == record["disabled_reason"]
    assert event["data"]["object"]["host"] == "127.0.0.1"
    assert "s3cret" not in orjson.dumps(event).decode()  # the URL may be a credential
    assert event["data"]["previous"] == {"enabled": True, "disabled_reason": None}
    # Delivered to the subscription that asked for it, not to the disabled one nor others.
    targets = await pool.fetch(
        "SELECT subscription_id, status FROM deliveries WHERE event_id = $1", event["id"]
    )
    assert [(t["subscription_id"], t["status"]) for t in targets] == [(ops["id"], "succeeded")]
    [(_, headers, body)] = [b for b in switch.bodies if b[0] == "/ops"]
    assert Webhook(ops_secret).verify(body, headers)["type"] == "subscription.disabled"
    assert not [b for b in switch.bodies if b[0] == "/docs"]
    # Nothing of the disabled subscription is left pending; the queued one was not sent.
    statuses = await pool.fetch(
        "SELECT event_id, status, last_error FROM deliveries WHERE subscription_id = $1",
        dead["id"],
    )
    assert {s["status"] for s in statuses} == {"failed"}
    assert len(statuses) == 8
    [queued] = [s for s in statuses if s["event_id"] == later["id"]]
    assert queued["last_error"].startswith("not sent: subscription disabled (every attempt")

    # A bulk retry skips it while disabled, and after re-enabling brings every one back.
    assert await retry_failed(pool, subscription_id=dead["id"]) == 0
    switch.failing = False
    enabled = await update_subscription(pool, settings, dead["id"], {"enabled": True})
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)
    assert await retry_failed(pool, subscription_id=dead["id"]) == 8

    async def all_sent() -> bool:
        rows = await pool.fetch(
            "SELECT status FROM deliveries WHERE subscription_id = $1", dead["id"]
        )
        return {r["status"] for r in rows} == {"succeeded"}

    await wait_until(all_sent, what="the retried deliveries")
    assert (
        await pool.fetchval("SELECT failed_attempts FROM subscriptions WHERE id = $1", dead["id"])
        == 0
    )
    assert len(await _disabled_events(pool)) == 1
    assert docs["enabled"] is True


async def test_a_success_resets_the_streak_and_few_attempts_never_disable(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    switch: Switch,
    start_dispatcher: DispatcherFactory,
) -> None:
    settings = dsettings.with_changes(retry_schedule=(0.02, 0.02), endpoint_disable_after=LIMIT)
    sub, _ = await subscribe(pool, vault, settings, switch.base + "/flaky")
    await start_dispatcher(settings)
    await store_events(pool, *[event_body() for _ in range(4)])
    await wait_until(lambda: _settled(pool, sub["id"], 12), what="12 failures")
    await _outlast(pool, sub["id"])
    switch.failing = False
    await store_events(pool, event_body())
    await wait_until(lambda: _settled(pool, sub["id"], 13), what="one success")
    row = await pool.fetchrow(
        "SELECT failing_since, failed_attempts FROM subscriptions WHERE id = $1", sub["id"]
    )
    assert row is not None
    assert (row["failing_since"], row["failed_attempts"]) == (None, 0)

    # Failing again, for longer than the limit, but with fewer than 10 attempts: kept.
    switch.failing = True
    await store_events(pool, event_body())
    await wait_until(lambda: _settled(pool, sub["id"], 16), what="3 more failures")
    await _outlast(pool, sub["id"])
    await store_events(pool, event_body())
    await wait_until(lambda: _settled(pool, sub["id"], 19), what="3 more failures")
    record = await get_subscription(pool, sub["id"])
    assert record["enabled"] is True
    assert (
        await pool.fetchval("SELECT failed_attempts FROM subscriptions WHERE id = $1", sub["id"])
        == 6
    )
    assert await _disabled_events(pool) == []


async def test_gone_stores_one_disabled_event_for_the_other_subscriptions(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    gone, _ = await subscribe(pool, vault, dsettings, endpoint.url("/gone"))
    ops, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok"), event_types=["*"])
    for _ in range(3):  # three workers may each see a 410 of the same subscription at once
        await start_dispatcher()
    await store_events(pool, *[event_body() for _ in range(30)])

    async def told() -> bool:
        return len([h for h in endpoint.to("/ok") if b"subscription.disabled" in h.body]) == 1

    await wait_until(told, what="the ops notice")
    await asyncio.sleep(0.3)
    [event] = await _disabled_events(pool)
    assert "410" in event["data"]["object"]["disabled_reason"]
    assert await fan_out_events(pool) == 0
    rows = await pool.fetch(
        "SELECT subscription_id FROM deliveries WHERE event_id = $1", event["id"]
    )
    assert [r["subscription_id"] for r in rows] == [ops["id"]]
    assert (await get_subscription(pool, gone["id"]))["enabled"] is False


def test_the_setting_defaults_to_five_days_and_rejects_nonsense() -> None:
    assert Settings.from_env({}).endpoint_disable_after == 5 * 24 * 3600
    assert Settings.from_env({"RELAY_ENDPOINT_DISABLE_AFTER": "60"}).endpoint_disable_after == 60
    for bad in ("0", "-5", "soon"):
        with pytest.raises(ConfigError, match="RELAY_ENDPOINT_DISABLE_AFTER"):
            Settings.from_env({"RELAY_ENDPOINT_DISABLE_AFTER": bad})
