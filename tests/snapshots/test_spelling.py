"""Spelling is not change: re-spelled watched values, unknown fields, documented fields only."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from relay.snapshots import changed_summary_ids, content_hash
from relay.snapshots.rules import changed_event_types, normalized
from tests.support.snapshots import (
    CLIENT,
    client,
    cost,
    diff,
    snapshot_versions,
    stored_events,
    summary,
    supplier,
)
from tests.support.stores import make_account


@pytest.mark.parametrize(
    ("a", "b"),
    [(74, "74"), (74, 74.0), ("1332.0", "1332.00"), ("1332", 1332), ("0.50", 0.5), (-3, "-3.0")],
)
def test_one_number_in_two_spellings_is_one_value(a: Any, b: Any) -> None:
    assert normalized(a) == normalized(b)
    assert normalized({"x": [a]}) == normalized({"x": [b]})


@pytest.mark.parametrize(
    ("a", "b"),
    [(74, 75), ("0400", "400"), (True, "true"), (None, "0"), (1, True), ("74", "74 kg")],
)
def test_different_values_stay_different(a: Any, b: Any) -> None:
    assert normalized(a) != normalized(b)


def _respelled_cost(doc_id: str) -> dict[str, Any]:
    """The same item as `cost(doc_id)` with every number spelled differently, keys reversed."""
    item = cost(doc_id)
    item["approval"] = {**item["approval"], "stage": str(item["approval"].get("stage") or 1)}
    item["tax_rate"] = {**item["tax_rate"], "rate": "20.00"}
    item["total_amount"] = "120.0"
    return dict(reversed(list(item.items())))


async def test_a_respelled_object_is_no_change_and_no_rewrite(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    original = cost("d1")
    original["approval"] = {**original["approval"], "stage": 1}
    await diff(pool, account, "document", [original])
    await diff(pool, account, "client", [client(CLIENT, health_score=74)])
    settled, events = await snapshot_versions(pool), await stored_events(pool)
    respelled = _respelled_cost("d1")
    respelled["approval"]["stage"] = "1"
    assert content_hash("document", respelled) == content_hash("document", original)
    for _ in range(3):  # poll after poll: no event, no snapshot rewrite
        doc = await diff(pool, account, "document", [respelled])
        cli = await diff(pool, account, "client", [client(CLIENT, health_score="74.0")])
        assert (doc.changed, doc.events, cli.changed, cli.events) == ([], [], [], [])
    assert await snapshot_versions(pool) == settled
    assert await stored_events(pool) == events
    # A real change under a new spelling is still one, and `previous` holds only it.
    moved = await diff(pool, account, "client", [client(CLIENT, health_score="30")])
    assert [e["type"] for e in moved.events] == ["client.health_changed"]
    assert moved.events[0]["data"]["previous"] == {"health_score": 74}


async def test_unknown_fields_never_fire_supplier_updated_but_travel(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await diff(pool, account, "supplier", [supplier("s1")])
    plain = supplier("s1")
    extra = {**plain, "x_portal_id": 9, "x_flags": {"beta": True}}
    for version in (extra, plain, extra, {**plain, "x_portal_id": 10}):
        result = await diff(pool, account, "supplier", [version])
        assert result.events == []
    stored = await pool.fetchval("SELECT data FROM snapshots WHERE object_id = 's1'")
    assert stored["x_portal_id"] == 10  # the snapshot follows what upstream sent
    # A documented field is a change; the unknown one that moved with it is in `previous`.
    changed = await diff(pool, account, "supplier", [{**plain, "email": "new@acme.test"}])
    [event] = changed.events
    assert event["type"] == "supplier.updated"
    assert event["data"]["previous"]["email"] == "ap@acme.test"
    assert "x_portal_id" in event["data"]["previous"]


def test_unknown_fields_inside_watched_objects_are_no_change() -> None:
    before = cost("d1")
    after = {
        **before,
        "supplier": {**before["supplier"], "x_vat_checked": True},
        "tax_rate": {**before["tax_rate"], "rate": "20.000", "x_region": "uk"},
    }
    fired, previous = changed_event_types("document", before, after)
    assert fired == []
    assert set(previous) == {"supplier", "tax_rate"}  # it did change, just not what we watch


async def test_a_summary_that_differs_only_in_unwatched_fields_fetches_no_detail(
    pool: asyncpg.Pool,
) -> None:
    account = await make_account(pool)
    await diff(pool, account, "document", [cost("d1"), cost("d2"), cost("d3")], emit=False)
    drifted = {**summary(cost("d1")), "total_amount": 120.0, "source": "whatsapp", "x_new": 1}
    respelled = {**summary(cost("d2")), "category_code": "400", "x_new": 2}
    moved = {**summary(cost("d3")), "total_amount": None, "status": "ready"}
    async with pool.acquire() as conn:
        ids = await changed_summary_ids(
            conn,
            account_id=account,
            client_id=CLIENT,
            summaries=[drifted, respelled, moved, summary(cost("d4"))],
        )
    assert ids == ["d3", "d4"]  # a watched change, and a new item
