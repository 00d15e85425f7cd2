"""The `snapshots` table: the set-based diff that writes it (`diff_objects`, and
`changed_summary_ids` for detail fetches), the reads the poller makes of it, and the deletions
a complete scan confirms (`relay.snapshots.scans` decides them; the rows change here). All SQL
of `snapshots` lives in this module."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from xxhash import xxh3_128_digest

from relay.errors import InvalidInput
from relay.events import build_event, insert_events, outbox, reserve_sequences
from relay.exactjson import dumps as exact_dumps
from relay.snapshots.hashing import _object_id, content_hash, summary_hash
from relay.snapshots.rules import (
    DERIVED,
    ENVELOPE_OBJECT_TYPE,
    INVOICEXT_OBJECT_TYPES,
    OBJECT_TYPES,
    VOLATILE_FIELDS,
    WATCHED_SUMMARY_FIELDS,
    Fired,
    canonical,
    changed_event_types,
    event_type_for,
    normalized,
    previous_fields,
    same_content,
)

if TYPE_CHECKING:
    from relay.db import Connection, Executor
    from relay.events import PayloadRenderer

log = structlog.get_logger("relay.snapshots")

# Temporary tables live as long as the pooled connection and are emptied at each commit; a
# second diff in the same transaction empties them itself.
_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS relay_diff_keys (
    n integer, client_id text, object_id text, quick_hash bytea, summary_hash bytea
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS relay_diff_rows (
    n integer, client_id text, object_id text, hash bytea, quick_hash bytea, summary_hash bytea,
    data jsonb
) ON COMMIT DELETE ROWS;
DELETE FROM relay_diff_keys;
DELETE FROM relay_diff_rows;
"""

# The new, changed and back-after-deletion keys: those without a live snapshot of the same
# quick hash (upstream key order; a reordering alone makes a candidate that the canonical hash
# then clears). A hash anti-join over an index-only scan of snapshots_live_keys
# for one client (one probe of the index per key costs several times more when every key is
# looked up). A client object is its own client; any other object's is the call's (`$3`),
# which narrows the scan to it.
_FIND_CANDIDATES = """
SELECT k.n, k.quick_hash FROM relay_diff_keys k
WHERE NOT EXISTS (
    SELECT 1 FROM snapshots s
    WHERE s.account_id = $1 AND s.object_type = $2 AND s.client_id = {client}
      AND s.object_id = k.object_id AND s.quick_hash = k.quick_hash AND s.deleted_at IS NULL)
"""
_FIND_CLIENT_CANDIDATES = _FIND_CANDIDATES.format(client="k.object_id")
_FIND_CANDIDATES = _FIND_CANDIDATES.format(client="$3")

# Key order, so two diffs of overlapping pages lock in the same order. `$3` narrows the lock to
# some rows (those another transaction inserted while this one looked); NULL locks them all.
_LOCK_EXISTING = """
SELECT r.n, s.data, s.deleted_at IS NOT NULL AS was_deleted
FROM relay_diff_rows r
JOIN snapshots s ON s.account_id = $1 AND s.object_type = $2 AND s.client_id = r.client_id
                AND s.object_id = r.object_id
WHERE $3::integer[] IS NULL OR r.n = ANY ($3::integer[])
ORDER BY s.client_id, s.object_id
FOR UPDATE OF s
"""

# A concurrent insert of the same object makes this one wait for it, then skip it.
_INSERT_NEW = """
INSERT INTO snapshots AS s (account_id, object_type, client_id, object_id, data, hash,
                            quick_hash, summary_hash)
SELECT $1, $2, r.client_id, r.object_id, r.data, r.hash, r.quick_hash, r.summary_hash
FROM relay_diff_rows r
WHERE NOT EXISTS (
    SELECT 1 FROM snapshots o
    WHERE o.account_id = $1 AND o.object_type = $2 AND o.client_id = r.client_id
      AND o.object_id = r.object_id)
ORDER BY r.client_id, r.object_id
ON CONFLICT DO NOTHING
RETURNING s.client_id, s.object_id
"""

