"""The events store: the outbox rows whose `body` is the webhook body, and how to read them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import asyncpg
import structlog

from relay.db import Connection, Executor
from relay.errors import InvalidInput, NotFound
from relay.ids import new_id
from relay.paging import DEFAULT_LIMIT, check_limit, decode_cursor, encode_cursor

log = structlog.get_logger("relay.events")

_COLUMNS = (
    "id",
    "type",
    "account_id",
    "client_id",
    "object_type",
    "object_id",
    "body",
    "created_at",
    "sequence",
    "payload",
)

# One statement reserves the numbers of a whole batch: each object's counter grows by its count
# of events and returns its new last number. Keys in a fixed order, so two batches that share
# objects lock their counters in the same order and never deadlock.
_RESERVE_SEQUENCES = """
INSERT INTO object_sequences AS o (account_id, object_type, object_id, sequence)
SELECT a, t, i, n FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(a, t, i, n)
ORDER BY a, t, i
ON CONFLICT (account_id, object_type, object_id)
DO UPDATE SET sequence = o.sequence + excluded.sequence
RETURNING o.account_id, o.object_type, o.object_id, o.sequence
"""

# (account_id or "", object_type, object_id): what `sequence` counts.
ObjectKey: TypeAlias = tuple[str, str, str]
# What a subscriber of the event's source receives instead of the envelope, rendered once when
# the event is stored (InvoiceXT's seed-004 body), or None for the envelope itself. The source
# supplies it (`relay.sources.source.Source.webhook_payload`): the outbox knows no provider.
PayloadRenderer: TypeAlias = Callable[[Mapping[str, Any]], bytes | None]


def format_time(at: datetime) -> str:
    """RFC 3339 in UTC to the second, as every timestamp in an event body is written."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_event(
    type: str,
    *,
    account_id: str | None,
    client_id: str | None,
    object_id: str,
    object: Mapping[str, Any],
    previous: Mapping[str, Any] | None = None,
    at: datetime | None = None,
    sequence: int | None = None,
    object_type: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An event body in the webhook shape of relay.md; `object_type` is the type's prefix
    unless given (InvoiceXT's `bank.reconciled` is about a `reconciliation`). `extra` joins
    `data` (the publication an `invoice.published` reports).

    `sequence` is left out when None: `insert_events` numbers such bodies as it stores them.
    """
    body: dict[str, Any] = {
        "id": new_id("evt"),
        "type": type,
        "created_at": format_time(at or datetime.now(UTC)),
        "account_id": account_id,
        "client_id": client_id,
        "object_type": object_type or type.split(".", 1)[0],
        "object_id": object_id,
        "data": {"object": dict(object), "previous": dict(previous or {}), **(extra or {})},
    }
    if sequence is not None:
        body["sequence"] = sequence
    return body


def event_key(body: Mapping[str, Any]) -> ObjectKey:
    """The object an event body is about, as `sequence` counts it."""
    return (body.get("account_id") or "", str(body["object_type"]), str(body["object_id"]))


async def reserve_sequences(conn: Connection, keys: Sequence[ObjectKey]) -> list[int]:
    """The `sequence` of each of a batch of new events, one key per event in detection order.

    Call it in the transaction that stores the events: the counters it raises stay locked
    until that commits, so a concurrent batch of the same object waits and numbers after it
    (its events also get later `seq` values: per object, `seq` and `sequence` agree). A
    rolled-back transaction gives its numbers back, so an object's numbers have no gaps.
    """
    if not keys:
        return []
    counts: dict[ObjectKey, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    columns: list[list[Any]] = [[], [], [], []]
    for (account, object_type, object_id), n in counts.items():
        columns[0].append(account)
        columns[1].append(object_type)
        columns[2].append(object_id)
        columns[3].append(n)
    rows = await conn.fetch(_RESERVE_SEQUENCES, *columns)
    # The first number of each object's share, then one more per event in order.
    following = {(r[0], r[1], r[2]): r[3] - counts[(r[0], r[1], r[2])] + 1 for r in rows}
    numbers: list[int] = []
    for key in keys:
        numbers.append(following[key])
        following[key] += 1
    return numbers


def _record(body: Mapping[str, Any], payload: PayloadRenderer | None) -> tuple[Any, ...]:
    """The `events` row of a body, in `_COLUMNS` order: the columns repeat what filters need."""
    return (
        body["id"],
        body["type"],
        body["account_id"],
        body["client_id"],
        body["object_type"],
        body["object_id"],
        body,
        datetime.fromisoformat(body["created_at"]),
        body.get("sequence"),
        # The source's own webhook body (InvoiceXT's seed 004 format), rendered once, exactly.
        None if payload is None else payload(body),
    )


async def insert_events(
    conn: Connection,
    bodies: Iterable[Mapping[str, Any]],
    *,
    sequenced: bool = False,
    payload: PayloadRenderer | None = None,
) -> None:
    """Store event bodies (from `build_event`) in one COPY, in order (so `seq` follows it).

    Call it inside the transaction that made the change the events describe: that is the
    outbox, and it is what makes "stored before sent" and "no event without its change" hold.
    Bodies without a `sequence` are numbered here (`reserve_sequences`), which needs them all
    first; with `sequenced` the caller has numbered every body already and `bodies` may be a
    generator (the COPY takes them as they come). An empty sequence stores nothing and wakes
    nobody, so pass a generator only when it yields something. `payload`, from the events'
    source, renders what its subscribers receive instead of the envelope.
    """
    if not sequenced:
        # The caller's own dicts get their numbers, so what it returns is what was stored.
        listed = [body if isinstance(body, dict) else dict(body) for body in bodies]
        numbers = await reserve_sequences(
            conn, [event_key(body) for body in listed if "sequence" not in body]
        )
        given = iter(numbers)
        for body in listed:
            if "sequence" not in body:
                body["sequence"] = next(given)
        bodies = listed
    if isinstance(bodies, Sequence) and not bodies:
        return
    records = (_record(body, payload) for body in bodies)
    await conn.copy_records_to_table("events", records=records, columns=_COLUMNS)


async def insert_event(
    conn: Connection,
    type: str,
    *,
    account_id: str | None,
    object_id: str,
    object: Mapping[str, Any],
    client_id: str | None = None,
    previous: Mapping[str, Any] | None = None,
    payload: PayloadRenderer | None = None,
) -> dict[str, Any]:
    """Store one event made outside a diff (`account.auth_failed`, `account.recovered`,
    `relay.ping`) and return its body; `payload` as for `insert_events`."""
    key = (account_id or "", type.split(".", 1)[0], object_id)
    body = build_event(
        type,
        account_id=account_id,
        client_id=client_id,
        object_id=object_id,
        object=object,
        previous=previous,
        sequence=(await reserve_sequences(conn, [key]))[0],
    )
    await conn.execute(
        "INSERT INTO events (id, type, account_id, client_id, object_type, object_id, body,"
        " created_at, sequence, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        *_record(body, payload),
    )
    return body


async def get_event(db: Executor, event_id: str) -> dict[str, Any]:
    """One event body by its public id, or NotFound."""
    body = await db.fetchval("SELECT body FROM events WHERE id = $1", event_id)
    if body is None:
        raise NotFound("event", event_id)
    return dict(body)


@dataclass(frozen=True)
class EventPage:
    """One page of `list_events`: bodies newest first and the cursor of the next (older) page."""

    data: list[dict[str, Any]]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "next_cursor": self.next_cursor}


def parse_time(value: datetime | str, field: str) -> datetime:
    """A timezone-aware datetime from a datetime or an RFC 3339 string, or InvalidInput."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInput(
                f"{field} must be an RFC 3339 time like 2026-04-14T12:30:00Z", field=field
            ) from None
    if value.tzinfo is None:
        raise InvalidInput(f"{field} must carry a timezone, e.g. a trailing Z", field=field)
    return value


