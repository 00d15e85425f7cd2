"""Delivery throughput and latency, end to end through the real dispatcher and Postgres.

    .venv/bin/python bench/delivery_throughput.py [--deliveries 20000] [--runs 3] [--loop uvloop]

1. Throughput: N pending deliveries (one subscription, a local receiver in its own process
   answering 200) delivered *and recorded* per second by one `Dispatcher`, against a raw aiohttp
   client loop posting the same bodies to the same receiver at the same concurrency, in the
   same run. Median of several runs, and the median of the per-run ratios. All three (the
   dispatcher, the raw loop, the receiver) run on the same kind of event loop: uvloop, as
   `relay worker` does, unless `--loop asyncio`. The dispatcher runs with the worker's garbage
   collector settings (workers/runtime.py), the raw loop with Python's defaults (faster for it).
2. Latency: a trickle of 50 events/s for a few seconds, each stored in its own transaction as
   the events module does; p50/p99 from the event's commit to its first attempt.

On 2 cores the receiver, the dispatcher and Postgres share the CPU, while the raw loop does
not pay for Postgres at all; the figures are CPU-bound, so the ratio is the robust one.

Uses its own database `relay_bench_<random>`, dropped at the end, and needs no Redis.

3. Then, unless `--no-users-shape`, the shape users have (bench/delivery_shape.py, run as a
   child so this one run prints every figure): `relay api` and `relay worker` processes,
   200 subscriptions, deliveries made by replays while dispatching, both receivers, 1 and 2
   workers, fan-out of one event to 10,000 subscriptions and latency at 2,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import asyncpg
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.db import create_pool, migrate
from relay.delivery import Dispatcher, close_session, create_session
from relay.delivery.subscriptions import create_subscription
from relay.ids import new_id
from relay.logs import configure_logging
from relay.settings import Settings
from relay.vault import Vault, generate_key
from workers.runtime import tune_gc

PG_SERVER = os.environ.get("RELAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
PENDING_LEFT = "SELECT EXISTS (SELECT FROM deliveries WHERE status = 'pending')"


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """The event loop every process of the run uses: relay, raw loop and receiver alike."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


_OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class _Receiver(asyncio.Protocol):
    """An HTTP/1.1 keep-alive endpoint that reads each request whole and answers 200 "ok"."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(buffer) < end + 4 + length:
                return
            del buffer[: end + 4 + length]
            assert self.transport is not None
            self.transport.write(_OK)


def serve(port: int, loop: str, kind: str) -> None:
    """The receiver, in its own process: by default a bare HTTP/1.1 protocol, so that the CPU
    it needs (the two cores are shared by everything here) goes to what is measured; or a
    minimal aiohttp server (`--receiver aiohttp`), which costs about as much CPU per request as
    the dispatcher's HTTP client does."""
    if kind == "aiohttp":

        async def handle(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=200, text="ok")

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        web.run_app(
            app, host="127.0.0.1", port=port, access_log=None, print=None, loop=new_loop(loop)
        )
        return

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Receiver, "127.0.0.1", port, backlog=1024
        )
        await server.serve_forever()

    with asyncio.Runner(loop_factory=lambda: new_loop(loop)) as runner:
        runner.run(run())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample_body(event_id: str, i: int) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "document.categorized",
        "created_at": "2026-11-21T10:00:00Z",
        "account_id": None,
        "client_id": f"cli_{i % 50}",
        "object_type": "document",
        "object_id": f"doc_{i}",
        "data": {
            "object": {
                "id": f"doc_{i}",
                "status": "ready",
                "supplier": {"id": "sup_1", "name": "Office Supplies Ltd"},
                "category": {"code": "400", "name": "Office"},
                "total_amount": "1332.00",
                "currency": "GBP",
                "line_items": [{"description": "Paper", "amount": "1332.00"}],
            },
            "previous": {"category": {"code": "310", "name": "Travel"}},
        },
    }


async def seed_pending(pool: asyncpg.Pool, subscription_id: str, n: int) -> list[bytes]:
    """N stored events, already fanned out into N due deliveries; returns the bodies as sent."""
    bodies = []
    records = []
    for i in range(n):
        event_id = new_id("evt")
        body = sample_body(event_id, i)
        bodies.append(body)
        records.append(
            (event_id, body["type"], body["client_id"], "document", body["object_id"], body)
        )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("TRUNCATE events, event_fanout_queue, deliveries, delivery_attempts")
        await conn.copy_records_to_table(
            "events",
            records=records,
            columns=("id", "type", "client_id", "object_type", "object_id", "body"),
        )
        await conn.execute("DELETE FROM event_fanout_queue")  # their deliveries are made here
        await conn.execute(
            "INSERT INTO deliveries (event_id, subscription_id, next_attempt_at) "
            "SELECT id, $1, now() FROM events",
            subscription_id,
        )
    # What the dispatcher sends: the jsonb round trip, serialized with orjson.
    rows = await pool.fetch("SELECT body FROM events")
    return [orjson.dumps(r["body"]) for r in rows]


