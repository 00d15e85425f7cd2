"""Reads of stored snapshots and accounts: whether diffs emit, and what the poll planner needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from relay.errors import NotFound

if TYPE_CHECKING:
    from relay.db import Executor


async def should_emit(conn: Executor, account_id: str) -> bool:
    """Whether diffs of this account emit events: after its baseline, or from the start when
    it was created with `backfill`. (`relay.sources.accounts.complete_baseline` ends the
    baseline.)"""
    row = await conn.fetchrow(
        "SELECT baseline_completed_at IS NOT NULL OR backfill AS emit FROM accounts WHERE id = $1",
        account_id,
    )
    if row is None:
        raise NotFound("account", account_id)
    return bool(row["emit"])


# ---- reads for the poll planner ---------------------------------------------------------------


async def stored_by_status(
    db: Executor, account_id: str, client_id: str, statuses: Sequence[str]
) -> dict[str, list[tuple[str, str, str]]]:
    """A client's live stored documents in these statuses, per status: (id, workspace,
    created_at), so the planner can re-check its hot set (index snapshots_document_status)."""
    rows = await db.fetch(
        "SELECT object_id, data->>'status' AS status, coalesce(data->>'workspace', 'costs') AS ws,"
        " coalesce(data->>'created_at', '') AS created_at FROM snapshots"
        " WHERE account_id = $1 AND client_id = $2 AND object_type = 'document'"
        " AND deleted_at IS NULL AND data->>'status' = ANY ($3::text[])",
        account_id,
        client_id,
        list(statuses),
    )
    found: dict[str, list[tuple[str, str, str]]] = {}
    for row in rows:
        found.setdefault(row["status"], []).append((row["object_id"], row["ws"], row["created_at"]))
    return found


async def stored_workspaces(
    db: Executor, account_id: str, client_id: str, ids: Sequence[str]
) -> dict[str, str]:
    """The workspace (`costs` | `sales`) of stored documents: which detail URL to ask."""
    rows = await db.fetch(
        "SELECT object_id, coalesce(data->>'workspace', 'costs') AS ws FROM snapshots"
        " WHERE account_id = $1 AND object_type = 'document' AND client_id = $2"
        " AND object_id = ANY ($3::text[])",
        account_id,
        client_id,
        list(ids),
    )
    return {row["object_id"]: row["ws"] for row in rows}


async def stored_document_counts(
    db: Executor, account_id: str, client_ids: Sequence[str]
) -> dict[str, int]:
    """Live stored documents per client: what a baseline has seen so far (an index-only count
    on snapshots_live_keys)."""
    rows = await db.fetch(
        "SELECT client_id, count(*) AS n FROM snapshots WHERE account_id = $1"
        " AND object_type = 'document' AND client_id = ANY ($2::text[]) AND deleted_at IS NULL"
        " GROUP BY client_id",
        account_id,
        list(client_ids),
    )
    return {row["client_id"]: int(row["n"]) for row in rows}
