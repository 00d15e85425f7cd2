"""The `Source` protocol: what the poller knows of an upstream that has only lists.

A source names its lists (each an object type in snapshots), reads one page of one, fetches
one object's detail (a 404 is how a deletion is confirmed), reads its singletons (objects not
paged, e.g. InvoiceXT's ledgers), and reports its budget: how many requests it may spend and
how fast, and renders the webhook body its subscribers receive, when that is not Relay's
envelope. Ids are each object's `id`; a list's order (newest first by `order_field`) is what
lets the poller read its first page often and the whole list less often. The poller
(`relay.poller.lists`) runs any `Source` the same way; a new upstream plugs in here.

A `ScopedSource` (Dext) keeps its objects per scope (a practice's clients) and describes, on
top of that: the scope list itself, the lists read whole per scope (`ScopeList`), the parts a
complete scan reads in turn, a newest-first head of summaries, status views (`StatusViews`:
which statuses are read every time, which only when an item in them is old, which one is
probed), and the detail of one object. The poller (`relay.poller.tasks`) plans its task kinds
over that description and runs the same strategies for any scoped source: head read,
status-view read, complete scan with confirmed deletions, probe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import aiohttp
import redis.asyncio as aioredis

from relay.sources.models import CountingMetrics, JsonObject, Page, SetAsideTally
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


@dataclass(frozen=True)
class ScopeList:
    """A list a scoped source keeps per scope, read whole by the task `kind` (Dext: a client's
    `suppliers`), or with `single` one object per scope (its `connections`)."""

    kind: str
    object_type: str
    path: str  # how logs name it
    single: bool = False


@dataclass(frozen=True)
class StatusViews:
    """The scoped documents' status views the hot read re-checks.

    `always` are read whole every time; `if_old` only when a stored item in that status is
    older than the head page reaches (statuses entered only from newer ones); `probe` is read
    one item first and whole only when its total differs from what is stored."""

    always: tuple[str, ...]
    if_old: tuple[str, ...]
    probe: str | None
    per_page: int


@runtime_checkable
class ScopedSource(Protocol):
    """An upstream whose objects live per scope (Dext's clients), polled by planned tasks."""

    provider: str
    scope_type: str  # the snapshot type of a scope (`client`)
    object_type: str  # the snapshot type of the scanned, head-read objects (`document`)
    scope_lists: tuple[ScopeList, ...]
    scan_parts: tuple[str, ...]  # what a complete scan reads in turn (Dext's workspaces)
    scan_per_page: int  # items per page of a complete scan
    baseline_pages: int  # pages of one baseline slice
    head_max_pages: int  # the head read goes on while a page's tail is new, up to this
    order_field: str  # newest first by this field
    status_field: str
    status_views: StatusViews
    # Objects set aside since the poller last drained it.
    set_aside: SetAsideTally

    async def scopes(self, page: int) -> Page: ...

    async def scope_page(self, spec: ScopeList, scope: str, page: int) -> Page: ...

    async def scope_object(self, spec: ScopeList, scope: str) -> JsonObject: ...

    async def scan_page(
        self, scope: str, part: str, page: int, status: str | None = None
    ) -> Page: ...

    async def head_page(
        self, scope: str, page: int, status: str | None = None, per_page: int | None = None
    ) -> Page: ...

    async def detail(self, part: str, object_id: str) -> JsonObject: ...

    def part_of(self, obj: Mapping[str, Any]) -> str:
        """Which scan part (detail URL) an object or summary belongs to."""
        ...

    async def rate_limit_state(self) -> RateLimitState: ...

    def webhook_payload(self, body: Mapping[str, Any]) -> bytes | None: ...


class SourceFactory(Protocol):
    """How the poller opens an account's source: its `Source` (or `ScopedSource`) and the
    counters of its requests. `speed` is how much faster the upstream's clock runs
    (RELAY_UPSTREAM_SPEED); `rate_limit` per `window_seconds`, less `margin`, is the poll
    policy's view of the budget (a source that learns its own limit from the upstream's
    headers, like InvoiceXT, may ignore it); `options` are the client's own (tests shorten
    backoffs)."""

    def __call__(
        self,
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
    ) -> tuple[Source | ScopedSource, CountingMetrics]: ...
