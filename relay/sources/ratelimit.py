"""A fixed-window rate limiter per upstream token, shared through Redis by every worker process.

The upstream (Dext) counts fixed windows aligned to multiples of the window length since the
unix epoch (the minute, for the real service), per API token, counting every request. Every
process that uses one token calls the same atomic Lua scripts on one Redis hash per window, so
the processes together never take more grants per window than the budget:

- `budget = limit - margin`, where `limit` is the server's `X-RateLimit-Limit` once seen.
- No grant within `guard` seconds of either end of a window: a request granted just before the
  boundary could reach the server just after it (latency) and one granted just after it could
  reach a server whose clock is a little behind ours (skew); either would be counted in a window
  whose whole budget we hand out anyway.
- Grants are spread: a burst of `burst` at the window start, then evenly paced so the last one
  falls before the guard. A caller that arrives late catches up at once, so pacing never costs
  throughput, it only avoids hammering the upstream at the top of each window.
- Server feedback (`observe`) wins when it shows the token is busier than we think (other tools
  of the customer share it): `server_used - our_grants` is a lower bound of what others used in
  that window, and counts against our budget. `Remaining: 0` or a 429 blocks every process until
  the server's reset (`Retry-After` when present, else `X-RateLimit-Reset`).

Fail-safe: while Redis cannot be reached the limiter cannot count, so it spends nothing.
`try_acquire` raises `ServiceUnavailable("Redis", ...)` (logged once per limiter as
`ratelimit_unavailable` with `policy="spend_nothing"`) instead of granting, so no process sends a
request its peers cannot see; a poll ends there, leaves its tasks due, and the next poll after
Redis returns carries on. A response observed during the outage is logged and not shared.

Keys hold a hash of the token, never the token: `relay:ratelimit:{<hash>}:...` (the braces keep
one token's keys in one Redis Cluster slot). Losing Redis only loses the current window's count;
the next server response restores the picture.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from relay.errors import ServiceUnavailable
from relay.http import parse_retry_after

log = structlog.get_logger("relay.sources.ratelimit")

THROTTLE_MEMORY = 3600  # seconds of 429s kept for `throttled_last_hour`
MAX_RETRY_AFTER = 900.0  # a longer Retry-After is treated as this: the caller re-asks then
_STATE_TTL = 86400  # the learned limit and a block outlive any window, but not forever

# KEYS: state hash, window hash. ARGV: now, window start, window length, default limit, margin,
# guard, burst, window key ttl (ms). Returns {1, remaining} for a grant or {0, wait seconds}.
# Numbers go back as strings because Redis truncates Lua numbers to integers.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local start = tonumber(ARGV[2])
local width = tonumber(ARGV[3])
local guard = tonumber(ARGV[6])
local first = start + guard
local last = start + width - guard
local block = tonumber(redis.call('HGET', KEYS[1], 'block_until') or '0')
if block > now then return {0, tostring(block - now)} end
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or ARGV[4])
local budget = limit - tonumber(ARGV[5])
local counts = redis.call('HMGET', KEYS[2], 'granted', 'others')
local used = tonumber(counts[1] or '0') + tonumber(counts[2] or '0')
if used >= budget or now >= last then return {0, tostring(last + 2 * guard - now)} end
if now < first then return {0, tostring(first - now)} end
local burst = tonumber(ARGV[7])
if used >= burst then
  local slot = first + (used - burst + 1) * (last - first) / (budget - burst + 1)
  if slot > now then return {0, tostring(slot - now)} end
end
redis.call('HINCRBY', KEYS[2], 'granted', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return {1, tostring(budget - used - 1)}
"""

# KEYS: state hash, window hash of the response's window, throttled zset. ARGV: now, limit,
# remaining, reset, is_429, retry_after ('' when absent), window key ttl (ms), zset member,
# state ttl (s), default limit, latest believable reset (one further than a window away is a
# broken header, not a reason to stop for hours). Returns the block deadline as a string.
_OBSERVE = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if limit then
  redis.call('HSET', KEYS[1], 'limit', limit)
else
  limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or ARGV[10])
end
local remaining = tonumber(ARGV[3])
local reset = tonumber(ARGV[4])
if reset and reset > tonumber(ARGV[11]) then reset = tonumber(ARGV[11]) end
local block = tonumber(redis.call('HGET', KEYS[1], 'block_until') or '0')
local until_ = block
if remaining then
  local granted = tonumber(redis.call('HGET', KEYS[2], 'granted') or '0')
  local others = tonumber(redis.call('HGET', KEYS[2], 'others') or '0')
  local estimate = (limit - remaining) - granted
  if estimate > others then
    redis.call('HSET', KEYS[2], 'others', estimate)
    redis.call('PEXPIRE', KEYS[2], ARGV[7])
  end
  if remaining <= 0 and reset and reset > until_ then until_ = reset end