# Rows this transaction just inserted carry the new hashes already and are left alone. A row
# stored before quick hashes (none) is refreshed once; the caller finds its fields unchanged and
# emits nothing for it. Keys merely reordered change nothing and write nothing: such an object
# stays a candidate, settled by its canonical hash, for as long as upstream sends that order.
_UPDATE_CHANGED = """
UPDATE snapshots s
SET data = r.data, hash = r.hash, quick_hash = r.quick_hash, summary_hash = r.summary_hash,
    last_seen_at = now(), deleted_at = NULL
FROM relay_diff_rows r
WHERE s.account_id = $1 AND s.object_type = $2 AND s.client_id = r.client_id
  AND s.object_id = r.object_id
  AND (s.hash IS DISTINCT FROM r.hash OR s.quick_hash IS NULL OR s.deleted_at IS NOT NULL)
RETURNING r.n
"""


@dataclass
class DiffResult:
    """What one diff did: ids stored for the first time (or back after a deletion), ids
    changed, and the event bodies stored with them (empty when `emit` was False)."""

    seen: int
    ids: list[str] = field(default_factory=list)  # every id the diff was given, once each
    created: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Batch:
    """Incoming objects and their ids by position `n` on the page; `candidates` are the
    positions (of an id's last copy) whose quick hash is not the stored one, with that hash."""

    client_id: str | None
    objects: Sequence[Mapping[str, Any]]
    object_ids: list[str] = field(default_factory=list)
    unique_ids: list[str] = field(default_factory=list)
    candidates: dict[int, bytes] = field(default_factory=dict)

    def client_of(self, n: int) -> str:
        """The client of object `n`: the call's, or for a client object the object itself."""
        return self.client_id or self.object_ids[n]


def _hashed_keys(
    object_type: str, batch: _Batch, client_id: str | None, failure: list[InvalidInput]
) -> Iterator[tuple[int, str, bytes]]:
    """Validate and hash the incoming objects, yielding the COPY record (n, id, quick hash) of
    each and collecting their ids. Bad input ends the records and lands in `failure`: raising
    inside a COPY would abort it by a cancel request.

    This loop is a diff's only per-object Python work (SQL does the comparing), so it is kept
    to one dumps (unsorted: the quick hash), one digest and one append per object (ids seen
    twice are sorted out after it). As a generator it feeds the COPY, which sends each 512 KB
    of records as it fills: Postgres stores them (on the other core) while Python hashes the
    rest.
    """
    what = f"a {object_type}"
    volatile = bool(VOLATILE_FIELDS[object_type])
    one_per_client = object_type == "connection"  # named by its client, it carries no id
    dumps, digest = exact_dumps, xxh3_128_digest
    object_ids = batch.object_ids
    try:
        for n, obj in enumerate(batch.objects):
            if not isinstance(obj, dict):
                raise InvalidInput(f"{what} must be a JSON object", field="objects")
            raw_id = client_id if one_per_client else obj.get("id")
            oid: str = raw_id if type(raw_id) is str and raw_id else _object_id(raw_id, what)
            try:
                hashed = digest(dumps(canonical(object_type, obj) if volatile else obj))
            except TypeError as exc:  # orjson.JSONEncodeError: e.g. an int beyond 64 bits
                raise InvalidInput(
                    f"{what} is not representable as JSON: {exc}", field="objects"
                ) from exc
            object_ids.append(oid)
            yield n, oid, hashed
    except InvalidInput as exc:
        failure.append(exc)


async def _hash_and_find(
    conn: Connection,
    account_id: str,
    object_type: str,
    objects: Iterable[Mapping[str, Any]],
    client_id: str | None,
) -> _Batch:
    """Hash the objects into a COPY of their keys, then find the new and changed ones; of an id
    seen twice (a shifted page can show an item twice) the last copy counts."""
    if object_type not in OBJECT_TYPES:
        raise InvalidInput(f"unknown object type {object_type!r}", field="object_type")
    if object_type != "client" and not client_id:
        raise InvalidInput(f"a {object_type} diff needs the client_id", field="client_id")
    batch = _Batch(
        None if object_type == "client" else client_id,
        objects if isinstance(objects, list | tuple) else list(objects),
    )
    failure: list[InvalidInput] = []
    await _temp_tables(conn)
    await conn.copy_records_to_table(
        "relay_diff_keys",
        records=_hashed_keys(object_type, batch, client_id, failure),
        columns=("n", "object_id", "quick_hash"),
    )
    if failure:
        raise failure[0]
    ids = batch.object_ids
    batch.unique_ids = list(dict.fromkeys(ids))
    if not ids:
        return batch
    if len(batch.unique_ids) < len(ids):
        last = {oid: n for n, oid in enumerate(ids)}
        await conn.execute(
            "DELETE FROM relay_diff_keys WHERE NOT n = ANY ($1::integer[])", list(last.values())
        )
    if object_type == "client":
        rows = await conn.fetch(_FIND_CLIENT_CANDIDATES, account_id, object_type)
    else:
        rows = await conn.fetch(_FIND_CANDIDATES, account_id, object_type, client_id)
    batch.candidates = {row[0]: row[1] for row in rows}
    return batch


