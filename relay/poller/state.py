"""The poller's Postgres state: `poll_tasks` (each task's schedule and cursor) and `poll_state`
(one row per account: its lease, the poll request it last honoured, its auth failure).

All SQL of those two tables lives here; the planner (`relay.poller.plan`) stays pure and the
runner, the progress reads and the seeding cron (`workers.polling`) call these functions.

Leases: one worker polls an account at a time. The claim is one UPDATE whose WHERE only
matches a free or expired lease (or our own), so concurrent claimers serialise on the row lock
and exactly one wins; a worker that dies frees the account when its lease expires.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from relay.poller.plan import (
    ACCOUNT_LEVEL,
    CLIENT_KINDS,
    DOCUMENT_KINDS,
    Policy,
    Task,
    TaskKind,
    new_task,
)

if TYPE_CHECKING:
    from relay.db import Executor


_TASK_COLUMNS = (
    "account_id, client_id, kind, interval_s, due_at, est_cost, last_run_at, baselined_at, "
    "forced, cursor, runs, changes"
)


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _task_from_row(row: asyncpg.Record) -> Task:
    return Task(
        account_id=row["account_id"],
        client_id=row["client_id"],
        kind=TaskKind(row["kind"]),
        interval=row["interval_s"],
        due_at=row["due_at"].timestamp(),
        est_cost=row["est_cost"],
        last_run_at=row["last_run_at"].timestamp() if row["last_run_at"] else None,
        baselined=row["baselined_at"] is not None,
        forced=row["forced"],
        cursor=dict(row["cursor"] or {}),
        runs=row["runs"],
        changes=row["changes"],
    )


async def load_tasks(conn: Executor, account_id: str) -> list[Task]:
    rows = await conn.fetch(
        f"SELECT {_TASK_COLUMNS} FROM poll_tasks WHERE account_id = $1", account_id
    )
    return [_task_from_row(r) for r in rows]


async def ensure_tasks(
    conn: Executor,
    account_id: str,
    client_ids: Iterable[str],
    now: float,
    policy: Policy,
    *,
    prune: bool = True,
) -> None:
    """Create the tasks an account needs (the /clients task plus every kind per client).

    Set-based and idempotent: existing tasks keep their schedule. With `prune` (pass it only
    for a complete client list), tasks of clients no longer listed are removed (their
    snapshots stay).
    """
    clients = sorted(set(client_ids))
    keys: list[tuple[str, str]] = [(ACCOUNT_LEVEL, TaskKind.CLIENTS.value)]
    keys += [(c, k.value) for c in clients for k in CLIENT_KINDS]
    fresh = [new_task(account_id, c, TaskKind(k), now, policy) for c, k in keys]
    await conn.execute(
        "INSERT INTO poll_tasks (account_id, client_id, kind, interval_s, due_at, est_cost) "
        "SELECT $1, c, k, i, $5, e FROM unnest($2::text[], $3::text[], $4::float8[], "
        "$6::float8[]) AS t(c, k, i, e) ON CONFLICT DO NOTHING",
        account_id,
        [t.client_id for t in fresh],
        [t.kind.value for t in fresh],
        [t.interval for t in fresh],
        _ts(now),
        [t.est_cost for t in fresh],
    )
    if not prune:
        return
    await conn.execute(
        "DELETE FROM poll_tasks WHERE account_id = $1 AND client_id <> '' "
        "AND NOT (client_id = ANY($2::text[]))",
        account_id,
        clients,
    )


async def save_task(conn: Executor, task: Task) -> None:
    """Write back a task's schedule after a run (the row exists: ensure_tasks made it)."""
    await conn.execute(
        "UPDATE poll_tasks SET interval_s = $4, due_at = $5, est_cost = $6, last_run_at = $7, "
        "baselined_at = CASE WHEN $8 THEN coalesce(baselined_at, now()) END, forced = $9, "
        "cursor = $10, runs = $11, changes = $12 "
        "WHERE account_id = $1 AND client_id = $2 AND kind = $3",
        task.account_id,
        task.client_id,
        task.kind.value,
        task.interval,
        _ts(task.due_at),
        task.est_cost,
        _ts(task.last_run_at),
        task.baselined,
        task.forced,
        task.cursor,
        task.runs,
        task.changes,
    )


