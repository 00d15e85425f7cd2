"""`GET /v1/events/stream` against the real app, Postgres and its wake-ups (trigger, outbox)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from relay import events
from relay.api.stream import STREAM_HUB, STREAM_OPTIONS, StreamOptions
from tests.support.api import AUTH, ClientFactory, error_of

SSE = {**AUTH, "Accept": "text/event-stream"}


def body(type: str = "document.created", object_id: str = "doc-1", **extra: Any) -> dict[str, Any]:
    return events.build_event(
        type,
        account_id=None,
        client_id=extra.pop("client_id", "cl-1"),
        object_id=object_id,
        object={"id": object_id, **extra},
    )


async def store(pool: asyncpg.Pool, *bodies: dict[str, Any]) -> list[str]:
    async with pool.acquire() as conn, conn.transaction():
        await events.insert_events(conn, list(bodies))
    return [b["id"] for b in bodies]


class Reader:
    """Parses server-sent events off a live response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            fields: dict[str, str] = {}
            while True:
                line = (await self.response.content.readline()).decode().rstrip("\n")
                if not line:
                    if "data" in fields:
                        data: dict[str, Any] = orjson.loads(fields["data"])
                        assert fields["id"] == data["id"]
                        return data
                    fields = {}
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value

    async def take(self, count: int, within: float = 10.0) -> list[dict[str, Any]]:
        return [await self.next(within) for _ in range(count)]


@pytest.fixture
async def stream_client(
    aiohttp_client: ClientFactory, app: web.Application
) -> TestClient[Any, Any]:
    app[STREAM_OPTIONS] = StreamOptions(heartbeat=0.3, write_timeout=1.0, buffer=5, page=50)
    return await aiohttp_client(app)


async def open_stream(
    client: TestClient[Any, Any], query: str = "", **headers: str
) -> aiohttp.ClientResponse:
    response = await client.get(f"/v1/events/stream{query}", headers={**SSE, **headers})
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    return response


