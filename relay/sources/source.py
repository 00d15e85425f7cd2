"""The `Source` protocol: what the poller knows of an upstream that has only lists.

A source names its lists (each an object type in snapshots), reads one page of one, fetches
one object's detail (a 404 is how a deletion is confirmed), reads its singletons (objects not
paged, e.g. InvoiceXT's ledgers), and reports its budget: how many requests it may spend and
how fast, and renders the webhook body its subscribers receive, when that is not Relay's
envelope. Ids are each object's `id`; a list's order (newest first by `order_field`) is what
lets the poller read its first page often and the whole list less often. The poller
(`relay.poller.lists`) runs any `Source` the same way; a new upstream plugs in here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import redis.asyncio as aioredis

from relay.sources.models import CountingMetrics, JsonObject, Page
from relay.sources.ratelimit import RateLimitState


@dataclass(frozen=True)
class ListSpec:
    """One paged list of a source: its name (`invoices`), the snapshot type of its objects,
    the field it is ordered by (newest first) and its largest page."""

    name: str
    object_type: str
    order_field: str = "created_at"
    per_page: int = 100
    # The scope a key needs to read it; a 403 on it is shown on the account, not fatal.
    scope: str | None = None
    # Its head is read every this many cycles (a list where news is rarer or matters less).
    head_every: int = 1


@dataclass(frozen=True)
class Budget:
    """What a source may spend: `limit` requests per `window_seconds`, and at most one request
    every `pace_seconds` (the window's pace, or slower when the month affords less)."""

    limit: int
    window_seconds: float
    pace_seconds: float
    monthly: dict[str, Any] | None = None


class Source(Protocol):
    """An upstream the poller can run without knowing it."""

    provider: str
    lists: tuple[ListSpec, ...]
    # The longest a call may wait for a rate-limit slot (the end of the poller's run), or None.
    max_wait: float | None

    async def page(self, spec: ListSpec, page: int) -> Page: ...

    async def detail(self, spec: ListSpec, object_id: str) -> JsonObject: ...

    async def singletons(self) -> dict[str, list[JsonObject]]: ...

    async def budget(self) -> Budget: ...

    async def rate_limit_state(self) -> RateLimitState: ...

    def webhook_payload(self, body: Mapping[str, Any]) -> bytes | None:
        """What this source's subscribers receive for an event envelope instead of it (None:
        the envelope); rendered once, when the event is stored (`relay.events`)."""
        ...


class SourceFactory(Protocol):
    """How the poller opens an account's source: its `Source` and the counters of its
    requests. `speed` is how much faster the upstream's clock runs (RELAY_UPSTREAM_SPEED)."""

    def __call__(
        self,
        base_url: str,
        api_token: str,
        *,
        http: aiohttp.ClientSession,
        redis: aioredis.Redis,
        speed: float,
        options: Mapping[str, Any],
    ) -> tuple[Source, CountingMetrics]: ...