async def _temp_tables(conn: Connection) -> None:
    await conn.execute(_TEMP_TABLES)


async def _lock_existing(
    conn: Connection, account_id: str, object_type: str, only: list[int] | None
) -> dict[int, tuple[Any, bool]]:
    rows = await conn.fetch(_LOCK_EXISTING, account_id, object_type, only)
    return {row["n"]: (row["data"], row["was_deleted"]) for row in rows}


def _event_bodies(
    fired: list[tuple[int, list[Fired], dict[str, Any]]],
    object_type: str,
    batch: _Batch,
    account_id: str,
    into: list[dict[str, Any]],
    sequences: Iterator[int],
) -> Iterator[dict[str, Any]]:
    """The events of a diff, built as the COPY takes them and kept in `into`: the COPY sends
    each 512 KB as it fills, so Postgres parses the first bodies while Python builds the rest.
    `sequences` holds each event's number, in the same order (from `_sequences`)."""
    at = datetime.now(UTC)
    # InvoiceXT's objects belong to no client (the envelope says null) and name their own type.
    invoicext = object_type in INVOICEXT_OBJECT_TYPES
    envelope_type = ENVELOPE_OBJECT_TYPE.get(object_type)
    for n, types, previous in fired:
        for event_type, extra in types:
            body = build_event(
                event_type,
                account_id=account_id,
                client_id=None if invoicext else batch.client_of(n),
                object_id=batch.object_ids[n],
                object=batch.objects[n],
                previous=previous,
                at=at,
                sequence=next(sequences),
                object_type=envelope_type,
                extra=extra,
            )
            into.append(body)
            yield body


async def _sequences(
    conn: Connection,
    fired: list[tuple[int, list[Fired], dict[str, Any]]],
    object_type: str,
    batch: _Batch,
    account_id: str,
) -> Iterator[int]:
    """Reserve the `sequence` of every event the diff fires (one short statement for the
    batch, before the COPY, so the bodies can still be built as the COPY takes them). Each is
    counted under the `object_type` its body names (`_event_bodies`)."""
    ids = batch.object_ids
    envelope_type = ENVELOPE_OBJECT_TYPE.get(object_type)
    keys = [
        (account_id, envelope_type or event_type.split(".", 1)[0], ids[n])
        for n, types, _ in fired
        for event_type, _extra in types
    ]
    return iter(await reserve_sequences(conn, keys))