end
if ARGV[5] == '1' then
  local retry_after = tonumber(ARGV[6])
  local wait_until = reset
  if retry_after then wait_until = now + retry_after end
  if wait_until and wait_until > until_ then until_ = wait_until end
  redis.call('ZADD', KEYS[3], now, ARGV[8])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 3600)
  redis.call('EXPIRE', KEYS[3], 3600)
end
if until_ > block then redis.call('HSET', KEYS[1], 'block_until', tostring(until_)) end
redis.call('EXPIRE', KEYS[1], ARGV[9])
return tostring(until_)
"""


@dataclass(frozen=True)
class Grant:
    """One attempt to take a slot: `granted`, else `wait` seconds before asking again."""

    granted: bool
    wait: float = 0.0
    remaining: int = 0


@dataclass(frozen=True)
class RateLimitState:
    """The limiter as the admin API shows it (`rate_limit` of an account)."""

    limit: int
    remaining: int
    reset_at: datetime
    throttled_last_hour: int

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "remaining": self.remaining,
            "reset_at": self.reset_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "throttled_last_hour": self.throttled_last_hour,
        }


async def wait_for_grant(
    try_acquire: Callable[[], Awaitable[Grant]],
    clock: Callable[[], float],
    max_wait: float | None,
) -> None:
    """Ask `try_acquire` until it grants a slot, sleeping as long as each refusal says; a
    TimeoutError when `max_wait` seconds pass first. Both limiters (this fixed window and
    `relay.sources.ratelimit_rolling`) wait this way. Cancelling the awaiting task cancels the wait;
    no slot is held by a waiter."""
    deadline = None if max_wait is None else clock() + max_wait
    while True:
        grant = await try_acquire()
        if grant.granted:
            return
        # A few ms of jitter so processes woken by one window start don't arrive in lockstep.
        pause = grant.wait + random.uniform(0, 0.005)
        if deadline is not None:
            left = deadline - clock()
            if pause > left:
                if left > 0:
                    await asyncio.sleep(left)
                raise TimeoutError(f"no rate-limit slot within {max_wait} s")
        await asyncio.sleep(pause)


@dataclass(frozen=True)
class Feedback:
    """The rate-limit headers of one upstream response, parsed leniently (absent -> None)."""

    limit: int | None
    remaining: int | None
    reset: float | None
    retry_after: float | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, now: float) -> Feedback:
        retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
        return cls(
            limit=_int_header(headers, "X-RateLimit-Limit"),
            remaining=_int_header(headers, "X-RateLimit-Remaining"),
            reset=_float_header(headers, "X-RateLimit-Reset"),
            retry_after=None if retry_after is None else min(retry_after, MAX_RETRY_AFTER),
        )


def token_key(api_token: str) -> str:
    """The stable, non-reversible name of a token in Redis keys, logs and metrics."""
    return hashlib.sha256(api_token.encode()).hexdigest()[:20]


class RateLimiter:
    """The shared budget of one upstream token; create one per token per process, cheaply.

    `acquire()` before every upstream request (including /authenticate and each retry), then
    `observe()` every response's status and headers.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        api_token: str,
        *,
        limit: int = 60,
        window_seconds: float = 60.0,
        margin: int = 0,
        guard: float | None = None,
        burst: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit < 1 or window_seconds <= 0 or not 0 <= margin < limit:
            raise ValueError("rate limit needs limit >= 1, window_seconds > 0, 0 <= margin < limit")
        self.token_id = token_key(api_token)
        self.limit = limit
        self.window_seconds = float(window_seconds)
        self.margin = margin
        # A second for the real minute; proportionally less for time-compressed sandbox windows.
        self.guard = min(1.0, 0.05 * self.window_seconds) if guard is None else guard
        if not 0 <= self.guard < self.window_seconds / 4:
            raise ValueError("guard must be under a quarter of the window")
        self.burst = max(1, math.ceil((limit - margin) / 6)) if burst is None else burst
        self._clock = clock
        self._redis = redis
        prefix = f"relay:ratelimit:{{{self.token_id}}}"
        self._state_key = f"{prefix}:state"
        self._window_prefix = f"{prefix}:w:"
        self._throttled_key = f"{prefix}:throttled"
        self._acquire_script = redis.register_script(_ACQUIRE)
        self._observe_script = redis.register_script(_OBSERVE)
        self._window_ttl_ms = int((2 * self.window_seconds + 10) * 1000)
        self._unavailable_logged = False

    def _unavailable(self, exc: BaseException, during: str) -> ServiceUnavailable:
        """The error to raise when Redis fails: the limiter cannot count, so it grants nothing."""
        kwargs = self._redis.connection_pool.connection_kwargs
        url = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if not self._unavailable_logged:
            self._unavailable_logged = True
            log.warning(
                "ratelimit_unavailable",
                token_id=self.token_id,
                during=during,
                policy="spend_nothing",
                reason=reason,
            )
        return ServiceUnavailable("Redis", url, reason)

    def _window(self, at: float) -> int:
        return math.floor(at / self.window_seconds)

    async def try_acquire(self) -> Grant:
        """Take one slot of the current window if the budget allows, else say how long to wait."""
        now = self._clock()
        index = self._window(now)
        try:
            result = await self._acquire_script(
                keys=[self._state_key, f"{self._window_prefix}{index}"],
                args=[
                    repr(now),
                    repr(index * self.window_seconds),
                    repr(self.window_seconds),
                    self.limit,
                    self.margin,
                    repr(self.guard),
                    self.burst,
                    self._window_ttl_ms,
                ],
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc, "acquire") from exc
        granted, value = int(result[0]), float(result[1])
        if granted:
            return Grant(True, 0.0, int(value))
        return Grant(False, max(value, 0.001))

    async def acquire(self, *, max_wait: float | None = None) -> None:
        """Wait until a slot is granted; TimeoutError when `max_wait` seconds pass first.

        Cancelling the awaiting task cancels the wait; no slot is held by a waiter.
        """
        await wait_for_grant(self.try_acquire, self._clock, max_wait)

    async def observe(self, status: int, headers: Mapping[str, str]) -> Feedback:
        """Feed one response back: the server's count and any 429 apply to every process."""
        now = self._clock()
        feedback = Feedback.from_headers(headers, now=now)
        # Attribute the response to the window the server counted it in, told by its reset time
        # (the window end, rounded up to whole seconds); compressed windows under 1 s fall back
        # to our own clock.
        if feedback.reset is not None and self.window_seconds >= 1.0:
            index = self._window(feedback.reset) - 1
            if abs(index - self._window(now)) > 1:
                log.warning(
                    "ratelimit_window_mismatch",
                    token_id=self.token_id,
                    server_reset=feedback.reset,
                    window_seconds=self.window_seconds,
                )
                index = self._window(now)
        else:
            index = self._window(now)
        throttled = status == 429
        try:
            until = await self._observe_script(
                keys=[self._state_key, f"{self._window_prefix}{index}", self._throttled_key],
                args=[
                    repr(now),
                    _arg(feedback.limit),
                    _arg(feedback.remaining),
                    _arg(feedback.reset),
                    "1" if throttled else "0",
                    _arg(feedback.retry_after),
                    self._window_ttl_ms,
                    f"{now!r}:{secrets.token_hex(4)}",
                    _STATE_TTL,
                    self.limit,
                    repr(now + self.window_seconds + 1.0),
                ],
            )
        except (RedisError, OSError) as exc:
            # The request was made and answered: keep its answer, only the sharing is lost.
            self._unavailable(exc, "observe")
            return feedback
        if throttled:
            log.warning(
                "upstream_throttled",
                token_id=self.token_id,
                retry_after=feedback.retry_after,
                reset=feedback.reset,
                blocked_for=round(max(float(until) - now, 0.0), 3),
            )
        return feedback

    async def state(self) -> RateLimitState:
        """`{limit, remaining, reset_at, throttled_last_hour}` for this token, right now."""
        now = self._clock()
        index = self._window(now)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._state_key, ["limit", "block_until"])
        pipe.hmget(f"{self._window_prefix}{index}", ["granted", "others"])
        pipe.zcount(self._throttled_key, now - THROTTLE_MEMORY, "+inf")
        try:
            (limit_raw, block_raw), (granted_raw, others_raw), throttled = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc, "state") from exc
        limit = int(limit_raw) if limit_raw is not None else self.limit
        used = int(granted_raw or 0) + int(others_raw or 0)
        reset = (index + 1) * self.window_seconds
        block = float(block_raw) if block_raw is not None else 0.0
        remaining = max(limit - used, 0)
        if block > now:
            remaining, reset = 0, max(reset, block)
        return RateLimitState(
            limit=limit,
            remaining=remaining,
            reset_at=datetime.fromtimestamp(math.ceil(reset), UTC),
            throttled_last_hour=int(throttled),
        )


def _arg(value: float | None) -> str:
    return "" if value is None else repr(value)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(float(raw.strip()))
    except ValueError:
        return None


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
