"""The events store: single inserts, get by id, filtered lists, cursor pagination, wake-ups,
the fan-out queue."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from relay.db import connect, create_pool, migrate, schema_is_current
from relay.delivery.store import CLAIM_SESSION, index_scans_only
from relay.errors import InvalidInput, NotFound
from relay.events import (
    _CLAIM_UNFANNED,
    announce_events,
    build_event,
    claim_unfanned_events,
    encode_cursor,
    get_event,
    insert_event,
    insert_events,
    insert_ping_event,
    insert_snapshot_events,
    list_events,
    lock_event_for_replay,
    outbox,
)
from relay.settings import Settings
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


# ---- waking the readers: the trigger, or `outbox` after its commit ---------------------------


class Wakes:
    """A LISTEN on `relay_wake` (its own connection), as the dispatchers and streams hold one."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.payloads: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self.payloads.put_nowait(str(payload))

    async def settled(self) -> list[str]:
        """Every wake-up sent so far: a round trip on the listening connection after a pause,
        so that anything Postgres queued for it has been read."""
        await asyncio.sleep(0.2)
        await self.conn.execute("SELECT 1")
        got = []
        while not self.payloads.empty():
            got.append(self.payloads.get_nowait())
        return got


@pytest.fixture
async def wakes(settings: Settings) -> AsyncIterator[Wakes]:
    conn = await asyncpg.connect(settings.database_url)
    listening = Wakes(conn)
    await conn.add_listener("relay_wake", listening.on_notify)
    yield listening
    await conn.close()


def bodies(n: int) -> list[dict[str, Any]]:
    return [
        build_event(
            "relay.ping", account_id=None, client_id=None, object_id=f"sub_{i}", object={"id": i}
        )
        for i in range(n)
    ]


async def test_a_plain_transaction_is_announced_by_the_trigger(
    pool: asyncpg.Pool, wakes: Wakes
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, bodies(3))
    assert await wakes.settled() == ["events"]


async def test_an_outbox_batch_is_announced_once_after_its_commit(
    pool: asyncpg.Pool, wakes: Wakes
) -> None:
    async with pool.acquire() as conn:
        async with outbox(conn):
            await insert_events(conn, bodies(3))
            await insert_event(conn, "relay.ping", account_id=None, object_id="x", object={})
        # One wake-up, from the announcement alone: the trigger's own (a second one, sent from
        # the storing transaction) stayed quiet, and the readers find all four events.
        assert await wakes.settled() == ["events"]
        assert await conn.fetchval("SELECT count(*) FROM events") == 4
        # The quiet trigger was the transaction's alone: the next one notifies again.
        async with conn.transaction():
            await insert_events(conn, bodies(1))
    assert await wakes.settled() == ["events"]


async def test_an_outbox_inside_a_transaction_announces_at_the_outer_commit_only(
    pool: asyncpg.Pool, wakes: Wakes
) -> None:
    async with pool.acquire() as conn:
        async with conn.transaction():
            async with outbox(conn):  # a savepoint: nothing is committed when it ends
                await insert_events(conn, bodies(2))
            assert await wakes.settled() == []
        assert await wakes.settled() == ["events"]


async def test_a_failed_outbox_announces_nothing_and_stores_nothing(
    pool: asyncpg.Pool, wakes: Wakes
) -> None:
    async def fail(conn: asyncpg.Connection) -> None:
        async with outbox(conn):
            await insert_events(conn, bodies(2))
            raise RuntimeError("the change failed")

    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            await fail(conn)
    assert await wakes.settled() == []
    assert await pool.fetchval("SELECT count(*) FROM events") == 0


async def test_an_announcement_that_fails_is_logged_not_raised(settings: Settings) -> None:
    # Committed events whose announcement is lost are found by the readers' polls (the tests
    # of the dispatcher and the stream show it); the storing caller must not see an error.
    conn = await asyncpg.connect(settings.database_url)
    await conn.close()
    with capture_logs() as logs:
        await announce_events(conn)
    assert [e["event"] for e in logs] == ["events_announce_failed"]


async def test_an_outbox_that_stored_nothing_announces_nothing(
    pool: asyncpg.Pool, wakes: Wakes
) -> None:
    # Most polls find no change: their transactions must not wake every reader for nothing.
    async with pool.acquire() as conn, outbox(conn):
        await insert_events(conn, [])
        await conn.execute("SELECT 1")
    assert await wakes.settled() == []


# ---- the fan-out queue: what storing queues, what fan-out's claim takes ------------------------


async def queued(db: asyncpg.Pool | asyncpg.Connection) -> list[tuple[int, str]]:
    return [tuple(r) for r in await db.fetch("SELECT seq, event_id FROM event_fanout_queue")]


async def stored(
    db: asyncpg.Pool | asyncpg.Connection, where: str = "true"
) -> list[tuple[int, str]]:
    return [tuple(r) for r in await db.fetch(f"SELECT seq, id FROM events WHERE {where}")]


