"""The sandbox's options and its in-process state object (practice, clock, access, faults)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from relay.errors import ConfigError
from relay.sandbox.clock import SimClock
from relay.sandbox.dext.access import Access, Token
from relay.sandbox.dext.drift import DRIFT_KINDS, Drift
from relay.sandbox.dext.generate import build_practice
from relay.sandbox.dext.practice import JSON, Practice, rfc3339
from relay.sandbox.dext.simulation import Simulation
from relay.sandbox.faults import Faults

# 2026-04-14T09:00:00Z: a fixed start keeps every timestamp of a seed's practice repeatable.
DEFAULT_START: Final = 1776157200.0
IDEMPOTENCY_TTL: Final = 24 * 3600.0
# One advance may cover at most this much simulated time, so a typo cannot hang the server.
MAX_ADVANCE: Final = 90 * 86400.0


@dataclass(frozen=True)
class SandboxOptions:
    """How to run a sandbox; the CLI sets the first eight, tests and benchmarks the rest."""

    host: str = "127.0.0.1"
    port: int = 8090
    seed: int = 1
    clients: int = 5
    items: int = 200
    rate_limit: int = 60
    speed: float = 1.0
    provider: str = "dext"
    # Real seconds per rate-limit window; None means 60 / speed (a simulated minute).
    window_seconds: float | None = None
    # Real seconds a session lasts.
    session_ttl: float = 3600.0
    # The default api token; None means `sandbox-token-<seed>`.
    api_token: str | None = field(default=None, repr=False)
    # More api tokens, each with `rate_limit`.
    tokens: tuple[str, ...] = field(default=(), repr=False)
    # False pauses every automatic change (tests drive changes through the control surface).
    simulate: bool = True
    # Multiplies the rate of spontaneous changes (scheduled follow-ups are not scaled).
    change_rate: float = 1.0
    start: float = DEFAULT_START
    idempotency_ttl: float = IDEMPOTENCY_TTL
    # Drift switches (relay.sandbox.dext.drift): which are on, and how often each touches an object.
    drift: frozenset[str] = frozenset()
    drift_rate: float = 0.3
    # InvoiceXT only: seed 004's plan (its hourly limit unless `rate_limit_set`), the monthly
    # allowance (None: the plan's), and whether `rate_limit` was given explicitly.
    plan: str = "starter"
    monthly_limit: int | None = None
    rate_limit_set: bool = False

    def validate(self) -> None:
        if self.provider not in ("dext", "invoicext"):
            raise ConfigError(f"unknown sandbox provider {self.provider!r}")
        if self.clients < 0 or self.items < 0:
            raise ConfigError("clients and items must not be negative")
        if self.rate_limit < 1:
            raise ConfigError("rate_limit must be at least 1")
        if self.speed < 0 or (self.speed == 0 and self.window_seconds is None):
            raise ConfigError("speed must be positive (or 0 with an explicit window_seconds)")
        if self.window_seconds is not None and self.window_seconds <= 0:
            raise ConfigError("window_seconds must be positive")
        if self.change_rate < 0:
            raise ConfigError("change_rate must not be negative")
        if not self.drift <= frozenset(DRIFT_KINDS):
            raise ConfigError(f"drift must be some of {', '.join(DRIFT_KINDS)}")
        if not 0 <= self.drift_rate <= 1:
            raise ConfigError("drift_rate must be from 0 to 1")

    @property
    def window(self) -> float:
        return self.window_seconds if self.window_seconds is not None else 60.0 / self.speed


class Sandbox:
    """Everything one sandbox serves; reachable from its app as `app[SANDBOX]`."""

    def __init__(self, options: SandboxOptions) -> None:
        options.validate()
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