async def force_full_pass(conn: Executor, account_id: str) -> int:
    """Make every task of the account due now with top priority; a sweep restarts from page 1.

    Returns how many tasks were forced.
    """
    status = await conn.execute(
        "UPDATE poll_tasks SET forced = true, "
        "cursor = CASE WHEN kind = 'sweep' THEN '{}'::jsonb ELSE cursor END "
        "WHERE account_id = $1 AND NOT (kind = 'baseline' AND baselined_at IS NOT NULL)",
        account_id,
    )
    return int(status.split()[-1])


async def next_due_at(conn: Executor, account_id: str) -> float | None:
    """When the account's earliest task is due (unix seconds; 0 when one is forced), or None.

    Tasks that cannot run yet (a client's document kinds before its baseline, which may be
    waiting to retry an incomplete scan) do not count: the poller would wait for them in vain.
    """
    row = await conn.fetchrow(
        "SELECT bool_or(forced) AS forced, min(due_at) AS due FROM poll_tasks t "
        "WHERE account_id = $1 AND NOT (kind = 'baseline' AND baselined_at IS NOT NULL) "
        "AND NOT (kind = ANY($2::text[]) AND NOT EXISTS (SELECT 1 FROM poll_tasks b "
        "WHERE b.account_id = t.account_id AND b.client_id = t.client_id "
        "AND b.kind = 'baseline' AND b.baselined_at IS NOT NULL))",
        account_id,
        [k.value for k in DOCUMENT_KINDS],
    )
    if row is None or row["due"] is None:
        return None
    return 0.0 if row["forced"] else float(row["due"].timestamp())


@dataclass(frozen=True)
class BaselineRow:
    """A task that has (or had) a first run to make: what the baseline progress reads."""

    account_id: str
    client_id: str
    kind: TaskKind
    baselined_at: datetime | None
    created_at: datetime
    cursor: dict[str, Any]
    est_cost: float


async def baseline_rows(conn: Executor, account_ids: Sequence[str]) -> dict[str, list[BaselineRow]]:
    """Per account whose baseline is not all done (the account's or a late client's), its
    first-run tasks (every kind but the document polls, which run only after the baseline).
    Accounts with nothing left to baseline are absent: for them this costs one index probe."""
    rows = await conn.fetch(
        "WITH pending AS (SELECT DISTINCT account_id FROM poll_tasks "
        "WHERE account_id = ANY($1::text[]) AND NOT (kind = ANY($2::text[])) "
        "AND baselined_at IS NULL) "
        "SELECT t.account_id, client_id, kind, baselined_at, created_at, cursor, est_cost "
        "FROM poll_tasks t JOIN pending USING (account_id) WHERE NOT (kind = ANY($2::text[]))",
        list(account_ids),
        [k.value for k in DOCUMENT_KINDS],
    )
    found: dict[str, list[BaselineRow]] = {}
    for row in rows:
        found.setdefault(row["account_id"], []).append(
            BaselineRow(
                account_id=row["account_id"],
                client_id=row["client_id"],
                kind=TaskKind(row["kind"]),
                baselined_at=row["baselined_at"],
                created_at=row["created_at"],
                cursor=dict(row["cursor"] or {}),
                est_cost=row["est_cost"],
            )
        )
    return found


async def all_baselined(conn: Executor, account_id: str) -> bool:
    """True once every object set of the account has its baseline: the client list, each
    client's documents (its baseline scan), suppliers, expense reports and connections.
    (head, hot and sweep only ever run after their client's baseline.)"""
    value = await conn.fetchval(
        "SELECT count(*) > 0 AND bool_and(baselined_at IS NOT NULL) FROM poll_tasks "
        "WHERE account_id = $1 AND NOT (kind = ANY($2::text[]))",
        account_id,
        [k.value for k in DOCUMENT_KINDS],
    )
    return bool(value)


# ---- leases (the module docstring says how they work) ---------------------------------------


async def claim_lease(conn: Executor, account_id: str, holder: str, seconds: float) -> bool:
    await conn.execute(
        "INSERT INTO poll_state (account_id) VALUES ($1) ON CONFLICT DO NOTHING", account_id
    )
    row = await conn.fetchrow(
        "UPDATE poll_state SET lease_holder = $2, "
        "leased_until = now() + make_interval(secs => $3) "
        "WHERE account_id = $1 AND (leased_until IS NULL OR leased_until < now() "
        "OR lease_holder = $2) RETURNING account_id",
        account_id,
        holder,
        seconds,
    )
    return row is not None


