"""When to try a delivery again: the retry schedule, its jitter and `Retry-After`."""

from __future__ import annotations

import random
from collections.abc import Sequence

# Retries land up to this fraction later than the schedule says, never earlier, so endpoints
# recovering from an outage are not hit by every delivery in the same second.
JITTER = 0.1


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
