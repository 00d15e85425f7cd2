"""Connections to Relay's stores: Postgres (the source of truth) and Redis (wake-ups, limits)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.errors import ServiceUnavailable
from relay.exactjson import json_default
from relay.settings import Settings, redact_url

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection, or one borrowed from a pool (`async with pool.acquire() as conn`).
    Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy[asyncpg.Record]
    # Anything a statement can run on: the pool itself, or a connection.
    Executor: TypeAlias = asyncpg.Pool | Connection
else:
    # At run time the stubs' generic proxy is not subscriptable; the aliases stay importable.
    Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
    Executor = asyncpg.Pool | Connection

log = structlog.get_logger("relay.db")

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
# Serialises concurrent `relay migrate` runs (api, worker and migrate containers start together).
_MIGRATE_LOCK = 0x52454C4159  # "RELAY"
CONNECT_TIMEOUT = 5.0
START_HINT = "start it, e.g. `docker compose up -d postgres redis`"
# How long a process waiting for a store sleeps between tries, at most.
WAIT_CAP = 2.0

# What a store that is down, restarting or unreachable raises. Narrow on purpose: a statement
# timeout, a constraint violation or a bug is not an outage and must not be retried as one.
POSTGRES_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (asyncpg lets the socket's error through)
    TimeoutError,  # a connect or pool acquire that got no answer (a partitioned server)
    asyncpg.ConnectionDoesNotExistError,  # the server closed our connection mid-query
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01: a fast or smart shutdown ended our session
    asyncpg.CrashShutdownError,  # 57P02
)
REDIS_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)


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


async def connect(settings: Settings, *, setup: str | None = None) -> asyncpg.Connection:
    """One connection of its own (outside any pool) with the pool's jsonb codecs, for a
    component that keeps it for one kind of statement; `setup` runs once, so session settings
    it makes hold for the connection's life."""
    conn = await asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT)
    try:
        await _init_connection(conn)
        if setup:
            await conn.execute(setup)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def listen(
    settings: Settings, channel: str, callback: Callable[..., Any]
) -> asyncpg.Connection:
    """A connection of its own that LISTENs on `channel` (the dispatchers' and the streams'
    wake-ups). One that connected but failed, or was cancelled, before it listened is
    nobody's yet: it is closed here, never left to the garbage collector."""
    conn = await asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT)
    try:
        await conn.add_listener(channel, callback)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def create_redis(settings: Settings) -> aioredis.Redis:
    """A Redis client that has answered a PING, or ServiceUnavailable naming the URL."""
    client: aioredis.Redis = aioredis.from_url(  # type: ignore[no-untyped-call]
        settings.redis_url, socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30
    )
    try:
        await client.ping()
    except BaseException as exc:
        # Cancelled too (a startup cut short): the connection may already be back in the
        # client's pool, and nothing else would ever close it.
        await client.aclose()
        if isinstance(exc, (RedisError, OSError)):
            raise ServiceUnavailable("Redis", redact_url(settings.redis_url), _reason(exc)) from exc
        raise
    return client


def store_outage(exc: BaseException) -> str | None:
    """`"Postgres"` or `"Redis"` when `exc` means that store is unreachable, else None.

    Redis's client wraps socket errors in its own classes, asyncpg lets them through, so a bare
    `OSError` is counted as Postgres.
    """
    if isinstance(exc, ServiceUnavailable):
        return exc.service
    if isinstance(exc, REDIS_OUTAGE_ERRORS):
        return "Redis"
    if isinstance(exc, POSTGRES_OUTAGE_ERRORS):
        return "Postgres"
    if isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc):
        return "Postgres"  # a statement on a connection the server has just closed
    return None


class Outage:
    """One store as one component of a process sees it: one `store_unavailable` line when it
    starts failing and one `store_recovered` line when it answers again, however many retries
    happen in between (an outage used to print a traceback per retry)."""

    def __init__(self, service: str, url: str, component: str) -> None:
        self.service = service
        self.url = redact_url(url)
        self.component = component
        self.since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "store_unavailable",
                service=self.service,
                url=self.url,
                component=self.component,
                reason=_reason(exc),
            )

    def recovered(self) -> None:
        if self.since is None:
            return
        log.info(
            "store_recovered",
            service=self.service,
            url=self.url,
            component=self.component,
            down_s=round(time.monotonic() - self.since, 3),
            failures=self.failures,
        )
        self.since, self.failures = None, 0


class Backoff:
    """Capped exponential delays (0.1, 0.2, 0.4 ... `cap` s) for retrying a store; `reset()`
    once it answers, so the next outage starts fast again."""

    def __init__(self, first: float = 0.1, cap: float = WAIT_CAP) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


async def check_postgres(settings: Settings) -> None:
    """Connect once and close; ServiceUnavailable naming the URL when Postgres does not answer."""
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(
            "Postgres", redact_url(settings.database_url), _reason(exc)
        ) from exc
    await conn.close()


async def check_redis(settings: Settings) -> None:
    """PING once; ServiceUnavailable naming the URL when Redis does not answer."""
    client = await create_redis(settings)
    await client.aclose()


async def wait_for_stores(
    settings: Settings,
    *,
    wait: bool = True,
    component: str = "worker",
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Return once Postgres and Redis both answer.

    A store that does not answer is reported in one `store_unavailable` line (its URL and how
    to start it); then, with `wait`, this retries quietly with capped backoff until it answers
    (`store_recovered`), so a worker started before its stores comes up on its own. Without
    `wait` (`relay worker --exit-on-unavailable`, for supervisors that restart) it raises the
    ServiceUnavailable instead.
    """
    checks: list[tuple[str, str, Callable[[Settings], Awaitable[None]]]] = [
        ("Postgres", settings.database_url, check_postgres),
        ("Redis", settings.redis_url, check_redis),
    ]
    for service, url, check in checks:
        outage = Outage(service, url, component)
        backoff = Backoff(cap=WAIT_CAP)
        while True:
            try:
                await check(settings)
            except ServiceUnavailable as exc:
                if not wait:
                    raise
                if not outage.down:
                    log.warning(
                        "store_unavailable",
                        service=service,
                        url=exc.url,
                        component=component,
                        reason=exc.reason,
                        hint=START_HINT,
                        waiting=True,
                    )
                    outage.since = time.monotonic()
                outage.failures += 1
                await sleep(backoff.next())
                continue
            outage.recovered()
            break


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
