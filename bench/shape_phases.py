"""The users' shape's phases: throughput against a raw aiohttp loop, fan-out, latency."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
from shape_processes import CpuMeter, check_recorded, cpu_seconds, stats, wait_arrivals

from relay.delivery.signing import secret_key, webhook_headers
from relay.delivery.subscriptions import create_subscription
from relay.events import build_event, insert_event, insert_events, outbox
from relay.settings import Settings
from relay.vault import Vault


async def throughput_run(
    pool: asyncpg.Pool,
    api: aiohttp.ClientSession,
    api_base: str,
    receiver: str,
    event_ids: list[str],
    per_event: int,
    meter: CpuMeter,
) -> tuple[float, dict[str, float], float]:
    """Deliveries per second from the first replay call to the last arrival, the CPU per
    delivery of each part, and the seconds the replay calls took (all 100 made: if that is
    close to the whole run, the API, not the dispatcher, set the pace)."""
    await pool.execute("TRUNCATE deliveries, delivery_attempts")
    async with aiohttp.ClientSession() as probe:
        await stats(probe, receiver, reset=True)
        n = len(event_ids) * per_event
        await meter.start()
        started = time.time()
        queue = iter(event_ids)

        async def replayer() -> None:
            for event_id in queue:
                async with api.post(f"{api_base}/v1/events/{event_id}/replay", json={}) as resp:
                    body = await resp.json()
                    assert resp.status == 202, body
                    assert body["queued"] == per_event, body

        await asyncio.gather(*[replayer() for _ in range(4)])
        replayed = time.time() - started
        seen = await wait_arrivals(probe, receiver, n)
        await check_recorded(pool, n)  # the recording is part of the CPU a delivery costs
        cpu = meter.stop(n)
    assert seen["count"] == n, f"receiver saw {seen['count']} requests for {n} deliveries"
    return n / (seen["last"] - started), cpu, replayed


async def raw_run(
    receiver: str,
    subs: list[tuple[str, bytes]],
    bodies: list[tuple[str, bytes]],
    concurrency: int,
    receiver_pid: int,
) -> tuple[float, float, float]:
    """The baseline: every (event, subscription) body, signed with that subscription's key,
    posted to its path by a plain aiohttp loop. Returns its rate, its CPU milliseconds per
    request (this process runs nothing else meanwhile), the figure to set against a worker's
    CPU per delivery (a loaded machine skews it far less than rates), and the receiver's CPU
    per request meanwhile: with the loop's, what the whole baseline costs the machine."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await stats(session, receiver, reset=True)
        work = ((path, key, eid, body) for eid, body in bodies for path, key in subs)

        async def lane() -> None:
            for path, key, eid, body in work:
                headers = webhook_headers([key], eid, body)
                async with session.post(f"{receiver}{path}", data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 204

        started = time.perf_counter()
        cpu = time.process_time()
        served = cpu_seconds([receiver_pid])
        await asyncio.gather(*[lane() for _ in range(concurrency)])
        cpu = time.process_time() - cpu
        served = cpu_seconds([receiver_pid]) - served
        elapsed = time.perf_counter() - started
        n = len(bodies) * len(subs)
        seen = await stats(session, receiver)
        assert seen["count"] == n
        return n / elapsed, cpu * 1000 / n, served * 1000 / n


async def store_events(pool: asyncpg.Pool, n: int, fanned_out: bool) -> list[dict[str, Any]]:
    bodies = [
        build_event(
            "document.categorized",
            account_id=None,
            client_id=f"cli_{i % 50}",
            object_id=f"doc_{i}",
            object={"id": f"doc_{i}", "status": "ready", "total_amount": "1332.00"},
            previous={"category": {"code": "310", "name": "Travel"}},
        )
        for i in range(n)
    ]
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, bodies)
        if fanned_out:  # off the fan-out queue: the bench replays them itself
            await conn.execute(
                "DELETE FROM event_fanout_queue WHERE event_id = ANY($1::text[])",
                [b["id"] for b in bodies],
            )
    return bodies


async def add_subscriptions(
    api: aiohttp.ClientSession, api_base: str, receiver: str, n: int, tag: str, **extra: Any
) -> list[tuple[str, bytes]]:
    """n subscriptions through the API, each with its own path; (path, HMAC key) of each."""
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        path = f"/hooks/{tag}/{i}"
        payload = {"url": f"{receiver}{path}", "event_types": ["*"]}
        payload.update({k: v(i) if callable(v) else v for k, v in extra.items()})
        async with api.post(f"{api_base}/v1/subscriptions", json=payload) as resp:
            body = await resp.json()
            assert resp.status == 201, body
            out.append((path, secret_key(body["secret"])))
    return out


