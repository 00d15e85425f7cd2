"""Relay's settings, parsed once from the environment into a frozen value passed everywhere."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from relay.errors import ConfigError

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/relay"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RETRY_SCHEDULE = (60.0, 300.0, 1800.0, 7200.0, 43200.0)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """Everything Relay reads from its environment; nothing else touches `os.environ`."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    admin_token: str | None = field(default=None, repr=False)
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    allow_private_targets: bool = False
    log_format: str | None = None  # None: console in a terminal, JSON otherwise
    log_level: str = "info"
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    delivery_timeout: float = 10.0
    # Name of the arq queue; tests give every run its own so parallel runs never share jobs.
    queue_name: str = "relay:queue"
    # Where the operator commands (`relay accounts ...`) find the admin API.
    api_url: str = "http://127.0.0.1:8080"
    # Development only: how many times faster than real time the upstream's clock runs (match
    # `relay sandbox --speed`), so rate-limit windows and poll cadences compress the same way.
    upstream_speed: float = 1.0
    # Delivery dispatcher: in-flight requests per worker process, per endpoint (subscription),
    # deliveries claimed per query, how long a claim lasts before another worker may take the
    # delivery over (a crashed worker's claims expire), and how often to look for due work
    # when nothing wakes the dispatcher.
    delivery_concurrency: int = 256
    delivery_endpoint_concurrency: int = 64
    delivery_batch_size: int = 256
    delivery_lease: float = 60.0
    delivery_poll_interval: float = 1.0
    # Housekeeping: events (with their deliveries and attempts) and gone snapshots older than
    # this many days are deleted by the workers; 0 keeps everything forever.
    retention_days: float = 30.0
    # A subscription whose every attempt failed for this long (seconds), with at least
    # `relay.delivery.endpoints.MIN_FAILED_ATTEMPTS` attempts, is disabled (like Svix: 5 days).
    endpoint_disable_after: float = 432000.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse settings from `env` (default: os.environ); a bad value is one clear ConfigError."""
        env = os.environ if env is None else env
        log_format = env.get("RELAY_LOG_FORMAT") or None
        if log_format not in (None, "json", "console"):
            raise ConfigError(f"RELAY_LOG_FORMAT must be 'json' or 'console', not {log_format!r}")
        keys = tuple(k.strip() for k in env.get("RELAY_SECRET_KEY", "").split(",") if k.strip())
        return cls(
            database_url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
            admin_token=env.get("RELAY_ADMIN_TOKEN") or None,
            secret_keys=keys,
            allow_private_targets=_parse_bool(env, "RELAY_ALLOW_PRIVATE_TARGETS"),
            log_format=log_format,
            log_level=(env.get("RELAY_LOG_LEVEL") or "info").lower(),
            retry_schedule=_parse_schedule(env.get("RELAY_RETRY_SCHEDULE")),
            delivery_timeout=_parse_positive(env, "RELAY_DELIVERY_TIMEOUT", 10.0),
            queue_name=env.get("RELAY_QUEUE_NAME") or "relay:queue",
            delivery_concurrency=int(_parse_positive(env, "RELAY_DELIVERY_CONCURRENCY", 256)),
            delivery_endpoint_concurrency=int(
                _parse_positive(env, "RELAY_DELIVERY_ENDPOINT_CONCURRENCY", 64)
            ),
            delivery_lease=_parse_positive(env, "RELAY_DELIVERY_LEASE", 60.0),
            delivery_poll_interval=_parse_positive(env, "RELAY_DELIVERY_POLL_INTERVAL", 1.0),
            api_url=(env.get("RELAY_API_URL") or "http://127.0.0.1:8080").rstrip("/"),
            upstream_speed=_parse_positive(env, "RELAY_UPSTREAM_SPEED", 1.0),
            retention_days=_parse_retention(env.get("RELAY_RETENTION_DAYS")),
            endpoint_disable_after=_parse_positive(env, "RELAY_ENDPOINT_DISABLE_AFTER", 432000.0),
        )

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (tests and `relay demo` derive settings this way)."""
        return replace(self, **changes)


def _parse_bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _parse_positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, not {raw!r}")
    return value


def _parse_retention(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return 30.0
    try:
        days = float(raw)
    except ValueError:
        raise ConfigError(f"RELAY_RETENTION_DAYS must be a number of days, not {raw!r}") from None
    if not days >= 0 or days == float("inf"):
        raise ConfigError(f"RELAY_RETENTION_DAYS must be 0 (keep forever) or more, not {raw!r}")
    return days


def _parse_schedule(raw: str | None) -> tuple[float, ...]:
    if raw is None or not raw.strip():
        return DEFAULT_RETRY_SCHEDULE
    try:
        schedule = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"RELAY_RETRY_SCHEDULE must be comma-separated seconds, like 60,300,1800; got {raw!r}"
        ) from None
    if not schedule or any(s < 0 for s in schedule):
        raise ConfigError(f"RELAY_RETRY_SCHEDULE must list non-negative seconds, got {raw!r}")
    return schedule


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
