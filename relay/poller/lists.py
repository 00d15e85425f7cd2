"""The source-generic pass: any `relay.sources.source.Source` polled list by list.

Lists are newest first and have no `updated_since`, so where changes happen is known: new
objects arrive on page 1 and the ones still changing (processing, awaiting publication) are
recent. A cycle therefore reads each list's *head*: page 1 every cycle, page 2 every fourth,
page `k` every `4**(k-1)`th (the pages of the last complete scan, at most `HEAD_PAGES`), diffing
each page as it arrives. A *complete scan* (every page, recorded as one scan) is due when the
last one finished more than `FULL_SHARE`'s worth of the budget ago: at most that share of the
requests goes to full scans, the rest to the head, so a small budget is spent where news is.
A complete scan then confirms each deletion candidate with its own `404` (pages shift while a
scan runs: a missed item is only a candidate); a head read never deletes. Singletons (ledgers)
are read every `SINGLETON_EVERY` cycles. The first cycle (complete scans: none finished yet) is
the account's baseline (emits nothing unless the account backfills); a first cycle with a page
it could not read is no baseline and runs again.
A list the key may not read (`403`) is skipped, the scope shown on the account, and tried again
every `SCOPE_RETRY` cycles; the other lists keep flowing. The limiter paces every request
(the source's budget), so a cycle of a 100-an-hour source simply takes its share of the hour.

Snapshots of a source's objects are kept under `client_id` = `SOURCE_CLIENT` (the source has
no clients; the events say `client_id: null`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from relay import snapshots
from relay.errors import UpstreamForbidden, UpstreamNotFound, UpstreamProtocolError
from relay.poller.pages import _connection
from relay.sources import accounts
from relay.sources.source import ListSpec, Source

log = structlog.get_logger("relay.poller")

SOURCE_CLIENT = "-"
SCOPE_RETRY = 10
HEAD_PAGES = 8
FULL_SHARE = 0.1  # of the budget's requests, at most this share goes to complete scans
SINGLETON_EVERY = 8
# A complete scan reads the first list's page 1 after every this many of its pages, so news
# waits for at most that many requests while a long scan runs.
INTERLEAVE = 1


@dataclass
class Cycle:
    """What one cycle over a source did."""

    changed: int = 0
    complete: bool = True  # every list read whole, without a gap
    forbidden: set[str] = field(default_factory=set)
    gaps: bool = False  # a page could not be read (a list the key may not read is no gap)


@dataclass
class ListPoller:
    """Runs cycles of one source for one account."""

    pool: asyncpg.Pool
    source: Source
    account: accounts.Account
    clock: Callable[[], float]
    cycles: int = 0
    forbidden: set[str] = field(default_factory=set)
    # Pages of each list as its last read said.
    pages: dict[str, int] = field(default_factory=dict)
    full_scans: int = 0

    async def _full_due(self, spec: ListSpec, pace: float) -> bool:
        """A complete scan is due when none finished within `pages * pace / FULL_SHARE`."""
        async with _connection(self.pool) as conn:
            last = await snapshots.seconds_since_complete_scan(
                conn,
                account_id=self.account.id,
                object_type=spec.object_type,
                client_id=SOURCE_CLIENT,
            )
        if last is None:
            return True
        age, pages = last
        self.pages.setdefault(spec.name, max(pages, 1))
        return age >= max(pages, 1) * pace / FULL_SHARE

    async def cycle(self, emit: bool, pace: float = 0.0) -> Cycle:
        """One cycle: each list's head (or its complete scan, when due), then singletons."""
        result = Cycle()
        for spec in self.source.lists:
            key = spec.scope or spec.name
            if key in self.forbidden and self.cycles % SCOPE_RETRY:
                result.complete = False
                result.forbidden.add(key)
                continue
            try:
                if await self._full_due(spec, pace):
                    self.full_scans += 1
                    changed, complete = await self._scan(spec, emit)
                elif self.cycles % spec.head_every == 0:
                    changed, complete = await self._head(spec, emit)
                else:
                    continue
            except UpstreamForbidden:
                log.warning("scope_missing", account_id=self.account.id, scope=key)
                result.forbidden.add(key)
                result.complete = False
                continue
            result.changed += changed
            result.complete = result.complete and complete
            result.gaps = result.gaps or not complete
        try:
            if self.cycles % SINGLETON_EVERY == 0:
                for object_type, objects in (await self.source.singletons()).items():
                    result.changed += await self._diff(object_type, objects, emit)
        except UpstreamForbidden:
            result.forbidden.add("settings:read")
        except UpstreamProtocolError as exc:
            log.warning("page_skipped", account_id=self.account.id, path=exc.url, page=0)
            result.complete = False
            result.gaps = True
        self.forbidden = result.forbidden
        self.cycles += 1
        return result

    async def _diff(
        self, object_type: str, objects: Sequence[Mapping[str, Any]], emit: bool, **scan: Any
    ) -> int:
        async with _connection(self.pool) as conn:
            # A page of a complete scan is also recorded for the scan (`scan_id`, `page`).
            diff = snapshots.diff_scan_page if scan else snapshots.diff_objects
            diffed = await diff(
                conn,
                account_id=self.account.id,
                object_type=object_type,
                objects=objects,
                client_id=SOURCE_CLIENT,
                emit=emit,
                payload=self.source.webhook_payload,
                **scan,
            )
        return len(diffed.created) + len(diffed.changed)

    async def _head(self, spec: ListSpec, emit: bool) -> tuple[int, bool]:
        """The pages of this cycle's tier: 1 always, `k` every `4**(k-1)`th time."""
        changed = 0
        last = min(self.pages.get(spec.name, 1), HEAD_PAGES)
        tick = self.cycles // spec.head_every + 1
        for page_no in range(1, last + 1):
            if tick % (4 ** (page_no - 1)):
                break  # every later page has a longer period still
            try:
                page = await self.source.page(spec, page_no)
            except UpstreamProtocolError as exc:
                log.warning(
                    "page_skipped",
                    account_id=self.account.id,
                    path=spec.name,
                    page=page_no,
                    detail=exc.detail,
                )
                return changed, False
            self.pages[spec.name] = max(page.total_pages, 1)
            objects, _ = _readable(page.items)
            changed += await self._diff(spec.object_type, objects, emit)
            if not page.has_next:
                break
        return changed, True

    async def _scan(self, spec: ListSpec, emit: bool) -> tuple[int, bool]:
        """One complete scan of a list; (changes, whether no page was lost)."""
        async with _connection(self.pool) as conn:
            scan_id = await snapshots.begin_complete_scan(
                conn,
                account_id=self.account.id,
                object_type=spec.object_type,
                client_id=SOURCE_CLIENT,
            )
        changed, page_no, complete = 0, 1, True
        while True:
            try:
                page = await self.source.page(spec, page_no)
            except UpstreamProtocolError as exc:
                log.warning(
                    "page_skipped",
                    account_id=self.account.id,
                    path=spec.name,
                    page=page_no,
                    detail=exc.detail,
                )
                async with _connection(self.pool) as conn:
                    await snapshots.mark_scan_partial(conn, scan_id, f"{spec.name} {page_no}")
                complete = False
                break
            objects, set_aside = _readable(page.items)
            if set_aside:
                async with _connection(self.pool) as conn:
                    await snapshots.mark_scan_partial(conn, scan_id, "objects set aside")
                complete = False
            changed += await self._diff(
                spec.object_type, objects, emit, scan_id=scan_id, page=page_no
            )
            self.pages[spec.name] = max(page.total_pages, 1)
            if not page.has_next or not page.items:
                break
            page_no += 1
            if emit and (page_no - 1) % INTERLEAVE == 0:
                changed += await self._fresh_head()
        changed += await self._finish(spec, scan_id, emit)
        return changed, complete

    async def _fresh_head(self) -> int:
        """Page 1 of the first list, read between a long scan's pages (never a deletion)."""
        spec = self.source.lists[0]
        try:
            page = await self.source.page(spec, 1)
        except UpstreamProtocolError:
            return 0
        objects, _ = _readable(page.items)
        return await self._diff(spec.object_type, objects, True)

    async def _finish(self, spec: ListSpec, scan_id: int, emit: bool) -> int:
        async with _connection(self.pool) as conn:
            first = await snapshots.finish_complete_scan(conn, scan_id, confirmed_gone=None)
        if first.refused or not first.candidates:
            return 0
        gone: list[str] = []
        alive: list[dict[str, Any]] = []
        for object_id in first.candidates:
            try:
                alive.append(await self.source.detail(spec, object_id))
            except UpstreamNotFound:
                gone.append(object_id)
        changed = await self._diff(spec.object_type, alive, emit) if alive else 0
        async with _connection(self.pool) as conn:
            outcome = await snapshots.finish_complete_scan(
                conn, scan_id, confirmed_gone=gone, emit=emit, payload=self.source.webhook_payload
            )
        return changed + len(outcome.deleted)


def _readable(items: Sequence[Any]) -> tuple[list[dict[str, Any]], int]:
    """The objects a diff can take (a JSON object with a string id); the rest is set aside."""
    kept = [i for i in items if isinstance(i, dict) and isinstance(i.get("id"), str) and i["id"]]
    return kept, len(items) - len(kept)
