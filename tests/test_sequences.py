"""`sequence`: per object, one more with each event, in detection order, concurrent or not."""

from __future__ import annotations

import asyncio

import asyncpg

from relay.events import list_events
from tests.support.snapshots import cost, diff
from tests.support.stores import make_account


async def test_sequence_counts_each_objects_events_in_detection_order(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await diff(pool, account, "document", [cost("d1"), cost("d2")])  # both created: 1, 1
    await diff(pool, account, "document", [cost("d1", status="ready"), cost("d2")])
    # One poll, two watched changes of d1: two events, two numbers, in type order.
    await diff(
        pool,
        account,
        "document",
        [cost("d1", status="published", category_code="500"), cost("d2", status="ready")],
    )
    page = await list_events(pool, account_id=account, limit=50)
    by_object: dict[str, list[tuple[int, str]]] = {}
    for body in reversed(page.data):  # oldest first
        by_object.setdefault(body["object_id"], []).append((body["sequence"], body["type"]))
    assert [s for s, _ in by_object["d1"]] == [1, 2, 3, 4]
    assert [s for s, _ in by_object["d2"]] == [1, 2]
    rows = await pool.fetch("SELECT sequence, (body->>'sequence')::bigint AS b FROM events")
    assert all(r["sequence"] == r["b"] for r in rows)


async def test_concurrent_writers_of_one_object_never_share_a_number(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await diff(pool, account, "document", [cost("d1")])

    async def change(n: int) -> None:
        await diff(pool, account, "document", [cost("d1", supplier_name=f"Supplier {n}")])

    await asyncio.gather(*(change(n) for n in range(1, 11)))
    rows = await pool.fetch(
        "SELECT sequence FROM events WHERE object_id = 'd1' ORDER BY seq", timeout=10
    )
    assert len(rows) == 11  # created, then each writer saw its own value as a change
    # Every number once, and `seq` (commit order of the writers) agrees with `sequence`.
    assert [r["sequence"] for r in rows] == list(range(1, len(rows) + 1))
