"""The rolling-window rate limiter (InvoiceXT: any 3,600 s), beside `relay.sources.ratelimit`'s
fixed minute (Dext), shared through Redis by every worker process on one key.

Same shape as `RateLimiter` (`acquire()` before every request, `observe()` every response), on
one sorted set of grant times per key instead of one hash per fixed window. Keys hold a hash of
the token: `relay:ratelimit:{<hash>}:rolling:...`.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import redis.asyncio as aioredis
import structlog

from relay.sources.ratelimit import (
    _STATE_TTL,
    THROTTLE_MEMORY,
    Feedback,
    Grant,
    RateLimitState,
    _arg,
    token_key,
    wait_for_grant,
)

log = structlog.get_logger("relay.sources.ratelimit")


# KEYS: state hash, grants zset. ARGV: now, window, default limit, margin, member, zset ttl (ms),
# state ttl (s). Grants are paced `max(window / budget, pace)` apart across every process (the
# hour spent evenly, and never faster than the month can afford), and never more than `budget`
# (less what other tools used, as the server last said) in any `window` seconds.
_ACQUIRE_ROLLING = """
local now = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local block = tonumber(redis.call('HGET', KEYS[1], 'block_until') or '0')
if block > now then return {0, tostring(block - now)} end
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or ARGV[3])
local budget = limit - tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - width)
local used = redis.call('ZCARD', KEYS[2])
local others = 0
local others_at = tonumber(redis.call('HGET', KEYS[1], 'others_at') or '0')
if others_at > now - width then others = tonumber(redis.call('HGET', KEYS[1], 'others') or '0') end
if budget < 1 then budget = 1 end
if used + others >= budget then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local wait = width / budget
  if oldest[2] then wait = tonumber(oldest[2]) + width - now end
  if wait < 0.001 then wait = 0.001 end
  return {0, tostring(wait)}
end
local interval = width / budget
local pace = tonumber(redis.call('HGET', KEYS[1], 'pace') or '0')
if pace > interval then interval = pace end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_grant') or '0')
if last + interval > now then return {0, tostring(last + interval - now)} end
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('HSET', KEYS[1], 'last_grant', tostring(now))
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[7])
return {1, tostring(budget - used - others - 1)}
"""

# KEYS: state hash, grants zset, throttled zset. ARGV: now, window, limit, remaining, reset,
# is_429, member, state ttl. The server's count, less our grants in the window, is what other
# tools of the key used; a 429 or Remaining 0 blocks every process until the server's reset.
_OBSERVE_ROLLING = """
local now = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
if limit then redis.call('HSET', KEYS[1], 'limit', limit) end
local remaining = tonumber(ARGV[4])
local reset = tonumber(ARGV[5])
if reset and reset > now + width + 1 then reset = now + width + 1 end
if limit and remaining then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - width)
  local ours = redis.call('ZCARD', KEYS[2])
  local others = (limit - remaining) - ours
  if others < 0 then others = 0 end
  redis.call('HSET', KEYS[1], 'others', others, 'others_at', tostring(now))
end
local block = tonumber(redis.call('HGET', KEYS[1], 'block_until') or '0')
local until_ = block
if ((remaining and remaining <= 0) or ARGV[6] == '1') and reset and reset > until_ then
  until_ = reset
end
if ARGV[6] == '1' then
  if not reset and now + width / 10 > until_ then until_ = now + width / 10 end
  redis.call('ZADD', KEYS[3], now, ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 3600)
  redis.call('EXPIRE', KEYS[3], 3600)
