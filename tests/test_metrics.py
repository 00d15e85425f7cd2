"""GET /metrics shows the whole deployment: real workers, the sandbox, Postgres and Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from relay import metrics
from relay.api import metrics as scrape_metrics
from relay.api.app import create_app
from relay.delivery import fan_out_events
from relay.delivery.subscriptions import create_subscription
from relay.ids import new_id
from relay.poller.plan import Policy
from relay.settings import Settings
from relay.sources import accounts
from relay.vault import Vault
from tests.support.sandbox import SandboxFactory
from workers.delivery import sweep_deliveries
from workers.main import build_worker
from workers.polling import poll_account

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
POLICY = replace(Policy(), rate_limit=10_000, lease_seconds=5.0, run_seconds=2.0)


@pytest.fixture
async def api(
    aiohttp_client: ClientFactory,
    settings: Settings,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
) -> TestClient[Any, Any]:
    """The admin API on loopback (no token: /metrics needs none)."""
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def receiver() -> AsyncIterator[str]:
    """A webhook endpoint on loopback: /ok answers 200, /fail answers 500."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200 if request.path == "/ok" else 500)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def scrape(api: TestClient[Any, Any]) -> Samples:
    response = await api.get("/metrics")
    assert response.status == 200, await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(frozenset(labels.items()))


async def eventually(
    api: TestClient[Any, Any], check: Callable[[Samples], bool], seconds: float = 15.0
) -> Samples:
    deadline = time.monotonic() + seconds
    while True:
        samples = await scrape(api)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never matched: {samples}")
        await asyncio.sleep(0.1)


def event_row(event_type: str) -> tuple[Any, ...]:
    event_id = new_id("evt")
    body = {"id": event_id, "type": event_type, "object_type": event_type.split(".")[0]}
    return event_id, event_type, event_type.split(".")[0], "obj_1", body


async def store_events(conn: Any, *types: str) -> None:
    await conn.executemany(
        "INSERT INTO events (id, type, object_type, object_id, body) VALUES ($1, $2, $3, $4, $5)",
        [event_row(t) for t in types],
    )


async def subscribe(pool: asyncpg.Pool, settings: Settings, url: str) -> str:
    subscription, _ = await create_subscription(
        pool, Vault(settings.secret_keys), settings, url=url, event_types=["*"]
    )
    return str(subscription["id"])


# ---- Postgres gauges ----------------------------------------------------------------------------


async def test_backlog_gauges_follow_pending_deliveries(
    api: TestClient[Any, Any], pool: asyncpg.Pool, settings: Settings
) -> None:
    before = await scrape(api)
    assert value(before, "relay_deliveries", status="pending") == 0
    assert value(before, "relay_deliveries_oldest_pending_age_seconds") == 0
    await subscribe(pool, settings, "http://127.0.0.1:9/hook")
    await store_events(pool, "document.created", "document.created", "supplier.updated")
    assert await fan_out_events(pool) == 3
    # The oldest delivery was created an hour ago and has been due for ten minutes.
    await pool.execute(
        "UPDATE deliveries SET created_at = now() - interval '1 hour', "
        "next_attempt_at = now() - interval '10 minutes' "
        "WHERE id = (SELECT min(id) FROM deliveries)"
    )
    await pool.execute(
        "UPDATE deliveries SET status = 'failed' WHERE id = (SELECT max(id) FROM deliveries)"
    )
    after = await scrape(api)
    assert value(after, "relay_deliveries", status="pending") == 2
    assert value(after, "relay_deliveries", status="failed") == 1
    assert value(after, "relay_deliveries", status="succeeded") == 0
    assert 3600 <= (value(after, "relay_deliveries_oldest_pending_age_seconds") or 0) < 3660
    assert 600 <= (value(after, "relay_deliveries_oldest_due_age_seconds") or 0) < 660
    assert value(after, "relay_events_total", type="document.created") == 2
    assert value(after, "relay_events_total", type="supplier.updated") == 1