async def retire_subscriptions(pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE subscriptions SET deleted_at = now(), enabled = false")


async def add_many_subscriptions(
    pool: asyncpg.Pool, settings: Settings, receiver: str, n: int, tag: str, **extra: Any
) -> None:
    """n subscriptions straight through the store (the API's one call each takes minutes for
    10,000), each with its own path; `extra` as in `add_subscriptions`."""
    vault = Vault(settings.secret_keys)
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        fields = {k: v(i) if callable(v) else v for k, v in extra.items()}
        async with sem:
            await create_subscription(
                pool, vault, settings, url=f"{receiver}/{tag}/{i}", event_types=["*"], **fields
            )

    await asyncio.gather(*[one(i) for i in range(n)])


async def fan_out(pool: asyncpg.Pool, settings: Settings, receiver: str, n: int) -> float:
    """Seconds from one event's commit to the last of its n arrivals."""
    await add_many_subscriptions(pool, settings, receiver, n, "fan")
    await pool.execute("TRUNCATE deliveries, delivery_attempts")
    async with aiohttp.ClientSession() as probe:
        await stats(probe, receiver, reset=True)
        await store_events(pool, 1, fanned_out=False)
        committed = time.time()
        seen = await wait_arrivals(probe, receiver, n, within=60)
    assert seen["count"] == n
    await check_recorded(pool, n)
    return seen["last"] - committed


async def latency(
    pool: asyncpg.Pool,
    rate: int,
    seconds: float,
    store: str = "outbox",
    per_tx: int = 10,
    clients: int = 200,
) -> tuple[float, list[float]]:
    """Milliseconds from each event's commit to its delivery's first attempt, events stored at
    `rate`/s, one delivery each (events go round `clients` clients, one subscription each),
    and the rate they were stored at.

    Events are stored `per_tx` to a transaction (the diff stores a page's changes in one; 1 is
    the hardest case) through `outbox` (as the events module stores them, the NOTIFY after the
    commit) or `plain` (the trigger's NOTIFY inside the storing transaction, as every event was
    stored before issue 16's fix). The commit time is Postgres' clock read by the transaction's
    last statement, so the figure includes the commit itself and never depends on how busy this
    process is (timed here after the commit, a loaded bench read latencies from -15 to +160 ms
    for the same run)."""
    await pool.execute("TRUNCATE deliveries, delivery_attempts")
    storing = outbox if store == "outbox" else _plain
    committed: dict[str, float] = {}
    total = int(rate * seconds) // per_tx * per_tx
    lanes = min(48, max(4, total // per_tx))
    start = time.perf_counter()

    async def lane(k: int) -> None:
        for i in range(k * per_tx, total, lanes * per_tx):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            async with pool.acquire() as conn, storing(conn):  # its own transaction
                bodies = [
                    build_event(
                        "document.categorized",
                        account_id=None,
                        client_id=f"cli_{n % clients}",
                        object_id=f"doc_{n}",
                        object={"id": f"doc_{n}", "status": "ready"},
                        previous={"category": {"code": "310"}},
                    )
                    for n in range(i, i + per_tx)
                ]
                await insert_events(conn, bodies)
                at = (await conn.fetchval("SELECT clock_timestamp()")).timestamp()
            for body in bodies:
                committed[body["id"]] = at

    await asyncio.gather(*[lane(k) for k in range(lanes)])
    achieved = total / (time.perf_counter() - start)
    deadline = time.monotonic() + 60
    while await pool.fetchval("SELECT count(*) FROM delivery_attempts") < total:
        if time.monotonic() > deadline:
            raise SystemExit("latency phase: attempts missing after 60 s")
        await asyncio.sleep(0.1)
    rows = await pool.fetch(
        "SELECT d.event_id, min(a.at) AS first FROM delivery_attempts a "
        "JOIN deliveries d ON d.id = a.delivery_id GROUP BY d.event_id"
    )
    assert len(rows) == total
    return achieved, [(r["first"].timestamp() - committed[r["event_id"]]) * 1000 for r in rows]


def _plain(conn: Any) -> Any:
    return conn.transaction()


async def store_rate(pool: asyncpg.Pool, seconds: float, store: str, lanes: int = 48) -> float:
    """Events stored per second by `lanes` clients, one event per transaction, as fast as
    Postgres takes them (no subscription matches them, so the worker has nothing to send):
    what the NOTIFY inside (`plain`) or after (`outbox`) each commit costs."""
    storing = outbox if store == "outbox" else _plain
    stop = time.perf_counter() + seconds
    stored = 0

    async def lane(k: int) -> None:
        nonlocal stored
        i = k
        while time.perf_counter() < stop:
            async with pool.acquire() as conn, storing(conn):
                await insert_event(
                    conn,
                    "relay.ping",
                    account_id=None,
                    object_id=f"rate_{i}",
                    object={"id": f"rate_{i}"},
                )
            stored += 1
            i += lanes

    started = time.perf_counter()
    await asyncio.gather(*[lane(k) for k in range(lanes)])
    return stored / (time.perf_counter() - started)
