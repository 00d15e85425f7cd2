"""Connections to Relay's stores: Postgres (the source of truth) and Redis (wake-ups, limits)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from relay.errors import ServiceUnavailable
from relay.exactjson import json_default
from relay.settings import Settings, redact_url

log = structlog.get_logger("relay.db")

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
# Serialises concurrent `relay migrate` runs (api, worker and migrate containers start together).
_MIGRATE_LOCK = 0x52454C4159  # "RELAY"
CONNECT_TIMEOUT = 5.0


def schema_text() -> str:
    """The one schema, as shipped next to the package."""
    return SCHEMA_PATH.read_text(encoding="utf-8")


def schema_digest() -> str:
    """A digest of `schema.sql`, recorded by `migrate` so readiness can tell it was applied."""
    return hashlib.sha256(schema_text().encode()).hexdigest()[:16]


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in binary format is a version byte then the text; orjson both ways is the fast path.
    # Exact numbers (InvoiceXT money) are written as read: jsonb keeps `0.10` as `0.10`.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + orjson.dumps(value, default=json_default),
        decoder=lambda data: orjson.loads(memoryview(data)[1:]),  # no copy of the body
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


async def create_pool(settings: Settings, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A connection pool with jsonb codecs, or ServiceUnavailable naming the URL that failed."""
    try:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            timeout=CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(
            "Postgres", redact_url(settings.database_url), _reason(exc)
        ) from exc
    assert pool is not None
    return pool


async def create_redis(settings: Settings) -> aioredis.Redis:
    """A Redis client that has answered a PING, or ServiceUnavailable naming the URL."""
    client: aioredis.Redis = aioredis.from_url(  # type: ignore[no-untyped-call]
        settings.redis_url, socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise ServiceUnavailable("Redis", redact_url(settings.redis_url), _reason(exc)) from exc
    return client


def _admin_url(database_url: str) -> tuple[str, str]:
    """The URL of the maintenance database on the same server, and the target database name."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/") or "postgres"
    return urlunsplit(parts._replace(path="/postgres")), name


async def create_database_if_missing(settings: Settings) -> bool:
    """Create the configured database when it does not exist; True when it was created."""
    admin_url, name = _admin_url(settings.database_url)
    try:
        conn = await asyncpg.connect(admin_url, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Name the URL the operator configured, not the maintenance database derived from it.
        raise ServiceUnavailable(
            "Postgres", redact_url(settings.database_url), _reason(exc)
        ) from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # another migrate won the race
        return True
    finally:
        await conn.close()


async def migrate(settings: Settings) -> dict[str, Any]:
    """Create the database if needed and apply `schema.sql` idempotently, under a lock."""
    created = await create_database_if_missing(settings)
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(
            "Postgres", redact_url(settings.database_url), _reason(exc)
        ) from exc
    digest = schema_digest()
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK)
            await conn.execute(schema_text())
            await conn.execute(
                "INSERT INTO relay_schema (id, digest, applied_at) VALUES (1, $1, now()) "
                "ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, applied_at = now()",
                digest,
            )
    finally:
        await conn.close()
    log.info(
        "schema_applied", database=redact_url(settings.database_url), created=created, digest=digest
    )
    return {"database_created": created, "digest": digest}


async def schema_is_current(pool: asyncpg.Pool) -> bool:
    """True when the database carries the digest of the `schema.sql` this code ships with."""
    try:
        applied = await pool.fetchval("SELECT digest FROM relay_schema WHERE id = 1")
    except asyncpg.UndefinedTableError:
        return False
    return bool(applied == schema_digest())