async def test_new_events_arrive_filtered_in_the_body_shape(
    stream_client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    await store(pool, body("document.created", "old"))  # stored before: not "new"
    response = await open_stream(stream_client, "?type=document.*&client_id=cl-1")
    reader = Reader(response)
    ids = await store(
        pool,
        body("client.health_changed", "cl-1"),
        body("document.categorized", "doc-a"),
        body("document.created", "doc-b", client_id="cl-2"),
        body("document.status_changed", "doc-c"),
    )
    got = await reader.take(2)
    assert [e["id"] for e in got] == [ids[1], ids[3]]
    shown = await stream_client.get(f"/v1/events/{ids[1]}", headers=AUTH)
    assert got[0] == await shown.json()
    response.close()


async def test_resume_after_a_dropped_connection_loses_nothing(
    stream_client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    response = await open_stream(stream_client)
    first = await store(pool, *(body(object_id=f"doc-{i}") for i in range(5)))
    got = await Reader(response).take(2)
    assert [e["id"] for e in got] == first[:2]
    response.close()  # the connection drops; three events were sent or in flight, unread
    later = await store(pool, *(body(object_id=f"doc-{i}") for i in range(5, 10)))
    resumed = await open_stream(stream_client, **{"Last-Event-ID": first[1]})
    rest = await Reader(resumed).take(8)
    assert [e["id"] for e in rest] == first[2:] + later
    resumed.close()


async def test_an_event_that_commits_late_is_not_skipped(
    stream_client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    response = await open_stream(stream_client)
    reader = Reader(response)
    slow = body(object_id="slow")
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await events.insert_events(conn, [slow])  # a lower xid and seq, not yet committed
        fast = await store(pool, body(object_id="fast"))
        with pytest.raises(TimeoutError):
            await reader.next(within=1.0)  # held back until the older transaction ends
        await transaction.commit()
    got = await reader.take(2)
    assert [e["id"] for e in got] == [slow["id"], *fast]
    response.close()


async def test_a_slow_reader_falls_back_to_postgres_and_loses_nothing(
    stream_client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    hub = stream_client.app[STREAM_HUB]
    response = await open_stream(stream_client)
    padding = "x" * 4000  # enough bytes that the socket fills while we do not read
    ids: list[str] = []
    for start in range(0, 600, 100):
        ids += await store(
            pool, *(body(object_id=f"doc-{i}", note=padding) for i in range(start, start + 100))
        )
    for _ in range(200):
        if hub.overflows:
            break
        await asyncio.sleep(0.05)
    assert hub.overflows > 0  # the buffer of 5 filled: the hub dropped us instead of waiting
    got = await Reader(response).take(600, within=20)
    assert [e["id"] for e in got] == ids
    response.close()


async def test_heartbeats_and_a_stalled_reader_is_disconnected(
    stream_client: TestClient[Any, Any], pool: asyncpg.Pool, all_logs: None
) -> None:
    response = await open_stream(stream_client)
    reader = Reader(response)
    with pytest.raises(TimeoutError):
        await reader.next(within=0.8)
    assert "heartbeat" in reader.comments
    response.close()
    # A reader that connects and then never reads a byte: the socket fills, writes stall.
    server = stream_client.server
    _, stalled_w = await asyncio.open_connection(server.host, server.port)
    stalled_w.write(
        b"GET /v1/events/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        b"Authorization: " + AUTH["Authorization"].encode() + b"\r\n\r\n"
    )
    await stalled_w.drain()
    with capture_logs() as logs:
        await asyncio.sleep(0.3)
        for start in range(0, 600, 100):
            await store(
                pool,
                *(body(object_id=f"d{i}", note="y" * 20000) for i in range(start, start + 100)),
            )
        for _ in range(150):
            if any(e["event"] == "event_stream_reader_stalled" for e in logs):
                break
            await asyncio.sleep(0.1)
    assert any(e["event"] == "event_stream_reader_stalled" for e in logs), logs
    stalled_w.close()


async def test_bad_requests_get_the_error_envelope(
    stream_client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    plain = await stream_client.get("/v1/events/stream", headers=AUTH)
    assert (await error_of(plain, 406))["code"] == "not_acceptable"
    unknown = await stream_client.get(
        "/v1/events/stream", headers={**SSE, "Last-Event-ID": "evt_nope"}
    )
    assert (await error_of(unknown, 400))["field"] == "Last-Event-ID"
    bad = await stream_client.get("/v1/events/stream?since=yesterday", headers=SSE)
    assert (await error_of(bad, 400))["field"] == "since"
    anonymous = await stream_client.get(
        "/v1/events/stream", headers={"Accept": "text/event-stream"}
    )
    await error_of(anonymous, 401)


async def test_since_replays_history_then_follows(
    stream_client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    old = await store(pool, body(object_id="a"), body(object_id="b"))
    shown = await stream_client.get(f"/v1/events/{old[0]}", headers=AUTH)
    created = (await shown.json())["created_at"]
    response = await open_stream(stream_client, f"?since={created}")
    reader = Reader(response)
    new = await store(pool, body(object_id="c"))
    got = await reader.take(3)
    assert [e["id"] for e in got] == old + new
    response.close()


@pytest.fixture
async def woken_client(aiohttp_client: ClientFactory, app: web.Application) -> TestClient[Any, Any]:
    """A stream whose hub looks at Postgres once a minute: what arrives sooner was woken."""
    app[STREAM_OPTIONS] = StreamOptions(heartbeat=0.3, write_timeout=1.0, page=50, poll_interval=60)
    return await aiohttp_client(app)


async def test_a_batch_stored_through_the_outbox_wakes_the_stream(
    woken_client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    response = await open_stream(woken_client)
    reader = Reader(response)
    first = await store(pool, body(object_id="first"))  # the trigger's wake-up: it listens
    assert [e["id"] for e in await reader.take(1)] == first
    batch = [body(object_id=f"doc-{i}") for i in range(5)]
    async with pool.acquire() as conn, events.outbox(conn):
        await events.insert_events(conn, batch)
    assert [e["id"] for e in await reader.take(5)] == [b["id"] for b in batch]
    response.close()


async def test_a_lost_wake_up_is_caught_by_the_streams_poll(
    stream_client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    response = await open_stream(stream_client)  # the hub polls every 0.5 s
    batch = [body(object_id=f"doc-{i}") for i in range(3)]
    async with pool.acquire() as conn, conn.transaction():
        # As `outbox` stores them, but the announcement never comes.
        await conn.execute("SELECT set_config('relay.announce_events', 'after_commit', true)")
        await events.insert_events(conn, batch)
    assert [e["id"] for e in await Reader(response).take(3)] == [b["id"] for b in batch]
    response.close()
