"""Set-based diffs of upstream objects: every event rule, baseline, idempotence, concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from relay.errors import InvalidInput, NotFound
from relay.snapshots import (
    changed_summary_ids,
    content_hash,
    diff_objects,
    should_emit,
    stored_by_status,
    stored_workspaces,
)
from tests.support.snapshots import (
    CLIENT,
    client,
    connection,
    cost,
    diff,
    expense_report,
    snapshot_versions,
    stored_events,
    summary,
    supplier,
)
from tests.support.stores import make_account

EVENT_KEYS = {
    "id",
    "type",
    "created_at",
    "account_id",
    "client_id",
    "object_type",
    "object_id",
    "sequence",
    "data",
}


# ---- baseline, backfill, idempotence --------------------------------------------------------


async def test_baseline_stores_snapshots_and_emits_nothing(pool: asyncpg.Pool) -> None:
    account = await make_account(pool, baselined=False)
    assert await should_emit(pool, account) is False
    result = await diff(pool, account, "document", [cost("d1"), cost("d2")], emit=False)
    assert sorted(result.created) == ["d1", "d2"]
    assert result.events == []
    assert await stored_events(pool) == []
    rows = await pool.fetch("SELECT object_id, data FROM snapshots ORDER BY object_id")
    assert [(r["object_id"], r["data"]) for r in rows] == [("d1", cost("d1")), ("d2", cost("d2"))]

    await pool.execute("UPDATE accounts SET baseline_completed_at = now() WHERE id = $1", account)
    assert await should_emit(pool, account) is True
    result = await diff(pool, account, "document", [cost("d1"), cost("d2"), cost("d3")])
    assert [e["type"] for e in await stored_events(pool)] == ["document.created"]
    assert result.created == ["d3"]


async def test_should_emit_follows_backfill_and_unknown_account_is_not_found(
    pool: asyncpg.Pool,
) -> None:
    account = await make_account(pool, backfill=True, baselined=False)
    assert await should_emit(pool, account) is True
    with pytest.raises(NotFound):
        await should_emit(pool, "acc_missing")


async def test_backfill_emits_created_for_types_that_have_it(pool: asyncpg.Pool) -> None:
    account = await make_account(pool, backfill=True, baselined=False)
    await diff(pool, account, "document", [cost("d1")])
    await diff(pool, account, "supplier", [supplier("s1")])
    await diff(pool, account, "expense_report", [expense_report("r1")])
    await diff(pool, account, "client", [client(CLIENT)])
    await diff(pool, account, "connection", [connection()])
    events = await stored_events(pool)
    assert [(e["type"], e["object_id"]) for e in events] == [
        ("document.created", "d1"),
        ("supplier.created", "s1"),
        ("expense_report.created", "r1"),
    ]
    body = events[0]
    assert set(body) == EVENT_KEYS
    assert body["account_id"] == account
    assert body["client_id"] == CLIENT
    assert body["object_type"] == "document"
    assert body["data"] == {"object": cost("d1"), "previous": {}}
    assert body["id"].startswith("evt_")
    assert body["created_at"].endswith("Z")
    assert await pool.fetchval("SELECT count(*) FROM snapshots") == 5


async def test_unchanged_repoll_writes_nothing(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    page = [cost("d1"), cost("d2")]
    await diff(pool, account, "document", page)
    await diff(pool, account, "client", [client(CLIENT)])
    before = await snapshot_versions(pool)
    events_before = await stored_events(pool)

    # Key order and volatile fields are not changes; nothing may be rewritten.
    reordered = [dict(reversed(list(item.items()))) for item in page]
    again = await diff(pool, account, "document", reordered)
    resynced = await diff(
        pool, account, "client", [client(CLIENT, last_sync_at="2026-04-15T08:00:00Z")]
    )
    assert (again.created, again.changed, again.events) == ([], [], [])
    assert (resynced.created, resynced.changed) == ([], [])
    assert await snapshot_versions(pool) == before
    assert await stored_events(pool) == events_before


# ---- the rule table, one case each ----------------------------------------------------------

CASES: list[tuple[str, str, dict[str, Any], dict[str, Any], list[str]]] = [
    # (name, object_type, before, after, event types fired)
    (
        "category code",
        "document",
        cost("d1"),
        cost("d1", category={"code": "410", "name": "Travel"}, category_code="410"),
        ["document.categorized"],
    ),
    (
        "category first set",
        "document",
        cost("d1", category=None, category_code=None),
        cost("d1"),
        ["document.categorized"],
    ),
    (
        "category summary mirror alone",
        "document",
        cost("d1"),
        cost("d1", category_code="410"),
        ["document.categorized"],
    ),
    (
        "supplier",
        "document",
        cost("d1"),
        cost("d1", supplier={"id": "sup_2", "name": "Beta"}, supplier_name="Beta"),
        ["document.categorized"],
    ),
    (
        "tax rate",
        "document",
        cost("d1"),
        cost("d1", tax_rate={"code": "T0", "name": "Zero", "rate": "0.0"}),
        ["document.categorized"],
    ),
    (
        "sales customer",
        "document",
        cost("d1", workspace="sales", supplier=None, customer={"id": "c1", "name": "Shop"}),
        cost("d1", workspace="sales", supplier=None, customer={"id": "c2", "name": "Cafe"}),
        ["document.categorized"],
    ),
    ("status", "document", cost("d1"), cost("d1", status="ready"), ["document.status_changed"]),
    (
        "approval stage",
        "document",
        cost("d1"),
        cost(
            "d1", approval={"status": "pending", "stage": 2, "approver": "Kim", "decided_at": None}
        ),
        ["document.approval_changed"],
    ),
    (
        "approval summary mirror",
        "document",
        cost("d1"),
        cost("d1", approval_status="approved"),
        ["document.approval_changed"],
    ),
    (
        "publish external id",
        "document",
        cost("d1"),
        cost(
            "d1",
            publish={
                "status": "unpublished",
                "external_id": "X-9",
                "published_at": None,
                "error_message": None,
            },
        ),
        ["document.sync_status_changed"],
    ),
    (
        "integration",
        "document",
        cost("d1"),
        cost("d1", integration="quickbooks_online"),
        ["document.sync_status_changed"],
    ),
    (
        "status and publish together",
        "document",
        cost("d1", status="ready"),
        cost(
            "d1",
            status="published",
            publish_status="published",
            publish={
                "status": "published",
                "external_id": "X-1",
                "published_at": "2026-04-15T10:00:00Z",
                "error_message": None,
            },
        ),
        ["document.status_changed", "document.sync_status_changed"],
    ),
    (
        "unwatched description and paid",
        "document",
        cost("d1"),
        cost("d1", description="x", paid=True),
        [],
    ),
    (
        "category name without code",
        "document",
        cost("d1"),
        cost("d1", category={"code": "400", "name": "Marketing"}),
        [],
    ),
    (
        "approver without status or stage",
        "document",
        cost("d1"),
        cost(
            "d1", approval={"status": "pending", "stage": 1, "approver": "Kim", "decided_at": None}
        ),
        [],
    ),
    (
        "expense report status",
        "expense_report",
        expense_report("r1"),
        expense_report("r1", status="approved", approver="Kim", decided_at="2026-04-12T09:00:00Z"),
        ["expense_report.status_changed"],
    ),
    (
        "expense report title",
        "expense_report",
        expense_report("r1"),
        expense_report("r1", title="T"),
        [],
    ),
    (
        "supplier any field",
        "supplier",
        supplier("s1"),
        supplier("s1", email="b@acme.test"),
        ["supplier.updated"],
    ),
    (
        "client health",
        "client",
        client(CLIENT),
        client(CLIENT, health_score=30, alert_level="high"),
        ["client.health_changed"],
    ),
    ("client debtor days", "client", client(CLIENT), client(CLIENT, debtor_days=40), []),
    (
        "connection main",
        "connection",
        connection(),
        connection(
            main={
                "software": "xero",
                "status": "expired",
                "organisation": "Bakery Ltd",
                "last_sync_at": "2026-04-14T12:00:00Z",
            }
        ),
        ["connection.status_changed"],
    ),
    (
        "connection main and additional at once",
        "connection",
        connection(),
        connection(
            main={
                "software": "xero",
                "status": "mismatch",
                "organisation": "Bakery Ltd",
                "last_sync_at": "x",
            },
            additional=[
                {
                    "software": "approvalmax",
                    "status": "expired",
                    "organisation": "B",
                    "last_sync_at": "y",
                }
            ],
        ),
        ["connection.status_changed"],
    ),
    (
        "connection additional integration added",
        "connection",
        connection(),
        connection(
            additional=[
                *connection()["additional"],
                {"software": "sage", "status": "unintegrated", "organisation": "B"},
            ]
        ),
        ["connection.status_changed"],
    ),
    (
        "connection default integration",
        "connection",
        connection(),
        connection(default_publishing_integration="sage"),
        [],
    ),
]


@pytest.mark.parametrize(
    ("object_type", "before", "after", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_rule_fires_with_exact_before_and_after(
    pool: asyncpg.Pool,
    object_type: str,
    before: dict[str, Any],
    after: dict[str, Any],
    expected: list[str],
) -> None:
    account = await make_account(pool)
    await diff(pool, account, object_type, [before], emit=False)
    result = await diff(pool, account, object_type, [after])

    events = await stored_events(pool)
    assert [e["type"] for e in events] == expected
    assert events == result.events
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    for event in events:
        # `previous` holds every changed top-level field (watched or not) with its old value.
        assert event["data"]["previous"] == {key: before.get(key) for key in changed}
        assert event["data"]["object"] == after
        assert event["object_type"] == object_type
        object_id = CLIENT if object_type in ("client", "connection") else after["id"]
        assert (event["object_id"], event["client_id"]) == (object_id, CLIENT)
    # The snapshot holds the new version whether or not anything fired.
    assert await pool.fetchval("SELECT data FROM snapshots") == after
    assert result.changed == [CLIENT if object_type in ("client", "connection") else after["id"]]


async def test_volatile_field_rides_along_with_a_real_change(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await diff(pool, account, "client", [client(CLIENT)])
    synced = client(CLIENT, last_sync_at="2026-04-15T00:00:00Z")
    assert (await diff(pool, account, "client", [synced])).changed == []
    both = client(
        CLIENT, last_sync_at="2026-04-16T00:00:00Z", alert_level="medium", health_score=60
    )
    await diff(pool, account, "client", [both])
    (event,) = await stored_events(pool)
    # The stored version was the first one: the volatile-only poll never rewrote it.
    assert event["data"]["previous"] == {
        "last_sync_at": "2026-04-14T12:00:00Z",
        "alert_level": "none",
        "health_score": 80,
    }


async def test_connection_last_sync_alone_rewrites_nothing(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await diff(pool, account, "connection", [connection()])
    before = await snapshot_versions(pool)
    synced = connection()
    synced["main"]["last_sync_at"] = "2026-05-01T00:00:00Z"
    synced["additional"][0]["last_sync_at"] = "2026-05-01T00:00:00Z"
    assert content_hash("connection", synced) == content_hash("connection", connection())
    result = await diff(pool, account, "connection", [synced])
    assert (result.changed, result.events) == ([], [])
    assert await snapshot_versions(pool) == before


async def test_two_changes_between_polls_are_one_event_first_to_last(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await diff(pool, account, "document", [cost("d1", status="processing")], emit=False)
    # Upstream went processing -> review -> ready between two polls; only the last is seen.
    await diff(pool, account, "document", [cost("d1", status="ready")])
    (event,) = await stored_events(pool)
    assert event["type"] == "document.status_changed"
    assert event["data"]["previous"] == {"status": "processing"}
    assert event["data"]["object"]["status"] == "ready"


async def test_duplicate_ids_on_one_page_keep_the_last(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    result = await diff(pool, account, "document", [cost("d1"), cost("d1", status="ready")])
    assert result.created == ["d1"]
    assert await pool.fetchval("SELECT data->>'status' FROM snapshots") == "ready"
    assert [e["type"] for e in await stored_events(pool)] == ["document.created"]


async def test_many_objects_in_one_diff(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    items = [cost(f"d{i:03}") for i in range(300)]
    await diff(pool, account, "document", items, emit=False)
    items[7]["status"] = "ready"
    items[250]["paid"] = True
    items.append(cost("d999"))
    result = await diff(pool, account, "document", items)
    assert result.seen == 301
    assert (result.created, result.changed) == (["d999"], ["d007", "d250"])
    assert [(e["type"], e["object_id"]) for e in await stored_events(pool)] == [
        ("document.status_changed", "d007"),
        ("document.created", "d999"),
    ]


# ---- transactions: the outbox under crashes and concurrency ---------------------------------


async def test_rolled_back_diff_leaves_nothing_and_rerun_emits_once(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await diff(pool, account, "document", [cost("d1")], emit=False)
    before = await snapshot_versions(pool)
    changed = [cost("d1", status="ready"), cost("d2")]

    class Crash(Exception):
        pass

    async def poll_that_dies() -> None:
        async with pool.acquire() as conn, conn.transaction():
            result = await diff_objects(
                conn,
                account_id=account,
                object_type="document",
                objects=changed,
                client_id=CLIENT,
                emit=True,
            )
            assert len(result.events) == 2
            raise Crash  # the worker dies before its transaction commits

    with pytest.raises(Crash):
        await poll_that_dies()
    assert await stored_events(pool) == []
    assert await snapshot_versions(pool) == before

    await diff(pool, account, "document", changed)
    await diff(pool, account, "document", changed)  # the retried job runs once more
    events = await stored_events(pool)
    assert sorted(e["type"] for e in events) == ["document.created", "document.status_changed"]


async def test_two_diffs_in_one_outer_transaction(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    async with pool.acquire() as conn, conn.transaction():
        for page in ([cost("d1"), cost("d2")], [cost("d3")]):
            await diff_objects(
                conn,
                account_id=account,
                object_type="document",
                objects=page,
                client_id=CLIENT,
                emit=True,
            )
    assert [e["object_id"] for e in await stored_events(pool)] == ["d1", "d2", "d3"]


async def wait_until_blocked(pool: asyncpg.Pool, pid: int) -> None:
    for _ in range(500):
        waiting = await pool.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second diff never waited for the first one's locks")


@pytest.mark.parametrize("existing", [False, True], ids=["new objects", "changed objects"])
async def test_concurrent_diffs_of_one_page_emit_once(pool: asyncpg.Pool, existing: bool) -> None:
    account = await make_account(pool)
    if existing:
        await diff(pool, account, "document", [cost("d1"), cost("d2")], emit=False)
    page = [cost("d1", status="ready"), cost("d2", status="ready"), cost("d3")]

    async with pool.acquire() as first, pool.acquire() as second:
        tx = first.transaction()
        await tx.start()
        one = await diff_objects(
            first,
            account_id=account,
            object_type="document",
            objects=page,
            client_id=CLIENT,
            emit=True,
        )
        other = asyncio.create_task(
            diff_objects(
                second,
                account_id=account,
                object_type="document",
                objects=page,
                client_id=CLIENT,
                emit=True,
            )
        )
        await wait_until_blocked(pool, second.get_server_pid())
        await tx.commit()
        two = await other

    assert len(one.events) == 3
    assert two.events == []
    assert (two.created, two.changed) == ([], [])
    events = await stored_events(pool)
    assert sorted((e["type"], e["object_id"]) for e in events) == sorted(
        (e["type"], e["object_id"]) for e in one.events
    )


@pytest.mark.parametrize("existing", [False, True], ids=["new object", "changed object"])
async def test_concurrent_different_versions_report_the_replaced_one(
    pool: asyncpg.Pool, existing: bool
) -> None:
    account = await make_account(pool)
    if existing:
        await diff(pool, account, "document", [cost("d1", status="processing")], emit=False)
    async with pool.acquire() as first, pool.acquire() as second:
        tx = first.transaction()
        await tx.start()
        await diff_objects(
            first,
            account_id=account,
            object_type="document",
            objects=[cost("d1", status="review")],
            client_id=CLIENT,
            emit=True,
        )
        later = asyncio.create_task(
            diff_objects(
                second,
                account_id=account,
                object_type="document",
                objects=[cost("d1", status="ready")],
                client_id=CLIENT,
                emit=True,
            )
        )
        await wait_until_blocked(pool, second.get_server_pid())
        await tx.commit()
        await later
    transitions = [
        (e["type"], e["data"]["previous"].get("status"), e["data"]["object"]["status"])
        for e in await stored_events(pool)
    ]
    first_event = (
        ("document.status_changed", "processing", "review")
        if existing
        else ("document.created", None, "review")
    )
    assert transitions == [first_event, ("document.status_changed", "review", "ready")]


# ---- summaries: what needs a detail fetch -----------------------------------------------------


async def test_changed_summary_ids_are_exactly_new_and_changed(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    items = [cost("d1"), cost("d2"), cost("d3"), cost("d4")]
    await diff(pool, account, "document", items, emit=False)
    # A detail-only change (description) is invisible in a summary and must not be asked for.
    summaries = [
        summary(cost("d5")),
        summary(cost("d1", description="only in the detail")),
        summary(cost("d2", status="ready")),
        summary(cost("d3")),
        summary(cost("d4", approval_status="approved")),
    ]
    async with pool.acquire() as conn:
        ids = await changed_summary_ids(
            conn, account_id=account, client_id=CLIENT, summaries=summaries
        )
        assert ids == ["d5", "d2", "d4"]
        # Another client's items are never matched against this client's snapshots.
        other = await changed_summary_ids(
            conn, account_id=account, client_id="cli_2", summaries=summaries[1:2]
        )
        assert other == ["d1"]
        assert (
            await changed_summary_ids(conn, account_id=account, client_id=CLIENT, summaries=[])
            == []
        )


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("object_type", "objects", "client_id", "field"),
    [
        ("document", [{"status": "ready"}], CLIENT, "id"),
        ("document", [cost("")], CLIENT, "id"),
        ("document", ["not an object"], CLIENT, "objects"),
        ("document", [cost("d1", amount=2**70)], CLIENT, "objects"),
        ("widget", [cost("d1")], CLIENT, "object_type"),
        ("supplier", [supplier("s1")], None, "client_id"),
    ],
    ids=["missing id", "empty id", "not a dict", "not json", "unknown type", "no client"],
)
async def test_bad_input_is_a_clear_error_and_writes_nothing(
    pool: asyncpg.Pool, object_type: str, objects: list[Any], client_id: str | None, field: str
) -> None:
    account = await make_account(pool)
    async with pool.acquire() as conn:
        with pytest.raises(InvalidInput) as caught:
            await diff_objects(
                conn,
                account_id=account,
                object_type=object_type,
                objects=objects,
                client_id=client_id,
                emit=True,
            )
    assert caught.value.field == field
    assert await pool.fetchval("SELECT count(*) FROM snapshots") == 0


# ---- reads for the planner ------------------------------------------------------------------


async def test_planner_reads_of_stored_documents(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    items = [
        cost("d1", status="review"),
        cost("d2", status="ready", workspace="sales"),
        cost("d3", status="published"),
        cost("d4", status="review"),
    ]
    await diff(pool, account, "document", items, emit=False)
    await diff(pool, account, "document", [cost("x1", status="review")], client_id="cli_2")
    await pool.execute("UPDATE snapshots SET deleted_at = now() WHERE object_id = 'd4'")
    by_status = await stored_by_status(pool, account, CLIENT, ["review", "ready", "processing"])
    assert by_status == {
        "review": [("d1", "costs", "2026-04-14T12:30:00Z")],
        "ready": [("d2", "sales", "2026-04-14T12:30:00Z")],
    }
    workspaces = await stored_workspaces(pool, account, CLIENT, ["d1", "d2", "x1", "nope"])
    assert workspaces == {"d1": "costs", "d2": "sales"}
