"""The scrape side of `GET /metrics`: the workers' counters from Redis, gauges from Postgres.

Workers count into Redis hashes (relay/metrics.py, the worker side, draws their layout). At
scrape time the API reads those hashes and, under a statement timeout, the backlog and state
gauges from Postgres through the tables' owners (relay.delivery.store, relay.sources.accounts,
relay.events), and renders both next to its own in-process metrics. A part that fails is left
out and counted in `relay_metrics_scrape_errors_total`; the answer stays 200.

The event counts live in Redis too, under a scrape-side key:

    relay:metrics:events           seq, cand_seq, cand_running, type:<type>

They come from Postgres and survive losing Redis (see `_event_counts`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

import asyncpg
import orjson
import redis.asyncio as aioredis
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis.exceptions import RedisError

from relay import events
from relay.db import Connection
from relay.delivery import store
from relay.metrics import (
    ATTEMPTS_KEY,
    DELIVERY_OUTCOMES,
    LATENCY_BUCKETS,
    LATENCY_KEY,
    POLLS_KEY,
    RECOVERIES_KEY,
    RECOVERY_KINDS,
    SET_ASIDE_KEY,
    THROTTLED_KEY,
    UPSTREAM_EVENTS_KEY,
    UPSTREAM_KEY,
    WORKER_KEYS,
)
from relay.sources import accounts as account_store

log = structlog.get_logger("relay.api.metrics")

EVENTS_KEY = "relay:metrics:events"
ACCOUNT_STATUSES = account_store.STATUSES
# Scrape budget: each Postgres statement, and every Redis or pool wait, is bounded by this.
STATEMENT_TIMEOUT = 2.0
# Events are counted incrementally by `seq` in slices of at most this many.
EVENT_SLICE = 500_000

SCRAPE_ERRORS = PromCounter(
    "relay_metrics_scrape_errors_total",
    "Parts of a /metrics scrape left out because Postgres or Redis failed or timed out",
    ["source"],
)


class _Families:
    """A prometheus_client Collector of families already read for this scrape."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def _failed(source: str, part: str, exc: BaseException) -> None:
    SCRAPE_ERRORS.labels(source).inc()
    log.warning("metrics_scrape_failed", source=source, part=part, error=type(exc).__name__)


def _labelled(raw: dict[bytes, bytes], width: int) -> Iterable[tuple[list[str], float]]:
    """(label values, number) per hash field; fields of another shape are skipped."""
    for name, value in raw.items():
        try:
            labels = orjson.loads(name)
            number = float(value)
        except (orjson.JSONDecodeError, ValueError):
            continue
        if isinstance(labels, list) and len(labels) == width:
            yield [str(label) for label in labels], number


