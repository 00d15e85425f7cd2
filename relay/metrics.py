"""Deployment-wide metrics, the worker side: counters kept in Redis by every worker process.

`GET /metrics` is served by `relay api`, but the work happens in any number of `relay worker`
processes on any number of machines, so nothing a worker counts can live in its own memory.
Workers count into a `WorkerMetrics` buffer (synchronous, in memory) and `flush()` it per poll
run, per sweep, and from the dispatcher's recorder at most twice a second (and as it stops): one
MULTI/EXEC of HINCRBY / HINCRBYFLOAT on the fixed hash keys below. A flush that fails keeps its
deltas for the next one (so a counted attempt is added at least once, rarely twice if Redis
applied a flush whose reply was lost). The scrape side, which reads these hashes and the
Postgres gauges and renders them, is relay/api/metrics.py.

Redis key layout (hash fields are JSON arrays of label values, in the order shown):

    relay:metrics:polls            [account_id, outcome]                 -> count
    relay:metrics:upstream         [account_id, endpoint, status_class]  -> count
    relay:metrics:throttled        [account_id]                          -> count of 429s
    relay:metrics:upstream_events  [account_id, kind]                    -> count
    relay:metrics:set_aside        [account_id, kind]                    -> count of objects
    relay:metrics:attempts         [outcome]                             -> count
    relay:metrics:attempt_seconds  [le] per bucket (not cumulative), ["sum"] -> count / seconds
    relay:metrics:recoveries       [kind]                                -> count

Losing Redis (FLUSHDB, a restart without persistence) resets the worker counters to zero;
Prometheus treats that as a counter reset, so `rate()` and `increase()` stay right and only the
raw totals restart. Every label value is bounded: account ids (operators have tens), fixed
endpoint names, outcomes and event types; no URL, token or error text is ever a label.

Part of the foundation: it imports no stage. What a poll run counted upstream arrives as any
object with the `UpstreamCounts` shape (relay.sources.models.CountingMetrics is one).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from typing import Protocol

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

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
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# A flush waits this long for Redis; after a failure, flushes are skipped for RETRY_AFTER_FAILURE.
FLUSH_TIMEOUT = 2.0
RETRY_AFTER_FAILURE = 5.0
_Field = tuple[str, str]


class UpstreamCounts(Protocol):
    """What one poll run's upstream client counted: requests by (endpoint, status), client
    incidents by kind, objects set aside by kind."""

    @property
    def requests(self) -> Mapping[tuple[str, int | None], int]: ...

    @property
    def events(self) -> Mapping[str, int]: ...

    @property
    def set_aside(self) -> Mapping[str, int]: ...


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

    def poll_run(self, account_id: str, outcome: str, upstream: UpstreamCounts | None) -> None:
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
