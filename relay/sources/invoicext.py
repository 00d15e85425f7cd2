"""The InvoiceXT connector: a `Source` over `GET /invoices`, `/bank/reconciliations`,
`/integrations/status` and `/usage/stats`, on a rolling hourly budget and a monthly one.

What each answer becomes (`invoicext-api.md`; all are `relay.errors.UpstreamError`):

- `401` (`invalid_api_key`, `authentication_required`): `UpstreamAuthError`, no retry; every
  later call of this client raises it without a request (one `account.auth_failed`, no storm).
- `403 insufficient_scope`: `UpstreamForbidden` naming the scope; the poller keeps polling what
  the key can read and shows the missing scope on the account.
- `404`: `UpstreamNotFound` (how a deletion is confirmed).
- `429 rate_limit_exceeded`: there is no `Retry-After`; the limiter blocks every process until
  `X-RateLimit-Reset`, then the call is repeated (at most `max_throttled` times).
- `429 monthly_limit_reached`: every process stops until the billing period ends (the day after
  `billing_period.to`, 00:00 UTC, in the upstream's clock compressed by `speed`), and the call
  raises `UpstreamRateLimited`: waiting for the hour would not help.
- `500`/`502`/`503`/`504` (HTML from the edge too), timeouts, dropped connections: capped
  exponential backoff, at most `max_retries` retries, then `UpstreamUnavailable`.
- A body that is not the success envelope: `UpstreamProtocolError`.

JSON is parsed with `relay.exactjson.loads`: money keeps its spelling (`0.10` stays `0.10`).
The monthly pace: `budget()` reads `/usage/stats` (at most once per `usage_every` seconds) and
asks the limiter to space requests by what is left of the period over the calls left.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import redis.asyncio as aioredis
import structlog

from relay import exactjson
from relay.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from relay.sources import invoicext_events
from relay.sources.models import CountingMetrics, JsonObject, Page, UpstreamMetrics
from relay.sources.ratelimit import RateLimitState
from relay.sources.ratelimit_rolling import RollingRateLimiter
from relay.sources.source import Budget, ListSpec

log = structlog.get_logger("relay.sources.invoicext")

RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
HOUR = 3600.0
INVOICES = ListSpec("invoices", "invoice", scope="invoices:read")
# A few reconciliations a day: their head every third cycle leaves the budget to invoices.
RECONCILIATIONS = ListSpec("reconciliations", "reconciliation", scope="bank:read", head_every=3)
_PATHS = {"invoices": "/invoices", "reconciliations": "/bank/reconciliations"}
# Of the month's calls, this share is kept back for the end of the period (and other tools).
MONTHLY_RESERVE = 0.02


@dataclass
class Monthly:
    """The billing period as `/usage/stats` last said."""

    used: int
    limit: int
    period_end: float  # upstream unix seconds when the period ends (the day after `to`)
    read_at: float  # our clock when it was read

    def to_json(self, pace: float) -> dict[str, Any]:
        return {
            "api_calls": self.used,
            "api_calls_limit": self.limit,
            "period_ends_at": datetime.fromtimestamp(self.period_end, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "pace_seconds": round(pace, 3),
        }


class InvoicextClient:
    """Calls to one InvoiceXT key; `speed` is how much faster the upstream's clock runs."""

    provider = "invoicext"
    lists: tuple[ListSpec, ...] = (INVOICES, RECONCILIATIONS)

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: aiohttp.ClientSession,
        limiter: RollingRateLimiter,
        metrics: UpstreamMetrics | None = None,
        speed: float = 1.0,
        max_retries: int = 4,
        max_throttled: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 30.0,
        usage_every: float = 3600.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._http = session
        self.limiter = limiter
        self.metrics: UpstreamMetrics = metrics or CountingMetrics()
        self.speed = speed
        self.max_retries = max_retries
        self.max_throttled = max_throttled
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.usage_every = usage_every / speed
        self._refused: UpstreamAuthError | None = None
        self.monthly: Monthly | None = None
        self.pace = 0.0
        self.missing_scopes: set[str] = set()
        # The longest wait for a rate-limit slot before a call gives up (the poller's run end).
        self.max_wait: float | None = None
        self._server_time: float | None = None
        self._period_clock = time.time()

    def __repr__(self) -> str:  # never the key
        return f"InvoicextClient({self.base_url!r})"

    # -- the Source protocol ----------------------------------------------------------------

    async def page(self, spec: ListSpec, page: int) -> Page:
        data = await self._get(_PATHS[spec.name], {"page": str(page), "limit": str(spec.per_page)})
        items = data.get(spec.name) if isinstance(data, dict) else None
        paging = data.get("pagination") if isinstance(data, dict) else None
        if not isinstance(items, list) or not isinstance(paging, dict):
            raise self._malformed(spec.name, f"data.{spec.name} and data.pagination expected")
        try:
            total = int(paging.get("total", len(items)))
            total_pages = int(paging.get("total_pages", page))
        except (TypeError, ValueError):
            raise self._malformed(spec.name, "pagination is not numbers") from None
        return Page(items, page, spec.per_page, total, total_pages)

    async def detail(self, spec: ListSpec, object_id: str) -> JsonObject:
        data = await self._get(f"{_PATHS[spec.name]}/{quote(object_id, safe='')}", {})
        if not isinstance(data, dict):
            raise self._malformed(spec.name, "data is not an object")
        return data

    async def singletons(self) -> dict[str, list[JsonObject]]:
        """The ledgers of `/integrations/status`, one object each (its id: the ledger name)."""
        data = await self._get("/integrations/status", {})
        if not isinstance(data, dict):
            raise self._malformed("integrations", "data is not an object")
        ledgers = [
            {**value, "id": name, "integration": name}
            for name, value in sorted(data.items())
            if isinstance(value, dict)
        ]
        return {"ledger": ledgers}

    async def budget(self) -> Budget:
        """The hour's limit and the pace the month affords, refreshed from `/usage/stats`."""
        now = time.time()
        if self.monthly is None or now - self.monthly.read_at >= self.usage_every:
            # Without settings:read the pace is the hour's alone (the scope is shown as missing).
            with contextlib.suppress(UpstreamForbidden):
                await self._read_usage()
        pace = 0.0
        if self.monthly is not None:
            left = max(self.monthly.limit * (1 - MONTHLY_RESERVE) - self.monthly.used, 1.0)
            seconds = max(self.monthly.period_end - self._upstream_now(), 0.0) / self.speed
            pace = seconds / left
        if abs(pace - self.pace) > 1e-6:
            self.pace = pace
            await self.limiter.set_pace(pace)
        state = await self.limiter.state()
        return Budget(
            state.limit,
            self.limiter.window_seconds,
            max(self.limiter.window_seconds / self.limiter.limit, pace),
            self.monthly.to_json(pace) if self.monthly else None,
        )

    def webhook_payload(self, body: Mapping[str, Any]) -> bytes | None:
        """Seed 004's body for this source's events (`relay.sources.invoicext_events`)."""
        return invoicext_events.webhook_payload(body)

    async def rate_limit_state(self) -> RateLimitState:
        return await self.limiter.state()

    # -- the rest ---------------------------------------------------------------------------

    def _upstream_now(self) -> float:
        """The upstream's clock: ours, or the sandbox's compressed one as of the usage read."""
        if self.monthly is None:
            return time.time()
        return self._period_clock + (time.time() - self.monthly.read_at) * self.speed

    async def _read_usage(self) -> None:
        data = await self._get("/usage/stats", {})
        period = data.get("billing_period") if isinstance(data, dict) else None
        try:
            if not isinstance(data, dict) or not isinstance(period, dict):
                raise TypeError("usage")
            used, limit = int(data["api_calls"]), int(data["api_calls_limit"])
            end_day = date.fromisoformat(str(period["to"])) + timedelta(days=1)
        except (AssertionError, KeyError, TypeError, ValueError):
            raise self._malformed("usage", "api_calls, api_calls_limit, billing_period") from None
        end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=UTC).timestamp()
        # The upstream's clock, as its answer's `meta.timestamp` said (a compressed sandbox's
        # month is not ours); without one, ours.
        self._period_clock = self._server_time or time.time()
        self.monthly = Monthly(used, limit, end, time.time())
        if used >= limit:
            await self._monthly_exhausted("/usage/stats")

    async def _monthly_exhausted(self, url: str) -> UpstreamRateLimited:
        """Stop every process until the period ends; the error the call raises."""
        end = self.monthly.period_end if self.monthly else time.time() + 86400 * self.speed
        wait = max(end - self._upstream_now(), 0.0) / self.speed
        await self.limiter.block_until(time.time() + wait)
        log.warning("upstream_monthly_limit", url=url, wait_seconds=round(wait, 1))
        return UpstreamRateLimited("monthly API call limit reached", url=url, retry_after=wait)

    def _malformed(self, what: str, detail: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            f"InvoiceXT {what}: unexpected answer", url=self.base_url, detail=detail
        )

    async def _get(self, path: str, params: Mapping[str, str]) -> Any:
        """`data` of the first success envelope, after waits and retries."""
        if self._refused is not None:
            raise self._refused
        url = f"{self.base_url}{path}"
        failures = throttled = 0
        while True:
            try:
                await self.limiter.acquire(max_wait=self.max_wait)
            except TimeoutError:
                # Blocked (a monthly limit, a long reset): end this run, the schedule comes back.
                raise UpstreamRateLimited(
                    f"GET {path}: no rate-limit slot within this run", url=url, retry_after=0.0
                ) from None
            started = time.monotonic()
            try:
                async with self._http.get(
                    url,
                    params=params,
                    headers={"Authorization": f"Bearer {self._key}"},
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as response:
                    raw = await response.read()
                    status = response.status
                    await self.limiter.observe(status, response.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.metrics.request_done(path, None, time.monotonic() - started)
                failures += 1
                if failures > self.max_retries:
                    raise UpstreamUnavailable(
                        f"GET {path} failed {failures} times ({type(exc).__name__})", url=url
                    ) from exc
                await self._pause(failures)
                continue
            self.metrics.request_done(path, status, time.monotonic() - started)
            if 200 <= status < 300:
                return self._data(path, raw)
            code, message = _error(raw)
            if status == 401:
                self._refused = UpstreamAuthError(
                    f"InvoiceXT refused the key: {code}", url=url, code=code or "unauthorized"
                )
                raise self._refused
            if status == 403:
                scope = _scope_in(message) or path
                self.missing_scopes.add(scope)
                raise UpstreamForbidden(f"GET {path}: missing scope {scope}", url=url, status=403)
            if status == 404:
                raise UpstreamNotFound(f"GET {path}: not found", url=url, status=404)
            if status == 429 and code == "monthly_limit_reached":
                raise await self._monthly_exhausted(url)
            if status == 429:
                throttled += 1
                self.metrics.count("throttled")
                if throttled > self.max_throttled:
                    raise UpstreamRateLimited(
                        f"GET {path} still rate limited after {throttled} tries",
                        url=url,
                        retry_after=0.0,
                    )
                continue  # the limiter holds every process until X-RateLimit-Reset
            if status in RETRYABLE_STATUSES:
                failures += 1
                if failures > self.max_retries:
                    raise UpstreamUnavailable(
                        f"GET {path} answered {status} {failures} times", url=url, status=status
                    )
                await self._pause(failures)
                continue
            raise UpstreamError(f"GET {path} answered {status} {code}", url=url, status=status)

    def _data(self, path: str, raw: bytes) -> Any:
        try:
            body = exactjson.loads(raw)
        except ValueError:
            raise self._malformed(path, "the body is not JSON") from None
        if not isinstance(body, dict) or body.get("success") is not True or "data" not in body:
            raise self._malformed(path, "not a success envelope")
        meta = body.get("meta")
        stamp = meta.get("timestamp") if isinstance(meta, dict) else None
        try:
            self._server_time = datetime.fromisoformat(str(stamp)).timestamp()
        except ValueError:
            self._server_time = None
        return body["data"]

    async def _pause(self, attempt: int) -> None:
        delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))