async def list_events(
    db: Executor,
    *,
    type: str | None = None,
    account_id: str | None = None,
    client_id: str | None = None,
    object_id: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> EventPage:
    """Event bodies newest first, filtered, in pages of at most `limit` (1..200).

    `type` is an exact type, a prefix wildcard (`document.*`) or `*`. `since` is inclusive and
    `until` exclusive (RFC 3339 strings or aware datetimes). Pagination is keyset on `seq`, so
    events stored while a client pages through never shift or repeat a page. Bad values raise
    InvalidInput naming the field.
    """
    check_limit(limit)
    # Fixed fragments only; every value goes in as a $n parameter.
    where: list[str] = []
    args: list[Any] = []

    def add(fragment: str, value: Any) -> None:
        args.append(value)
        where.append(fragment.format(f"${len(args)}"))

    if type is not None and type != "*":
        if type.endswith(".*"):
            add("starts_with(type, {})", type[:-1])
        else:
            add("type = {}", type)
    if account_id is not None:
        add("account_id = {}", account_id)
    if client_id is not None:
        add("client_id = {}", client_id)
    if object_id is not None:
        add("object_id = {}", object_id)
    if since is not None:
        add("created_at >= {}", parse_time(since, "since"))
    if until is not None:
        add("created_at < {}", parse_time(until, "until"))
    if cursor is not None:
        (seq,) = decode_cursor(cursor, int)
        if seq < 1:
            raise InvalidInput("cursor is not a cursor this API returned", "cursor")
        add("seq < {}", seq)
    args.append(limit + 1)
    sql = (
        "SELECT seq, body FROM events"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY seq DESC LIMIT ${len(args)}"
    )
    rows = await db.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["seq"]) if more else None
    return EventPage(data=[dict(row["body"]) for row in rows], next_cursor=next_cursor)