async def renew_lease(conn: Executor, account_id: str, holder: str, seconds: float) -> bool:
    """Extend our lease; False when it was lost (expired and taken by another worker)."""
    row = await conn.fetchrow(
        "UPDATE poll_state SET leased_until = now() + make_interval(secs => $3) "
        "WHERE account_id = $1 AND lease_holder = $2 RETURNING account_id",
        account_id,
        holder,
        seconds,
    )
    return row is not None


async def release_lease(conn: Executor, account_id: str, holder: str) -> None:
    await conn.execute(
        "UPDATE poll_state SET lease_holder = NULL, leased_until = NULL "
        "WHERE account_id = $1 AND lease_holder = $2",
        account_id,
        holder,
    )


async def head_floor(pool: Executor, account_id: str, cid: str) -> str | None:
    """The created_at of the oldest item the client's last head poll saw on page 1."""
    value = await pool.fetchval(
        "SELECT cursor->>'floor' FROM poll_tasks WHERE account_id = $1 AND client_id = $2 "
        "AND kind = 'head'",
        account_id,
        cid,
    )
    return None if value is None else str(value)


async def hurry_sweep(pool: Executor, account_id: str, cid: str) -> None:
    """Something seems deleted: bring the client's sweep forward (deletions need one)."""
    if cid == ACCOUNT_LEVEL:
        return
    await pool.execute(
        "UPDATE poll_tasks SET due_at = least(due_at, now()) WHERE account_id = $1 "
        "AND client_id = $2 AND kind = 'sweep'",
        account_id,
        cid,
    )


async def defer_sweep(pool: Executor, account_id: str, cid: str, now: float) -> None:
    """A complete scan just ran (the baseline): the client's next sweep is an interval away."""
    await pool.execute(
        "UPDATE poll_tasks SET due_at = $3::timestamptz + make_interval(secs => interval_s) "
        "WHERE account_id = $1 AND client_id = $2 AND kind = 'sweep' AND NOT forced",
        account_id,
        cid,
        _ts(now),
    )


# ---- the account's flags in poll_state ---------------------------------------------------------


async def note_poll_request(conn: Executor, account_id: str, requested_at: datetime) -> bool:
    """Record that the poll request made at `requested_at` is being honoured; True the first
    time (a request is turned into forced tasks once, however many runs see it)."""
    seen = await conn.fetchval(
        "UPDATE poll_state SET poll_request_seen_at = $2 WHERE account_id = $1 "
        "AND (poll_request_seen_at IS NULL OR poll_request_seen_at < $2) RETURNING 1",
        account_id,
        requested_at,
    )
    return bool(seen)


async def forced_left(conn: Executor, account_id: str) -> int:
    """How many of the account's tasks are still forced (a requested full pass not done)."""
    value = await conn.fetchval(
        "SELECT count(*) FROM poll_tasks WHERE account_id = $1 AND forced", account_id
    )
    return int(value or 0)


async def clear_auth_failure(conn: Executor, account_id: str) -> bool:
    """A pass succeeded: forget the account's auth failure; True when there was one."""
    cleared = await conn.fetchval(
        "UPDATE poll_state SET auth_failed_at = NULL WHERE account_id = $1 "
        "AND auth_failed_at IS NOT NULL RETURNING 1",
        account_id,
    )
    return bool(cleared)


async def record_auth_failure(conn: Executor, account_id: str) -> bool:
    """The upstream refused the token: True when this is the first failure since the last
    success (the caller stores `account.auth_failed` once per breakage)."""
    first = await conn.fetchval(
        "UPDATE poll_state SET auth_failed_at = now(), auth_tried_at = now() "
        "WHERE account_id = $1 AND auth_failed_at IS NULL RETURNING 1",
        account_id,
    )
    return bool(first)


# ---- which accounts are due (the seeding cron) ---------------------------------------------------


async def accounts_due(conn: Executor, account_ids: Sequence[str], within: float) -> set[str]:
    """Of these accounts, those with work due within `within` seconds: no tasks yet (a new
    account), a forced task, or a task due by then (a done baseline never is)."""
    rows = await conn.fetch(
        "SELECT a.id FROM unnest($1::text[]) AS a(id) WHERE NOT EXISTS ("
        " SELECT 1 FROM poll_tasks t WHERE t.account_id = a.id)"
        " OR EXISTS (SELECT 1 FROM poll_tasks t WHERE t.account_id = a.id AND (t.forced"
        "  OR (t.due_at <= now() + make_interval(secs => $2)"
        "      AND NOT (t.kind = 'baseline' AND t.baselined_at IS NOT NULL))))",
        list(account_ids),
        within,
    )
    return {row["id"] for row in rows}
