"""The users' shape's receivers, each run in its own process (`delivery_shape.py --serve`).

An aiohttp server that reads each body and answers 204, or a bare HTTP/1.1 protocol doing the
same with far less CPU; both count what they saw (`GET /_stats`, zeroed by `GET /_reset`).
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import orjson
from aiohttp import web

_NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


class _Counts:
    """What a receiver saw since its last reset: requests and the time of the last one."""

    count = 0
    last = 0.0


def _stats_response() -> bytes:
    body = orjson.dumps({"count": _Counts.count, "last": _Counts.last})
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


class _Bare(asyncio.Protocol):
    """A keep-alive HTTP/1.1 endpoint reading each request whole: 204 to every POST;
    `GET /_stats` reports the counts, `GET /_reset` zeroes them."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(buffer) < end + 4 + length:
                return
            del buffer[: end + 4 + length]
            assert self.transport is not None
            if head.startswith(b"GET /_stats"):
                self.transport.write(_stats_response())
            elif head.startswith(b"GET /_reset"):
                _Counts.count, _Counts.last = 0, 0.0
                self.transport.write(_stats_response())
            else:
                _Counts.count += 1
                _Counts.last = time.time()
                self.transport.write(_NO_CONTENT)


def serve(port: int, kind: str) -> None:
    import uvloop

    if kind == "aiohttp":

        async def hook(request: web.Request) -> web.Response:
            await request.read()
            _Counts.count += 1
            _Counts.last = time.time()
            return web.Response(status=204)

        async def stats(_request: web.Request) -> web.Response:
            return web.json_response({"count": _Counts.count, "last": _Counts.last})

        async def reset(_request: web.Request) -> web.Response:
            _Counts.count, _Counts.last = 0, 0.0
            return web.json_response({"count": 0, "last": 0.0})

        app = web.Application()
        app.router.add_get("/_stats", stats)
        app.router.add_get("/_reset", reset)
        app.router.add_post("/{tail:.*}", hook)
        web.run_app(
            app,
            host="127.0.0.1",
            port=port,
            access_log=None,
            print=None,
            loop=uvloop.new_event_loop(),
        )
        return

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Bare, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