# ---- the live stream's reads (relay/api/stream.py) -------------------------------------------
# A stream position is (xid, seq): the writing transaction of the last event passed, then its
# seq. Below the horizon every transaction has finished, so rows read in this order and below
# it can no longer be joined by an earlier one (unlike seq alone). The horizon is the oldest
# transaction still running in this snapshot, ignoring those of *other* databases of the
# cluster (xids are cluster-wide, and another application's long transaction must not stall
# the stream); one that ended between the snapshot and the look at pg_stat_activity counts as
# ours, so the horizon errs on the early side and the next read moves it on.
StreamPosition: TypeAlias = tuple[int, int]
_LAST_SEQ = 2**63 - 1
_HORIZON = (
    "(SELECT coalesce(min(x), pg_snapshot_xmax(pg_current_snapshot()))"
    " FROM pg_snapshot_xip(pg_current_snapshot()) AS x"
    " WHERE (x::text::bigint % 4294967296) NOT IN ("
    "  SELECT backend_xid::text::bigint FROM pg_stat_activity"
    "  WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()))"
)


async def stream_start(db: Executor) -> tuple[StreamPosition, frozenset[str]]:
    """Where "from now on" begins: the position before the horizon, and the ids of the events
    after it that are already visible (stored before now, so not new: skip them)."""
    async with _one_connection(db) as conn:
        row = await conn.fetchrow(
            "SELECT h::text AS horizon, (SELECT coalesce(array_agg(id), '{}') FROM events"
            " WHERE xid >= h) AS visible FROM (SELECT " + _HORIZON + " AS h) AS horizon"
        )
    assert row is not None
    return (int(row["horizon"]) - 1, _LAST_SEQ), frozenset(row["visible"])