def _counter(
    name: str, doc: str, labels: list[str], raw: dict[bytes, bytes], known: Sequence[str] = ()
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    seen: dict[str, float] = dict.fromkeys(
        known, 0.0
    )  # known single-label values appear at 0 from the start
    for values, number in _labelled(raw, len(labels)):
        if known:
            seen[values[0]] = seen.get(values[0], 0.0) + number
        else:
            family.add_metric(values, number)
    for value, number in seen.items():
        family.add_metric([value], number)
    return family


def _latency(raw: dict[bytes, bytes]) -> HistogramMetricFamily:
    per_bucket: dict[str, float] = {}
    total = 0.0
    for values, number in _labelled(raw, 1):
        if values[0] == "sum":
            total = number
        else:
            per_bucket[values[0]] = number
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound in [*map(str, LATENCY_BUCKETS), "+Inf"]:
        running += per_bucket.get(bound, 0.0)
        buckets.append((bound, running))
    family = HistogramMetricFamily(
        "relay_delivery_attempt_seconds", "Duration of delivery attempts that sent a request"
    )
    family.add_metric([], buckets, total)
    return family


async def worker_families(redis: aioredis.Redis) -> list[Metric]:
    """The workers' counters as Prometheus families (raises RedisError, TimeoutError)."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in WORKER_KEYS:
            pipe.hgetall(key)
        results = await asyncio.wait_for(pipe.execute(), STATEMENT_TIMEOUT)
    raw: dict[str, dict[bytes, bytes]] = dict(zip(WORKER_KEYS, results, strict=True))
    return [
        _counter(
            "relay_polls_total",
            "Poll runs per account by outcome (done, leased, gone, broken, error, crashed)",
            ["account_id", "outcome"],
            raw[POLLS_KEY],
        ),
        _counter(
            "relay_upstream_requests_total",
            "Upstream HTTP requests per account, endpoint and status class (none: no response)",
            ["account_id", "endpoint", "status_class"],
            raw[UPSTREAM_KEY],
        ),
        _counter(
            "relay_upstream_throttled_total",
            "Upstream 429 Too Many Requests answers per account",
            ["account_id"],
            raw[THROTTLED_KEY],
        ),
        _counter(
            "relay_upstream_client_events_total",
            "Upstream client incidents per account (retry, reauthenticated, auth_failed, "
            "protocol_error)",
            ["account_id", "kind"],
            raw[UPSTREAM_EVENTS_KEY],
        ),
        _counter(
            "relay_upstream_objects_set_aside_total",
            "Upstream objects set aside as unusable, per account and kind (not_an_object, "
            "missing_id, unusable_field)",
            ["account_id", "kind"],
            raw[SET_ASIDE_KEY],
        ),
        _counter(
            "relay_delivery_attempts_total",
            "Delivery outcomes: succeeded, failed_retrying, failed_final, refused (not sent)",
            ["outcome"],
            raw[ATTEMPTS_KEY],
            DELIVERY_OUTCOMES,
        ),
        _latency(raw[LATENCY_KEY]),
        _counter(
            "relay_sweeper_recoveries_total",
            "Work recovered by a safety net: expired leases re-claimed (lease_expired), "
            "deliveries created by the sweeper's fan-out (fanned_out)",
            ["kind"],
            raw[RECOVERIES_KEY],
            RECOVERY_KINDS,
        ),
    ]


# Lua, so two API replicas settling at once never add the same slice twice: the counts are added
# only if the watermark is still where this scrape read it.
_SETTLE = """
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') ~= tonumber(ARGV[1]) then return 0 end
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], 'type:' .. ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'seq', ARGV[2])
return 1
"""


async def _backlog(conn: Connection) -> list[Metric]:
    row = await store.backlog(conn)
    # Succeeded grows without end (about 0.1 s per million rows): a savepoint, so that its
    # timeout on a huge table leaves only this one sample out.
    succeeded: int | None = None
    try:
        async with conn.transaction():
            succeeded = await store.count_succeeded(conn)
    except asyncpg.QueryCanceledError as exc:
        _failed("postgres", "deliveries_succeeded", exc)
    deliveries = GaugeMetricFamily(
        "relay_deliveries",
        "Deliveries by status (pending and failed are the backlog)",
        labels=["status"],
    )
    deliveries.add_metric(["pending"], row["pending"])
    deliveries.add_metric(["failed"], row["failed"])
    if succeeded is not None:
        deliveries.add_metric(["succeeded"], succeeded)
    return [
        deliveries,
        GaugeMetricFamily(
            "relay_deliveries_oldest_pending_age_seconds",
            "Age of the oldest pending delivery (retries included; 0 when none is pending)",
            value=float(row["oldest_pending"] or 0.0),
        ),
        GaugeMetricFamily(
            "relay_deliveries_oldest_due_age_seconds",
            "How long the most overdue pending delivery has been due (dispatcher lag)",
            value=max(0.0, float(row["oldest_due"] or 0.0)),
        ),
    ]


async def _accounts(conn: Connection) -> list[Metric]:
    rows = await account_store.rate_limits_by_account(conn)
    by_status = dict.fromkeys(ACCOUNT_STATUSES, 0)
    remaining = GaugeMetricFamily(
        "relay_upstream_rate_limit_remaining",
        "Upstream requests left in the current window, as last seen per account",
        labels=["account_id"],
    )
    limit = GaugeMetricFamily(
        "relay_upstream_rate_limit_limit",
        "Upstream requests allowed per window, as last seen per account",
        labels=["account_id"],
    )
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
        state = row["rate_limit"] if isinstance(row["rate_limit"], dict) else {}
        for family, key in ((remaining, "remaining"), (limit, "limit")):
            value = state.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                family.add_metric([row["id"]], value)
    accounts = GaugeMetricFamily("relay_accounts", "Accounts by status", labels=["status"])
    for status, count in by_status.items():
        accounts.add_metric([status], count)
    return [accounts, remaining, limit]


# The tables whose size `/metrics` shows: what retention (relay/retention.py) keeps bounded.
SIZED_TABLES = ("events", "deliveries", "delivery_attempts", "snapshots")


async def _tables(conn: Connection) -> list[Metric]:
    """Rows and bytes from the catalog's statistics (`reltuples`, `relpages`: as of the last
    autovacuum or analyze), not `count(*)` or `pg_total_relation_size()`: a count of a
    hundred-million-row attempts table takes longer than a scrape may, and the size functions
    lock the table, so a migration's lock would block the scrape."""
    found = await conn.fetch(
        "SELECT c.relname AS name, greatest(c.reltuples, 0)::bigint AS rows, "
        "(c.relpages + coalesce(t.relpages, 0) + coalesce((SELECT sum(i.relpages) "
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = c.oid), 0)"
        ")::bigint * current_setting('block_size')::bigint AS bytes "
        "FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid "
        "WHERE c.relname = ANY($1::text[]) AND c.relnamespace = 'public'::regnamespace "
        "ORDER BY c.relname",
        list(SIZED_TABLES),
    )
    rows = GaugeMetricFamily(
        "relay_table_rows",
        "Rows per table, as estimated by Postgres' statistics (what retention keeps bounded)",
        labels=["table"],
    )
    size = GaugeMetricFamily(
        "relay_table_bytes",
        "Bytes on disk per table, indexes and TOAST included (as of the last analyze)",
        labels=["table"],
    )
    for row in found:
        rows.add_metric([row["name"]], row["rows"])
        size.add_metric([row["name"]], row["bytes"])
    return [rows, size]


