"""The events store: single inserts, get by id, filtered lists and cursor pagination."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from relay.errors import InvalidInput, NotFound
from relay.events import encode_cursor, get_event, insert_event, list_events
from relay.snapshots import diff_objects
from tests.support.snapshots import CLIENT, cost
from tests.support.stores import make_account


async def add(
    pool: asyncpg.Pool, type: str, account: str | None, object_id: str, **kw: Any
) -> dict[str, Any]:
    async with pool.acquire() as conn:
        return await insert_event(
            conn, type, account_id=account, object_id=object_id, object={"id": object_id}, **kw
        )


async def test_insert_event_stores_the_webhook_body(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    async with pool.acquire() as conn:
        body = await insert_event(
            conn,
            "account.auth_failed",
            account_id=account,
            object_id=account,
            object={"id": account, "status": "broken", "last_error": "invalid_token"},
        )
    assert body == {
        "id": body["id"],
        "type": "account.auth_failed",
        "created_at": body["created_at"],
        "account_id": account,
        "client_id": None,
        "object_type": "account",
        "object_id": account,
        "data": {
            "object": {"id": account, "status": "broken", "last_error": "invalid_token"},
            "previous": {},
        },
        "sequence": 1,  # the account's first event
    }
    assert body["id"].startswith("evt_")
    created = datetime.strptime(body["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - created) < timedelta(seconds=5)
    row = await pool.fetchrow("SELECT * FROM events")
    assert row["body"] == body
    assert (row["id"], row["type"], row["account_id"], row["object_type"], row["object_id"]) == (
        body["id"],
        "account.auth_failed",
        account,
        "account",
        account,
    )
    assert await get_event(pool, body["id"]) == body


async def test_get_unknown_event_is_not_found(pool: asyncpg.Pool) -> None:
    with pytest.raises(NotFound) as caught:
        await get_event(pool, "evt_nope")
    assert (caught.value.kind, caught.value.id) == ("event", "evt_nope")


async def test_ping_without_account(pool: asyncpg.Pool) -> None:
    body = await add(pool, "relay.ping", None, "sub_1")
    assert (body["object_type"], body["account_id"]) == ("relay", None)
    page = await list_events(pool)
    assert page.data == [body]
    assert page.next_cursor is None


async def test_list_filters(pool: asyncpg.Pool) -> None:
    one = await make_account(pool)
    two = await make_account(pool)
    a = await add(pool, "document.created", one, "d1", client_id="c1")
    b = await add(pool, "document.status_changed", one, "d1", client_id="c1")
    c = await add(pool, "client.health_changed", one, "c2", client_id="c2")
    d = await add(pool, "document.created", two, "d9", client_id="c9")
    e = await add(pool, "account.recovered", two, two)

    async def ids(**filters: Any) -> list[str]:
        return [body["id"] for body in (await list_events(pool, **filters)).data]

    assert await ids() == [e["id"], d["id"], c["id"], b["id"], a["id"]]
    assert await ids(type="document.created") == [d["id"], a["id"]]
    assert await ids(type="document.*") == [d["id"], b["id"], a["id"]]
    assert await ids(type="*") == await ids()
    assert await ids(account_id=one) == [c["id"], b["id"], a["id"]]
    assert await ids(client_id="c1") == [b["id"], a["id"]]
    assert await ids(object_id="d1", type="document.status_changed") == [b["id"]]
    assert await ids(account_id=two, client_id="c1") == []


async def test_since_and_until(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    bodies = [await add(pool, "document.created", account, f"d{i}") for i in range(3)]
    base = datetime(2026, 4, 14, 12, 0, tzinfo=UTC)
    for i, body in enumerate(bodies):
        await pool.execute(
            "UPDATE events SET created_at = $2 WHERE id = $1", body["id"], base + timedelta(hours=i)
        )

    async def ids(**filters: Any) -> list[str]:
        return [b["object_id"] for b in (await list_events(pool, **filters)).data]

    assert await ids(since="2026-04-14T13:00:00Z") == ["d2", "d1"]
    assert await ids(until="2026-04-14T13:00:00Z") == ["d0"]
    assert await ids(since=base, until=base + timedelta(hours=2)) == ["d1", "d0"]
    assert await ids(since="2026-04-14T14:00:00+02:00") == ["d2", "d1", "d0"]


async def test_cursor_pages_cover_everything_once_under_inserts(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    for i in range(7):
        await add(pool, "document.created", account, f"d{i}")
    seen: list[str] = []
    page = await list_events(pool, limit=3)
    seen += [b["object_id"] for b in page.data]
    # New events arriving while a client pages through never shift the older pages.
    await add(pool, "document.created", account, "late")
    while page.next_cursor is not None:
        page = await list_events(pool, limit=3, cursor=page.next_cursor)
        seen += [b["object_id"] for b in page.data]
    assert seen == [f"d{i}" for i in reversed(range(7))]
    assert (await list_events(pool, limit=200)).next_cursor is None


async def test_exact_last_page_has_no_cursor(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    for i in range(4):
        await add(pool, "document.created", account, f"d{i}")
    first = await list_events(pool, limit=2)
    assert first.next_cursor is not None
    second = await list_events(pool, limit=2, cursor=first.next_cursor)
    assert [b["object_id"] for b in second.data] == ["d1", "d0"]
    assert second.next_cursor is None
    assert second.to_dict() == {"data": second.data, "next_cursor": None}


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!!",
        "",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"seq": -4}').decode(),
        base64.urlsafe_b64encode(b'{"seq": "9"}').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"seq": true}').decode(),
    ],
)
async def test_bad_cursor_is_invalid_input(pool: asyncpg.Pool, cursor: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await list_events(pool, cursor=cursor)
    assert caught.value.field == "cursor"


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-04-14T12:00:00"}, "until"),
    ],
)
async def test_bad_filters_are_invalid_input(
    pool: asyncpg.Pool, filters: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await list_events(pool, **filters)
    assert caught.value.field == field


async def test_diff_events_list_in_the_webhook_shape(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    async with pool.acquire() as conn:
        await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=[cost("d1")],
            client_id=CLIENT,
            emit=False,
        )
        result = await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=[cost("d1", status="ready", publish_status="queued")],
            client_id=CLIENT,
            emit=True,
        )
    listed = (await list_events(pool, object_id="d1")).data
    assert listed == list(reversed(result.events))
    assert [b["type"] for b in listed] == [
        "document.sync_status_changed",
        "document.status_changed",
    ]
    assert listed[0]["data"]["previous"] == {"status": "review", "publish_status": "unpublished"}
    assert encode_cursor(1) != encode_cursor(2)
