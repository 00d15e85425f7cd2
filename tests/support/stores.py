"""The stores a test talks to, a pytest plugin registered in tests/conftest.py.

Tests talk to the real Postgres (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379). A run
creates `relay_test_<random>` and drops it at the end; it claims a free Redis db number (1-15)
with a key in db 0 that expires, so parallel runs on one machine never share state. Tests flush
only their own db (FLUSHDB, never FLUSHALL).

Outage tests need stores they may stop: `PrivateStores` runs a private Redis and Postgres on
spare loopback ports. The shared services on 5432/6379 serve every engineer's test runs; an
outage test must never touch them. These servers live in a temporary directory removed at the
end. Postgres refuses to run as root, so under root (CI) its cluster is created and run as the
`postgres` user.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from relay.db import create_pool, create_redis, migrate
from relay.settings import Settings
from relay.vault import Vault

PG_SERVER = os.environ.get("RELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("RELAY_TEST_REDIS", "redis://127.0.0.1:6379")
# A fixed Fernet key: tests must be repeatable, and this key protects nothing real.
TEST_SECRET_KEY = "e3hd8qiLFO9XGfrL7tkoLL1nYbL16Y7Q85w-2d5Tu_I="
TEST_ADMIN_TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
_CLAIM_TTL = 3600


async def drop_database(name: str) -> None:
    """Drop a test's own database (sessions still on it are cut off)."""
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test run, migrated once, dropped at the end."""
    name = f"relay_test_{secrets.token_hex(4)}"
    url = f"{PG_SERVER}/{name}"
    asyncio.run(migrate(Settings(database_url=url)))
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """Claim a Redis db number no other test run on this machine is using."""
    claims = redis.Redis.from_url(f"{REDIS_SERVER}/0")
    token = secrets.token_hex(8)
    try:
        for number in range(1, 16):
            if claims.set(f"relay:test-db-claim:{number}", token, nx=True, ex=_CLAIM_TTL):
                break
        else:
            pytest.fail("all Redis dbs 1-15 are claimed by other test runs")
        yield number
        redis.Redis.from_url(f"{REDIS_SERVER}/{number}").flushdb()
        if claims.get(f"relay:test-db-claim:{number}") == token.encode():
            claims.delete(f"relay:test-db-claim:{number}")
    finally:
        claims.close()


def make_settings(database_url: str, redis_url: str, **changes: Any) -> Settings:
    """Settings for a test's database and Redis: the fixed test key and token, short retries,
    loopback targets allowed and a queue of its own; `changes` override any of it."""
    options: dict[str, Any] = {
        "admin_token": TEST_ADMIN_TOKEN,
        "secret_keys": (TEST_SECRET_KEY,),
        "allow_private_targets": True,
        "log_format": "console",
        "log_level": "warning",
        "retry_schedule": (0.2, 0.4, 0.6, 0.8, 1.0),
        "delivery_timeout": 2.0,
        "queue_name": f"relay:test:{secrets.token_hex(4)}",
    }
    return Settings(database_url=database_url, redis_url=redis_url, **(options | changes))


@pytest.fixture
async def scratch_settings(database_url: str) -> AsyncIterator[Settings]:
    """Settings for a database of the test's own (for a test that changes its schema), made by
    the test's `migrate` and dropped at the end."""
    name = "relay_test_scratch_" + os.urandom(3).hex()
    server = database_url.rsplit("/", 1)[0]
    yield Settings(database_url=f"{server}/{name}")
    await drop_database(name)


@pytest.fixture
def settings(database_url: str, redis_db: int) -> Settings:
    """Settings for this run's database and Redis db, with short retries and loopback allowed."""
    return make_settings(database_url, f"{REDIS_SERVER}/{redis_db}")


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this run's database, emptied before the test."""
    pool = await create_pool(settings, min_size=1, max_size=10)
    tables = await pool.fetch(
        "SELECT tablename FROM pg_tables "
        "WHERE schemaname = 'public' AND tablename <> 'relay_schema'"
    )
    if tables:
        names = ", ".join(f'"{row["tablename"]}"' for row in tables)
        await pool.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    yield pool
    await pool.close()


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A client on this run's Redis db, flushed before and after the test."""
    client = await create_redis(settings)
    try:
        await client.flushdb()
        yield client
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture
def vault(settings: Settings) -> Vault:
    """The vault of this run's settings (the fixed test key)."""
    return Vault(settings.secret_keys)


async def make_account(
    pool: asyncpg.Pool,
    *,
    provider: str = "dext",
    name: str = "Practice",
    base_url: str = "http://127.0.0.1:1",
    backfill: bool = False,
    baselined: bool = True,
) -> str:
    """An account row as the accounts store would write it (the token is a dummy); its id."""
    account_id: str = await pool.fetchval(
        "INSERT INTO accounts (provider, name, base_url, api_token_enc, backfill,"
        " baseline_completed_at) VALUES ($1, $2, $3, 'x', $4, CASE WHEN $5 THEN now() END)"
        " RETURNING id",
        provider,
        name,
        base_url,
        backfill,
        baselined,
    )
    return account_id


# Private stores for the outage tests.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("outage tests need Postgres's initdb and pg_ctl (apt install postgresql)")


class PrivateRedis:
    """`redis-server` without persistence: a restart comes back empty, like a lost Redis."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start_sync(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("outage tests need redis-server (apt install redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop_sync(self, *, save: bool = False) -> None:
        """Stop it; with `save` its keys are written out and come back at the next start, as
        a stock Redis (RDB snapshots on shutdown) does, else the next start is empty."""
        (self.dir / "dump.rdb").unlink(missing_ok=True)
        if self.process is not None and self.process.poll() is None:
            if save:
                client = redis.Redis(port=self.port)
                with contextlib.suppress(redis.ConnectionError):
                    client.shutdown(save=True)
                client.close()
            else:
                self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self, *, save: bool = False) -> None:
        await asyncio.to_thread(lambda: self.stop_sync(save=save))


class PrivatePostgres:
    """A throwaway cluster (trust auth, no fsync) controlled with pg_ctl."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.bin = _postgres_bin()
        self.dir = workdir / "postgres"
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def server_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.dir, timeout=60)

    def init_sync(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E",
                  "UTF8", "--no-sync", "--no-instructions")  # fmt: skip

    def start_sync(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                  "-w", "-t", "30", "start")  # fmt: skip

    def stop_sync(self) -> None:
        # fast: what a restart or an operator does; sessions are cut off at once.
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


class PrivateStores:
    """One private Redis and one private Postgres, started together, removed together."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="relay-outage-"))
        self.workdir.chmod(0o755)  # the postgres user must reach its directory inside
        self.redis = PrivateRedis(self.workdir)
        self.postgres = PrivatePostgres(self.workdir)

    def start_sync(self) -> None:
        self.postgres.init_sync()
        self.postgres.start_sync()
        self.redis.start_sync()

    def ensure_running_sync(self) -> None:
        """After a test that may have left a store stopped (a failed assertion mid-outage)."""
        if not self.postgres.running():
            self.postgres.start_sync()
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.redis.start_sync()

    def close_sync(self) -> None:
        with contextlib.suppress(Exception):
            self.redis.stop_sync()
        with contextlib.suppress(Exception):
            if self.postgres.running():
                self.postgres.stop_sync()
        shutil.rmtree(self.workdir, ignore_errors=True)