end
if until_ > block then redis.call('HSET', KEYS[1], 'block_until', tostring(until_)) end
redis.call('EXPIRE', KEYS[1], ARGV[8])
return tostring(until_)
"""


class RollingRateLimiter:
    """The shared budget of one key on a rolling window (InvoiceXT: any 3,600 s), Redis-backed.

    Same use as `RateLimiter`: `acquire()` before every request, `observe()` every response.
    Every process on one key runs the same Lua on one sorted set of grant times, so together
    they never grant more than `limit - margin` in any `window_seconds`, and grants are spaced
    `window / budget` apart: a small hourly budget spent evenly rather than in the first
    minute (which would leave the account blind for 59). `set_pace` slows that spacing further,
    shared by every process, when the month can afford less than the hour allows. `block_until`
    stops every process until a time (a monthly limit: the end of the billing period).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        api_token: str,
        *,
        limit: int = 100,
        window_seconds: float = 3600.0,
        margin: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit < 1 or window_seconds <= 0 or not 0 <= margin < limit:
            raise ValueError("rate limit needs limit >= 1, window_seconds > 0, 0 <= margin < limit")
        self.token_id = token_key(api_token)
        self.limit = limit
        self.window_seconds = float(window_seconds)
        self.margin = margin
        self._clock = clock
        self._redis = redis
        prefix = f"relay:ratelimit:{{{self.token_id}}}:rolling"
        self._state_key = f"{prefix}:state"
        self._grants_key = f"{prefix}:grants"
        self._throttled_key = f"{prefix}:throttled"
        self._acquire_script = redis.register_script(_ACQUIRE_ROLLING)
        self._observe_script = redis.register_script(_OBSERVE_ROLLING)
        self._ttl_ms = int((self.window_seconds + 10) * 1000)

    async def try_acquire(self) -> Grant:
        now = self._clock()
        result = await self._acquire_script(
            keys=[self._state_key, self._grants_key],
            args=[
                repr(now),
                repr(self.window_seconds),
                self.limit,
                self.margin,
                f"{now!r}:{secrets.token_hex(4)}",
                self._ttl_ms,
                _STATE_TTL,
            ],
        )
        granted, value = int(result[0]), float(result[1])
        if granted:
            return Grant(True, 0.0, int(value))
        return Grant(False, max(value, 0.001))

    async def acquire(self, *, max_wait: float | None = None) -> None:
        """Wait until a slot is granted; TimeoutError when `max_wait` seconds pass first."""
        await wait_for_grant(self.try_acquire, self._clock, max_wait)

    async def observe(self, status: int, headers: Mapping[str, str]) -> Feedback:
        now = self._clock()
        feedback = Feedback.from_headers(headers, now=now)
        until = await self._observe_script(
            keys=[self._state_key, self._grants_key, self._throttled_key],
            args=[
                repr(now),
                repr(self.window_seconds),
                _arg(feedback.limit),
                _arg(feedback.remaining),
                _arg(feedback.reset),
                "1" if status == 429 else "0",
                f"{now!r}:{secrets.token_hex(4)}",
                _STATE_TTL,
            ],
        )
        if status == 429:
            log.warning(
                "upstream_throttled",
                token_id=self.token_id,
                reset=feedback.reset,
                blocked_for=round(max(float(until) - now, 0.0), 3),
            )
        return feedback

    async def set_pace(self, seconds: float) -> None:
        """Space every process's grants at least `seconds` apart (0: the window's own pace)."""
        await self._redis.hset(self._state_key, "pace", repr(max(seconds, 0.0)))  # type: ignore[misc]

    async def block_until(self, at: float) -> None:
        """No grant to any process before `at` (unix seconds)."""
        current = await self._redis.hget(self._state_key, "block_until")  # type: ignore[misc]
        if current is None or float(current) < at:
            await self._redis.hset(self._state_key, "block_until", repr(at))  # type: ignore[misc]

    async def state(self) -> RateLimitState:
        now = self._clock()
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._state_key, ["limit", "block_until", "others", "others_at"])
        pipe.zcount(self._grants_key, now - self.window_seconds, "+inf")
        pipe.zrangebyscore(self._grants_key, now - self.window_seconds, "+inf", 0, 1, True)
        pipe.zcount(self._throttled_key, now - THROTTLE_MEMORY, "+inf")
        (limit_raw, block_raw, others_raw, at_raw), used, oldest, throttled = await pipe.execute()
        limit = int(limit_raw) if limit_raw is not None else self.limit
        others = (
            int(float(others_raw or 0)) if float(at_raw or 0) > now - self.window_seconds else 0
        )
        remaining = max(limit - int(used) - others, 0)
        reset = float(oldest[0][1]) + self.window_seconds if oldest else now
        block = float(block_raw) if block_raw is not None else 0.0
        if block > now:
            remaining, reset = 0, max(reset, block)
        return RateLimitState(
            limit=limit,
            remaining=remaining,
            reset_at=datetime.fromtimestamp(math.ceil(reset), UTC),
            throttled_last_hour=int(throttled),
        )
