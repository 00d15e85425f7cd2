"""Shared fixtures: every test run gets its own Postgres database and Redis db, and cleans up.

Tests talk to the real Postgres (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379). A run
creates `relay_test_<random>` and drops it at the end; it claims a free Redis db number (1-15)
with a key in db 0 that expires, so parallel runs on one machine never share state. Tests flush
only their own db (FLUSHDB, never FLUSHALL).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from relay.db import create_pool, create_redis, migrate
from relay.logs import configure_logging
from relay.settings import Settings

pytest_plugins = [
    "tests.plugins.sandbox",
    "tests.support.api",
]

PG_SERVER = os.environ.get("RELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("RELAY_TEST_REDIS", "redis://127.0.0.1:6379")
# A fixed Fernet key: tests must be repeatable, and this key protects nothing real.
TEST_SECRET_KEY = "e3hd8qiLFO9XGfrL7tkoLL1nYbL16Y7Q85w-2d5Tu_I="
TEST_ADMIN_TOKEN = "test-admin-token"
_CLAIM_TTL = 3600


def pytest_configure(config: pytest.Config) -> None:
    configure_logging("console", "warning", cache=False)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test run, migrated once, dropped at the end."""
    name = f"relay_test_{secrets.token_hex(4)}"
    url = f"{PG_SERVER}/{name}"
    asyncio.run(migrate(Settings(database_url=url)))
    yield url

    async def drop() -> None:
        conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


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


@pytest.fixture
def settings(database_url: str, redis_db: int) -> Settings:
    """Settings for this run's database and Redis db, with short retries and loopback allowed."""
    return Settings(
        database_url=database_url,
        redis_url=f"{REDIS_SERVER}/{redis_db}",
        admin_token=TEST_ADMIN_TOKEN,
        secret_keys=(TEST_SECRET_KEY,),
        allow_private_targets=True,
        log_format="console",
        log_level="warning",
        retry_schedule=(0.2, 0.4, 0.6, 0.8, 1.0),
        delivery_timeout=2.0,
        queue_name=f"relay:test:{secrets.token_hex(4)}",
    )


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
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()