def _error(raw: bytes) -> tuple[str | None, str]:
    try:
        body = exactjson.loads(raw)
    except ValueError:
        return None, ""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    return (code if isinstance(code, str) else None), str(error.get("message", ""))


def _scope_in(message: str) -> str | None:
    for word in message.replace(",", " ").split():
        if ":" in word and word.split(":", 1)[1] in ("read", "write"):
            return word.strip(".'\"")
    return None


# InvoiceXT's Starter plan: the limiter learns the real limit from the first answer's headers.
DEFAULT_LIMIT = 100


def open_source(
    base_url: str,
    api_token: str,
    *,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    speed: float,
    options: Mapping[str, Any],
    rate_limit: int = DEFAULT_LIMIT,
    window_seconds: float = HOUR,
    margin: int = 1,
) -> tuple[InvoicextClient, CountingMetrics]:
    """An account's InvoiceXT source on the key's shared rolling-hour limiter (the hour and
    the month compress by `speed`, like Dext's minute); a `SourceFactory`. The limit is the
    Starter plan's until the key's own headers say otherwise, so the poll policy's
    `rate_limit`, `window_seconds` and `margin` (Dext's minute) are not used."""
    limiter = RollingRateLimiter(
        redis, api_token, limit=DEFAULT_LIMIT, window_seconds=HOUR / speed, margin=1
    )
    metrics = CountingMetrics()
    client = InvoicextClient(
        base_url, api_token, session=http, limiter=limiter, metrics=metrics, speed=speed, **options
    )
    return client, metrics
