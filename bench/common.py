"""What the benches share: where the stores are, a Redis db claimed like the test fixtures claim
theirs, a free port, a throwaway database dropped at the end, and percentiles.

Each bench runs as a script (`.venv/bin/python bench/x.py`) with the repository root put on
`sys.path` before it imports `relay` or this module (`from bench.common import ...`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis
import redis.asyncio as aioredis
from aiohttp import web

from relay.db import create_pool, migrate
from relay.settings import Settings

PG_SERVER = os.environ.get("RELAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_SERVER = "redis://127.0.0.1:6379"
_CLAIM = "relay:test-db-claim:{}"  # the test fixtures' claim keys, in db 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def claim_redis_db(
    numbers: Iterable[int] = range(1, 15), *, ttl: int = 3600, busy: str | None = None
) -> tuple[int, str]:
    """The first Redis db of `numbers` that no test run or other bench is using, claimed for
    `ttl` seconds; (number, the claim's token for `release_redis_db`)."""
    claims = redis.Redis.from_url(f"{REDIS_SERVER}/0")
    token = secrets.token_hex(8)
    try:
        for number in numbers:
            if claims.set(_CLAIM.format(number), token, nx=True, ex=ttl):
                return number, token
    finally:
        claims.close()
    raise SystemExit(busy or "bench: every Redis db 1-15 is claimed by a test run")


def release_redis_db(number: int, token: str, *, flush: bool = False) -> None:
    """Give the db back (flushed first with `flush`), if the claim is still ours."""
    if flush:
        data = redis.Redis.from_url(f"{REDIS_SERVER}/{number}")
        data.flushdb()
        data.close()
    claims = redis.Redis.from_url(f"{REDIS_SERVER}/0")
    try:
        if claims.get(_CLAIM.format(number)) == token.encode():
            claims.delete(_CLAIM.format(number))
    finally:
        claims.close()


async def drop_database(name: str, server: str = PG_SERVER) -> None:
    """Drop a bench's throwaway database on `server` (sessions still on it are cut off)."""
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def tear_down(
    pool: asyncpg.Pool, receiver: asyncio.subprocess.Process, database: str
) -> None:
    """The end of a delivery bench: close its pool, stop its receiver process, drop its
    database."""
    await pool.close()
    receiver.terminate()
    await receiver.wait()
    await drop_database(database)


def pct(values: list[float], q: float) -> float:
    """The `q` quantile (0-1) of `values` by rank, NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_latency_table(results: list[dict[str, Any]]) -> None:
    """The freshness benches' table: per event type and strategy, detection latency p50 / p95
    in simulated minutes, how many, and how many were missed (m) and false (f)."""
    types = sorted({t for r in results for t in (*r["latencies"], *r["missed"], *r["false"])})
    print("\ndetection latency in simulated minutes (p50 / p95), missed, false:")
    print(f"  {'event type':32}" + "".join(f"{r['name']:>36}" for r in results))
    for t in types:
        cells = []
        for r in results:
            lat = r["latencies"].get(t, [])
            cells.append(
                f"{pct(lat, 0.5):7.1f} / {pct(lat, 0.95):7.1f}  n={len(lat):4d} "
                f"m={r['missed'].get(t, 0)} f={r['false'].get(t, 0)}"
            )
        print(f"  {t:32}" + "".join(f"{c:>36}" for c in cells))


def _always_ok(path: str, body: bytes) -> int:
    return 200


def run_receiver(port: int, status_of: Callable[[str, bytes], int] = _always_ok) -> None:
    """A webhook receiver on 127.0.0.1:`port`, run in its own process (a bench's `--serve`):
    answers every POST with `status_of(path, body)`, counts nothing."""

    async def handle(request: web.Request) -> web.Response:
        status = status_of(request.path, await request.read())
        return web.Response(status=status, text="ok" if status < 400 else "no")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


@dataclass
class ThrowawayStores:
    """A fresh database beside `base`'s (migrated, dropped at `close`) and `base`'s Redis db
    (flushed at both ends), for one strategy of a bench."""

    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    database: str

    @classmethod
    async def open(cls, base: Settings, *, max_size: int = 8) -> ThrowawayStores:
        database = f"relay_bench_{secrets.token_hex(4)}"
        parts = urlsplit(base.database_url)
        settings = base.with_changes(database_url=urlunsplit(parts._replace(path=f"/{database}")))
        await migrate(settings)
        pool = await create_pool(settings, max_size=max_size)
        client = aioredis.from_url(settings.redis_url)
        await client.flushdb()
        return cls(settings, pool, client, database)

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.flushdb()
        await self.redis.aclose()
        server = urlunsplit(urlsplit(self.settings.database_url)._replace(path=""))
        await drop_database(self.database, server)


Result = dict[str, Any]


async def compare_strategies(
    banner: str,
    names: Iterable[str],
    run: Callable[[str, Settings], Awaitable[Result]],
    report: Callable[[list[Result]], None],
) -> None:
    """Run each strategy on its own stores (one claimed Redis db for all), timing each, then
    `report` the results side by side."""
    number, token = claim_redis_db()
    base = Settings(
        database_url=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/relay"),
        redis_url=f"{REDIS_SERVER}/{number}",
    )
    print(banner, flush=True)
    try:
        results = []
        for name in names:
            began = time.time()
            print(f"== {name}", flush=True)
            results.append(await run(name, base))
            print(f"  {name}: {time.time() - began:.0f} s real in all", flush=True)
        report(results)
    finally:
        release_redis_db(number, token)
