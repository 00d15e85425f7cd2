"""Complete scans of one client's objects and the deletions they confirm: the `snapshot_scans`
and `snapshot_scan_pages` tables (the snapshot rows a scan finds unseen or deletes are
`relay.snapshots.diff`'s)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from relay import exactjson
from relay.errors import InvalidInput, NotFound
from relay.events import build_event, insert_events, outbox
from relay.snapshots import diff
from relay.snapshots.rules import INVOICEXT_OBJECT_TYPES, event_type_for

if TYPE_CHECKING:
    from relay.db import Connection
    from relay.events import PayloadRenderer

log = structlog.get_logger("relay.snapshots")

SCANNABLE_TYPES = ("document", "supplier", "expense_report", "invoice", "reconciliation")


@dataclass
class ScanOutcome:
    """What finishing a complete scan found: the deletion candidates (stored, live, unseen in
    the scan), the ids now reported deleted and their events; or why it refused (`refused`)."""

    candidates: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: str | None = None


async def begin_complete_scan(
    conn: Connection, *, account_id: str, object_type: str, client_id: str
) -> int:
    """Start a complete scan of one client's objects of one type and return its id.

    Diff every page it reads with `diff_scan_page` (or record its ids with `record_scan_page`),
    then call `finish_complete_scan`. Scans of the same client and type started more than a day
    ago are pruned here with their pages: they can no longer vouch for anything.
    """
    if object_type not in SCANNABLE_TYPES:
        raise InvalidInput(
            f"complete scans cover {', '.join(SCANNABLE_TYPES)}, not {object_type!r}",
            field="object_type",
        )
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM snapshot_scans WHERE account_id = $1 AND object_type = $2"
            " AND client_id = $3 AND started_at < now() - interval '1 day'",
            account_id,
            object_type,
            client_id,
        )
        scan_id: int = await conn.fetchval(
            "INSERT INTO snapshot_scans (account_id, object_type, client_id)"
            " VALUES ($1, $2, $3) RETURNING id",
            account_id,
            object_type,
            client_id,
        )
    return scan_id


async def diff_scan_page(
    conn: Connection,
    *,
    scan_id: int,
    page: str | int,
    account_id: str,
    object_type: str,
    objects: Iterable[Mapping[str, Any]],
    client_id: str | None,
    emit: bool,
    payload: PayloadRenderer | None = None,
) -> diff.DiffResult:
    """`diff.diff_objects` of one page of a complete scan, and the page's ids recorded for the
    scan, in one transaction: a page counts as seen exactly when its diff is stored."""
    async with outbox(conn):  # the diff's events are announced after the commit (events.py)
        result = await diff.diff_objects(
            conn,
            account_id=account_id,
            object_type=object_type,
            objects=objects,
            client_id=client_id,
            emit=emit,
            payload=payload,
        )
        await record_scan_page(conn, scan_id, page, result.ids)
    return result


async def record_scan_page(
    conn: Connection, scan_id: int, page: str | int, object_ids: Sequence[str]
) -> None:
    """Record the ids one page of a complete scan showed. Recording a page again (a retry, a
    re-fetch) adds to its ids: an object seen at all during the scan is never a candidate."""
    recorded = await conn.fetchval(
        "INSERT INTO snapshot_scan_pages (scan_id, page, object_ids)"
        " SELECT id, $2, $3 FROM snapshot_scans WHERE id = $1"
        " ON CONFLICT (scan_id, page) DO UPDATE"
        " SET object_ids = snapshot_scan_pages.object_ids || excluded.object_ids,"
        " recorded_at = now()"
        " RETURNING scan_id",
        scan_id,
        str(page),
        [str(oid) for oid in object_ids],
    )
    if recorded is None:
        raise NotFound("scan", str(scan_id))


async def mark_scan_partial(conn: Connection, scan_id: int, reason: str) -> None:
    """The scan missed something (a failed or malformed page, a 403): it will delete nothing."""
    marked = await conn.fetchval(
        "UPDATE snapshot_scans SET partial_reason = coalesce(partial_reason, $2)"
        " WHERE id = $1 RETURNING id",
        scan_id,
        reason,
    )
    if marked is None:
        raise NotFound("scan", str(scan_id))
    log.info("scan_marked_partial", scan_id=scan_id, reason=reason)


async def deletion_candidates(conn: Connection, scan_id: int) -> list[str]:
    """Ids stored and live that this scan did not see (no side effects; see finish)."""
    return await diff.unseen_in_scan(conn, scan_id)


async def finish_complete_scan(
    conn: Connection,
    scan_id: int,
    *,
    confirmed_gone: Collection[str] | None,
    expected_pages: Iterable[str | int] | None = None,
    emit: bool = True,
    payload: PayloadRenderer | None = None,
) -> ScanOutcome:
    """Finish a complete scan: return its deletion candidates and report deleted (one
    `<type>.deleted` event each, `data.object` the last version seen, `previous` {}) exactly
    those candidates the caller confirmed gone.

    The rule: an object is reported deleted only when a scan covered the whole client without
    gaps AND the caller confirmed it gone. Pages shift while a scan runs (an item created or
    deleted upstream moves the rest by one), so an item missing from a scan is only a candidate:
    the scheduler confirms each with `GET /costs/{id}` (or /sales, ...) -> 404 and passes those
    ids as `confirmed_gone`. An item missing from a partial scan is never even a candidate: a scan
    marked partial (`mark_scan_partial`), or with any of `expected_pages` never recorded, refuses
    (`refused` says why) and deletes nothing. Call it first with `confirmed_gone=None` to get
    the candidates, then again with the confirmed ones; repeating a call never repeats an event.
    """
    async with outbox(conn):  # its events are announced after the commit (events.py)
        scan = await conn.fetchrow(
            "SELECT account_id, object_type, partial_reason FROM snapshot_scans"
            " WHERE id = $1 FOR UPDATE",
            scan_id,
        )
        if scan is None:
            raise NotFound("scan", str(scan_id))
        reason: str | None = scan["partial_reason"]
        if reason is None and expected_pages is not None:
            rows = await conn.fetch(
                "SELECT page FROM snapshot_scan_pages WHERE scan_id = $1", scan_id
            )
            recorded = {row["page"] for row in rows}
            missing = [str(p) for p in expected_pages if str(p) not in recorded]
            if missing:
                reason = f"{len(missing)} page(s) never recorded: {', '.join(missing[:5])}"
                await mark_scan_partial(conn, scan_id, reason)
        if reason is not None:
            log.info("deletions_refused", scan_id=scan_id, reason=reason)
            return ScanOutcome(refused=reason)
        outcome = ScanOutcome(candidates=await deletion_candidates(conn, scan_id))
        gone = sorted(set(confirmed_gone or ()) & set(outcome.candidates))
        if gone:
            deleted = await diff.mark_deleted_in_scan(conn, scan_id, gone)
            outcome.deleted = [row["object_id"] for row in deleted]
            deleted_type = event_type_for(scan["object_type"], "deleted")
            if emit and deleted_type:
                at = datetime.now(UTC)
                outcome.events = [
                    build_event(
                        deleted_type,
                        account_id=scan["account_id"],
                        client_id=None
                        if scan["object_type"] in INVOICEXT_OBJECT_TYPES
                        else row["client_id"],
                        object_id=row["object_id"],
                        # jsonb keeps InvoiceXT's money as written; its text says it exactly.
                        object=exactjson.loads(row["data_text"])
                        if scan["object_type"] in INVOICEXT_OBJECT_TYPES
                        else row["data"],
                        at=at,
                    )
                    for row in deleted
                ]
                await insert_events(conn, outcome.events, payload=payload)
        await conn.execute(
            "UPDATE snapshot_scans SET finished_at = coalesce(finished_at, now()) WHERE id = $1",
            scan_id,
        )
    log.info(
        "complete_scan_finished",
        scan_id=scan_id,
        candidates=len(outcome.candidates),
        deleted=len(outcome.deleted),
    )
    return outcome


async def seconds_since_complete_scan(
    conn: Connection, *, account_id: str, object_type: str, client_id: str
) -> tuple[float, int] | None:
    """(seconds since the last scan of these objects finished without a gap, its pages), or
    None when none did.

    How a poller that reads a list's head often and the whole of it rarely knows when the
    whole is due again, from Postgres rather than from a process's memory."""
    row = await conn.fetchrow(
        "SELECT extract(epoch FROM now() - s.finished_at) AS age,"
        " (SELECT count(*) FROM snapshot_scan_pages p WHERE p.scan_id = s.id) AS pages"
        " FROM snapshot_scans s"
        " WHERE s.account_id = $1 AND s.object_type = $2 AND s.client_id = $3"
        " AND s.finished_at IS NOT NULL AND s.partial_reason IS NULL"
        " ORDER BY s.finished_at DESC LIMIT 1",
        account_id,
        object_type,
        client_id,
    )
    return None if row is None else (float(row["age"]), int(row["pages"]))
