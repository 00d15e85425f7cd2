"""The upstreams' rate limits, in real seconds: a fixed window (Dext) or a rolling one (InvoiceXT).

Both count every request of a known key, whatever its answer (a refused one too), so a client
that hammers a limit stays over it. They differ in when budget comes back: a fixed window
resets all at once at its end (`floor(now / seconds)` numbers the windows), a rolling window
gives back each request `seconds` after it was made.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Usage:
    """One key's requests: its fixed window and the count in it, or its rolling hits."""

    index: int = -1
    count: int = 0
    hits: deque[float] = field(default_factory=deque)


@dataclass(frozen=True)
class Quota:
    """Where a key stands in its window (after counting, when it was counted)."""

    limit: int
    count: int
    window_start: float
    reset: float  # unix seconds: the fixed window's end (ceiled), or when the oldest hit ages out

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit

    def headers(self, reset_decimals: int = 0) -> dict[str, str]:
        reset = f"{self.reset:.{reset_decimals}f}" if reset_decimals else str(math.ceil(self.reset))
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": reset,
        }


class Window:
    """`seconds` of real time per window; `rolling` picks the rolling kind over the fixed one."""

    def __init__(self, seconds: float, *, rolling: bool = False) -> None:
        self.seconds = seconds
        self.rolling = rolling

    def bounds(self, now: float) -> tuple[int, float, int]:
        """(index, start, reset) of the fixed window holding real time `now`."""
        index = math.floor(now / self.seconds)
        return index, index * self.seconds, math.ceil((index + 1) * self.seconds)

    def count(self, usage: Usage, limit: int, now: float, amount: int = 1) -> Quota:
        """Count `amount` requests made at `now` and say where the key stands."""
        if self.rolling:
            self._age(usage, now)
            usage.hits.extend([now] * amount)
        else:
            self._roll(usage, now)
            usage.count += amount
        return self.peek(usage, limit, now)

    def peek(self, usage: Usage, limit: int, now: float) -> Quota:
        """Where the key stands at `now`, counting nothing."""
        if self.rolling:
            self._age(usage, now)
            oldest = usage.hits[0] if usage.hits else now
            reset = oldest + self.seconds if usage.hits else now
            return Quota(limit, len(usage.hits), oldest, reset)
        _, start, reset = self._roll(usage, now)
        return Quota(limit, usage.count, start, reset)

    def _age(self, usage: Usage, now: float) -> None:
        while usage.hits and usage.hits[0] <= now - self.seconds:
            usage.hits.popleft()

    def _roll(self, usage: Usage, now: float) -> tuple[int, float, int]:
        index, start, reset = self.bounds(now)
        if usage.index != index:
            usage.index, usage.count = index, 0
        return index, start, reset