async def diff_objects(
    conn: Connection,
    *,
    account_id: str,
    object_type: str,
    objects: Iterable[Mapping[str, Any]],
    client_id: str | None,
    emit: bool,
    payload: PayloadRenderer | None = None,
) -> DiffResult:
    """Diff a page (or a whole scan) of upstream objects against their snapshots, store what is
    new or changed and, when `emit`, the events it causes, all in one transaction.

    `objects` are raw upstream dicts of one `object_type` (`client`, `connection`, `document`,
    `supplier`, `expense_report`) of one client (`client_id`; for `client` objects leave it
    None: each is its own client). Re-diffing unchanged data writes nothing. `emit` is False
    for an account's baseline scan (unless it has `backfill`): snapshots are stored, no events.
    An object seen again after it was reported deleted counts as created. A page of a
    complete scan goes through `relay.snapshots.scans.diff_scan_page`, which also records the
    page's ids (`ids`) for the scan in the same transaction.
    `payload` is the source's webhook body renderer (`relay.events.insert_events`).
    Runs in its own transaction, or in a savepoint of the caller's.

    Dext has no `updated_at`: a change is only visible as a difference between what a poll
    sees now and what was stored before. Each object is stored with a hash of its canonical
    form, and with a quick hash of it in upstream key order (cheaper: no key sort), so Python
    quick-hashes the page into a COPY of (id, quick hash) to a temporary table (Postgres takes
    in each part while Python hashes the next) and Postgres finds the new and changed ids; only
    those objects are hashed canonically and their data travels, by a second COPY, and is
    stored set-based from there.
    Their events are stored in the same transaction (the outbox), each numbered by its object's
    `sequence` counter (locked until commit, after the snapshot rows): an event exists exactly when
    its snapshot change does. A stored hash that differs while no field does (one written by an
    older digest, or no quick hash yet) is refreshed without counting as a change.

    Concurrency: the existing rows among the new-or-changed ones are locked with `SELECT ...
    FOR UPDATE` (in key order) before their old version is read; new objects are inserted with
    `ON CONFLICT DO NOTHING` (a concurrent insert of the same object makes this one wait, then
    skip it, and the row is then locked and read like the others); the update applies only
    where a hash differs from the new one. Under READ COMMITTED a second transaction diffing
    the same page thus sees the first one's committed rows and writes (and emits) nothing, and
    an event's `previous` always holds the values of the row it replaced.
    """
    result = DiffResult(seen=0)
    async with outbox(conn):  # its events are announced after the commit (events.py)
        batch = await _hash_and_find(conn, account_id, object_type, objects, client_id)
        ids = batch.object_ids
        result.seen = len(batch.unique_ids)
        result.ids = list(batch.unique_ids)
        candidates = batch.candidates
        if not candidates:
            return result
        wanted = sorted(candidates)
        # Only new and changed objects travel as documents (the rest stayed hashes), and only
        # they need the canonical and summary hashes that are stored with them.
        documents = object_type == "document"
        objects = batch.objects
        await conn.copy_records_to_table(
            "relay_diff_rows",
            records=[
                (
                    n,
                    batch.client_of(n),
                    ids[n],
                    content_hash(object_type, objects[n]),
                    candidates[n],
                    summary_hash(objects[n]) if documents else None,
                    objects[n],
                )
                for n in wanted
            ],
            columns=("n", "client_id", "object_id", "hash", "quick_hash", "summary_hash", "data"),
        )
        # Without statistics the planner takes these wide rows for many more than they are
        # and scans every snapshot instead of probing the key; ANALYZE of them is cheap.
        await conn.execute("ANALYZE relay_diff_rows")
        # Lock and read what exists, insert what does not, then lock and read what another
        # transaction inserted in between: `old` is then exactly what the update replaces.
        old = await _lock_existing(conn, account_id, object_type, None)
        created: set[int] = set()
        if len(old) < len(wanted):
            position = {ids[n]: n for n in wanted}
            inserted = await conn.fetch(_INSERT_NEW, account_id, object_type)
            created = {position[row["object_id"]] for row in inserted}
        raced = [n for n in wanted if n not in old and n not in created]
        if raced:
            old.update(await _lock_existing(conn, account_id, object_type, raced))
        updated = (
            [row["n"] for row in await conn.fetch(_UPDATE_CHANGED, account_id, object_type)]
            if len(created) < len(wanted)
            else []
        )
        fired: list[tuple[int, list[Fired], dict[str, Any]]] = []
        created_type = event_type_for(object_type, "created")
        derive = DERIVED.get(object_type)
        for n in sorted([*created, *updated]):
            after = objects[n]
            before, was_deleted = old.get(n, (None, False))
            if n in created or was_deleted:
                result.created.append(ids[n])
                if derive is not None:
                    fired.append((n, derive(None, after), {}))
                else:
                    fired.append((n, [(created_type, {})] if created_type else [], {}))
            elif same_content(object_type, before, after):
                continue  # only the stored hash was stale: refreshed, nothing changed
            else:
                result.changed.append(ids[n])
                if derive is not None:
                    fired.append((n, derive(before, after), previous_fields(before, after)))
                else:
                    types, previous = changed_event_types(object_type, before, after)
                    fired.append((n, [(t, {}) for t in types], previous))
        if emit and any(types for _, types, _ in fired):
            sequences = await _sequences(conn, fired, object_type, batch, account_id)
            await insert_events(
                conn,
                _event_bodies(fired, object_type, batch, account_id, result.events, sequences),
                sequenced=True,
                payload=payload,
            )
    log.debug(
        "objects_diffed",
        account_id=account_id,
        object_type=object_type,
        client_id=client_id,
        seen=result.seen,
        created=len(result.created),
        changed=len(result.changed),
        events=len(result.events),
    )
    return result


