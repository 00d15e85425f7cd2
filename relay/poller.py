"""The poller: runs an account's planned poll tasks against Dext and feeds snapshots and events.

One `Poller.run_account` call holds the account's Postgres lease, plans with
`relay.scheduling` and runs tasks until nothing is due before `run_seconds` are up. What each
task kind does (the module docstring of `relay.scheduling` says how often):

- `clients`: every /clients page -> client snapshots (client.health_changed); the list also
  creates or prunes the per-client tasks.
- `baseline` / `sweep`: every /costs then /sales page (full items, per_page 50), a few pages
  per run with the cursor kept in Postgres, recorded as one complete scan. At its end the scan's
  deletion candidates are confirmed one by one (`GET /costs/{id}` -> 404) and only those are
  reported deleted; a page that failed makes the scan partial, which deletes nothing. The
  first such scan of a client is its baseline (emits nothing unless the account backfills).
- `head`: /documents page 1 (newest first, per_page 100) and the next pages while their tail
  is still unseen; full items are fetched only for new or changed summaries.
- `hot`: /documents?status=ready every page, and processing/review only when a stored item in
  that status is older than the head page reaches (those statuses are entered only from newer
  ones). A stored item missing from its status list changed: its detail is fetched. Then a
  one-item probe of status=archived: when its total differs from what is stored, the archived
  list is read to find what moved (published -> archived happens to old items).
- `suppliers`, `expense_reports`, `connections`: their lists -> snapshots.

Errors: `invalid_token` marks the account broken and stores one `account.auth_failed`; the
next successful pass stores `account.recovered`. A malformed page is logged and skipped (the
scan becomes partial); an upstream outage ends the pass and leaves the task due.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any, cast

import aiohttp
import asyncpg
import redis.asyncio as aioredis
import structlog

from relay import accounts, snapshots
from relay.errors import (
    NotFound,
    UpstreamAuthError,
    UpstreamError,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamProtocolError,
)
from relay.events import insert_event
from relay.ratelimit import RateLimiter
from relay.scheduling import (
    Policy,
    Task,
    TaskKind,
    WindowBudget,
    after_run,
    all_baselined,
    claim_lease,
    defer_sweep,
    ensure_tasks,
    force_full_pass,
    head_floor,
    hurry_sweep,
    load_tasks,
    next_due_at,
    plan_window,
    release_lease,
    renew_lease,
    save_task,
)
from relay.sources.dext import MAX_ITEMS_PER_PAGE, MAX_PER_PAGE, CountingMetrics, DextClient
from relay.sources.models import JsonObject, Page
from relay.vault import Vault

log = structlog.get_logger("relay.poller")

UNSUPPORTED_PROVIDER = (
    "this version of Relay polls only Dext accounts; InvoiceXT is not supported yet"
)

HOT_ALWAYS = ("ready",)
# Entered only from newer statuses (processing -> review): polled only when an item in them is
# older than the head page reaches.
HOT_IF_OLD = ("processing", "review")
PROBED = "archived"
HEAD_MAX_PAGES = 5
BASELINE_PAGES = 10
WORKSPACES = ("costs", "sales")


@dataclass
class RunReport:
    """What one `run_account` did."""

    account_id: str
    outcome: str = "done"  # done | leased (another worker has it) | gone | broken | error
    tasks: int = 0
    requests: int = 0
    changes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    # Every upstream request of the run, by endpoint and status, for the deployment's metrics.
    upstream: CountingMetrics | None = None


@dataclass
class _Run:
    """The result of one task run."""

    changed: int = 0
    finished: bool = True
    cursor: dict[str, Any] | None = None
    suspect_deletion: bool = False
    failed: bool = False  # nothing usable came back: keep the task as it was, retry later


class LeaseLost(Exception):
    """Another worker took the account (our lease expired); stop without saving more."""


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass
class Poller:
    """Polls accounts: shared pool, Redis (the limiter), HTTP session and vault of a worker."""

    pool: asyncpg.Pool
    redis: aioredis.Redis
    http: aiohttp.ClientSession
    vault: Vault
    policy: Policy = field(default_factory=Policy)
    clock: Callable[[], float] = time.time
    holder: str = field(default_factory=default_holder)
    client_options: Mapping[str, Any] = field(default_factory=dict)

    def make_client(self, account: accounts.Account) -> tuple[DextClient, CountingMetrics]:
        token = accounts.account_token(self.vault, account)
        limiter = RateLimiter(
            self.redis,
            token,
            limit=self.policy.rate_limit,
            window_seconds=self.policy.window_seconds,
            margin=self.policy.safety_margin,
        )
        metrics = CountingMetrics()
        client = DextClient(
            account.base_url,
            token,
            session=self.http,
            limiter=limiter,
            metrics=metrics,
            **self.client_options,
        )
        return client, metrics

    async def run_account(
        self, account_id: str, *, run_seconds: float | None = None, idle_exit: bool = False
    ) -> RunReport:
        """Poll one account for up to `run_seconds` (policy default) under its lease; with
        `idle_exit`, return as soon as nothing is due (tests and benchmarks settle this way)."""
        report = RunReport(account_id)
        lease = self.policy.lease_seconds
        if not await claim_lease(self.pool, account_id, self.holder, lease):
            report.outcome = "leased"
            return report
        try:
            await self._run(account_id, report, run_seconds or self.policy.run_seconds, idle_exit)
        except LeaseLost:
            log.warning("poll_lease_lost", account_id=account_id)
            report.outcome = "error"
        finally:
            await release_lease(self.pool, account_id, self.holder)
        log.info(
            "account_polled",
            account_id=account_id,
            outcome=report.outcome,
            tasks=report.tasks,
            requests=report.requests,
            changes=report.changes,
        )
        return report

    async def _run(
        self, account_id: str, report: RunReport, run_seconds: float, idle_exit: bool
    ) -> None:
        try:
            account = await accounts.get_account(self.pool, account_id)
        except NotFound:
            report.outcome = "gone"
            return
        if account.provider != "dext":
            # Accepted by the API for the contract's sake, but there is no InvoiceXT connector
            # yet: say so on the account rather than leave it silently unpolled.
            if account.last_error != UNSUPPORTED_PROVIDER:
                await accounts.record_poll_error(self.pool, account.id, UNSUPPORTED_PROVIDER)
            report.outcome = "gone"
            return
        client, metrics = self.make_client(account)
        deadline = self.clock() + run_seconds
        budget = WindowBudget(self.policy.budget, self.policy.window_seconds)
        request_seen = await self._honour_poll_request(account)
        if not await load_tasks(self.pool, account_id):
            await ensure_tasks(self.pool, account_id, [], self.clock(), self.policy, prune=False)
        try:
            while self.clock() < deadline:
                now = self.clock()
                # A "poll now" or a deletion while this job runs is seen within a second.
                fresh = await accounts.get_account(self.pool, account_id)
                if fresh.poll_requested_at != account.poll_requested_at:
                    account = fresh
                    request_seen = await self._honour_poll_request(account) or request_seen
                tasks = await load_tasks(self.pool, account_id)
                plan = plan_window(tasks, now, self.policy, budget.left(now))
                if not plan:
                    # Idle: what ran so far is a pass (records it, clears a done poll request).
                    await self._after_pass(account, request_seen)
                    due = await next_due_at(self.pool, account_id)
                    wake = deadline if due is None else due
                    if wake <= now:  # due, but this window's budget is spent
                        wake = budget.next_window()
                    elif idle_exit:
                        break
                    if wake >= deadline:
                        break
                    await asyncio.sleep(min(max(0.0, wake - self.clock()) + 0.01, 1.0))
                    continue
                for task in plan:
                    if self.clock() >= deadline:
                        break
                    if not await renew_lease(
                        self.pool, account_id, self.holder, self.policy.lease_seconds
                    ):
                        raise LeaseLost(account_id)
                    before = _requests(metrics)
                    emit = account.backfill or _emits(task, tasks)
                    run = await self._run_task(client, account, task, emit)
                    cost = _requests(metrics) - before
                    budget.spend(cost)
                    done = after_run(
                        task,
                        self.clock(),
                        self.policy,
                        changed=run.changed,
                        cost=cost,
                        finished=run.finished,
                        cursor=run.cursor,
                    )
                    if run.failed:
                        done = dc_replace(task, due_at=self.clock() + task.interval)
                    await save_task(self.pool, done)
                    if run.suspect_deletion:
                        await hurry_sweep(self.pool, account_id, task.client_id)
                    if task.kind is TaskKind.BASELINE and run.finished:
                        # The baseline was a complete scan: the first sweep can wait its turn.
                        await defer_sweep(self.pool, account_id, task.client_id, self.clock())
                    if not task.baselined and run.finished and not run.failed:
                        account = await self._complete_baseline(account)
                    report.tasks += 1
                    report.requests += cost
                    report.changes += run.changed
                    report.by_kind[task.kind.value] = report.by_kind.get(task.kind.value, 0) + 1
                    if task.kind is TaskKind.CLIENTS or task.kind is TaskKind.BASELINE:
                        break  # the task list changed: plan again
            await self._after_pass(account, request_seen)
        except NotFound:
            report.outcome = "gone"  # deleted while polling: stop
        except UpstreamAuthError as exc:
            report.outcome = "broken"
            await self._auth_failed(account, exc)
        except UpstreamError as exc:
            report.outcome = "error"
            log.warning("poll_failed", account_id=account_id, error=str(exc), status=exc.status)
            await accounts.record_poll_error(self.pool, account_id, str(exc))
        finally:
            report.requests = _requests(metrics)
            report.upstream = metrics
            state = await client.rate_limit_state()
            await accounts.record_rate_limit(self.pool, account_id, state.to_json())

    async def _honour_poll_request(self, account: accounts.Account) -> Any:
        """Turn a new `POST /v1/accounts/{id}/poll` into forced tasks, once per request."""
        requested = account.poll_requested_at
        if requested is None:
            return None
        seen = await self.pool.fetchval(
            "UPDATE poll_state SET poll_request_seen_at = $2 WHERE account_id = $1 "
            "AND (poll_request_seen_at IS NULL OR poll_request_seen_at < $2) RETURNING 1",
            account.id,
            requested,
        )
        if seen:
            forced = await force_full_pass(self.pool, account.id)
            log.info("full_pass_requested", account_id=account.id, tasks=forced)
        return requested

    async def _complete_baseline(self, account: accounts.Account) -> accounts.Account:
        """Once every object set has its first run, the account's baseline is complete."""
        if account.baseline_completed_at is not None:
            return account
        if not await all_baselined(self.pool, account.id):
            return account
        await accounts.complete_baseline(self.pool, account.id)
        log.info("baseline_completed", account_id=account.id)
        return await accounts.get_account(self.pool, account.id)

    async def _after_pass(self, account: accounts.Account, request_seen: Any) -> None:
        async with _connection(self.pool) as conn:
            await accounts.record_poll_success(conn, account.id)
            if request_seen is not None:
                forced_left = await conn.fetchval(
                    "SELECT count(*) FROM poll_tasks WHERE account_id = $1 AND forced",
                    account.id,
                )
                if not forced_left:
                    await accounts.clear_poll_request(conn, account.id, request_seen)
            async with conn.transaction():
                recovered = await conn.fetchval(
                    "UPDATE poll_state SET auth_failed_at = NULL WHERE account_id = $1 "
                    "AND auth_failed_at IS NOT NULL RETURNING 1",
                    account.id,
                )
                was_broken = await accounts.mark_recovered(conn, account.id)
                if recovered or was_broken:
                    await insert_event(
                        conn,
                        "account.recovered",
                        account_id=account.id,
                        object_id=account.id,
                        object=_account_object(account, "active"),
                    )
                    log.info("account_recovered", account_id=account.id)

    async def _auth_failed(self, account: accounts.Account, exc: UpstreamAuthError) -> None:
        log.warning("account_auth_failed", account_id=account.id, code=exc.code)
        async with _connection(self.pool) as conn, conn.transaction():
            newly = await accounts.mark_broken(
                conn, account.id, f"upstream refused the token: {exc.code}"
            )
            first = await conn.fetchval(
                "UPDATE poll_state SET auth_failed_at = now(), auth_tried_at = now() "
                "WHERE account_id = $1 AND auth_failed_at IS NULL RETURNING 1",
                account.id,
            )
            if newly or first:
                await insert_event(
                    conn,
                    "account.auth_failed",
                    account_id=account.id,
                    object_id=account.id,
                    object={**_account_object(account, "broken"), "error": exc.code},
                )

    # -- tasks -----------------------------------------------------------------------------

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
                    objects = [await client.connections(cid)]
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
        items, complete = await _pages(account.id, "/clients", client.clients)
        changed = await self._diff(account, "client", items, None, emit)
        ids = [str(item["id"]) for item in items]
        await ensure_tasks(self.pool, account.id, ids, self.clock(), self.policy, prune=complete)
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
            if page is not None and page.has_next:
                cursor.update(page=page_no + 1, total_pages=page.total_pages)
            elif page is None and page_no < int(cursor.get("total_pages", 0)):
                cursor["page"] = page_no + 1  # skip the failed page; the scan stays partial
            else:
                cursor = _next_workspace(cursor)
            if cursor["ws"] == "done":
                changed += await self._finish_scan(client, account, cid, scan_id, emit)
                return _Run(changed, finished=True, cursor={})
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


