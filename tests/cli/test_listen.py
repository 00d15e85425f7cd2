"""`relay listen` as a real process: it follows a real API's stream and forwards, signed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook

from relay import events
from relay.api.app import create_app
from relay.cli.listen import Listener, ListenOptions
from relay.settings import Settings
from tests.support.stores import TEST_ADMIN_TOKEN

ServerFactory = Callable[..., Awaitable[TestServer]]


async def test_listen_forwards_each_event_signed_and_prints_it(
    aiohttp_server: ServerFactory, settings: Settings, pool: asyncpg.Pool, redis_client: Any
) -> None:
    api = await aiohttp_server(create_app(settings))
    received: list[tuple[bytes, dict[str, str]]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        arrived.set()
        return web.Response(status=204)

    local = web.Application()
    local.router.add_post("/hook", hook)
    receiver = await aiohttp_server(local)
    env = {
        **os.environ,
        "RELAY_API_URL": str(api.make_url("")).rstrip("/"),
        "RELAY_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "RELAY_LOG_FORMAT": "console",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "listen",
        "--forward-to",
        str(receiver.make_url("/hook")),
        "--event-types",
        "document.*,client.health_changed",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        banner = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        assert banner.startswith("Ready!"), banner
        secret_line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        secret = secret_line.split("secret is ", 1)[1].split()[0]
        assert secret.startswith("whsec_")
        await asyncio.sleep(0.5)  # the stream is open before we store anything
        bodies = [
            events.build_event(t, account_id=None, client_id="c1", object_id=o, object={"id": o})
            for t, o in (
                ("supplier.created", "s1"),  # not asked for: not forwarded
                ("document.created", "d1"),
                ("client.health_changed", "c1"),
            )
        ]
        async with pool.acquire() as conn, conn.transaction():
            await events.insert_events(conn, bodies)
        async with asyncio.timeout(10):
            while len(received) < 2:
                arrived.clear()
                await arrived.wait()
        lines = [(await asyncio.wait_for(process.stdout.readline(), 5)).decode() for _ in "1234"]
    finally:
        process.terminate()
        await process.wait()
    verifier = Webhook(secret)
    verified = [verifier.verify(raw, headers) for raw, headers in received]
    assert [v["id"] for v in verified] == [bodies[1]["id"], bodies[2]["id"]]
    assert received[0][1]["webhook-id"] == bodies[1]["id"]
    assert verified[0] == bodies[1]
    printed = "".join(lines)
    assert f"document.created [{bodies[1]['id']}]" in printed
    assert "<-- [204] POST" in printed
    assert "supplier.created" not in printed


async def test_listen_resumes_after_a_dropped_stream_with_nothing_lost(
    aiohttp_server: ServerFactory, settings: Settings, pool: asyncpg.Pool, redis_client: Any
) -> None:
    api = await aiohttp_server(create_app(settings))
    got: list[str] = []

    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        got.append(request.headers["webhook-id"])
        arrived.set()
        return web.Response(status=200)

    async def until(count: int) -> None:
        async with asyncio.timeout(10):
            while len(got) < count:
                arrived.clear()
                await arrived.wait()

    local = web.Application()
    local.router.add_post("/hook", hook)
    receiver = await aiohttp_server(local)
    listener = Listener(
        settings.with_changes(api_url=str(api.make_url("")).rstrip("/")),
        ListenOptions(forward_to=str(receiver.make_url("/hook"))),
    )

    def made(n: int) -> list[dict[str, Any]]:
        return [
            events.build_event(
                "document.created",
                account_id=None,
                client_id="c1",
                object_id=f"d{n}-{i}",
                object={"id": i},
            )
            for i in range(3)
        ]

    async def store(bodies: list[dict[str, Any]]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await events.insert_events(conn, bodies)

    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(listener.follow_once(http))
        await asyncio.sleep(0.5)
        before = made(1)
        await store(before)
        await until(3)
        for _ in range(100):  # the third forward's answer is recorded
            if listener.last_event_id == before[-1]["id"]:
                break
            await asyncio.sleep(0.02)
        first.cancel()  # the connection drops
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert listener.last_event_id == before[-1]["id"]
        during = made(2)
        await store(during)  # stored while nobody was listening
        second = asyncio.create_task(listener.follow_once(http))
        await until(6)
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
    assert got == [b["id"] for b in before + during]