async def changed_summary_ids(
    conn: Connection,
    *,
    account_id: str,
    client_id: str,
    summaries: Iterable[Mapping[str, Any]],
) -> list[str]:
    """Ids (in page order) of /documents summaries that are new, back after a deletion, or
    whose watched summary fields differ from the stored full item's: the items worth a detail
    fetch.

    One COPY of (id, summary hash) and one anti-join against `snapshots.summary_hash`; the few
    that differ are then compared on their watched fields, normalized, against the stored
    items, so an upstream that re-spells or retypes unwatched summary fields (`total_amount`,
    `source` ...) in some answers does not spend the budget on details that change nothing.
    """
    keys: dict[str, bytes] = {}
    summaries_seen = list(summaries)
    for obj in summaries_seen:
        if not isinstance(obj, Mapping):
            raise InvalidInput("a document summary must be a JSON object", field="summaries")
        keys[_object_id(obj.get("id"), "a document summary")] = summary_hash(obj)
    if not keys:
        return []
    async with conn.transaction():
        await _temp_tables(conn)
        await conn.copy_records_to_table(
            "relay_diff_keys",
            records=[(n, client_id, oid, h) for n, (oid, h) in enumerate(keys.items())],
            columns=("n", "client_id", "object_id", "summary_hash"),
        )
        rows = await conn.fetch(
            "SELECT k.object_id FROM relay_diff_keys k WHERE NOT EXISTS ("
            " SELECT 1 FROM snapshots s WHERE s.account_id = $1 AND s.object_type = 'document'"
            " AND s.client_id = k.client_id AND s.object_id = k.object_id"
            " AND s.summary_hash = k.summary_hash AND s.deleted_at IS NULL) ORDER BY k.n",
            account_id,
        )
        differing = [row["object_id"] for row in rows]
        stored = {
            row["object_id"]: row["data"]
            for row in await conn.fetch(
                "SELECT object_id, data FROM snapshots WHERE account_id = $1"
                " AND object_type = 'document' AND client_id = $2 AND object_id = ANY($3::text[])"
                " AND deleted_at IS NULL",
                account_id,
                client_id,
                differing,
            )
        }
    by_id = {_object_id(obj.get("id"), "a document summary"): obj for obj in summaries_seen}
    return [
        oid
        for oid in differing
        if oid not in stored or not _same_watched_summary(stored[oid], by_id[oid])
    ]


def _same_watched_summary(stored: Mapping[str, Any], summary: Mapping[str, Any]) -> bool:
    return all(
        normalized(stored.get(name)) == normalized(summary.get(name))
        for name in WATCHED_SUMMARY_FIELDS
    )


# ---- reads of stored snapshots (what the poller re-checks) -----------------------------------


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


# ---- deletions confirmed by a complete scan (`relay.snapshots.scans.finish_complete_scan`) ---

_SEEN = (
    "seen AS (SELECT DISTINCT unnest(object_ids) AS object_id FROM snapshot_scan_pages "
    "WHERE scan_id = $1)"
)

# Stored, live, not seen anywhere in the scan, and not written since the scan began (an object
# a poll stored while the scan ran was alive then, whatever the scan's pages show).
_UNSEEN_WHERE = """
s.account_id = scan.account_id AND s.object_type = scan.object_type
  AND s.client_id = scan.client_id AND s.deleted_at IS NULL AND s.last_seen_at < scan.started_at
  AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.object_id = s.object_id)
"""

_UNSEEN = f"""
WITH {_SEEN}
SELECT s.object_id FROM snapshots s JOIN snapshot_scans scan ON scan.id = $1
WHERE {_UNSEEN_WHERE}
ORDER BY s.object_id
"""

