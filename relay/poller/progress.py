"""Baseline progress: how far an account's (or its late clients') first scans are, and how long
the rest will take at the account's request budget.

A 100,000-item practice takes most of an hour at 60 requests a minute, and `baselining` alone
tells an operator nothing. The progress is read, not kept: from the first-run tasks in
`poll_tasks` (`relay.poller.state.baseline_rows`: which are done, where a sliced scan's cursor is,
the page totals it has seen) and the documents stored so far. So it costs nothing while
polling and is as true as Postgres.

Which clients count: while the account is baselining, all of them. Once it is active, a client
that appears later gets a baseline of its own; then the progress covers the late clients made
since the earliest one still baselining, and it is `None` again when they are done.

The estimate counts the requests left, at one request per page of the source's `scan_per_page`
items: the pages of each part (Dext's workspaces) a scan has not read yet (sizes from the
pages' `total`; a part not reached yet is assumed as large as the mean of the same part of the
clients whose size is known), plus one estimated run cost for each list (suppliers, expense
reports, connections, clients) still to be read. Spread over the budget of a window (the
upstream's limit as last seen, less the safety margin), that is
`requests_left * window_seconds / budget`. It assumes the whole budget goes to baselining,
which it nearly does (the baseline's weight dwarfs the other kinds'); with nothing known of any
client's size yet it is `None` rather than a guess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from relay.poller.plan import ACCOUNT_LEVEL, Policy, TaskKind
from relay.poller.state import BaselineRow, baseline_rows
from relay.snapshots import stored_document_counts
from relay.sources.registry import SCOPED

if TYPE_CHECKING:
    import asyncpg

    from relay.sources.accounts import Account


@dataclass(frozen=True)
class BaselineProgress:
    """What the account resource shows as `baseline` (see the module docstring)."""

    clients_done: int
    clients_total: int | None  # None until the client list has been read
    items_seen: int
    items_total: int | None  # None while a client's size is not known from its pages
    requests_left: int | None
    estimated_seconds_left: float | None

    def public(self) -> dict[str, Any]:
        return {
            "clients_done": self.clients_done,
            "clients_total": self.clients_total,
            "items_seen": self.items_seen,
            "items_total": self.items_total,
            "requests_left": self.requests_left,
            "estimated_seconds_left": self.estimated_seconds_left,
        }


def _pages(items: float, per_page: int) -> int:
    """Requests to read a part of `items` (an empty list still takes one)."""
    return max(1, math.ceil(items / per_page))


def _totals(row: BaselineRow | None, parts: Sequence[str]) -> dict[str, int]:
    raw = row.cursor.get("totals") if row is not None else None
    if not isinstance(raw, dict):
        return {}
    return {ws: int(n) for ws, n in raw.items() if ws in parts and isinstance(n, int)}


def _scan_requests_left(
    row: BaselineRow | None, means: Mapping[str, float], parts: Sequence[str], per_page: int
) -> int | None:
    """Pages the client's document scan still has to read; None when a size is unknowable."""
    if row is not None and row.baselined_at is not None:
        return 0
    totals = _totals(row, parts)
    cursor = row.cursor if row is not None else {}
    current = cursor.get("ws") if "scan_id" in cursor else parts[0]
    if current not in parts:
        return 0  # between its last page and its end: only the deletion checks are left
    left = 0
    for ws in parts[list(parts).index(str(current)) :]:
        size: float | None = totals.get(ws, means.get(ws))
        if size is None:
            return None
        pages = _pages(size, per_page)
        if ws == current and "scan_id" in cursor:
            pages = max(0, pages - (int(cursor.get("page", 1)) - 1))
        left += pages
    return left


