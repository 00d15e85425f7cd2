"""The shared rate limiter against the real Redis: budgets per window, feedback, 429 blocks."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis

from relay.settings import Settings
from relay.sources.ratelimit import RateLimiter, token_key

TOKEN = "tok_live_very_secret_value"


class Clock:
    """A hand-driven clock for the window arithmetic; the real-time tests use time.time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def per_window(times: list[float], width: float) -> Counter[int]:
    return Counter(math.floor(t / width) for t in times)


async def take_all(limiter: RateLimiter) -> int:
    """Grants available right now, without waiting."""
    taken = 0
    while (await limiter.try_acquire()).granted:
        taken += 1
    return taken


async def test_concurrent_tasks_never_exceed_the_budget_and_use_all_of_it(
    redis_client: aioredis.Redis,
) -> None:
    width, limit = 1.0, 20
    # Start at a window boundary so every window but the last is fully inside the run.
    await asyncio.sleep(math.ceil(time.time() / width) * width - time.time())
    stop = time.time() + 3 * width
    granted: list[float] = []

    async def worker() -> None:
        limiter = RateLimiter(redis_client, TOKEN, limit=limit, window_seconds=width)
        while True:
            try:
                await limiter.acquire(max_wait=stop - time.time())
            except TimeoutError:
                return
            granted.append(time.time())

    await asyncio.gather(*(worker() for _ in range(30)))
    counts = per_window(granted, width)
    assert max(counts.values()) <= limit
    full = sorted(counts)[:3]
    assert [counts[w] for w in full] == [limit] * 3


PROCESS_SCRIPT = """
import asyncio, sys, time
import redis.asyncio as aioredis
from relay.sources.ratelimit import RateLimiter

async def main(url, token, limit, width, windows):
    client = aioredis.from_url(url)
    limiter = RateLimiter(client, token, limit=limit, window_seconds=width)
    await client.ping()
    print("ready", flush=True)
    start = float(await asyncio.to_thread(sys.stdin.readline))
    stop = start + windows * width
    await asyncio.sleep(max(start - time.time(), 0))
    async def worker():
        while True:
            try:
                await limiter.acquire(max_wait=stop - time.time())
            except TimeoutError:
                return
            print(repr(time.time()), flush=True)
    await asyncio.gather(*(worker() for _ in range(5)))
    await client.aclose()

url, token, limit, width, windows = sys.argv[1:]
asyncio.run(main(url, token, int(limit), float(width), int(windows)))
"""


async def test_several_processes_share_one_budget(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    width, limit, processes = 1.0, 25, 4
    args = [settings.redis_url, TOKEN, str(limit), repr(width), "3"]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PROCESS_SCRIPT,
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    # Interpreters start slowly on a busy machine: begin together, on a boundary, once ready.
    for proc in procs:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
    start = math.ceil((time.time() + 0.2) / width) * width
    outputs = await asyncio.gather(*(p.communicate(f"{start!r}\n".encode()) for p in procs))
    assert [p.returncode for p in procs] == [0] * processes
    per_process = [[float(line) for line in out.split()] for out, _ in outputs]
    counts = per_window([t for times in per_process for t in times], width)
    assert max(counts.values()) <= limit
    assert [counts[math.floor(start / width) + i] for i in range(3)] == [limit] * 3
    # Every process got a share: the budget is shared, not won by whoever starts first.
    assert all(len(times) >= 3 for times in per_process)


async def test_grants_are_spread_after_a_burst_and_stop_before_the_boundary(
    redis_client: aioredis.Redis,
) -> None:
    clock = Clock(6001.0)  # a window start (width 60) plus the guard
    limiter = RateLimiter(redis_client, TOKEN, limit=60, clock=clock)
    assert limiter.burst == 10
    assert limiter.guard == 1.0
    assert await take_all(limiter) == 10
    wait = (await limiter.try_acquire()).wait
    assert wait == pytest.approx(58 / 51)
    clock.now += 30.0  # half way: the pacing has released about half of the rest
    assert await take_all(limiter) == 26
    clock.now = 6000.0 + 58.9  # the last slots fall before the guard
    assert await take_all(limiter) == 24
    grant = await limiter.try_acquire()
    assert not grant.granted
    assert grant.wait == pytest.approx(2.1)  # the next window's first grant, after its guard


async def test_no_grant_within_the_guard_of_a_boundary(redis_client: aioredis.Redis) -> None:
    clock = Clock(6059.5)
    limiter = RateLimiter(redis_client, TOKEN, limit=60, clock=clock)
    grant = await limiter.try_acquire()
    assert not grant.granted
    assert grant.wait == pytest.approx(1.5)
    clock.now = 6060.2
    grant = await limiter.try_acquire()
    assert not grant.granted
    assert grant.wait == pytest.approx(0.8)
    clock.now = 6061.0
    assert (await limiter.try_acquire()).granted


async def test_margin_is_kept_back(redis_client: aioredis.Redis) -> None:
    clock = Clock(6030.0)
    limiter = RateLimiter(redis_client, TOKEN, limit=10, margin=2, burst=10, clock=clock)
    assert await take_all(limiter) == 8


async def test_server_feedback_lowers_what_remains(redis_client: aioredis.Redis) -> None:
    clock = Clock(6010.0)
    mine = RateLimiter(redis_client, TOKEN, limit=10, burst=10, clock=clock)
    other_process = RateLimiter(redis_client, TOKEN, limit=10, burst=10, clock=clock)
    assert (await mine.try_acquire()).granted
    # Another tool used six requests of this token: the server counts 7 in the window.
    headers = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "6060"}
    await mine.observe(200, headers)
    assert (await other_process.state()).remaining == 3
    assert await take_all(other_process) == 3
    # A later, more optimistic answer does not give the others' usage back.
    await mine.observe(200, {**headers, "X-RateLimit-Remaining": "5"})
    assert await take_all(mine) == 0


