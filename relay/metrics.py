"""Deployment-wide Prometheus metrics: worker counters kept in Redis, gauges read from Postgres.

`GET /metrics` is served by `relay api`, but the work happens in any number of `relay worker`
processes on any number of machines, so nothing a worker counts can live in its own memory:

- Workers count into a `WorkerMetrics` buffer (synchronous, in memory) and `flush()` it once
  per dispatcher recording batch, per poll run and per sweep: one MULTI/EXEC of HINCRBY /
  HINCRBYFLOAT on the fixed hash keys below. A flush that fails keeps its deltas for the next
  one (so a counted attempt is added at least once, rarely twice if Redis applied a flush whose
  reply was lost).
- At scrape time the API reads those hashes and, under a statement timeout, the backlog and
  state gauges from Postgres, and renders both next to its own in-process metrics. A part that
  fails is left out and counted in `relay_metrics_scrape_errors_total`; the answer stays 200.

Redis key layout (hash fields are JSON arrays of label values, in the order shown):

    relay:metrics:polls            [account_id, outcome]                 -> count
    relay:metrics:upstream         [account_id, endpoint, status_class]  -> count
    relay:metrics:throttled        [account_id]                          -> count of 429s
    relay:metrics:upstream_events  [account_id, kind]                    -> count
    relay:metrics:set_aside        [account_id, kind]                    -> count of objects
    relay:metrics:attempts         [outcome]                             -> count
    relay:metrics:attempt_seconds  [le] per bucket (not cumulative), ["sum"] -> count / seconds
    relay:metrics:recoveries       [kind]                                -> count
    relay:metrics:events           seq, cand_seq, cand_running, type:<type>  (scrape side)

Losing Redis (FLUSHDB, a restart without persistence) resets the worker counters to zero;
Prometheus treats that as a counter reset, so `rate()` and `increase()` stay right and only the
raw totals restart. The event counts come from Postgres and survive it (see `_event_counts`).
Every label value is bounded: account ids (operators have tens), fixed endpoint names,
outcomes and event types; no URL, token or error text is ever a label.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

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

from relay.sources.models import CountingMetrics

if TYPE_CHECKING:
    from relay.db import Connection

log = structlog.get_logger("relay.metrics")

_PREFIX = "relay:metrics:"
POLLS_KEY = _PREFIX + "polls"
UPSTREAM_KEY = _PREFIX + "upstream"
THROTTLED_KEY = _PREFIX + "throttled"
UPSTREAM_EVENTS_KEY = _PREFIX + "upstream_events"
SET_ASIDE_KEY = _PREFIX + "set_aside"
ATTEMPTS_KEY = _PREFIX + "attempts"
LATENCY_KEY = _PREFIX + "attempt_seconds"
RECOVERIES_KEY = _PREFIX + "recoveries"
EVENTS_KEY = _PREFIX + "events"
WORKER_KEYS = (
    POLLS_KEY,
    UPSTREAM_KEY,
    THROTTLED_KEY,
    UPSTREAM_EVENTS_KEY,
    SET_ASIDE_KEY,
    ATTEMPTS_KEY,
    LATENCY_KEY,
    RECOVERIES_KEY,
)

# succeeded: 2xx; failed_retrying: failed, another attempt is scheduled; failed_final: failed
# with no attempt left (schedule exhausted, 410 Gone); refused: not sent at all (subscription
# disabled or deleted).
DELIVERY_OUTCOMES = ("succeeded", "failed_retrying", "failed_final", "refused")
# lease_expired: a delivery claimed by a worker that died or stalled, claimed again after its
# lease; fanned_out: deliveries the sweeper created from events no wake-up had reached.
RECOVERY_KINDS = ("lease_expired", "fanned_out")
ACCOUNT_STATUSES = ("baselining", "active", "broken")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Scrape budget: each Postgres statement, and every Redis or pool wait, is bounded by this.
STATEMENT_TIMEOUT = 2.0
FLUSH_TIMEOUT = 2.0
RETRY_AFTER_FAILURE = 5.0
# Events are counted incrementally by `seq` in slices of at most this many.
EVENT_SLICE = 500_000

SCRAPE_ERRORS = PromCounter(
    "relay_metrics_scrape_errors_total",
    "Parts of a /metrics scrape left out because Postgres or Redis failed or timed out",
    ["source"],
)

_Field = tuple[str, str]


def _field(*labels: str) -> str:
    return orjson.dumps(labels).decode()


def _bucket(seconds: float) -> str:
    index = bisect_left(LATENCY_BUCKETS, seconds)
    return "+Inf" if index == len(LATENCY_BUCKETS) else str(LATENCY_BUCKETS[index])


def _status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


class WorkerMetrics:
    """A worker process's counters, buffered in memory and added to Redis by `flush()`.

    Counting is synchronous and costs a dict update, so callers count as work happens and
    flush once per batch or run. Not shared across processes; one per worker is enough.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        timeout: float = FLUSH_TIMEOUT,
        retry_after: float = RETRY_AFTER_FAILURE,
    ) -> None:
        self._redis = redis
        self._timeout = timeout
        self._retry_after = retry_after
        self._ints: Counter[_Field] = Counter()
        self._floats: dict[_Field, float] = {}
        self._retry_at = 0.0

    def delivery_attempt(self, outcome: str, seconds: float | None) -> None:
        """One delivery outcome (see DELIVERY_OUTCOMES); `seconds` None when nothing was sent."""
        self._ints[(ATTEMPTS_KEY, _field(outcome))] += 1
        if seconds is not None:
            self._ints[(LATENCY_KEY, _field(_bucket(seconds)))] += 1
            name = (LATENCY_KEY, _field("sum"))
            self._floats[name] = self._floats.get(name, 0.0) + seconds

    def recovered(self, kind: str, count: int = 1) -> None:
        """Work picked up by a safety net (see RECOVERY_KINDS)."""
        if count:
            self._ints[(RECOVERIES_KEY, _field(kind))] += count

    def poll_run(self, account_id: str, outcome: str, upstream: CountingMetrics | None) -> None:
        """One poll run of an account and every upstream request it made."""
        self._ints[(POLLS_KEY, _field(account_id, outcome))] += 1
        if upstream is None:
            return
        for (endpoint, status), n in upstream.requests.items():
            self._ints[(UPSTREAM_KEY, _field(account_id, endpoint, _status_class(status)))] += n
            if status == 429:
                self._ints[(THROTTLED_KEY, _field(account_id))] += n
        for kind, n in upstream.events.items():
            if kind != "throttled":  # every 429 is already in the throttled counter
                self._ints[(UPSTREAM_EVENTS_KEY, _field(account_id, kind))] += n
        for kind, n in upstream.set_aside.items():
            self._ints[(SET_ASIDE_KEY, _field(account_id, kind))] += n

    async def flush(self) -> bool:
        """Add everything counted so far to Redis in one transaction; False (deltas kept for the
        next flush, a warning logged) when Redis fails. Never raises for a Redis failure."""
        if not self._ints and not self._floats:
            return True
        if time.monotonic() < self._retry_at:
            return False  # Redis failed a moment ago: do not stall every batch on it
        ints, floats = self._ints, self._floats
        self._ints, self._floats = Counter(), {}
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for (key, name), n in ints.items():
                    pipe.hincrby(key, name, n)
                for (key, name), value in floats.items():
                    pipe.hincrbyfloat(key, name, value)
                await asyncio.wait_for(pipe.execute(), self._timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._ints.update(ints)
            for pair, value in floats.items():
                self._floats[pair] = self._floats.get(pair, 0.0) + value
            self._retry_at = time.monotonic() + self._retry_after
            log.warning("metrics_flush_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        return True


# ---- scrape side ----------------------------------------------------------------------------


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


_BACKLOG = """
SELECT
    (SELECT count(*) FROM deliveries WHERE status = 'pending') AS pending,
    (SELECT count(*) FROM deliveries WHERE status = 'failed') AS failed,
    (SELECT extract(epoch FROM now() - created_at) FROM deliveries
     WHERE status = 'pending' ORDER BY id LIMIT 1) AS oldest_pending,
    (SELECT extract(epoch FROM now() - min(next_attempt_at)) FROM deliveries
     WHERE status = 'pending' AND next_attempt_at <= now()
       AND (leased_until IS NULL OR leased_until <= now())) AS oldest_due
"""

# Lua, so two API replicas settling at once never add the same slice twice: the counts are added
# only if the watermark is still where this scrape read it.
_SETTLE = """
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') ~= tonumber(ARGV[1]) then return 0 end
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], 'type:' .. ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'seq', ARGV[2])
return 1
"""


async def _backlog(conn: Connection) -> list[Metric]:
    row = await conn.fetchrow(_BACKLOG)
    assert row is not None  # an aggregate of scalar subqueries always returns one row
    # Succeeded grows without end (about 0.1 s per million rows): a savepoint, so that its
    # timeout on a huge table leaves only this one sample out.
    succeeded: int | None = None
    try:
        async with conn.transaction():
            succeeded = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE status = 'succeeded'"
            )
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
    rows = await conn.fetch("SELECT id, status, rate_limit FROM accounts WHERE deleted_at IS NULL")
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
    top = await conn.fetchrow(
        "SELECT coalesce(max(seq), 0) AS seq, ARRAY(SELECT backend_xid::text "
        " FROM pg_stat_activity WHERE datname = current_database() AND backend_xid IS NOT NULL"
        ") AS running FROM events"
    )
    assert top is not None
    running = set(top["running"])
    target = candidate if candidate > settled and not waiting_for & running else settled
    deadline = time.monotonic() + STATEMENT_TIMEOUT / 2
    while settled < target and time.monotonic() < deadline:
        upto = min(target, settled + EVENT_SLICE)
        rows = await conn.fetch(
            "SELECT type, count(*) AS n FROM events WHERE seq > $1 AND seq <= $2 GROUP BY type",
            settled,
            upto,
        )
        args = [settled, upto, *(x for r in rows for x in (r["type"], r["n"]))]
        if not await redis.register_script(_SETTLE)(keys=[EVENTS_KEY], args=args):
            return None  # another scraper settled this slice: read its state next time
        for r in rows:
            counts[r["type"]] = counts.get(r["type"], 0) + r["n"]
        settled = upto
    if candidate <= settled:
        candidate_state = {"cand_seq": top["seq"], "cand_running": ",".join(sorted(running))}
        await redis.hset(EVENTS_KEY, mapping=candidate_state)  # type: ignore[misc]
    if top["seq"] - settled > EVENT_SLICE:
        return None
    for r in await conn.fetch(
        "SELECT type, count(*) AS n FROM events WHERE seq > $1 GROUP BY type", settled
    ):
        counts[r["type"]] = counts.get(r["type"], 0) + r["n"]
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
