"""The Dext sandbox's in-process state object (practice, clock, access, faults, drift)."""

from __future__ import annotations

import time
from typing import Any, Final

from aiohttp import web

from relay.errors import ConfigError
from relay.sandbox.clock import SimClock
from relay.sandbox.control import MAX_ADVANCE as CONTROL_MAX_ADVANCE
from relay.sandbox.dext.access import Access, Token
from relay.sandbox.dext.drift import DRIFT_KINDS, Drift
from relay.sandbox.dext.generate import build_practice
from relay.sandbox.dext.practice import Practice
from relay.sandbox.dext.simulation import Simulation
from relay.sandbox.faults import Faults
from relay.sandbox.options import SandboxOptions
from relay.sandbox.records import ChangeLog, RequestLog
from relay.sandbox.wire import JSON, rfc3339

# One advance may cover at most this much simulated time (the control surface's bound too).
MAX_ADVANCE: Final = CONTROL_MAX_ADVANCE


class Sandbox:
    """Everything one sandbox serves; reachable from its app as `app[SANDBOX]`."""

    def __init__(self, options: SandboxOptions) -> None:
        options.validate()
        if not options.drift <= frozenset(DRIFT_KINDS):
            raise ConfigError(f"drift must be some of {', '.join(DRIFT_KINDS)}")
        self.options = options
        self.clock = SimClock(options.start, options.speed)
        self.practice: Practice = build_practice(
            options.seed, options.clients, options.items, options.start
        )
        self.access = Access(window_seconds=options.window, session_ttl=options.session_ttl)
        self.token: Token = self.access.add_token(
            options.api_token or f"sandbox-token-{options.seed}", options.rate_limit
        )
        for extra in options.tokens:
            self.access.add_token(extra, options.rate_limit)
        self.faults = Faults(options.seed)
        self.drift = Drift(options.drift, options.drift_rate, options.seed)
        self.simulation = Simulation(
            self.practice,
            seed=options.seed,
            start=options.start,
            paused=not options.simulate,
            change_rate=options.change_rate,
        )
        # (token_id, Idempotency-Key) -> (real time, status, body) of the first answer.
        self.idempotency: dict[tuple[str, str], tuple[float, int, bytes]] = {}

    @property
    def changes(self) -> list[JSON]:
        return self.practice.log.entries

    @property
    def changes_log(self) -> ChangeLog:
        return self.practice.log

    @property
    def request_log(self) -> RequestLog:
        return self.access.log

    def sync(self) -> float:
        """Bring the simulation up to the clock; returns the simulated now."""
        now = self.clock.now()
        self.simulation.run_until(now)
        return now

    def advance(self, seconds: float) -> list[JSON]:
        """Move simulated time forward, running the simulation over it; returns its changes."""
        if not 0 <= seconds <= MAX_ADVANCE:
            raise ValueError(f"seconds must be from 0 to {MAX_ADVANCE:.0f}")
        before = self.practice.log.seq
        self.clock.advance(seconds)
        self.sync()
        return self.practice.log.since(before)

    def remember(self, key: tuple[str, str], status: int, body: bytes) -> None:
        now = time.time()
        ttl = self.options.idempotency_ttl
        if len(self.idempotency) > 10_000:
            self.idempotency = {k: v for k, v in self.idempotency.items() if now - v[0] < ttl}
        self.idempotency[key] = (now, status, body)

    def recall(self, key: tuple[str, str]) -> tuple[int, bytes] | None:
        found = self.idempotency.get(key)
        if found is None or time.time() - found[0] >= self.options.idempotency_ttl:
            return None
        return found[1], found[2]

    def state(self) -> dict[str, Any]:
        now = self.sync()
        return {
            "now": rfc3339(now),
            "now_unix": now,
            "speed": self.options.speed,
            "window_seconds": self.access.window_seconds,
            "rate_limit": self.options.rate_limit,
            "clients": len(self.practice.clients),
            "client_ids": sorted(self.practice.clients),
            "counts": self.practice.counts(),
            "tokens": [
                {
                    "token_id": t.token_id,
                    "api_token": t.api_token,
                    "rate_limit": t.rate_limit,
                    "revoked": t.revoked,
                }
                for t in self.access.tokens.values()
            ],
            "change_seq": self.practice.log.seq,
            "simulation": self.simulation.describe(),
            "drift": self.drift.describe(),
        }


SANDBOX: Final = web.AppKey("sandbox", Sandbox)

__all__ = ["MAX_ADVANCE", "SANDBOX", "Sandbox", "SandboxOptions"]
