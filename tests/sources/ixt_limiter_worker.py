"""One process of the multi-process limiter test: takes slots from a shared rolling limiter on
one key and calls the InvoiceXT sandbox with each, for `seconds`; prints `at status` lines.

    python -m tests.sources.ixt_limiter_worker URL KEY REDIS_URL WINDOW LIMIT SECONDS
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import redis.asyncio as aioredis

from relay.sources.ratelimit_rolling import RollingRateLimiter


async def main(
    url: str, key: str, redis_url: str, window: float, limit: int, seconds: float
) -> None:
    redis = aioredis.from_url(redis_url)  # type: ignore[no-untyped-call]
    limiter = RollingRateLimiter(redis, key, limit=limit, window_seconds=window, margin=1)
    end = time.time() + seconds
    async with aiohttp.ClientSession() as http:
        while time.time() < end:
            try:
                await limiter.acquire(max_wait=end - time.time())
            except TimeoutError:
                break
            at = time.time()
            async with http.get(
                f"{url}/invoices", params={"limit": "1"}, headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                await resp.read()
                await limiter.observe(resp.status, resp.headers)
                print(f"{at!r} {resp.status}", flush=True)
    await redis.aclose()


if __name__ == "__main__":
    url, key, redis_url, window, limit, seconds = sys.argv[1:7]
    asyncio.run(main(url, key, redis_url, float(window), int(limit), float(seconds)))
