"""When to try a delivery again: the retry schedule, its jitter and `Retry-After`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Retries land up to this fraction later than the schedule says, never earlier, so endpoints
# recovering from an outage are not hit by every delivery in the same second.
JITTER = 0.1


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from `Retry-After` (delta-seconds or an HTTP date); None when absent or garbled."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text[:9]))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_delay(
    attempts_made: int,
    schedule: Sequence[float],
    retry_after: float | None = None,
    *,
    jitter: float = JITTER,
) -> float | None:
    """Seconds until the next attempt after `attempts_made` failed ones; None: give up.

    The schedule lists the waits between attempts, so there are `len(schedule) + 1` attempts in
    all. `Retry-After` is honoured within the schedule: never earlier than the scheduled step
    (an endpoint cannot make us retry faster) and never later than the schedule's longest step
    (it cannot park a delivery beyond what the schedule would ever wait).
    """
    if attempts_made < 1 or attempts_made > len(schedule):
        return None
    step = schedule[attempts_made - 1]
    delay = step * (1.0 + random.uniform(0.0, jitter))
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, max(schedule))
        delay = max(delay, step)
    return delay
