"""How to run a sandbox, for either provider: `relay sandbox`'s flags, and what tests set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from relay.errors import ConfigError

PROVIDERS: Final = ("dext", "invoicext")
# 2026-04-14T09:00:00Z: a fixed start keeps every timestamp of a seed's practice repeatable.
DEFAULT_START: Final = 1776157200.0
IDEMPOTENCY_TTL: Final = 24 * 3600.0


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
    # Dext only: drift switches (relay.sandbox.dext.drift), and how often each touches an
    # object; the Dext sandbox checks them.
    drift: frozenset[str] = frozenset()
    drift_rate: float = 0.3
    # InvoiceXT only: seed 004's plan (its hourly limit unless `rate_limit_set`), the monthly
    # allowance (None: the plan's), and whether `rate_limit` was given explicitly.
    plan: str = "starter"
    monthly_limit: int | None = None
    rate_limit_set: bool = False

    def validate(self) -> None:
        if self.provider not in PROVIDERS:
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
        if not 0 <= self.drift_rate <= 1:
            raise ConfigError("drift_rate must be from 0 to 1")

    @property
    def window(self) -> float:
        return self.window_seconds if self.window_seconds is not None else 60.0 / self.speed