async def test_event_counts_settle_only_past_transactions_still_open(
    api: TestClient[Any, Any], pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    """A seq taken by a transaction still open is below later, committed seqs: the settled
    watermark must not pass it, or its event would never be counted."""
    await store_events(pool, "document.created")
    async with pool.acquire() as slow:
        tx = slow.transaction()
        await tx.start()
        await store_events(slow, "document.deleted")  # takes seq 2, commits last
        await store_events(pool, "document.created", "supplier.created")  # seqs 3, 4
        for _ in range(3):  # candidate read, then attempts to settle it
            samples = await scrape(api)
        assert value(samples, "relay_events_total", type="document.created") == 2
        assert value(samples, "relay_events_total", type="document.deleted") is None
        state = await redis_client.hgetall(scrape_metrics.EVENTS_KEY)
        assert int(state.get(b"seq", 0)) < 2  # not settled past the open transaction
        await tx.commit()
    for _ in range(3):
        samples = await scrape(api)
    state = await redis_client.hgetall(scrape_metrics.EVENTS_KEY)
    assert int(state[b"seq"]) == 4  # settled once the transaction ended
    assert value(samples, "relay_events_total", type="document.deleted") == 1
    assert value(samples, "relay_events_total", type="document.created") == 2
    assert value(samples, "relay_events_total", type="supplier.created") == 1


async def test_a_large_event_table_is_counted_in_slices(
    api: TestClient[Any, Any],
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scrape_metrics, "EVENT_SLICE", 4)
    await store_events(pool, *(["document.created"] * 9 + ["client.health_changed"] * 6))
    first = await scrape(api)
    assert "relay_events_total" not in first  # 15 events, slices of 4: not yet counted
    samples = await eventually(api, lambda s: "relay_events_total" in s)
    assert value(samples, "relay_events_total", type="document.created") == 9
    assert value(samples, "relay_events_total", type="client.health_changed") == 6
    await redis_client.flushdb()  # settled counts gone: counted again from Postgres
    samples = await eventually(api, lambda s: "relay_events_total" in s)
    assert value(samples, "relay_events_total", type="document.created") == 9


async def test_a_blocked_postgres_query_still_answers_200_and_counts_the_error(
    api: TestClient[Any, Any],
    pool: asyncpg.Pool,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scrape_metrics, "STATEMENT_TIMEOUT", 0.3)
    await accounts.create_account(
        pool,
        Vault(settings.secret_keys),
        provider="dext",
        name="Practice",
        base_url="http://127.0.0.1:1",
        api_token="upstream-secret-token",
    )
    before = await scrape(api)
    errors = value(before, "relay_metrics_scrape_errors_total", source="postgres") or 0.0
    async with pool.acquire() as locker, locker.transaction():
        await locker.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
        during = await scrape(api)
    assert value(during, "relay_metrics_scrape_errors_total", source="postgres") == errors + 1
    assert "relay_deliveries" not in during  # the blocked part is left out ...
    assert value(during, "relay_accounts", status="baselining") == 1  # ... the rest is there
    assert value(during, "relay_delivery_attempts_total", outcome="succeeded") == 0
    after = await scrape(api)
    assert value(after, "relay_deliveries", status="pending") == 0
    assert value(after, "relay_metrics_scrape_errors_total", source="postgres") == errors + 1


# ---- worker counters in Redis -------------------------------------------------------------------


async def test_a_real_worker_moves_attempts_latency_and_recoveries(
    api: TestClient[Any, Any],
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    settings: Settings,
    receiver: str,
) -> None:
    settings = settings.with_changes(retry_schedule=(0.1, 0.1), delivery_poll_interval=0.1)
    await subscribe(pool, settings, f"{receiver}/ok")
    await subscribe(pool, settings, f"{receiver}/fail")
    await store_events(pool, *["document.categorized"] * 5)
    assert await fan_out_events(pool) == 10
    # One delivery was claimed by a worker that died: its lease ran out a second ago.
    await pool.execute(
        "UPDATE deliveries SET lease_token = gen_random_uuid(), "
        "leased_until = now() - interval '1 second' WHERE id = (SELECT min(id) FROM deliveries)"
    )
    worker = build_worker(settings, poll_delay=0.05)
    running = asyncio.create_task(worker.async_run())
    try:
        samples = await eventually(
            api,
            lambda s: (
                value(s, "relay_delivery_attempts_total", outcome="failed_final") == 5
                and value(s, "relay_delivery_attempts_total", outcome="succeeded") == 5
            ),
        )
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)
    # Three attempts per failing delivery (the schedule has two retries), one per good one.
    assert value(samples, "relay_delivery_attempts_total", outcome="failed_retrying") == 10
    assert value(samples, "relay_delivery_attempts_total", outcome="refused") == 0
    count = value(samples, "relay_delivery_attempt_seconds_count")
    assert count == 20
    assert value(samples, "relay_delivery_attempt_seconds_bucket", le="+Inf") == count
    assert 0 < (value(samples, "relay_delivery_attempt_seconds_sum") or 0) < 20 * 2.0
    bounds = [*map(str, metrics.LATENCY_BUCKETS), "+Inf"]
    cumulative = [value(samples, "relay_delivery_attempt_seconds_bucket", le=b) for b in bounds]
    assert cumulative == sorted(cumulative)  # type: ignore[type-var]
    assert value(samples, "relay_sweeper_recoveries_total", kind="lease_expired") == 1
    assert value(samples, "relay_deliveries", status="succeeded") == 5
    assert value(samples, "relay_deliveries", status="failed") == 5
    assert value(samples, "relay_deliveries", status="pending") == 0

    # Redis loses everything: /metrics still answers, the workers' counters restart at zero,
    # what Postgres holds is unchanged.
    await redis_client.flushdb()
    flushed = await scrape(api)
    assert value(flushed, "relay_delivery_attempts_total", outcome="succeeded") == 0
    assert value(flushed, "relay_delivery_attempt_seconds_count") == 0
    assert value(flushed, "relay_deliveries", status="succeeded") == 5
    assert value(flushed, "relay_events_total", type="document.categorized") == 5