@asynccontextmanager
async def _one_connection(db: Executor) -> AsyncIterator[Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def stream_position_of(db: Executor, event_id: str) -> StreamPosition | None:
    """The position of a stored event (a `Last-Event-ID`), or None when there is no such event."""
    row = await db.fetchrow("SELECT xid::text AS xid, seq FROM events WHERE id = $1", event_id)
    return None if row is None else (int(row["xid"]), int(row["seq"]))


async def stream_position_since(db: Executor, since: datetime) -> StreamPosition | None:
    """A position before every event created at or after `since`, or None if there is none yet
    (older ones may follow; the stream's `since` filter drops them)."""
    xid = await db.fetchval("SELECT min(xid)::text FROM events WHERE created_at >= $1", since)
    return None if xid is None else (int(xid) - 1, _LAST_SEQ)


async def read_stream(
    db: Executor, after: StreamPosition, *, limit: int = 500
) -> list[tuple[StreamPosition, dict[str, Any]]]:
    """Up to `limit` events after `after` in stream order, only those below the horizon."""
    rows = await db.fetch(
        "SELECT xid::text AS xid, seq, body FROM events"
        " WHERE (xid, seq) > ($1::text::xid8, $2::bigint)"
        " AND xid < " + _HORIZON + " ORDER BY events.xid, events.seq LIMIT $3",
        str(after[0]),
        after[1],
        limit,
    )
    return [((int(row["xid"]), int(row["seq"])), dict(row["body"])) for row in rows]


# ---- /metrics reads (relay/api/metrics.py counts events by type incrementally) --------------


async def seq_and_writers(conn: Executor) -> tuple[int, set[str]]:
    """The highest stored `seq` (0 when none), and the transaction ids of this database that
    are writing now: a lower `seq` can still commit until every one of them has ended."""
    top = await conn.fetchrow(
        "SELECT coalesce(max(seq), 0) AS seq, ARRAY(SELECT backend_xid::text "
        " FROM pg_stat_activity WHERE datname = current_database() AND backend_xid IS NOT NULL"
        ") AS running FROM events"
    )
    assert top is not None
    return int(top["seq"]), set(top["running"])


async def count_by_type(conn: Executor, *, after: int, upto: int | None = None) -> dict[str, int]:
    """Stored events by type whose `seq` is above `after` (and at most `upto`, when given)."""
    if upto is None:
        rows = await conn.fetch(
            "SELECT type, count(*) AS n FROM events WHERE seq > $1 GROUP BY type", after
        )
    else:
        rows = await conn.fetch(
            "SELECT type, count(*) AS n FROM events WHERE seq > $1 AND seq <= $2 GROUP BY type",
            after,
            upto,
        )
    return {row["type"]: int(row["n"]) for row in rows}


# ---- waking the readers -----------------------------------------------------------------------

# The `events_notify` trigger (schema.sql) stays quiet in a transaction that set this, and sets
# it to 'due' once it has stored events there.
_ANNOUNCE_AFTER_COMMIT = "SELECT set_config('relay.announce_events', 'after_commit', true)"
_ANNOUNCE_DUE = "SELECT current_setting('relay.announce_events', true) = 'due'"
_ANNOUNCE = "SELECT pg_notify('relay_wake', 'events')"


@asynccontextmanager
async def outbox(conn: Connection) -> AsyncIterator[Connection]:
    """A transaction that stores events and wakes their readers once it has committed.

    Without it the `events_notify` trigger sends `NOTIFY relay_wake` from inside the storing
    transaction, and Postgres serializes the commits of all transactions that notified (one
    lock for the whole server, held across each commit's WAL flush): storing events one
    transaction each, 16 clients reached 150-180 commits a second on this loaded machine with
    the NOTIFY inside and 2,300 with it after the commit (pgbench, the same load). Inside this
    block the trigger stays quiet and, if events were stored, the NOTIFY goes out after the
    commit from a transaction of its own, which writes no WAL and so waits for no flush.
    Readers (the dispatchers, the live stream) lose nothing if it never arrives: each also
    polls Postgres.

    Opened inside a transaction already, it is only a savepoint: the trigger notifies at the
    outer commit as usual, and nothing is announced early.
    """
    if conn.is_in_transaction():
        async with conn.transaction():
            yield conn
        return
    async with conn.transaction():
        await conn.execute(_ANNOUNCE_AFTER_COMMIT)
        yield conn
        due = await conn.fetchval(_ANNOUNCE_DUE)
    if due:
        await announce_events(conn)


async def announce_events(db: Executor) -> None:
    """Wake the dispatchers and live streams: events were stored (committed already).

    A failure is logged, not raised: the events are stored, and every reader's poll finds them.
    """
    try:
        await db.execute(_ANNOUNCE)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        log.warning("events_announce_failed", error=f"{type(exc).__name__}: {exc}")


# ---- for the delivery stage and retention: the events statements they run ---------------------

_DELIVERY_COLUMNS = "id, type, account_id, client_id, object_type, object_id, body"


# Fan-out's claim: one statement takes the oldest queue rows, deletes them and returns their
# events. The queue must be walked by its primary key in `seq` order (plan it with bitmap and
# sequential scans off): dead rows pile up between autovacuums, and only an index scan learns to
# skip them. `= ANY(ARRAY(...))` keeps every other step on a primary key whatever the statistics.
# The events are locked `FOR NO KEY UPDATE`, as a replay locks one (`lock_event_for_replay`, a
# replay window's batch), so that a replay and the fan-out of one event take turns, as they did
# while fan-out updated the event row: otherwise a replay reading "no delivery yet" while the
# fan-out's generation 0 is uncommitted inserts a generation 0 too, and fails on the unique key
# once the fan-out commits. An event a replay holds is skipped and keeps its queue row for a later
# fan-out (never wait: the dispatcher claims deliveries on the same connection). The lock is a
# write fan-out made anyway: the deliveries' foreign-key checks lock the same rows `FOR KEY SHARE`
# and then find them locked (pg_walinspect, 500 events to one subscription: 1,001 heap lock
# records with it or without; 500 more, 54 bytes each, only when no subscription wants them).
# Retention needs no lock here: it takes only events without a queue row, and the row's delete
# commits with the deliveries it made (pending then), so no snapshot sees an event with neither.
# A queue row whose event is gone is deleted and returns nothing.
_CLAIM_UNFANNED = f"""
WITH picked AS (
    SELECT seq, event_id FROM event_fanout_queue ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
), locked AS (
    SELECT e.id FROM events AS e WHERE e.id = ANY(ARRAY(SELECT event_id FROM picked))
    FOR NO KEY UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM event_fanout_queue AS q
    WHERE q.seq = ANY(ARRAY(SELECT seq FROM picked))
      AND (q.event_id = ANY(ARRAY(SELECT id FROM locked))
           -- Not locked: gone, or held by someone else. Uncorrelated, so it is looked up only
           -- when an event was skipped, by its primary key: as `NOT EXISTS` on q.event_id it
           -- was planned as a hash of every id in `events`.
           OR NOT q.event_id = ANY(ARRAY(
               SELECT e.id FROM events AS e WHERE e.id = ANY(ARRAY(SELECT event_id FROM picked))
           )))
    RETURNING q.event_id
)
SELECT {", ".join("e." + c for c in _DELIVERY_COLUMNS.split(", "))}, e.seq
FROM events AS e WHERE e.id = ANY(ARRAY(SELECT event_id FROM gone))
ORDER BY e.seq
"""


async def claim_unfanned_events(conn: Connection, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` events waiting for fan-out, oldest `seq` first, taken off the queue in the
    caller's transaction (which inserts their deliveries: a rollback leaves them queued) and
    locked by it (`SKIP LOCKED`: concurrent fan-outs take different events). Plan it with
    bitmap and sequential scans off (the dispatcher's claim settings) so that the queue is
    walked by its primary key."""
    return await conn.fetch(_CLAIM_UNFANNED, limit)


async def lock_event_for_replay(conn: Connection, event_id: str) -> asyncpg.Record | None:
    """One event, locked `FOR NO KEY UPDATE` (fan-out's foreign-key checks, `FOR KEY SHARE`,
    do not wait for it) so that concurrent replays of it, and its fan-out, which takes the same
    lock (`claim_unfanned_events`), take their generations in turn."""
    return await conn.fetchrow(
        f"SELECT {_DELIVERY_COLUMNS} FROM events WHERE id = $1 FOR NO KEY UPDATE", event_id
    )


async def insert_ping_event(conn: Connection, body: dict[str, Any]) -> None:
    """Store a `relay.ping` body (numbering it) already fanned out (`fanned_out_at` set, so
    never queued for fan-out): it goes only to the subscription it tests, whose delivery the
    caller inserts in the same transaction."""
    body["sequence"] = (await reserve_sequences(conn, [event_key(body)]))[0]
    await conn.execute(
        "INSERT INTO events (id, type, object_type, object_id, body, fanned_out_at, sequence) "
        "VALUES ($1, 'relay.ping', 'relay', $2, $3, now(), $4)",
        body["id"],
        body["object_id"],
        body,
        body["sequence"],
    )


# Types a window replay leaves out: a ping belongs to the subscription it tested, a snapshot
# to the backfill that made it. $1 since, $2 until, $3 exact types, $4 type prefixes.
_REPLAY_WINDOW = """
created_at >= $1 AND ($2::timestamptz IS NULL OR created_at < $2)
AND ($3::text[] IS NULL OR type = ANY($3)
     OR EXISTS (SELECT 1 FROM unnest($4::text[]) AS p WHERE starts_with(type, p)))
AND type <> 'relay.ping' AND type NOT LIKE '%.snapshot'
"""


async def count_replay_window(
    conn: Connection,
    since: datetime,
    until: datetime | None,
    exact: Sequence[str] | None,
    prefixes: Sequence[str],
) -> int:
    """How many stored events a window replay would consider (pings and snapshots left out);
    `exact` None with no `prefixes` means every type."""
    count = await conn.fetchval(
        f"SELECT count(*) FROM events WHERE {_REPLAY_WINDOW}",
        since,
        until,
        None if exact is None else list(exact),
        list(prefixes),
    )
    return int(count)


async def replay_window_batch(
    conn: Connection,
    since: datetime,
    until: datetime | None,
    exact: Sequence[str] | None,
    prefixes: Sequence[str],
    *,
    after_seq: int,
    limit: int,
) -> list[asyncpg.Record]:
    """The next `limit` events of a replay window after `seq` `after_seq`, in `seq` order,
    locked `FOR NO KEY UPDATE` as `lock_event_for_replay` locks one."""
    return await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS}, seq FROM events WHERE {_REPLAY_WINDOW} AND seq > $5 "
        "ORDER BY seq LIMIT $6 FOR NO KEY UPDATE",
        since,
        until,
        None if exact is None else list(exact),
        list(prefixes),
        after_seq,
        limit,
    )


_INSERT_SNAPSHOT_EVENTS = """
INSERT INTO events (id, type, account_id, client_id, object_type, object_id, body,
                    created_at, sequence, fanned_out_at)
SELECT p.event_id, p.object_type || '.snapshot', p.account_id, p.client_id, p.object_type,
       p.object_id,
       jsonb_build_object(
           'id', p.event_id, 'type', p.object_type || '.snapshot',
           'created_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           'account_id', p.account_id, 'client_id', p.client_id,
           'object_type', p.object_type, 'object_id', p.object_id,
           'sequence', p.sequence,
           'data', jsonb_build_object('object', p.data::jsonb, 'previous', '{}'::jsonb)),
       date_trunc('second', now()), p.sequence, now()
FROM (
    SELECT relay_id('evt') AS event_id, t.*
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])
         WITH ORDINALITY AS t(account_id, object_type, client_id, object_id, data, sequence, n)
) AS p
ORDER BY p.n
RETURNING id, account_id, object_type, object_id
"""


async def insert_snapshot_events(
    conn: Connection, snapshots: Sequence[asyncpg.Record]
) -> list[asyncpg.Record]:
    """Store one `<object_type>.snapshot` event per snapshot row (account_id, object_type,
    client_id, object_id, `data_json`: the object as jsonb text, so its numbers are kept
    exactly, and `sequence`: its object's last), already fanned out (`fanned_out_at` set, so
    never queued for fan-out): a backfill queues their deliveries itself. Returns (id,
    account_id, object_type, object_id) of each."""
    if not snapshots:
        return []
    return await conn.fetch(
        _INSERT_SNAPSHOT_EVENTS,
        [s["account_id"] for s in snapshots],
        [s["object_type"] for s in snapshots],
        [s["client_id"] for s in snapshots],
        [s["object_id"] for s in snapshots],
        [s["data_json"] for s in snapshots],
        [s["sequence"] for s in snapshots],
    )


# Retention: an event may go once it is older than the cutoff ($1), fanned out (not queued), and
# none of its deliveries is pending or was touched inside the window (a recent replay or retry
# keeps it).
_PRUNABLE = """
    e.created_at < $1
    AND NOT EXISTS (SELECT 1 FROM event_fanout_queue q WHERE q.seq = e.seq)
    AND NOT EXISTS (
        SELECT 1 FROM deliveries d
        WHERE d.event_id = e.id AND (d.status = 'pending' OR d.updated_at >= $1)
    )
"""


async def claim_prunable_events(conn: Connection, cutoff: datetime, limit: int) -> list[str]:
    """Ids of up to `limit` prunable events, oldest first, locked `FOR UPDATE SKIP LOCKED` (a
    concurrent retention run takes others)."""
    rows = await conn.fetch(
        f"SELECT e.id FROM events e WHERE {_PRUNABLE} ORDER BY e.created_at LIMIT $2 "
        "FOR UPDATE SKIP LOCKED",
        cutoff,
        limit,
    )
    return [row["id"] for row in rows]


async def still_prunable(conn: Connection, event_ids: Sequence[str], cutoff: datetime) -> list[str]:
    """Of claimed events, those still prunable now: run it after the caller holds the locks of
    their deliveries, so a retry that committed meanwhile keeps its event."""
    rows = await conn.fetch(
        f"SELECT e.id FROM events e WHERE e.id = ANY($2::text[]) AND {_PRUNABLE}",
        cutoff,
        list(event_ids),
    )
    return [row["id"] for row in rows]


async def delete_events(conn: Connection, event_ids: Sequence[str]) -> int:
    """Delete events by id (their deliveries cascade); returns how many were deleted."""
    status = await conn.execute("DELETE FROM events WHERE id = ANY($1::text[])", list(event_ids))
    return int(status.rsplit(" ", 1)[1])
