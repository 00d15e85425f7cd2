"""The strategies of a scoped source's poll tasks: scopes, complete scans with confirmed
deletions, head reads, status-view reads with a probe, and the lists kept per scope.

`ScopedTasks` runs one task of one account against its `relay.sources.source.ScopedSource`
(Dext is one: `relay.sources.dext_source`). What to read, at which page size, which statuses
are hot and which is probed are the source's; how a head read stops, when a status view is
read, how a scan is sliced and how a deletion is confirmed are the poller's, the same for any
scoped source. `_Run` is what one task run did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from relay import snapshots
from relay.errors import UpstreamForbidden, UpstreamNotFound, UpstreamProtocolError
from relay.poller.pages import _connection, _page_skipped, _pages
from relay.poller.plan import Policy, Task, TaskKind
from relay.poller.state import ensure_tasks, head_floor
from relay.sources import accounts
from relay.sources.models import JsonObject, Page
from relay.sources.source import ScopedSource, ScopeList

log = structlog.get_logger("relay.poller")


@dataclass
class _Run:
    """The result of one task run."""

    changed: int = 0
    finished: bool = True
    cursor: dict[str, Any] | None = None
    suspect_deletion: bool = False
    failed: bool = False  # nothing usable came back: keep the task as it was, retry later


@dataclass
class ScopedTasks:
    """Runs the tasks of one account of a scoped source (the Poller makes one per pass)."""

    pool: asyncpg.Pool
    policy: Policy
    clock: Callable[[], float]
    source: ScopedSource
    account: accounts.Account

    def _scope_list(self, kind: TaskKind) -> ScopeList | None:
        return next((s for s in self.source.scope_lists if s.kind == kind.value), None)

    async def run(self, task: Task, emit: bool) -> _Run:
        cid = task.client_id
        source = self.source
        try:
            match task.kind:
                case TaskKind.CLIENTS:
                    return await self._scopes(emit)
                case TaskKind.BASELINE | TaskKind.SWEEP:
                    return await self._scan(task, emit)
                case TaskKind.HEAD:
                    return await self._head(task, emit)
                case TaskKind.HOT:
                    return await self._hot(task, emit)
            spec = self._scope_list(task.kind)
            if spec is None:
                return _Run()  # the source keeps no such list: nothing to read
            if spec.single:
                unusable = source.set_aside.counts.total()
                try:
                    objects = [await source.scope_object(spec, cid)]
                except UpstreamProtocolError:
                    if source.set_aside.counts.total() == unusable:
                        raise  # not an odd object but a broken answer: retry later
                    # An object that cannot be used is set aside, never a blind account:
                    # the run counts (the baseline goes on), nothing is stored from it.
                    return _Run()
                return _Run(await self._diff(spec.object_type, objects, cid, emit))
            objects, complete = await _pages(
                self.account.id, spec.path, lambda *, page: source.scope_page(spec, cid, page)
            )
            changed = await self._diff(spec.object_type, objects, cid, emit)
            # An incomplete first read is no baseline: what it missed is not "new".
            return _Run(changed, failed=not complete and not task.baselined)
        except (UpstreamForbidden, UpstreamNotFound) as exc:
            # Access to this client was removed (or it is gone): nothing to see, nothing deleted.
            log.warning(
                "client_unavailable", account_id=self.account.id, client_id=cid, status=exc.status
            )
            return _Run(cursor={})
        except UpstreamProtocolError as exc:
            # A malformed answer: skip this run (nothing stored from it) and try at the next turn.
            _page_skipped(self.account.id, exc.url, 0, exc)
            return _Run(failed=True)

    async def _diff(
        self,
        object_type: str,
        objects: Sequence[Mapping[str, Any]],
        client_id: str | None,
        emit: bool,
        **scan: Any,
    ) -> int:
        async with _connection(self.pool) as conn:
            # A page of a complete scan is also recorded for the scan (`scan_id`, `page`).
            diff = snapshots.diff_scan_page if scan else snapshots.diff_objects
            result = await diff(
                conn,
                account_id=self.account.id,
                object_type=object_type,
                objects=objects,
                client_id=client_id,
                emit=emit,
                payload=self.source.webhook_payload,
                **scan,
            )
        return len(result.created) + len(result.changed)

    async def _scopes(self, emit: bool) -> _Run:
        source = self.source
        unusable = source.set_aside.counts.total()
        items, complete = await _pages(
            self.account.id, f"/{source.scope_type}s", lambda *, page: source.scopes(page)
        )
        changed = await self._diff(source.scope_type, items, None, emit)
        ids = [str(item["id"]) for item in items]
        # A scope set aside is still there: only a list read whole and clean prunes tasks.
        prune = complete and source.set_aside.counts.total() == unusable
        await ensure_tasks(self.pool, self.account.id, ids, self.clock(), self.policy, prune=prune)
        return _Run(changed)

    async def _scan(self, task: Task, emit: bool) -> _Run:
        """A slice of a complete scan of the client's full items (baseline or sweep)."""
        source, account = self.source, self.account
        parts = source.scan_parts
        cursor = dict(task.cursor)
        cid = task.client_id
        async with _connection(self.pool) as conn:
            if "scan_id" not in cursor:
                cursor = {
                    "scan_id": await snapshots.begin_complete_scan(
                        conn, account_id=account.id, object_type=source.object_type, client_id=cid
                    ),
                    "ws": parts[0],
                    "page": 1,
                }
                if "totals" in task.cursor:  # from an earlier attempt: sizes to estimate with
                    cursor["totals"] = task.cursor["totals"]
        scan_id = int(cursor["scan_id"])
        pages = source.baseline_pages if task.kind is TaskKind.BASELINE else self.policy.sweep_pages
        changed = 0
        for _ in range(pages):
            ws, page_no = str(cursor["ws"]), int(cursor["page"])
            page: Page | None = None
            try:
                page = await source.scan_page(cid, ws, page_no)
            except UpstreamProtocolError as exc:
                _page_skipped(account.id, f"/{ws}", page_no, exc)
                async with _connection(self.pool) as conn:
                    await snapshots.mark_scan_partial(conn, scan_id, f"{ws} page {page_no}: {exc}")
                cursor["gaps"] = int(cursor.get("gaps", 0)) + 1
            if page is not None and page.set_aside:
                # Its usable objects are stored, but the scan cannot vouch for what it did not
                # see: it deletes nothing.
                async with _connection(self.pool) as conn:
                    await snapshots.mark_scan_partial(
                        conn, scan_id, f"{ws} page {page_no}: {len(page.set_aside)} set aside"
                    )
            if page is not None:
                changed += await self._diff(
                    source.object_type,
                    page.items,
                    cid,
                    emit,
                    scan_id=scan_id,
                    page=f"{ws}:{page_no}",
                )
                # The part's size, for the account's baseline progress.
                cursor["totals"] = {**cursor.get("totals", {}), ws: page.total}
            if page is not None and page.has_next:
                cursor.update(page=page_no + 1, total_pages=page.total_pages)
            elif page is None and page_no < int(cursor.get("total_pages", 0)):
                cursor["page"] = page_no + 1  # skip the failed page; the scan stays partial
            else:
                cursor = _next_part(cursor, parts)
            if cursor["ws"] == "done":
                changed += await self._finish_scan(cid, scan_id, emit)
                # A first scan with a page it could not read is no baseline: the items on that
                # page are history and would come back as news. The baseline starts again,
                # from a fresh scan. (An object set aside is no gap: the rest of its page is in.)
                failed = task.kind is TaskKind.BASELINE and bool(cursor.get("gaps"))
                if failed:
                    log.warning(
                        "baseline_incomplete",
                        account_id=account.id,
                        client_id=cid,
                        pages_skipped=cursor["gaps"],
                    )
                # A baseline keeps the parts' sizes: its progress estimates from them.
                kept = (
                    {"totals": cursor.get("totals", {})} if task.kind is TaskKind.BASELINE else {}
                )
                return _Run(changed, finished=True, cursor=kept, failed=failed)
        return _Run(changed, finished=False, cursor=cursor)

    async def _finish_scan(self, cid: str, scan_id: int, emit: bool) -> int:
        source, account = self.source, self.account
        async with _connection(self.pool) as conn:
            first = await snapshots.finish_complete_scan(conn, scan_id, confirmed_gone=None)
        if first.refused or not first.candidates:
            return 0
        # Pages shift while a scan runs: each candidate is confirmed gone by its own 404.
        workspaces = await snapshots.stored_workspaces(self.pool, account.id, cid, first.candidates)
        gone: list[str] = []
        alive: list[JsonObject] = []
        for object_id in first.candidates:
            part = workspaces.get(object_id, source.scan_parts[0])
            try:
                alive.append(await source.detail(part, object_id))
            except UpstreamNotFound:
                gone.append(object_id)
            except UpstreamProtocolError as exc:
                # It answered, so it is there, even if it cannot be read: not gone, and the
                # other candidates are still settled.
                _page_skipped(account.id, "/{workspace}/{id}", 0, exc)
        changed = await self._diff(source.object_type, alive, cid, emit) if alive else 0
        async with _connection(self.pool) as conn:
            outcome = await snapshots.finish_complete_scan(
                conn, scan_id, confirmed_gone=gone, emit=emit, payload=source.webhook_payload
            )
        if outcome.deleted:
            log.info("documents_deleted", account_id=account.id, client_id=cid, count=len(gone))
        return changed + len(outcome.deleted)

    async def _head(self, task: Task, emit: bool) -> _Run:
        source = self.source
        cid = task.client_id
        summaries: list[JsonObject] = []
        floor: str | None = None
        total: int | None = None
        wanted: list[str] = []
        for page_no in range(1, source.head_max_pages + 1):
            page = await source.head_page(cid, page_no)
            if page_no == 1:
                total = page.total
            summaries.extend(page.items)
            async with _connection(self.pool) as conn:
                fresh = await snapshots.changed_summary_ids(
                    conn, account_id=self.account.id, client_id=cid, summaries=page.items
                )
            wanted.extend(fresh)
            if page.items:
                floor = str(page.items[-1][source.order_field]) if page_no == 1 else floor
            # The page's oldest item is new too: newer captures may have pushed more past it.
            if not page.items or page.items[-1]["id"] not in fresh or not page.has_next:
                break
        changed, gone = await self._fetch_details(cid, summaries, wanted, emit)
        previous_total = task.cursor.get("total")
        shrank = previous_total is not None and total is not None and total < previous_total
        cursor = {"floor": floor, "total": total}
        return _Run(changed, cursor=cursor, suspect_deletion=bool(gone) or shrank)

    async def _hot(self, task: Task, emit: bool) -> _Run:
        source, account = self.source, self.account
        views = source.status_views
        cid = task.client_id
        floor = await head_floor(self.pool, account.id, cid)
        probed = [views.probe] if views.probe is not None else []
        stored = await snapshots.stored_by_status(
            self.pool, account.id, cid, [*views.always, *views.if_old, *probed]
        )
        statuses = list(views.always)
        for status in views.if_old:
            created = [c for _, _, c in stored.get(status, [])]
            if created and (floor is None or min(created) < floor):
                statuses.append(status)
        changed, gone = 0, False
        for status in statuses:
            c, g = await self._read_view(cid, status, stored.get(status, []), emit)
            changed += c
            gone = gone or g
        if views.probe is not None:
            # The cold tail: a one-item probe says whether anything moved into it.
            probe = await source.head_page(cid, 1, status=views.probe, per_page=1)
            stored_probed = stored.get(views.probe, [])
            if probe.total != len(stored_probed):
                c, g = await self._read_view(cid, views.probe, stored_probed, emit)
                changed += c
                gone = gone or g
        return _Run(changed, suspect_deletion=gone)

    async def _read_view(
        self, cid: str, status: str, stored: list[tuple[str, str, str]], emit: bool
    ) -> tuple[int, bool]:
        """Every page of one status view, reconciled with what is stored in that status."""
        source = self.source
        per_page = source.status_views.per_page
        summaries, complete = await _pages(
            self.account.id,
            "/documents",
            lambda *, page: source.head_page(cid, page, status=status, per_page=per_page),
        )
        return await self._reconcile(cid, summaries, complete, stored, emit)

    async def _reconcile(
        self,
        cid: str,
        summaries: list[JsonObject],
        complete: bool,
        stored: list[tuple[str, str, str]],
        emit: bool,
    ) -> tuple[int, bool]:
        """Fetch details for summaries that changed and, when the list is complete, for stored
        members that left it (they changed status, or are gone)."""
        async with _connection(self.pool) as conn:
            wanted = await snapshots.changed_summary_ids(
                conn, account_id=self.account.id, client_id=cid, summaries=summaries
            )
        listed = {str(s["id"]) for s in summaries}
        left: dict[str, str] = {}
        if complete:
            left = {oid: part for oid, part, _ in stored if oid not in listed}
            wanted.extend(left)
        changed, gone = await self._fetch_details(cid, summaries, wanted, emit, parts=left)
        return changed, bool(gone)

    async def _fetch_details(
        self,
        cid: str,
        summaries: Iterable[JsonObject],
        wanted: Sequence[str],
        emit: bool,
        parts: Mapping[str, str] | None = None,
    ) -> tuple[int, list[str]]:
        """Full items for `wanted` ids, diffed; returns (changed count, ids that are gone).

        A few ids are fetched one by one; more of one part and status come from that
        filtered scan list (newest first, where new and changed items usually are). An id
        without a summary (a stored item that left its status view) is in `parts`, with its
        part as stored and no status: it is fetched by its detail.
        """
        if not wanted:
            return 0, []
        source, account = self.source, self.account
        info = {str(s["id"]): s for s in summaries}
        known = parts or {}

        def part_of(oid: str) -> str:
            return known[oid] if oid in known else source.part_of(info.get(oid, {}))

        groups: dict[tuple[str, str | None], list[str]] = {}
        for oid in dict.fromkeys(wanted):
            status = None if oid in known else info.get(oid, {}).get(source.status_field)
            groups.setdefault((part_of(oid), status), []).append(oid)
        found: dict[str, JsonObject] = {}
        for (ws, status), ids in groups.items():
            if len(ids) > self.policy.detail_batch and status is not None:
                missing = set(ids)
                page_no = 1
                while missing and page_no <= len(ids):
                    try:
                        page = await source.scan_page(cid, ws, page_no, status=status)
                    except UpstreamProtocolError as exc:
                        _page_skipped(account.id, f"/{ws}", page_no, exc)
                        break
                    for item in page.items:
                        if item["id"] in missing:
                            found[str(item["id"])] = item
                            missing.discard(str(item["id"]))
                    if not page.has_next:
                        break
                    page_no += 1
        gone: list[str] = []
        for oid in wanted:
            if oid in found or oid in gone:
                continue
            ws = part_of(oid)
            try:
                found[oid] = await source.detail(ws, oid)
            except UpstreamNotFound:
                gone.append(oid)
            except UpstreamProtocolError as exc:
                _page_skipped(account.id, f"/{ws}/{{id}}", 0, exc)
        objects = [found[oid] for oid in wanted if oid in found]
        changed = await self._diff(source.object_type, objects, cid, emit) if objects else 0
        return changed, gone


def _next_part(cursor: dict[str, Any], parts: Sequence[str]) -> dict[str, Any]:
    index = list(parts).index(cursor["ws"]) + 1
    nxt = parts[index] if index < len(parts) else "done"
    # What the scan has learnt so far (its gaps, the parts' totals) travels along.
    kept = {k: v for k, v in cursor.items() if k not in ("ws", "page", "total_pages")}
    return {**kept, "ws": nxt, "page": 1}
