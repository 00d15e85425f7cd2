"""Reading an upstream list page by page for the poller: every page of a list, the log line
of a skipped page; and the typed pooled connection the store calls take."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import structlog

from relay.errors import UpstreamProtocolError
from relay.sources.models import JsonObject, Page

log = structlog.get_logger("relay.poller")


@asynccontextmanager
async def _connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection typed as the Connection the store functions take."""
    async with pool.acquire() as proxy:
        yield cast(asyncpg.Connection, proxy)


def _page_skipped(account_id: str, path: str, page: int, exc: UpstreamProtocolError) -> None:
    log.warning("page_skipped", account_id=account_id, path=path, page=page, detail=exc.detail)


async def _pages(
    account_id: str, path: str, fetch: Callable[..., Awaitable[Page]], *args: Any, **kwargs: Any
) -> tuple[list[JsonObject], bool]:
    """Every item of every page of one list; complete is False when a page was malformed
    (it is logged and the list stops there: what follows it cannot be trusted to be all)."""
    items: list[JsonObject] = []
    page_no = 1
    while True:
        try:
            page = await fetch(*args, page=page_no, **kwargs)
        except UpstreamProtocolError as exc:
            _page_skipped(account_id, path, page_no, exc)
            return items, False
        items.extend(page.items)
        if not page.has_next:
            return items, True
        page_no += 1
