"""Retention in the worker: an arq cron that prunes history past `RELAY_RETENTION_DAYS`.

arq runs a cron job once per tick across all workers (its job id is the tick), and
`relay.retention.prune` claims its batches with SKIP LOCKED, so a second worker or an
overlapping run splits the work rather than repeating it.
"""

from __future__ import annotations

from typing import Any

from arq import cron

from relay.retention import RUN_BUDGET, prune
from relay.settings import Settings

# Every ten minutes: each run deletes what aged past the cutoff since the last one, a few
# batches at most once the backlog of a first run is gone.
PRUNE_MINUTES = {0, 10, 20, 30, 40, 50}


async def prune_history(ctx: dict[str, Any]) -> int:
    """arq cron: delete old events, deliveries, attempts and gone snapshots. Returns events
    deleted (0 when retention is off)."""
    settings: Settings = ctx["settings"]
    if settings.retention_days <= 0:
        return 0
    result = await prune(ctx["pool"], settings.retention_days)
    return result.events


def retention_cron_jobs() -> list[Any]:
    """The pruning cron (also run once at startup, so a long-stopped deployment catches up)."""
    return [
        cron(
            prune_history,
            name="prune_history",
            minute=PRUNE_MINUTES,
            second=0,
            run_at_startup=True,
            unique=True,
            timeout=RUN_BUDGET + 60,
        )
    ]
