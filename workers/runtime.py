"""Process-wide tuning of the long-running `relay worker` process."""

from __future__ import annotations

import gc

# A worker holds thousands of live objects (claimed deliveries, their bodies and outcomes, the
# connection pools) and allocates a dozen more per delivery. With CPython's defaults (700, 10,
# 10) the collector walks them over and over: alternating runs of the dispatcher (one process,
# 20,000 deliveries, as bench/delivery_throughput.py) took about 184 us of CPU per delivery with
# the defaults, 170 with the startup objects frozen, and about 150 with both. A plain aiohttp
# loop does not gain from this (it got slower), so only the worker sets it.
WORKER_GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Freeze what is alive now (imports, the built worker) out of the collector's scans, and
    collect young objects less often. Call once, after startup."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