async def test_the_sweeper_counts_what_it_fans_out(
    api: TestClient[Any, Any], pool: asyncpg.Pool, redis_client: aioredis.Redis, settings: Settings
) -> None:
    await subscribe(pool, settings, "http://127.0.0.1:9/hook")
    await store_events(pool, "document.created", "document.deleted")
    ctx: dict[str, Any] = {
        "pool": pool,
        "settings": settings,
        "metrics": metrics.WorkerMetrics(redis_client),
    }
    assert await sweep_deliveries(ctx) == 2  # no dispatcher ran: the sweeper found them
    assert await sweep_deliveries(ctx) == 0
    samples = await scrape(api)
    assert value(samples, "relay_sweeper_recoveries_total", kind="fanned_out") == 2


class RedisLink:
    """A TCP relay to the real Redis on loopback that can be cut, as a network partition."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )


async def test_a_failed_flush_keeps_its_counts_for_the_next(
    api: TestClient[Any, Any], settings: Settings, redis_db: int
) -> None:
    link = RedisLink(("127.0.0.1", 6379))
    server = await asyncio.start_server(link.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = aioredis.Redis(host="127.0.0.1", port=port, db=redis_db, socket_connect_timeout=1)
    try:
        buffer = metrics.WorkerMetrics(redis, retry_after=0.0)
        buffer.delivery_attempt("succeeded", 0.003)
        buffer.delivery_attempt("failed_retrying", 12.0)
        link.up = False
        assert not await buffer.flush()
        link.up = True
        buffer.delivery_attempt("succeeded", 0.2)
        assert await buffer.flush()
    finally:
        await redis.aclose()
        server.close()
        await server.wait_closed()
    samples = await scrape(api)
    assert value(samples, "relay_delivery_attempts_total", outcome="succeeded") == 2
    assert value(samples, "relay_delivery_attempts_total", outcome="failed_retrying") == 1
    assert value(samples, "relay_delivery_attempt_seconds_bucket", le="0.005") == 1
    assert value(samples, "relay_delivery_attempt_seconds_bucket", le="10.0") == 2
    assert value(samples, "relay_delivery_attempt_seconds_bucket", le="+Inf") == 3
    assert value(samples, "relay_delivery_attempt_seconds_sum") == pytest.approx(12.203)


# ---- polling against the sandbox ----------------------------------------------------------------


async def test_polls_and_upstream_requests_are_counted_and_429s_seen(
    api: TestClient[Any, Any],
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    settings: Settings,
    sandbox_factory: SandboxFactory,
) -> None:
    sandbox = await sandbox_factory(window_seconds=1.0)
    account = await accounts.create_account(
        pool,
        Vault(settings.secret_keys),
        provider="dext",
        name="Practice",
        base_url=sandbox.url,
        api_token=sandbox.token,
    )
    # The first /clients request finds the window's budget spent: a 429, then a retry.
    await sandbox.fault(kind="consume_budget", path="/clients", amount=10_000)
    ctx = {"settings": settings, "pool": pool, "redis_client": redis_client, "poll_policy": POLICY}
    assert await poll_account(ctx, account.id) == "done"
    samples = await scrape(api)
    acc = account.id
    assert value(samples, "relay_polls_total", account_id=acc, outcome="done") == 1
    assert value(samples, "relay_upstream_throttled_total", account_id=acc) == 1
    requests = {
        (dict(labels)["endpoint"], dict(labels)["status_class"]): n
        for labels, n in samples["relay_upstream_requests_total"].items()
        if dict(labels)["account_id"] == acc
    }
    assert requests[("clients", "4xx")] == 1
    assert requests[("clients", "2xx")] >= 1
    assert requests[("authenticate", "2xx")] >= 1
    assert sum(requests.values()) == len(sandbox.sandbox.access.requests)  # what it served
    remaining = value(samples, "relay_upstream_rate_limit_remaining", account_id=acc)
    assert value(samples, "relay_upstream_rate_limit_limit", account_id=acc) == 10_000
    assert remaining is not None
    assert 0 <= remaining < 10_000
    body = await (await api.get("/metrics")).text()
    assert sandbox.token not in body
    assert sandbox.url not in body