# -- helpers ---------------------------------------------------------------------------------


@asynccontextmanager
async def _connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection typed as the Connection the store functions take."""
    async with pool.acquire() as proxy:
        yield cast(asyncpg.Connection, proxy)


def _requests(metrics: CountingMetrics) -> int:
    return sum(metrics.requests.values())


def _emits(task: Task, tasks: Sequence[Task]) -> bool:
    """A task's runs emit once its object set has a baseline: documents after the client's
    baseline scan, every other kind after its own first complete run."""
    if task.kind is TaskKind.BASELINE:
        return False
    if task.kind in (TaskKind.HEAD, TaskKind.HOT, TaskKind.SWEEP):
        return True  # planned only after the client's baseline
    return task.baselined


def _account_object(account: accounts.Account, status: str) -> dict[str, Any]:
    return {"id": account.id, "provider": account.provider, "name": account.name, "status": status}


def _page_skipped(account_id: str, path: str, page: int, exc: UpstreamProtocolError) -> None:
    log.warning("page_skipped", account_id=account_id, path=path, page=page, detail=exc.detail)


def _next_workspace(cursor: dict[str, Any]) -> dict[str, Any]:
    index = WORKSPACES.index(cursor["ws"]) + 1
    nxt = WORKSPACES[index] if index < len(WORKSPACES) else "done"
    return {"scan_id": cursor["scan_id"], "ws": nxt, "page": 1}


async def _detail(client: DextClient, workspace: str, object_id: str) -> JsonObject:
    if workspace == "sales":
        return await client.sale(object_id)
    return await client.cost(object_id)


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