async def run_dispatcher(pool: asyncpg.Pool, settings: Settings, n: int) -> float:
    session = create_session(settings)
    dispatcher = Dispatcher(pool, settings, session, Vault(settings.secret_keys))
    # The collector as `relay worker` sets it, for this phase only: the raw loop keeps Python's
    # defaults, which suit it better.
    thresholds = gc.get_threshold()
    tune_gc()
    started = time.perf_counter()
    task = asyncio.create_task(dispatcher.run())
    # EXISTS stops at the first pending row; a count(*) walked every index entry left by the
    # run's updates (5 ms, 20 times a second), stealing the database from what it measures.
    while await pool.fetchval(PENDING_LEFT):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    dispatcher.stop()
    await task
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    await close_session(session)
    ok = await pool.fetchval("SELECT count(*) FROM delivery_attempts WHERE status_code = 200")
    assert ok == n, f"only {ok} of {n} attempts recorded as 200"
    return n / elapsed


async def run_dispatchers(
    pool: asyncpg.Pool, settings: Settings, n: int, count: int, loop: str
) -> float:
    """`count` dispatcher processes (as `relay worker` x N), each capped at its share of the
    endpoint concurrency so the endpoint sees the same concurrency as the raw loop's."""
    share = settings.with_changes(
        delivery_endpoint_concurrency=max(1, settings.delivery_endpoint_concurrency // count)
    )
    config = orjson.dumps(
        {
            "database_url": share.database_url,
            "secret_keys": list(share.secret_keys),
            "endpoint_concurrency": share.delivery_endpoint_concurrency,
            "concurrency": share.delivery_concurrency,
            "batch": share.delivery_batch_size,
        }
    ).decode()
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--dispatch",
            config,
            "--loop",
            loop,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(count)
    ]
    for child in children:  # ready: pool, session and dispatcher built, nothing claimed yet
        assert child.stdout is not None
        await child.stdout.readline()
    started = time.perf_counter()
    for child in children:
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        await child.stdin.drain()
    while await pool.fetchval(PENDING_LEFT):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    for child in children:
        assert child.stdin is not None
        child.stdin.write(b"stop\n")
        await child.stdin.drain()
    for child in children:
        await child.wait()
    ok = await pool.fetchval("SELECT count(*) FROM delivery_attempts WHERE status_code = 200")
    assert ok == n, f"only {ok} of {n} attempts recorded as 200"
    return n / elapsed


async def dispatch_child(config: dict[str, Any]) -> None:
    """One dispatcher process of `run_dispatchers`: ready, then go on stdin, stop on stdin."""
    configure_logging("json", "warning")
    settings = Settings(
        database_url=config["database_url"],
        secret_keys=tuple(config["secret_keys"]),
        allow_private_targets=True,
        log_level="warning",
        retry_schedule=(1.0,),
        delivery_endpoint_concurrency=config["endpoint_concurrency"],
        delivery_concurrency=config["concurrency"],
        delivery_batch_size=config["batch"],
    )
    pool = await create_pool(settings, min_size=2, max_size=10)
    session = create_session(settings)
    dispatcher = Dispatcher(pool, settings, session, Vault(settings.secret_keys))
    tune_gc()  # as `relay worker` does after startup
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    task = asyncio.create_task(dispatcher.run())
    await loop.run_in_executor(None, sys.stdin.readline)
    dispatcher.stop()
    await task
    await close_session(session)
    await pool.close()


async def run_raw(url: str, bodies: list[bytes], concurrency: int) -> float:
    """The baseline: the same bodies POSTed by a plain aiohttp loop at the same concurrency."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(bodies)
        headers = {"content-type": "application/json", "webhook-id": "evt_x"}

        async def lane() -> None:
            for body in queue:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200

        started = time.perf_counter()
        await asyncio.gather(*[lane() for _ in range(concurrency)])
        return len(bodies) / (time.perf_counter() - started)


async def latency(pool: asyncpg.Pool, settings: Settings, rate: int, seconds: float) -> list[float]:
    """Milliseconds from each event's commit to its first attempt, at `rate` events/s."""
    await pool.execute("TRUNCATE events, event_fanout_queue, deliveries, delivery_attempts")
    session = create_session(settings)
    dispatcher = Dispatcher(pool, settings, session, Vault(settings.secret_keys))
    task = asyncio.create_task(dispatcher.run())
    await asyncio.sleep(0.3)
    committed: dict[str, float] = {}
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        event_id = new_id("evt")
        body = sample_body(event_id, i)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO events (id, type, client_id, object_type, object_id, body) "
                "VALUES ($1, $2, $3, 'document', $4, $5)",
                event_id,
                body["type"],
                body["client_id"],
                body["object_id"],
                body,
            )
        committed[event_id] = time.time()
        await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
    # Polling Postgres is the point here: the attempts are recorded there, nowhere else.
    while await pool.fetchval("SELECT count(*) FROM delivery_attempts") < total:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    dispatcher.stop()
    await task
    await close_session(session)
    rows = await pool.fetch(
        "SELECT d.event_id, min(a.at) AS first FROM delivery_attempts a "
        "JOIN deliveries d ON d.id = a.delivery_id GROUP BY d.event_id"
    )
    return [(r["first"].timestamp() - committed[r["event_id"]]) * 1000 for r in rows]


