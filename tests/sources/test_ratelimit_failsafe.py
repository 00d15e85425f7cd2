"""The limiter fails safe: without Redis it cannot count, so it grants nothing."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from relay.errors import ServiceUnavailable
from relay.sources.ratelimit import RateLimiter
from tests.support.stores import free_port


async def test_without_redis_the_limiter_spends_nothing_and_says_so_once() -> None:
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens
    limiter = RateLimiter(client, "tok", limit=60, window_seconds=60)
    try:
        with capture_logs() as logs:
            for _ in range(3):
                with pytest.raises(ServiceUnavailable) as caught:
                    await limiter.try_acquire()
                assert caught.value.service == "Redis"
            # A response seen while Redis is down is still returned to the caller.
            feedback = await limiter.observe(200, {"X-RateLimit-Remaining": "7"})
            with pytest.raises(ServiceUnavailable):
                await limiter.acquire(max_wait=1.0)
    finally:
        await client.aclose()
    assert feedback.remaining == 7
    unavailable = [e for e in logs if e["event"] == "ratelimit_unavailable"]
    assert len(unavailable) == 1
    assert unavailable[0]["policy"] == "spend_nothing"
