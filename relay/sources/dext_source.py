"""Dext as a `ScopedSource`: what the poller reads of a practice, and why, over `DextClient`.

Dext has no `updated_since` and 60 requests a minute per token, so where changes happen has to
be known in advance; that knowledge lives here, and the poller's strategies
(`relay.poller.tasks`) only follow it:

- Scopes are the practice's clients (`/clients`, every page); per client, `/suppliers` and
  `/expense_reports` are read whole and `/connections` is one object.
- A complete scan reads the full items of `/costs` then `/sales` (the workspaces, per_page 50:
  their objects are large), `BASELINE_PAGES` pages per baseline slice; a deletion is confirmed
  by `GET /costs/{id}` (or `/sales/{id}`) answering 404.
- The head is `/documents` (summaries of both workspaces, newest first, per_page 100), read
  while its page's tail is still unseen, up to `HEAD_MAX_PAGES`.
- Status views: `ready` is read every hot run (items wait there for publication and change);
  `processing` and `review` are entered only from newer statuses, so they are read only when a
  stored item in them is older than the head reaches; `archived` (published -> archived happens
  to old items) is probed with one item and read whole only when its total differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import redis.asyncio as aioredis

from relay.sources.dext import MAX_ITEMS_PER_PAGE, MAX_PER_PAGE, DextClient
from relay.sources.models import CountingMetrics, JsonObject, Page, SetAsideTally
from relay.sources.ratelimit import RateLimiter, RateLimitState
from relay.sources.source import ScopeList, StatusViews

HOT_ALWAYS: Final = ("ready",)
# Entered only from newer statuses (processing -> review): polled only when an item in them is
# older than the head page reaches.
HOT_IF_OLD: Final = ("processing", "review")
PROBED: Final = "archived"
HEAD_MAX_PAGES: Final = 5
BASELINE_PAGES: Final = 10
WORKSPACES: Final = ("costs", "sales")
SCAN_PER_PAGE: Final = MAX_ITEMS_PER_PAGE

SUPPLIERS: Final = ScopeList("suppliers", "supplier", "/suppliers")
EXPENSE_REPORTS: Final = ScopeList("expense_reports", "expense_report", "/expense_reports")
CONNECTIONS: Final = ScopeList("connections", "connection", "/connections", single=True)


class DextSource:
    """One Dext token's practice described for the poller (see the module docstring)."""

    provider = "dext"
    scope_type = "client"
    object_type = "document"
    scope_lists: tuple[ScopeList, ...] = (SUPPLIERS, EXPENSE_REPORTS, CONNECTIONS)
    scan_parts: tuple[str, ...] = WORKSPACES
    scan_per_page = SCAN_PER_PAGE
    baseline_pages = BASELINE_PAGES
    head_max_pages = HEAD_MAX_PAGES
    order_field = "created_at"
    status_field = "status"
    status_views = StatusViews(HOT_ALWAYS, HOT_IF_OLD, PROBED, MAX_PER_PAGE)

    def __init__(self, client: DextClient) -> None:
        self.client = client
        # The client's tally: objects set aside since the poller last drained it.
        self.set_aside: SetAsideTally = client.set_aside

    def __repr__(self) -> str:
        return f"DextSource({self.client!r})"

    async def scopes(self, page: int) -> Page:
        return await self.client.clients(page=page)

    async def scope_page(self, spec: ScopeList, scope: str, page: int) -> Page:
        if spec is SUPPLIERS:
            return await self.client.suppliers(scope, page=page)
        if spec is EXPENSE_REPORTS:
            return await self.client.expense_reports(scope, page=page)
        raise ValueError(f"Dext has no paged scope list {spec.kind!r}")

    async def scope_object(self, spec: ScopeList, scope: str) -> JsonObject:
        if spec is CONNECTIONS:
            return await self.client.connections(scope)
        raise ValueError(f"Dext has no single scope object {spec.kind!r}")

    async def scan_page(self, scope: str, part: str, page: int, status: str | None = None) -> Page:
        fetch = self.client.costs if part == "costs" else self.client.sales
        if status is None:
            return await fetch(scope, page=page, per_page=SCAN_PER_PAGE)
        return await fetch(scope, status=status, page=page, per_page=SCAN_PER_PAGE)

    async def head_page(
        self, scope: str, page: int, status: str | None = None, per_page: int | None = None
    ) -> Page:
        size = MAX_PER_PAGE if per_page is None else per_page
        if status is None:
            return await self.client.documents(scope, page=page, per_page=size)
        return await self.client.documents(scope, status=status, page=page, per_page=size)

    async def detail(self, part: str, object_id: str) -> JsonObject:
        if part == "sales":
            return await self.client.sale(object_id)
        return await self.client.cost(object_id)

    def part_of(self, obj: Mapping[str, Any]) -> str:
        return str(obj.get("workspace", "costs"))

    async def rate_limit_state(self) -> RateLimitState:
        return await self.client.rate_limit_state()

    def webhook_payload(self, body: Mapping[str, Any]) -> bytes | None:
        return None  # Dext's subscribers receive Relay's envelope


def open_source(
    base_url: str,
    api_token: str,
    *,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    speed: float,
    options: Mapping[str, Any],
    rate_limit: int,
    window_seconds: float,
    margin: int,
) -> tuple[DextSource, CountingMetrics]:
    """An account's Dext source on the token's shared limiter (`rate_limit` per
    `window_seconds`, `margin` left for other tools); a `SourceFactory`."""
    limiter = RateLimiter(
        redis, api_token, limit=rate_limit, window_seconds=window_seconds, margin=margin
    )
    metrics = CountingMetrics()
    client = DextClient(
        base_url, api_token, session=http, limiter=limiter, metrics=metrics, **options
    )
    return DextSource(client), metrics
