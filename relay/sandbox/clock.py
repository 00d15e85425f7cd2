"""The simulated clock: real time scaled by a speed, plus manual advances."""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    """`now() = start + real_elapsed * speed + advanced` (unix seconds, simulated)."""

    def __init__(
        self, start: float, speed: float, real: Callable[[], float] = time.monotonic
    ) -> None:
        self.start = start
        self.speed = speed
        self.advanced = 0.0
        self._real = real
        self._real_start = real()

    def now(self) -> float:
        return self.start + (self._real() - self._real_start) * self.speed + self.advanced

    def advance(self, seconds: float) -> float:
        self.advanced += seconds
        return self.now()