_MARK_DELETED = f"""
WITH {_SEEN}
UPDATE snapshots s SET deleted_at = now()
FROM snapshot_scans scan
WHERE scan.id = $1 AND s.object_id = ANY($2::text[]) AND {_UNSEEN_WHERE}
RETURNING s.object_id, s.client_id, s.data, s.data::text AS data_text
"""


async def unseen_in_scan(conn: Connection, scan_id: int) -> list[str]:
    """Ids of the scan's client and type stored and live that the scan did not see (and that
    nothing wrote since it began): its deletion candidates, in id order."""
    return [row["object_id"] for row in await conn.fetch(_UNSEEN, scan_id)]


async def mark_deleted_in_scan(
    conn: Connection, scan_id: int, object_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """Mark deleted those of `object_ids` that are still the scan's candidates; returns their
    rows (object_id, client_id, data, data_text: the last version seen)."""
    return list(await conn.fetch(_MARK_DELETED, scan_id, list(object_ids)))


# ---- for the delivery stage's backfill and retention: the snapshots statements they run -------

# Live snapshots of live accounts, filtered; $1 account ids, $2 object types, $3 client ids
# (each None for any).
_LIVE_SNAPSHOTS = """
FROM snapshots AS s
JOIN accounts AS a ON a.id = s.account_id AND a.deleted_at IS NULL
{sequences}
WHERE s.deleted_at IS NULL
  AND ($1::text[] IS NULL OR s.account_id = ANY($1))
  AND ($2::text[] IS NULL OR s.object_type = ANY($2))
  AND ($3::text[] IS NULL OR s.client_id = ANY($3))
"""
# Read-only, for the `sequence` each backfilled snapshot carries (relay.events owns the table).
_OBJECT_SEQUENCES = (
    "LEFT JOIN object_sequences AS q ON q.account_id = s.account_id"
    " AND q.object_type = s.object_type AND q.object_id = s.object_id"
)


async def count_live_snapshots(
    conn: Connection,
    account_ids: Sequence[str] | None,
    object_types: Sequence[str] | None,
    client_ids: Sequence[str] | None,
) -> int:
    """How many objects Relay holds now (not reported gone) of these accounts, types and
    clients (None: any), leaving out deleted accounts."""
    count = await conn.fetchval(
        "SELECT count(*) " + _LIVE_SNAPSHOTS.format(sequences=""),
        None if account_ids is None else list(account_ids),
        None if object_types is None else list(object_types),
        None if client_ids is None else list(client_ids),
    )
    return int(count)


async def live_snapshots_after(
    conn: Connection,
    account_ids: Sequence[str] | None,
    object_types: Sequence[str] | None,
    client_ids: Sequence[str] | None,
    *,
    after: Sequence[str],
    limit: int,
) -> list[Any]:
    """The next `limit` live snapshots (as `count_live_snapshots` counts them) after the key
    `after` (account_id, object_type, client_id, object_id), in key order: each with its data
    as jsonb text (`data_json`, numbers exactly as stored) and its object's last `sequence`
    (0 before any event)."""
    return await conn.fetch(
        "SELECT s.account_id, s.object_type, s.client_id, s.object_id, s.data::text AS data_json,"
        " coalesce(q.sequence, 0) AS sequence "
        + _LIVE_SNAPSHOTS.format(sequences=_OBJECT_SEQUENCES)
        + " AND (s.account_id, s.object_type, s.client_id, s.object_id) > ($4, $5, $6, $7)"
        " ORDER BY s.account_id, s.object_type, s.client_id, s.object_id LIMIT $8",
        None if account_ids is None else list(account_ids),
        None if object_types is None else list(object_types),
        None if client_ids is None else list(client_ids),
        *after,
        limit,
    )


async def prune_gone_snapshots(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` snapshots of objects reported gone before `cutoff` (claimed `FOR
    UPDATE SKIP LOCKED`, so concurrent runs split the work); returns how many."""
    count = await conn.fetchval(
        "WITH gone AS (DELETE FROM snapshots WHERE ctid = ANY(ARRAY("
        " SELECT ctid FROM snapshots WHERE deleted_at IS NOT NULL AND deleted_at < $1"
        " LIMIT $2 FOR UPDATE SKIP LOCKED)) RETURNING 1) SELECT count(*) FROM gone",
        cutoff,
        limit,
    )
    return int(count)