def compute_progress(
    rows: Sequence[BaselineRow],
    stored: Mapping[str, int],
    *,
    account_baselined_at: datetime | None,
    rate_limit: int,
    policy: Policy,
    scan_parts: Sequence[str],
    scan_per_page: int,
) -> BaselineProgress | None:
    """The progress from the first-run tasks and the documents stored per client; None when
    nothing is baselining. `scan_parts` and `scan_per_page` are the source's complete scan
    (`relay.sources.source.ScopedSource`). A pure function, so its arithmetic is tested on
    its own."""
    by_client: dict[str, dict[TaskKind, BaselineRow]] = {}
    for row in rows:
        by_client.setdefault(row.client_id, {})[row.kind] = row
    account_level = by_client.pop(ACCOUNT_LEVEL, {}).get(TaskKind.CLIENTS)
    clients = by_client
    if account_baselined_at is not None:
        pending = [
            c for c, tasks in clients.items() if any(t.baselined_at is None for t in tasks.values())
        ]
        if not pending:
            return None
        since = min(t.created_at for c in pending for t in clients[c].values())
        clients = {
            c: tasks
            for c, tasks in clients.items()
            if min(t.created_at for t in tasks.values()) >= since
        }
    listed = account_level is not None and account_level.baselined_at is not None
    done = [c for c, tasks in clients.items() if all(t.baselined_at for t in tasks.values())]

    sizes: dict[str, list[int]] = {}
    for tasks in clients.values():
        for ws, n in _totals(tasks.get(TaskKind.BASELINE), scan_parts).items():
            sizes.setdefault(ws, []).append(n)
    means = {ws: sum(ns) / len(ns) for ws, ns in sizes.items()}
    requests: int | None = 0
    if account_level is not None and account_level.baselined_at is None:
        requests = math.ceil(account_level.est_cost)
    items_total: int | None = 0
    for cid, tasks in clients.items():
        scan = tasks.get(TaskKind.BASELINE)
        left = _scan_requests_left(scan, means, scan_parts, scan_per_page)
        requests = None if requests is None or left is None else requests + left
        if requests is not None:
            requests += sum(
                math.ceil(t.est_cost)
                for kind, t in tasks.items()
                if kind is not TaskKind.BASELINE and t.baselined_at is None
            )
        totals = _totals(scan, scan_parts)
        if items_total is None:
            continue
        if cid in done:
            items_total += stored.get(cid, 0)
        elif set(totals) == set(scan_parts):
            items_total += sum(totals.values())
        else:
            items_total = None
    if not listed and account_baselined_at is None:
        items_total = None  # clients not listed yet: their sizes are unknown
        if not clients:
            requests = None
    budget = max(1, rate_limit - policy.safety_margin)
    return BaselineProgress(
        clients_done=len(done),
        clients_total=len(clients) if listed or account_baselined_at is not None else None,
        items_seen=sum(stored.get(c, 0) for c in clients),
        items_total=items_total,
        requests_left=requests,
        estimated_seconds_left=(
            None if requests is None else round(requests * policy.window_seconds / budget, 1)
        ),
    )


async def baseline_progress(
    db: asyncpg.Pool, accounts: Sequence[Account], policy: Policy
) -> dict[str, BaselineProgress | None]:
    """The progress of each account (None for those with nothing baselining), in one query for
    the tasks of all of them and one count of stored documents per account still baselining."""
    rows = await baseline_rows(db, [a.id for a in accounts])
    out: dict[str, BaselineProgress | None] = {}
    for account in accounts:
        found = rows.get(account.id, [])
        if not found and account.baseline_completed_at is not None:
            out[account.id] = None
            continue
        clients = sorted({r.client_id for r in found if r.client_id != ACCOUNT_LEVEL})
        stored = await stored_document_counts(db, account.id, clients) if clients else {}
        limit = account.rate_limit.get("limit")
        # A lists-only source keeps no poll tasks: its rows are empty and need no scan shape.
        scoped = SCOPED.get(account.provider)
        out[account.id] = compute_progress(
            found,
            stored,
            account_baselined_at=account.baseline_completed_at,
            rate_limit=limit if isinstance(limit, int) and limit > 0 else policy.rate_limit,
            policy=policy,
            scan_parts=scoped.scan_parts if scoped is not None else (),
            scan_per_page=scoped.scan_per_page if scoped is not None else 1,
        )
    return out
