"""The worker's per-process view of its stores: one `Outage` tracker per store and component.

Jobs and crons call `guard` around their store work: a store failure becomes one
`store_unavailable` line per incident (and `store_recovered` after it) instead of an arq
traceback per run, and the job ends normally, leaving its work in Postgres for the next run.
"""

from __future__ import annotations

from typing import Any

from relay.db import Outage
from relay.settings import Settings


def outage(ctx: dict[str, Any], service: str, component: str) -> Outage:
    """This process's tracker of `service` as seen by `component` (created on first use)."""
    trackers: dict[tuple[str, str], Outage] = ctx.setdefault("outages", {})
    tracker = trackers.get((service, component))
    if tracker is None:
        settings: Settings = ctx["settings"]
        url = settings.database_url if service == "Postgres" else settings.redis_url
        tracker = trackers[(service, component)] = Outage(service, url, component)
    return tracker


def recovered(ctx: dict[str, Any], component: str) -> None:
    """`component` just worked: close any outage it had open."""
    for (_service, name), tracker in ctx.get("outages", {}).items():
        if name == component:
            tracker.recovered()
