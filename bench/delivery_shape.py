"""Delivery on the shape users have: `relay api` + `relay worker` processes, many subscriptions.

    .venv/bin/python bench/delivery_shape.py [--workers 1,2] [--runs 1] [--receiver both]

`bench/delivery_throughput.py` runs this after its own (one subscription, a backlog seeded
before the clock, one `Dispatcher` object), so one run prints both shapes. Here:

1. Throughput: `relay api` and `relay worker` x N started as users start them (arq, the
   poller, the sweeper and all), 200 subscriptions each with its own secret and path, 100
   stored events; the clock starts at the first of 100 `POST /v1/events/{id}/replay` calls
   (each makes 200 deliveries: 20,000 in all, created while the workers dispatch) and stops
   at the last arrival at the receiver. Against it, in the same run, a raw aiohttp loop posts
   the same Standard Webhooks bodies, signed with each subscription's secret, to the same
   paths. Receivers, each in its own process: an aiohttp server that reads each body and
   answers 204, and a bare HTTP/1.1 protocol answering 204. Checked afterwards: every
   delivery succeeded with exactly one recorded attempt, and the receiver saw each once.
2. Fan-out: one event stored (as the diff stores them) matching 10,000 subscriptions; seconds
   from its commit to the last of its 10,000 arrivals (goal: under 5 s).
3. Latency: 200 subscriptions each filtered to one client, events stored at 2,000/s (each in
   its own transaction, one delivery each) for a few seconds; p50/p99 from commit to the
   delivery's first attempt (goal: p99 under 50 ms).

Uses its own database `relay_bench_<random>` (dropped at the end) and a free Redis db number
(claimed as the test suite claims them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import asyncpg
import orjson
import redis
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.db import create_pool, migrate  # noqa: E402
from relay.delivery.signing import secret_key, webhook_headers  # noqa: E402
from relay.delivery.subscriptions import create_subscription  # noqa: E402
from relay.events import build_event, insert_event, insert_events  # noqa: E402
from relay.settings import Settings  # noqa: E402
from relay.vault import Vault, generate_key  # noqa: E402

PG_SERVER = os.environ.get("RELAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("RELAY_BENCH_REDIS", "redis://127.0.0.1:6379")
RELAY = str(Path(sys.executable).with_name("relay"))
TOKEN = "bench-admin-token"  # a throwaway token for a loopback API


# ---- receivers (child processes) -------------------------------------------------------------

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


# ---- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def claim_redis_db() -> tuple[int, str]:
    claims = redis.Redis.from_url(f"{REDIS_SERVER}/0")
    token = secrets.token_hex(8)
    try:
        for number in range(15, 0, -1):
            if claims.set(f"relay:test-db-claim:{number}", token, nx=True, ex=3600):
                return number, token
    finally:
        claims.close()
    raise SystemExit("all Redis dbs 1-15 are claimed")


def release_redis_db(number: int, token: str) -> None:
    r = redis.Redis.from_url(f"{REDIS_SERVER}/{number}")
    r.flushdb()
    r.close()
    claims = redis.Redis.from_url(f"{REDIS_SERVER}/0")
    if claims.get(f"relay:test-db-claim:{number}") == token.encode():
        claims.delete(f"relay:test-db-claim:{number}")
    claims.close()


async def wait_http(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up")
            await asyncio.sleep(0.2)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc; 0 if gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


class CpuMeter:
    """CPU milliseconds per delivery of each part (the worker processes, the API, the
    receiver, this database's Postgres backends): less sensitive to a loaded machine than
    wall-clock rates, and it says where the time goes."""

    def __init__(self, pool: asyncpg.Pool, database: str, parts: dict[str, list[int]]) -> None:
        self.pool = pool
        self.database = database
        self.parts = parts
        self.before: dict[str, float] = {}

    async def _pids(self) -> dict[str, list[int]]:
        rows = await self.pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.database,
        )
        return {**self.parts, "postgres": [r["pid"] for r in rows]}

    async def start(self) -> None:
        self.pids = await self._pids()
        self.before = {k: cpu_seconds(v) for k, v in self.pids.items()}

    def stop(self, n: int) -> str:
        spent = {k: (cpu_seconds(v) - self.before[k]) * 1000 / n for k, v in self.pids.items()}
        return ", ".join(f"{k} {v:.3f}" for k, v in spent.items())


class Deployment:
    """The processes a user starts: `relay api` and `relay worker` x N, with their env."""

    def __init__(self, env: dict[str, str], api_port: int) -> None:
        self.env = env
        self.api_port = api_port
        self.api: asyncio.subprocess.Process | None = None
        self.workers: list[asyncio.subprocess.Process] = []

    async def start_api(self) -> None:
        self.api = await asyncio.create_subprocess_exec(
            RELAY, "api", "--port", str(self.api_port), env=self.env
        )
        await wait_http(f"http://127.0.0.1:{self.api_port}/healthz")

    async def start_workers(self, count: int) -> None:
        for _ in range(count):
            self.workers.append(await asyncio.create_subprocess_exec(RELAY, "worker", env=self.env))
        await asyncio.sleep(2.0)  # arq startup, the dispatcher's first look, the sweeper

    async def stop_workers(self) -> None:
        for w in self.workers:
            w.send_signal(signal.SIGTERM)
        for w in self.workers:
            await w.wait()
        self.workers = []

    async def stop(self) -> None:
        await self.stop_workers()
        if self.api is not None:
            self.api.send_signal(signal.SIGTERM)
            await self.api.wait()


async def stats(session: aiohttp.ClientSession, base: str, reset: bool = False) -> dict[str, Any]:
    async with session.get(f"{base}/_reset" if reset else f"{base}/_stats") as resp:
        return cast(dict[str, Any], await resp.json())


async def wait_arrivals(
    session: aiohttp.ClientSession, base: str, n: int, within: float = 120.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        seen = await stats(session, base)
        if seen["count"] >= n:
            await asyncio.sleep(0.2)  # a duplicate right behind the last one would show here
            return await stats(session, base)
        if time.monotonic() > deadline:
            raise SystemExit(f"only {seen['count']} of {n} arrived at {base}")
        await asyncio.sleep(0.02)


async def check_recorded(pool: asyncpg.Pool, n: int, status_code: int = 204) -> None:
    """Nothing lost, no duplicate, every attempt recorded: each delivery succeeded once."""
    deadline = time.monotonic() + 30
    while await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 'pending'"):
        if time.monotonic() > deadline:
            raise SystemExit("deliveries still pending 30 s after the last arrival")
        await asyncio.sleep(0.1)
    row = await pool.fetchrow(
        "SELECT count(*) AS deliveries, count(*) FILTER (WHERE d.status = 'succeeded' "
        "AND d.attempt_count = 1) AS once, (SELECT count(*) FROM delivery_attempts a "
        "WHERE a.status_code = $1) AS attempts FROM deliveries d",
        status_code,
    )
    assert row["deliveries"] == row["once"] == row["attempts"] == n, dict(row)


# ---- the phases -----------------------------------------------------------------------------


async def throughput_run(
    pool: asyncpg.Pool,
    api: aiohttp.ClientSession,
    api_base: str,
    receiver: str,
    event_ids: list[str],
    per_event: int,
    meter: CpuMeter,
) -> tuple[float, str]:
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
        seen = await wait_arrivals(probe, receiver, n)
        await check_recorded(pool, n)  # the recording is part of the CPU a delivery costs
        cpu = meter.stop(n)
    assert seen["count"] == n, f"receiver saw {seen['count']} requests for {n} deliveries"
    return n / (seen["last"] - started), cpu


async def raw_run(
    receiver: str,
    subs: list[tuple[str, bytes]],
    bodies: list[tuple[str, bytes]],
    concurrency: int,
) -> float:
    """The baseline: every (event, subscription) body, signed with that subscription's key,
    posted to its path by a plain aiohttp loop."""
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
        await asyncio.gather(*[lane() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
        seen = await stats(session, receiver)
        assert seen["count"] == len(bodies) * len(subs)
        return len(bodies) * len(subs) / elapsed


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
        if fanned_out:
            await conn.execute(
                "UPDATE events SET fanned_out_at = now() WHERE id = ANY($1::text[])",
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


async def fan_out(pool: asyncpg.Pool, settings: Settings, receiver: str, n: int) -> float:
    """Seconds from one event's commit to the last of its n arrivals."""
    vault = Vault(settings.secret_keys)
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with sem:
            await create_subscription(
                pool, vault, settings, url=f"{receiver}/fan/{i}", event_types=["*"]
            )

    await asyncio.gather(*[one(i) for i in range(n)])
    await pool.execute("TRUNCATE deliveries, delivery_attempts")
    async with aiohttp.ClientSession() as probe:
        await stats(probe, receiver, reset=True)
        await store_events(pool, 1, fanned_out=False)
        committed = time.time()
        seen = await wait_arrivals(probe, receiver, n, within=60)
    assert seen["count"] == n
    await check_recorded(pool, n)
    return seen["last"] - committed


async def latency(pool: asyncpg.Pool, rate: int, seconds: float) -> list[float]:
    """Milliseconds from commit to first attempt, events at `rate`/s, one delivery each."""
    await pool.execute("TRUNCATE deliveries, delivery_attempts")
    committed: dict[str, float] = {}
    total = int(rate * seconds)
    lanes = 48
    start = time.perf_counter()

    async def lane(k: int) -> None:
        for i in range(k, total, lanes):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            async with pool.acquire() as conn:  # one INSERT, its own transaction
                body = await insert_event(
                    conn,
                    "document.categorized",
                    account_id=None,
                    client_id=f"cli_{i % 200}",
                    object_id=f"doc_{i}",
                    object={"id": f"doc_{i}", "status": "ready"},
                )
            committed[body["id"]] = time.time()

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
    print(f"  (stored {achieved:,.0f} events/s)", flush=True)
    return [(r["first"].timestamp() - committed[r["event_id"]]) * 1000 for r in rows]


# ---- main -----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    name = f"relay_bench_{secrets.token_hex(4)}"
    db_number, claim = claim_redis_db()
    secret_keys = (generate_key(),)
    settings = Settings(
        database_url=f"{PG_SERVER}/{name}",
        redis_url=f"{REDIS_SERVER}/{db_number}",
        secret_keys=secret_keys,
        allow_private_targets=True,
    )
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RELAY_SECRET_KEY": secret_keys[0],
        "RELAY_ADMIN_TOKEN": TOKEN,
        "RELAY_ALLOW_PRIVATE_TARGETS": "1",
        "RELAY_LOG_FORMAT": "json",
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_RETRY_SCHEDULE": "1",
    }
    kinds = ["aiohttp", "protocol"] if args.receiver == "both" else [args.receiver]
    receivers: dict[str, tuple[str, asyncio.subprocess.Process]] = {}
    for kind in kinds:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", str(port), "--receiver", kind
        )
        receivers[kind] = (f"http://127.0.0.1:{port}", proc)
    await migrate(settings)
    if args.log_statements:
        # Profiling: every statement of this database, with its duration, in the server log.
        conn = await asyncpg.connect(settings.database_url)
        await conn.execute(f'ALTER DATABASE "{name}" SET log_min_duration_statement = 0')
        # and the plan (with actual rows) of any statement slower than 40 ms
        for setting in (
            "session_preload_libraries = 'auto_explain'",
            "auto_explain.log_min_duration = 40",
            "auto_explain.log_analyze = on",
            "auto_explain.log_nested_statements = on",
        ):
            await conn.execute(f'ALTER DATABASE "{name}" SET {setting}')
        await conn.close()
    pool = await create_pool(settings, min_size=2, max_size=52)
    deployment = Deployment(env, free_port())
    api_base = f"http://127.0.0.1:{deployment.api_port}"
    headers = {"authorization": f"Bearer {TOKEN}"}
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    try:
        await deployment.start_api()
        for _, (base, _) in receivers.items():
            await wait_http(f"{base}/_stats")
        async with aiohttp.ClientSession(headers=headers) as api:
            for kind, (base, _) in receivers.items():
                await retire_subscriptions(pool)
                subs = await add_subscriptions(api, api_base, base, args.subscriptions, kind)
                await pool.execute("TRUNCATE events, deliveries, delivery_attempts")
                events = await store_events(pool, args.events, fanned_out=True)
                event_ids = [e["id"] for e in events]
                bodies = [(e["id"], orjson.dumps(e)) for e in events]
                for count in worker_counts:
                    await deployment.start_workers(count)
                    assert deployment.api is not None
                    parts = {
                        "workers": [w.pid for w in deployment.workers],
                        "api": [deployment.api.pid],
                        "receiver": [receivers[kind][1].pid],
                    }
                    meter = CpuMeter(pool, name, parts)
                    rates, raws = [], []
                    for run in range(args.runs):
                        raws.append(await raw_run(base, subs, bodies, args.concurrency))
                        rate, cpu = await throughput_run(
                            pool, api, api_base, base, event_ids, len(subs), meter
                        )
                        rates.append(rate)
                        print(
                            f"  {kind} receiver, {count} worker(s), run {run + 1}: "
                            f"relay {rates[-1]:,.0f}/s  raw {raws[-1]:,.0f}/s  "
                            f"ratio {rates[-1] / raws[-1]:.2f}; CPU ms per delivery: {cpu}",
                            flush=True,
                        )
                    await deployment.stop_workers()
                    ratio = statistics.median(r / b for r, b in zip(rates, raws, strict=True))
                    print(
                        f"users' shape ({args.subscriptions} subscriptions, {args.events} "
                        f"replays x {len(subs)}, {kind} receiver, {count} relay worker(s), "
                        f"median of {args.runs}): relay {statistics.median(rates):,.0f}/s, "
                        f"raw aiohttp loop {statistics.median(raws):,.0f}/s, "
                        f"median per-run ratio {ratio:.2f}",
                        flush=True,
                    )
            base = receivers[kinds[0]][0]
            await deployment.start_workers(1)
            if args.latency_seconds > 0:
                await retire_subscriptions(pool)
                await add_subscriptions(
                    api, api_base, base, 200, "lat", client_ids=lambda i: [f"cli_{i}"]
                )
                lat = sorted(await latency(pool, args.rate, args.latency_seconds))
                p50 = lat[len(lat) // 2]
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                print(
                    f"latency ({args.rate:,} events/s for {args.latency_seconds:g} s over 200 "
                    f"subscriptions, 1 worker, {kinds[0]} receiver): stored->first attempt "
                    f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lat[-1]:.1f} ms",
                    flush=True,
                )
            if args.fan_out > 0:
                await retire_subscriptions(pool)
                seconds = await fan_out(pool, settings, base, args.fan_out)
                print(
                    f"fan-out (one event to {args.fan_out:,} subscriptions, 1 worker, "
                    f"{kinds[0]} receiver): all delivered {seconds:.2f} s after its commit",
                    flush=True,
                )
    finally:
        await deployment.stop()
        await pool.close()
        for _, proc in receivers.values():
            proc.terminate()
            await proc.wait()
        conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        release_redis_db(db_number, claim)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--subscriptions", type=int, default=200)
    parser.add_argument("--events", type=int, default=100, help="replay calls (one per event)")
    parser.add_argument("--concurrency", type=int, default=64, help="the raw loop's lanes")
    parser.add_argument("--fan-out", type=int, default=10_000, help="0 skips the fan-out phase")
    parser.add_argument("--rate", type=int, default=2_000, help="events/s of the latency phase")
    parser.add_argument("--latency-seconds", type=float, default=3.0, help="0 skips it")
    parser.add_argument(
        "--receiver",
        choices=("aiohttp", "protocol", "both"),
        default="both",
        help="an aiohttp server reading each body, a bare HTTP/1.1 protocol, or both",
    )
    parser.add_argument(
        "--log-statements",
        action="store_true",
        help="profiling: log every statement of the bench database with its duration, "
        "and the plans of those slower than 40 ms (auto_explain)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed.serve, parsed.receiver)
    else:
        asyncio.run(main(parsed))
