"""Several OS processes share one token against the sandbox: no 429s, no window over the limit."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time

from relay.settings import Settings
from tests.support.sandbox import SandboxFactory

WORKER = """
import asyncio, sys, time
import redis.asyncio as aioredis
from relay.http import create_client_session
from relay.logs import configure_logging
from relay.sources.ratelimit import RateLimiter
from relay.sources.dext import DextClient

async def main(url, token, redis_url, limit, width, windows):
    configure_logging("json", "warning")
    redis = aioredis.from_url(redis_url)
    async with create_client_session(timeout=10) as http:
        limiter = RateLimiter(redis, token, limit=limit, window_seconds=width)
        client = DextClient(url, token, session=http, limiter=limiter)
        print("ready", flush=True)
        start = float(await asyncio.to_thread(sys.stdin.readline))
        stop = start + windows * width
        await asyncio.sleep(max(start - time.time(), 0))
        async def worker():
            done = 0
            while time.time() < stop:
                await client.clients(per_page=1)
                done += 1
            return done
        print(sum(await asyncio.gather(*(worker() for _ in range(3)))))
    await redis.aclose()

url, token, redis_url, limit, width, windows = sys.argv[1:]
asyncio.run(main(url, token, redis_url, int(limit), float(width), int(windows)))
"""


async def test_four_processes_share_one_token_without_a_429(
    sandbox_factory: SandboxFactory, settings: Settings
) -> None:
    limit, width, windows = 30, 2.0, 3
    handle = await sandbox_factory(rate_limit=limit, window_seconds=width)
    args = [handle.url, handle.token, settings.redis_url, str(limit), repr(width), str(windows)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(4)
    ]
    # Interpreters start slowly on a busy machine: begin together once all are ready.
    for proc in procs:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
    start = math.ceil((time.time() + 0.2) / width) * width
    outputs = await asyncio.gather(*(p.communicate(f"{start!r}\n".encode()) for p in procs))
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert all(int(out) > 0 for out, _ in outputs)  # every process got its share

    summary = (await handle.requests_summary())["tokens"]
    stats = summary[handle.sandbox.token.token_id]
    assert stats["rate_limited"] == 0
    assert stats["max_in_window"] <= limit
    per_window = {w["start"]: w["count"] for w in stats["windows"]}
    used = [per_window.get(start + i * width, 0) for i in range(windows)]
    assert min(used) >= limit - 2, used  # the budget is used, not just respected
