"""`relay worker` as a real subprocess: the environment it reads its settings from, and starting
it with its log (stderr) going to a file the test reads."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from relay.settings import Settings
from tests.support.stores import TEST_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]


def worker_env(settings: Settings, **env: str) -> dict[str, str]:
    """The environment of a worker on `settings`' stores and queue: quick retries, a short
    lease, JSON logs at `warning`; `env` adds or replaces variables (`RELAY_LOG_LEVEL="info"`)."""
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RELAY_SECRET_KEY": TEST_SECRET_KEY,
        "RELAY_ALLOW_PRIVATE_TARGETS": "true",
        "RELAY_RETRY_SCHEDULE": "0.2,0.2,0.2,0.2",
        "RELAY_DELIVERY_TIMEOUT": "2",
        "RELAY_DELIVERY_LEASE": "1",
        "RELAY_DELIVERY_POLL_INTERVAL": "0.2",
        "RELAY_QUEUE_NAME": settings.queue_name,
        "RELAY_LOG_FORMAT": "json",
        "RELAY_LOG_LEVEL": "warning",
        **env,
    }


async def spawn_worker(env: dict[str, str], log: Path, *args: str) -> asyncio.subprocess.Process:
    """`relay worker *args` with `env`, its stderr appended to `log`; the caller stops it."""
    with log.open("ab") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "worker", *args, env=env, cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
