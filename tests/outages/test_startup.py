"""A worker started while a store is down says so in one line and waits; when the store
appears it comes up by itself and works. `--exit-on-unavailable` exits instead."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from relay.settings import Settings
from tests.support.outages import (
    Receiver,
    WorkerFactory,
    all_recorded,
    setup_relay,
    store_events,
    wait_for,
)
from tests.support.sandbox import SandboxHandle
from tests.support.stores import PrivateStores


@pytest.mark.parametrize("store", ["redis", "postgres"])
async def test_a_worker_started_with_a_store_down_waits_and_comes_up(
    store: str,
    osettings: Settings,
    opool: asyncpg.Pool,
    stores: PrivateStores,
    spawn_worker: WorkerFactory,
    receiver: Receiver,
    upstream: SandboxHandle,
) -> None:
    account_id = await setup_relay(opool, osettings, upstream, receiver)
    server = stores.redis if store == "redis" else stores.postgres
    service, url = (
        ("Redis", osettings.redis_url) if store == "redis" else ("Postgres", osettings.database_url)
    )
    await server.stop()
    worker = await spawn_worker(osettings)

    async def said_so() -> bool:
        return bool(worker.events("store_unavailable"))

    await wait_for(said_so, 15, f"the worker saying {service} is down")
    await asyncio.sleep(3.0)  # several retries later: still one line, still waiting
    assert worker.alive, worker.tail()
    lines = worker.lines()
    assert len(lines) == 1, worker.tail()
    assert lines[0]["event"] == "store_unavailable"
    assert lines[0]["service"] == service
    assert lines[0]["url"] == url
    assert "docker compose up -d postgres redis" in lines[0]["hint"]
    assert lines[0]["waiting"] is True

    await server.start()
    up = await wait_for(
        lambda: _started(worker.events("worker_started")), 10, f"the worker after {service}"
    )
    recovered = worker.events("store_recovered")
    assert [line["service"] for line in recovered] == [service]
    await opool.expire_connections()
    ids = await store_events(opool, account_id, 10)

    async def delivered() -> bool:
        return set(ids) <= receiver.ids()

    await wait_for(delivered, 15, "deliveries from the worker that waited")
    await wait_for(lambda: all_recorded(opool), 15, "the deliveries recorded")
    assert await worker.stop() == 0, worker.tail()
    print(f"started with {service} down: up {up:.2f} s after it appeared")


async def _started(lines: list[dict[str, object]]) -> bool:
    return bool(lines)


async def test_exit_on_unavailable_exits_with_one_line(
    osettings: Settings, stores: PrivateStores, spawn_worker: WorkerFactory
) -> None:
    await stores.redis.stop()
    worker = await spawn_worker(osettings, "--exit-on-unavailable")
    status = await asyncio.wait_for(worker.process.wait(), 20)
    text = worker.log.read_text()
    assert status == 1, text
    assert text.splitlines() == [
        f"relay: cannot reach Redis at {osettings.redis_url} (Error 111 connecting to "
        f"127.0.0.1:{stores.redis.port}. Connection refused.); start it, e.g. "
        "`docker compose up -d postgres redis`"
    ]