async def test_events_stored_by_copy_or_insert_are_queued_pings_and_snapshots_are_not(
    pool: asyncpg.Pool,
) -> None:
    account = await make_account(pool)
    snapshot_rows = [
        {
            "account_id": account,
            "object_type": "document",
            "client_id": "cli_1",
            "object_id": f"doc_{n}",
            "data_json": '{"id": 1}',
            "sequence": 1,
        }
        for n in range(2)
    ]
    async with pool.acquire() as conn, conn.transaction():
        copied = bodies(3)
        await insert_events(conn, copied)  # COPY
        one = await insert_event(
            conn, "account.recovered", account_id=account, object_id="a", object={}
        )
        await insert_ping_event(conn, bodies(1)[0])  # goes to its subscription alone
        assert len(await insert_snapshot_events(conn, snapshot_rows)) == 2  # type: ignore[arg-type]
    assert await pool.fetchval("SELECT count(*) FROM events") == 7
    assert {event_id for _, event_id in await queued(pool)} == {b["id"] for b in copied} | {
        one["id"]
    }
    # Queued under their own seq; only what is stored already fanned out stays out.
    assert sorted(await queued(pool)) == sorted(await stored(pool, "fanned_out_at IS NULL"))


async def test_concurrent_claims_take_each_queued_event_once_and_a_rollback_requeues(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, bodies(60))
    everything = sorted(await stored(pool))
    conns = [await connect(settings, setup=CLAIM_SESSION) for _ in range(4)]
    try:
        # Each claims in a transaction still open when the others claim.
        transactions = [c.transaction() for c in conns]
        for t in transactions:
            await t.start()
        claims = await asyncio.gather(*(claim_unfanned_events(c, 20) for c in conns))
        taken = [(r["seq"], r["id"]) for rows in claims for r in rows]
        for rows in claims:
            assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
        assert len(taken) == len(set(taken)) == 60  # three claims got 20, one got none
        assert sorted(taken) == everything
        await transactions[0].rollback()
        for t in transactions[1:]:
            await t.commit()
        back = sorted((r["seq"], r["id"]) for r in claims[0])
        assert sorted(await queued(pool)) == back
    finally:
        for c in conns:
            await c.close()


async def test_a_queued_event_a_replay_holds_is_skipped_and_one_gone_is_dropped(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, bodies(3))
    (_, held), (_, gone), (_, free) = sorted(await stored(pool))
    await pool.execute("DELETE FROM events WHERE id = $1", gone)
    async with pool.acquire() as replay, replay.transaction():
        assert await lock_event_for_replay(replay, held) is not None
        async with pool.acquire() as conn, conn.transaction():
            assert [r["id"] for r in await claim_unfanned_events(conn, 10)] == [free]
    assert [event_id for _, event_id in await queued(pool)] == [held]
    async with pool.acquire() as conn, conn.transaction():
        assert [r["id"] for r in await claim_unfanned_events(conn, 10)] == [held]
    assert await queued(pool) == []


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in plan_nodes(child))]


async def test_the_claim_walks_the_queue_by_its_primary_key(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, bodies(50))
    await pool.execute("ANALYZE events; ANALYZE event_fanout_queue")  # tiny: a seq scan's size
    claimer = await connect(settings, setup=CLAIM_SESSION)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await index_scans_only(conn)
            plans = [
                await db.fetchval("EXPLAIN (FORMAT JSON) " + _CLAIM_UNFANNED, 10)
                for db in (claimer, conn)
            ]
    finally:
        await claimer.close()
    for plan in plans:
        nodes = plan_nodes(plan[0]["Plan"])  # json, decoded by the connection's codec
        queue = [
            n
            for n in nodes
            if n.get("Relation Name") == "event_fanout_queue" and n["Node Type"].endswith("Scan")
        ]
        assert len(queue) == 2  # `picked`, and the delete's
        assert {(n["Node Type"], n["Index Name"]) for n in queue} == {
            ("Index Scan", "event_fanout_queue_pkey")
        }
        # Nothing anywhere reads a whole table, or bitmaps one.
        assert not [n for n in nodes if "Seq Scan" in n["Node Type"] or "Bitmap" in n["Node Type"]]


# The shape before the queue: pending events carried fanned_out_at NULL, under a partial index.
_OLD_SHAPE = """
DROP TRIGGER events_queue_fan_out ON events;
DROP FUNCTION relay_queue_fan_out();
DROP TABLE event_fanout_queue;
CREATE INDEX events_fan_out_pending ON events (seq) WHERE fanned_out_at IS NULL;
UPDATE relay_schema SET digest = 'before the queue';
"""


async def test_migrating_a_database_from_before_the_queue_queues_the_pending_events_once(
    scratch_settings: Settings,
) -> None:
    await migrate(scratch_settings)
    pool = await create_pool(scratch_settings)
    try:
        await pool.execute(_OLD_SHAPE)
        # What the old fan-out left: events marked when fanned out, the others pending.
        await pool.execute(
            "INSERT INTO events (type, object_type, object_id, body, fanned_out_at) "
            "SELECT 'document.created', 'document', 'doc_' || n, '{}', "
            "CASE WHEN n % 3 = 0 THEN now() END FROM generate_series(1, 30) AS n"
        )
        pending = sorted(await stored(pool, "fanned_out_at IS NULL"))
        assert len(pending) == 20
        assert not await schema_is_current(pool)

        await migrate(scratch_settings)
        await migrate(scratch_settings)  # every start runs the schema again

        assert await schema_is_current(pool)
        assert sorted(await queued(pool)) == pending
        assert await pool.fetchval("SELECT to_regclass('events_fan_out_pending')") is None
        # Fanned out through the queue, they are never queued again by a later start.
        async with pool.acquire() as conn, conn.transaction():
            assert len(await claim_unfanned_events(conn, 15)) == 15
        await migrate(scratch_settings)
        assert sorted(await queued(pool)) == pending[15:]
        async with pool.acquire() as conn, conn.transaction():
            await insert_events(conn, bodies(1))
        assert len(await queued(pool)) == 6
    finally:
        await pool.close()