async def _event_counts(conn: Connection, redis: aioredis.Redis) -> dict[str, int] | None:
    """Stored events by type, or None while a first count of a large table is catching up.

    A `GROUP BY type` over all events grows with the table (about 0.25 s per million rows), so
    counts are kept incrementally in Redis: exact totals up to a settled `seq`, plus a count of
    the rows after it at each scrape. `seq` values commit out of order, so the watermark moves to
    a candidate (the highest `seq` visible at an earlier scrape) only once every transaction of
    this database that was writing then has ended; a lower `seq` can still be in flight before
    that. Catching up (a new deployment, a flushed Redis) is done in slices within the statement
    timeout. It relies on the workers' writers being visible in pg_stat_activity (the same
    database user, or one with pg_read_all_stats).
    """
    # redis-py types its sync and async clients with one signature
    state: dict[bytes, bytes] = await redis.hgetall(EVENTS_KEY)  # type: ignore[misc]
    settled = int(state.get(b"seq", 0))
    candidate = int(state.get(b"cand_seq", 0))
    waiting_for = set(state.get(b"cand_running", b"").decode().split(",")) - {""}
    counts = {k[5:].decode(): int(v) for k, v in state.items() if k.startswith(b"type:")}
    top_seq, running = await events.seq_and_writers(conn)
    target = candidate if candidate > settled and not waiting_for & running else settled
    deadline = time.monotonic() + STATEMENT_TIMEOUT / 2
    while settled < target and time.monotonic() < deadline:
        upto = min(target, settled + EVENT_SLICE)
        found = await events.count_by_type(conn, after=settled, upto=upto)
        args = [settled, upto, *(x for pair in found.items() for x in pair)]
        if not await redis.register_script(_SETTLE)(keys=[EVENTS_KEY], args=args):
            return None  # another scraper settled this slice: read its state next time
        for event_type, n in found.items():
            counts[event_type] = counts.get(event_type, 0) + n
        settled = upto
    if candidate <= settled:
        candidate_state = {"cand_seq": top_seq, "cand_running": ",".join(sorted(running))}
        await redis.hset(EVENTS_KEY, mapping=candidate_state)  # type: ignore[misc]
    if top_seq - settled > EVENT_SLICE:
        return None
    for event_type, n in (await events.count_by_type(conn, after=settled)).items():
        counts[event_type] = counts.get(event_type, 0) + n
    return counts


async def _events(conn: Connection, redis: aioredis.Redis) -> list[Metric]:
    counts = await _event_counts(conn, redis)
    if counts is None:
        return []
    family = CounterMetricFamily("relay_events_total", "Events stored, by type", labels=["type"])
    for event_type, count in sorted(counts.items()):
        family.add_metric([event_type], count)
    return [family]


async def postgres_families(pool: asyncpg.Pool, redis: aioredis.Redis) -> list[Metric]:
    """Backlog, account and event gauges read now; a part that fails or times out is left out
    and counted in `relay_metrics_scrape_errors_total`."""
    families: list[Metric] = []
    try:
        async with pool.acquire(timeout=STATEMENT_TIMEOUT) as conn:
            for part, read in (
                ("deliveries", _backlog),
                ("accounts", _accounts),
                ("tables", _tables),
            ):
                try:
                    async with conn.transaction(readonly=True):
                        await _limit(conn)
                        families += await read(conn)
                except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                    _failed("postgres", part, exc)
            try:
                async with conn.transaction(readonly=True):
                    await _limit(conn)
                    families += await _events(conn, redis)
            except (RedisError, asyncpg.PostgresError, OSError, TimeoutError) as exc:
                _failed("redis" if isinstance(exc, RedisError) else "postgres", "events", exc)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        _failed("postgres", "connect", exc)
    return families


async def _limit(conn: Connection) -> None:
    # SET LOCAL: ends with the transaction, so the pooled connection keeps its defaults.
    await conn.execute(f"SET LOCAL statement_timeout = {int(STATEMENT_TIMEOUT * 1000)}")


async def render(pool: asyncpg.Pool, redis: aioredis.Redis) -> bytes:
    """The whole deployment's metrics in Prometheus text format: this process's own metrics
    (API requests, scrape errors), the workers' counters and the Postgres gauges."""
    families: list[Metric] = []
    try:
        families += await worker_families(redis)
    except (RedisError, OSError, TimeoutError) as exc:
        _failed("redis", "workers", exc)
    families += await postgres_families(pool, redis)
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(_Families(families))
    # Own metrics last rendered: the scrape errors counted just now are already in them.
    return generate_latest(REGISTRY) + generate_latest(scraped)
