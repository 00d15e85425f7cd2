"""The rolling-hour limiter: several processes on one key, compressed windows, no 429."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from relay.settings import Settings
from tests.support.sandbox import IxtHandle

WINDOW = 2.0  # real seconds in the sandbox's (and the limiter's) rolling "hour"
LIMIT = 20
PROCESSES = 3
SECONDS = 2.5 * WINDOW


async def test_processes_on_one_key_never_exceed_the_rolling_limit(
    settings: Settings, ixt_factory: Callable[..., Awaitable[IxtHandle]]
) -> None:
    ixt = await ixt_factory(rate_limit=LIMIT, window_seconds=WINDOW, items=5)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.sources.ixt_limiter_worker",
            ixt.url,
            ixt.token,
            settings.redis_url,
            str(WINDOW),
            str(LIMIT),
            str(SECONDS),
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    outputs = [await proc.communicate() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    grants = sorted(
        (float(at), int(status))
        for out, _ in outputs
        for at, status in (line.split() for line in out.decode().splitlines())
    )
    assert all(status == 200 for _, status in grants), "no 429, no error"
    # The server's own count: in no rolling window more than the limit.
    hits = sorted(r["at"] for r in ixt.box.requests)
    most = max(sum(1 for t in hits if s <= t < s + WINDOW) for s in hits)
    assert most <= LIMIT
    # Every process got a share, and the budget was used (two and a half windows' worth).
    assert all(out.strip() for out, _ in outputs)
    assert len(hits) >= 2 * (LIMIT - 1)
    # Spent evenly: no tenth of a window holds more than a few of its requests.
    tenth = WINDOW / 10
    assert max(sum(1 for t in hits if s <= t < s + tenth) for s in hits) <= 4
