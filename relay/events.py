"""The events store: the outbox rows whose `body` is the webhook body, and how to read them."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import orjson

from relay.errors import InvalidInput, NotFound
from relay.ids import new_id
from relay.sources.invoicext_events import webhook_payload

MAX_LIMIT = 200
DEFAULT_LIMIT = 50

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection, or one borrowed from a pool (`async with pool.acquire() as conn`).
    Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy[asyncpg.Record]
    Executor: TypeAlias = Connection | asyncpg.Pool

_COLUMNS = (
    "id",
    "type",
    "account_id",
    "client_id",
    "object_type",
    "object_id",
    "body",
    "created_at",
    "payload",
)


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
    object_type: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An event body in the webhook shape of relay.md; `object_type` is the type's prefix
    unless given (InvoiceXT's `bank.reconciled` is about a `reconciliation`). `extra` joins
    `data` (the publication an `invoice.published` reports)."""
    body = {
        "id": new_id("evt"),
        "type": type,
        "created_at": format_time(at or datetime.now(UTC)),
        "account_id": account_id,
        "client_id": client_id,
        "object_type": object_type or type.split(".", 1)[0],
        "object_id": object_id,
        "data": {"object": dict(object), "previous": dict(previous or {}), **(extra or {})},
    }
    return body


def _record(body: Mapping[str, Any]) -> tuple[Any, ...]:
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
        # An InvoiceXT event's webhook body (seed 004's format), rendered once, exactly.
        webhook_payload(body),
    )


async def insert_events(conn: Connection, bodies: Iterable[Mapping[str, Any]]) -> None:
    """Store event bodies (from `build_event`) in one COPY, in order (so `seq` follows it).

    Call it inside the transaction that made the change the events describe: that is the
    outbox, and it is what makes "stored before sent" and "no event without its change" hold.
    `bodies` may be a generator (the COPY takes them as they come); an empty sequence stores
    nothing and wakes nobody, so pass a generator only when it yields something.
    """
    if isinstance(bodies, Sequence) and not bodies:
        return
    records = (_record(body) for body in bodies)
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
) -> dict[str, Any]:
    """Store one event made outside a diff (`account.auth_failed`, `account.recovered`,
    `relay.ping`) and return its body."""
    body = build_event(
        type,
        account_id=account_id,
        client_id=client_id,
        object_id=object_id,
        object=object,
        previous=previous,
    )
    await conn.execute(
        "INSERT INTO events (id, type, account_id, client_id, object_type, object_id, body,"
        " created_at, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        *_record(body),
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


def encode_cursor(seq: int) -> str:
    """An opaque cursor for the page after the event with this `seq`."""
    raw = orjson.dumps({"seq": seq})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    """The `seq` a cursor from `encode_cursor` carries, or InvalidInput for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        value = None
    seq = value.get("seq") if isinstance(value, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise InvalidInput("cursor is not one this API returned", field="cursor")
    return seq


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
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
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
        add("seq < {}", decode_cursor(cursor))
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
