"""What each poll task kind does (clients, baseline and sweep scans, head, hot, lists), as
the `PollTasks` mixin of the Poller, and `_Run`, the result of one task run."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from relay import snapshots
from relay.errors import UpstreamForbidden, UpstreamNotFound, UpstreamProtocolError
from relay.poller.pages import _connection, _detail, _page_skipped, _pages
from relay.poller.plan import Policy, Task, TaskKind
from relay.poller.state import ensure_tasks, head_floor
from relay.sources import accounts
from relay.sources.dext import MAX_ITEMS_PER_PAGE, MAX_PER_PAGE, DextClient
from relay.sources.models import JsonObject, Page

log = structlog.get_logger("relay.poller")

HOT_ALWAYS = ("ready",)
# Entered only from newer statuses (processing -> review): polled only when an item in them is
# older than the head page reaches.
HOT_IF_OLD = ("processing", "review")
PROBED = "archived"
HEAD_MAX_PAGES = 5
BASELINE_PAGES = 10
WORKSPACES = ("costs", "sales")


@dataclass
class _Run:
    """The result of one task run."""

    changed: int = 0
    finished: bool = True
    cursor: dict[str, Any] | None = None
    suspect_deletion: bool = False
    failed: bool = False  # nothing usable came back: keep the task as it was, retry later


class PollTasks:
    """The task kinds of `Poller` (a mixin: the Poller supplies its pool, policy and clock)."""

    pool: asyncpg.Pool
    policy: Policy
    clock: Callable[[], float]

    async def _run_task(
        self, client: DextClient, account: accounts.Account, task: Task, emit: bool
    ) -> _Run:
        cid = task.client_id
        try:
            match task.kind:
                case TaskKind.CLIENTS:
                    return await self._clients(client, account, emit)
                case TaskKind.BASELINE | TaskKind.SWEEP:
                    return await self._scan(client, account, task, emit)
                case TaskKind.HEAD:
                    return await self._head(client, account, task, emit)
                case TaskKind.HOT:
                    return await self._hot(client, account, task, emit)
                case TaskKind.CONNECTIONS:
                    unusable = client.set_aside.counts.total()
                    try:
                        objects = [await client.connections(cid)]
                    except UpstreamProtocolError:
                        if client.set_aside.counts.total() == unusable:
                            raise  # not an odd object but a broken answer: retry later
                        # An object that cannot be used is set aside, never a blind account:
                        # the run counts (the baseline goes on), nothing is stored from it.
                        return _Run()
                    return _Run(await self._diff(account, "connection", objects, cid, emit))
                case TaskKind.SUPPLIERS | TaskKind.EXPENSE_REPORTS:
                    path, object_type, fetch = (
                        ("/suppliers", "supplier", client.suppliers)
                        if task.kind is TaskKind.SUPPLIERS
                        else ("/expense_reports", "expense_report", client.expense_reports)
                    )
                    objects, complete = await _pages(account.id, path, fetch, cid)
                    changed = await self._diff(account, object_type, objects, cid, emit)
                    # An incomplete first read is no baseline: what it missed is not "new".
                    return _Run(changed, failed=not complete and not task.baselined)
        except (UpstreamForbidden, UpstreamNotFound) as exc:
            # Access to this client was removed (or it is gone): nothing to see, nothing deleted.
            log.warning(
                "client_unavailable", account_id=account.id, client_id=cid, status=exc.status
            )
            return _Run(cursor={})
        except UpstreamProtocolError as exc:
            # A malformed answer: skip this run (nothing stored from it) and try at the next turn.
            _page_skipped(account.id, exc.url, 0, exc)
            return _Run(failed=True)
        raise AssertionError(f"unknown task kind {task.kind}")

    async def _diff(
        self,
        account: accounts.Account,
        object_type: str,
        objects: Sequence[Mapping[str, Any]],
        client_id: str | None,
        emit: bool,
        **scan: Any,
    ) -> int:
        async with _connection(self.pool) as conn:
            result = await snapshots.diff_objects(
                conn,
                account_id=account.id,
                object_type=object_type,
                objects=objects,
                client_id=client_id,
                emit=emit,
                **scan,
            )
        return len(result.created) + len(result.changed)

    async def _clients(self, client: DextClient, account: accounts.Account, emit: bool) -> _Run:
        unusable = client.set_aside.counts.total()
        items, complete = await _pages(account.id, "/clients", client.clients)
        changed = await self._diff(account, "client", items, None, emit)
        ids = [str(item["id"]) for item in items]
        # A client set aside is still there: only a list read whole and clean prunes tasks.
        prune = complete and client.set_aside.counts.total() == unusable
        await ensure_tasks(self.pool, account.id, ids, self.clock(), self.policy, prune=prune)
        return _Run(changed)

    async def _scan(
        self, client: DextClient, account: accounts.Account, task: Task, emit: bool
    ) -> _Run:
        """A slice of a complete scan of the client's full items (baseline or sweep)."""
        cursor = dict(task.cursor)
        cid = task.client_id
        async with _connection(self.pool) as conn:
            if "scan_id" not in cursor:
                cursor = {
                    "scan_id": await snapshots.begin_complete_scan(
                        conn, account_id=account.id, object_type="document", client_id=cid
                    ),
                    "ws": WORKSPACES[0],
                    "page": 1,
                }
                if "totals" in task.cursor:  # from an earlier attempt: sizes to estimate with
                    cursor["totals"] = task.cursor["totals"]
        scan_id = int(cursor["scan_id"])
        pages = BASELINE_PAGES if task.kind is TaskKind.BASELINE else self.policy.sweep_pages
        changed = 0
        for _ in range(pages):
            ws, page_no = str(cursor["ws"]), int(cursor["page"])
            fetch = client.costs if ws == "costs" else client.sales
            page: Page | None = None
            try:
                page = await fetch(cid, page=page_no, per_page=MAX_ITEMS_PER_PAGE)
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
                    account,
                    "document",
                    page.items,
                    cid,
                    emit,
                    scan_id=scan_id,
                    page=f"{ws}:{page_no}",
                )
                # The workspace's size, for the account's baseline progress.
                cursor["totals"] = {**cursor.get("totals", {}), ws: page.total}
            if page is not None and page.has_next:
                cursor.update(page=page_no + 1, total_pages=page.total_pages)
            elif page is None and page_no < int(cursor.get("total_pages", 0)):
                cursor["page"] = page_no + 1  # skip the failed page; the scan stays partial
            else:
                cursor = _next_workspace(cursor)
            if cursor["ws"] == "done":
                changed += await self._finish_scan(client, account, cid, scan_id, emit)
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
                # A baseline keeps the workspaces' sizes: its progress estimates from them.
                kept = (
                    {"totals": cursor.get("totals", {})} if task.kind is TaskKind.BASELINE else {}
                )
                return _Run(changed, finished=True, cursor=kept, failed=failed)
        return _Run(changed, finished=False, cursor=cursor)

    async def _finish_scan(
        self, client: DextClient, account: accounts.Account, cid: str, scan_id: int, emit: bool
    ) -> int:
        async with _connection(self.pool) as conn:
            first = await snapshots.finish_complete_scan(conn, scan_id, confirmed_gone=None)
        if first.refused or not first.candidates:
            return 0
        # Pages shift while a scan runs: each candidate is confirmed gone by its own 404.
        workspaces = await snapshots.stored_workspaces(self.pool, account.id, cid, first.candidates)
        gone: list[str] = []
        alive: list[JsonObject] = []
        for object_id in first.candidates:
            try:
                alive.append(await _detail(client, workspaces.get(object_id, "costs"), object_id))
            except UpstreamNotFound:
                gone.append(object_id)
            except UpstreamProtocolError as exc:
                # It answered, so it is there, even if it cannot be read: not gone, and the
                # other candidates are still settled.
                _page_skipped(account.id, "/{workspace}/{id}", 0, exc)
        changed = await self._diff(account, "document", alive, cid, emit) if alive else 0
        async with _connection(self.pool) as conn:
            outcome = await snapshots.finish_complete_scan(
                conn, scan_id, confirmed_gone=gone, emit=emit
            )
        if outcome.deleted:
            log.info("documents_deleted", account_id=account.id, client_id=cid, count=len(gone))
        return changed + len(outcome.deleted)

    async def _head(
        self, client: DextClient, account: accounts.Account, task: Task, emit: bool
    ) -> _Run:
        cid = task.client_id
        summaries: list[JsonObject] = []
        floor: str | None = None
        total: int | None = None
        wanted: list[str] = []
        for page_no in range(1, HEAD_MAX_PAGES + 1):
            page = await client.documents(cid, page=page_no, per_page=MAX_PER_PAGE)
            if page_no == 1:
                total = page.total
            summaries.extend(page.items)
            async with _connection(self.pool) as conn:
                fresh = await snapshots.changed_summary_ids(
                    conn, account_id=account.id, client_id=cid, summaries=page.items
                )
            wanted.extend(fresh)
            if page.items:
                floor = str(page.items[-1]["created_at"]) if page_no == 1 else floor
            # The page's oldest item is new too: newer captures may have pushed more past it.
            if not page.items or page.items[-1]["id"] not in fresh or not page.has_next:
                break
        changed, gone = await self._fetch_details(client, account, cid, summaries, wanted, emit)
        previous_total = task.cursor.get("total")
        shrank = previous_total is not None and total is not None and total < previous_total
        cursor = {"floor": floor, "total": total}
        return _Run(changed, cursor=cursor, suspect_deletion=bool(gone) or shrank)

    async def _hot(
        self, client: DextClient, account: accounts.Account, task: Task, emit: bool
    ) -> _Run:
        cid = task.client_id
        floor = await head_floor(self.pool, account.id, cid)
        stored = await snapshots.stored_by_status(
            self.pool, account.id, cid, [*HOT_ALWAYS, *HOT_IF_OLD, PROBED]
        )
        statuses = list(HOT_ALWAYS)
        for status in HOT_IF_OLD:
            created = [c for _, _, c in stored.get(status, [])]
            if created and (floor is None or min(created) < floor):
                statuses.append(status)
        changed, gone = 0, False
        for status in statuses:
            summaries, complete = await _pages(
                account.id, "/documents", client.documents, cid, status=status, per_page=100
            )
            c, g = await self._reconcile(
                client, account, cid, summaries, complete, stored.get(status, []), emit
            )
            changed += c
            gone = gone or g
        # The cold tail: a one-item probe says whether anything moved into `archived`.
        probe = await client.documents(cid, status=PROBED, per_page=1)
        stored_archived = stored.get(PROBED, [])
        if probe.total != len(stored_archived):
            summaries, complete = await _pages(
                account.id, "/documents", client.documents, cid, status=PROBED, per_page=100
            )
            c, g = await self._reconcile(
                client, account, cid, summaries, complete, stored_archived, emit
            )
            changed += c
            gone = gone or g
        return _Run(changed, suspect_deletion=gone)

    async def _reconcile(
        self,
        client: DextClient,
        account: accounts.Account,
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
                conn, account_id=account.id, client_id=cid, summaries=summaries
            )
        listed = {str(s["id"]) for s in summaries}
        extra: list[JsonObject] = []
        if complete:
            extra = [{"id": oid, "workspace": ws} for oid, ws, _ in stored if oid not in listed]
            wanted.extend(str(e["id"]) for e in extra)
        changed, gone = await self._fetch_details(
            client, account, cid, [*summaries, *extra], wanted, emit
        )
        return changed, bool(gone)

    async def _fetch_details(
        self,
        client: DextClient,
        account: accounts.Account,
        cid: str,
        summaries: Iterable[JsonObject],
        wanted: Sequence[str],
        emit: bool,
    ) -> tuple[int, list[str]]:
        """Full items for `wanted` ids, diffed; returns (changed count, ids that are gone).

        A few ids are fetched one by one; more of one workspace and status come from that
        filtered /costs|/sales list (newest first, where new and changed items usually are).
        """
        if not wanted:
            return 0, []
        info = {str(s["id"]): s for s in summaries}
        groups: dict[tuple[str, str | None], list[str]] = {}
        for oid in dict.fromkeys(wanted):
            summary = info.get(oid, {})
            key = (str(summary.get("workspace", "costs")), summary.get("status"))
            groups.setdefault(key, []).append(oid)
        found: dict[str, JsonObject] = {}
        for (ws, status), ids in groups.items():
            if len(ids) > self.policy.detail_batch and status is not None:
                fetch = client.costs if ws == "costs" else client.sales
                missing = set(ids)
                page_no = 1
                while missing and page_no <= len(ids):
                    try:
                        page = await fetch(
                            cid, status=status, page=page_no, per_page=MAX_ITEMS_PER_PAGE
                        )
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
            ws = str(info.get(oid, {}).get("workspace", "costs"))
            try:
                found[oid] = await _detail(client, ws, oid)
            except UpstreamNotFound:
                gone.append(oid)
            except UpstreamProtocolError as exc:
                _page_skipped(account.id, f"/{ws}/{{id}}", 0, exc)
        objects = [found[oid] for oid in wanted if oid in found]
        changed = await self._diff(account, "document", objects, cid, emit) if objects else 0
        return changed, gone


def _next_workspace(cursor: dict[str, Any]) -> dict[str, Any]:
    index = WORKSPACES.index(cursor["ws"]) + 1
    nxt = WORKSPACES[index] if index < len(WORKSPACES) else "done"
    # What the scan has learnt so far (its gaps, the workspaces' totals) travels along.
    kept = {k: v for k, v in cursor.items() if k not in ("ws", "page", "total_pages")}
    return {**kept, "ws": nxt, "page": 1}