async def test_server_limit_replaces_the_configured_one(redis_client: aioredis.Redis) -> None:
    clock = Clock(6010.0)
    limiter = RateLimiter(redis_client, TOKEN, limit=60, burst=60, clock=clock)
    assert (await limiter.try_acquire()).granted
    await limiter.observe(
        200, {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "6060"}
    )
    fresh = RateLimiter(redis_client, TOKEN, limit=60, burst=60, clock=clock)
    assert await take_all(fresh) == 4
    assert (await fresh.state()).limit == 5


async def test_429_with_retry_after_blocks_every_process(redis_client: aioredis.Redis) -> None:
    clock = Clock(6010.0)
    first = RateLimiter(redis_client, TOKEN, clock=clock)
    second = RateLimiter(redis_client, TOKEN, clock=clock)
    headers = {
        "X-RateLimit-Limit": "60",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "6060",
        "Retry-After": "7",
    }
    await first.observe(429, headers)
    grant = await second.try_acquire()
    assert not grant.granted
    assert grant.wait == pytest.approx(50.0)
    state = await second.state()
    assert state.remaining == 0
    assert state.throttled_last_hour == 1
    assert state.reset_at.timestamp() == 6060
    clock.now = 6061.0
    assert (await second.try_acquire()).granted


async def test_429_retry_after_beyond_the_reset_is_honoured(redis_client: aioredis.Redis) -> None:
    clock = Clock(6058.0)
    first = RateLimiter(redis_client, TOKEN, clock=clock)
    second = RateLimiter(redis_client, TOKEN, clock=clock)
    await first.observe(429, {"X-RateLimit-Reset": "6060", "Retry-After": "5"})
    clock.now = 6061.0  # a new window, but the server asked for five seconds
    grant = await second.try_acquire()
    assert not grant.granted
    assert grant.wait == pytest.approx(2.0)
    clock.now = 6063.0
    assert (await second.try_acquire()).granted


async def test_429_without_retry_after_waits_for_the_reset(redis_client: aioredis.Redis) -> None:
    clock = Clock(6030.0)
    first = RateLimiter(redis_client, TOKEN, clock=clock)
    second = RateLimiter(redis_client, TOKEN, clock=clock)
    # The server's window ends at 6062 (its clock is two seconds behind ours): its word wins.
    await first.observe(429, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "6062"})
    clock.now = 6060.5
    grant = await second.try_acquire()
    assert not grant.granted
    assert grant.wait == pytest.approx(1.5)
    clock.now = 6062.0
    assert (await second.try_acquire()).granted
    assert (await second.state()).throttled_last_hour == 1


async def test_an_absurd_reset_does_not_block_for_hours(redis_client: aioredis.Redis) -> None:
    clock = Clock(6030.0)
    limiter = RateLimiter(redis_client, TOKEN, clock=clock)
    await limiter.observe(429, {"X-RateLimit-Reset": str(6030 + 86400)})
    grant = await limiter.try_acquire()
    assert not grant.granted
    assert grant.wait <= 61.0


async def test_acquire_gives_up_at_max_wait(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client, TOKEN, limit=1, window_seconds=60)
    await limiter.observe(429, {"Retry-After": "30"})
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await limiter.acquire(max_wait=0.2)
    assert 0.15 < time.monotonic() - started < 1.0


async def test_keys_and_values_never_contain_the_token(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client, TOKEN, limit=10)
    await limiter.acquire()
    await limiter.observe(429, {"X-RateLimit-Remaining": "0", "Retry-After": "1"})
    keys = [key.decode() async for key in redis_client.scan_iter("*")]
    assert keys
    assert all(token_key(TOKEN) in key for key in keys)
    for key in keys:
        assert TOKEN not in key
        kind = (await redis_client.type(key)).decode()
        dump = (
            await redis_client.hgetall(key)
            if kind == "hash"
            else await redis_client.zrange(key, 0, -1)
        )
        assert TOKEN.encode() not in repr(dump).encode()


async def test_bad_headers_are_ignored_not_fatal(redis_client: aioredis.Redis) -> None:
    clock = Clock(6010.0)
    limiter = RateLimiter(redis_client, TOKEN, limit=5, burst=5, clock=clock)
    feedback = await limiter.observe(
        503,
        {"X-RateLimit-Remaining": "lots", "X-RateLimit-Reset": "nan", "Retry-After": "soon"},
    )
    assert feedback.remaining is None
    assert feedback.reset is None
    assert feedback.retry_after is None
    assert await take_all(limiter) == 5


def test_retry_after_as_http_date() -> None:
    from relay.sources.ratelimit import Feedback

    feedback = Feedback.from_headers(
        {"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0
    )
    assert feedback.retry_after == pytest.approx(10.0)
