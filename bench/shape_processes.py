"""The users' shape's processes and meters: `relay api` and `relay worker` started as users
start them, a free Redis db, CPU per delivery of each part, and the receivers' counts."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import asyncpg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_SERVER = os.environ.get("RELAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("RELAY_BENCH_REDIS", "redis://127.0.0.1:6379")
RELAY = str(Path(sys.executable).with_name("relay"))
TOKEN = "bench-admin-token"  # a throwaway token for a loopback API


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

    def stop(self, n: int) -> dict[str, float]:
        return {k: (cpu_seconds(v) - self.before[k]) * 1000 / n for k, v in self.pids.items()}


def cpu_text(spent: dict[str, float]) -> str:
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
            try:
                await asyncio.wait_for(w.wait(), 30)
            except TimeoutError:
                # A SIGTERM that lands while arq is still starting up is not acted on.
                w.send_signal(signal.SIGTERM)
                await asyncio.wait_for(w.wait(), 30)
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
    if not row["deliveries"] == row["once"] == row["attempts"] == n:
        errors = await pool.fetch(
            "SELECT error, status_code, count(*) FROM delivery_attempts "
            "WHERE status_code IS DISTINCT FROM $1 GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5",
            status_code,
        )
        raise AssertionError(f"{dict(row)}; other attempts: {[tuple(e) for e in errors]}")