async def main(args: argparse.Namespace) -> None:
    configure_logging("json", "warning")
    name = f"relay_bench_{secrets.token_hex(4)}"
    settings = Settings(
        database_url=f"{PG_SERVER}/{name}",
        secret_keys=(generate_key(),),
        allow_private_targets=True,
        log_level="warning",
        retry_schedule=(1.0,),
        delivery_endpoint_concurrency=args.concurrency,
        delivery_concurrency=max(256, args.concurrency),
        delivery_batch_size=256,
    )
    port = free_port()
    receiver = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        str(port),
        "--loop",
        args.loop,
        "--receiver",
        args.receiver,
    )
    await migrate(settings)
    pool = await create_pool(settings, min_size=2, max_size=10)
    try:
        await asyncio.sleep(1.0)
        url = f"http://127.0.0.1:{port}/hook"
        sub, _ = await create_subscription(
            pool, Vault(settings.secret_keys), settings, url=url, event_types=["*"]
        )
        relay_rates, raw_rates = [], []
        for run in range(args.runs):
            bodies = await seed_pending(pool, sub["id"], args.deliveries)
            raw_rates.append(await run_raw(url, bodies, args.concurrency))
            if args.dispatchers == 1:
                relay_rates.append(await run_dispatcher(pool, settings, args.deliveries))
            else:
                relay_rates.append(
                    await run_dispatchers(
                        pool, settings, args.deliveries, args.dispatchers, args.loop
                    )
                )
            print(
                f"run {run + 1}: relay {relay_rates[-1]:,.0f}/s  raw {raw_rates[-1]:,.0f}/s",
                flush=True,
            )
        relay, raw = statistics.median(relay_rates), statistics.median(raw_rates)
        # Each run's ratio compares two measurements taken back to back, so it survives a
        # machine whose load changes between runs better than a ratio of medians does.
        ratio = statistics.median(r / b for r, b in zip(relay_rates, raw_rates, strict=True))
        print(
            f"throughput ({args.deliveries:,} deliveries, concurrency {args.concurrency}, "
            f"{args.dispatchers} dispatcher process(es), {args.loop} loops, "
            f"{args.receiver} receiver, "
            f"median of {args.runs}): "
            f"relay {relay:,.0f}/s, raw aiohttp loop {raw:,.0f}/s, "
            f"median per-run ratio {ratio:.2f}"
        )
        lat = sorted(await latency(pool, settings, 50, args.trickle_seconds))
        p50 = lat[len(lat) // 2]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(
            f"latency (50 events/s for {args.trickle_seconds:g} s, {len(lat)} events): "
            f"stored->first attempt p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lat[-1]:.1f} ms"
        )
    finally:
        await pool.close()
        receiver.terminate()
        await receiver.wait()
        conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
    if args.users_shape:
        # Its own processes and database; run after this shape's are gone, not beside them.
        shape = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("delivery_shape.py")),
            "--runs",
            str(args.runs),
        )
        if await shape.wait():
            raise SystemExit("bench/delivery_shape.py failed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--trickle-seconds", type=float, default=4.0)
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of the dispatcher, the raw loop and the receiver (as `relay worker`)",
    )
    parser.add_argument(
        "--dispatchers",
        type=int,
        default=1,
        help="dispatcher processes (as `relay worker` x N), sharing the endpoint concurrency",
    )
    parser.add_argument(
        "--receiver",
        choices=("protocol", "aiohttp"),
        default="protocol",
        help="the local receiver: a bare HTTP/1.1 protocol (default) or an aiohttp server",
    )
    parser.add_argument(
        "--users-shape",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then run bench/delivery_shape.py (api + worker processes, many subscriptions)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dispatch", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed.serve, parsed.loop, parsed.receiver)
    elif parsed.dispatch:
        with asyncio.Runner(loop_factory=lambda: new_loop(parsed.loop)) as runner:
            runner.run(dispatch_child(orjson.loads(parsed.dispatch)))
    else:
        with asyncio.Runner(loop_factory=lambda: new_loop(parsed.loop)) as runner:
            runner.run(main(parsed))
