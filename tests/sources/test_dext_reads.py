"""DextClient reads against the sandbox: full reads match its state, filters, shifting pages."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from relay.errors import UpstreamForbidden, UpstreamNotFound
from relay.sandbox.dext.practice import summarize
from relay.sources.dext import DextClient
from tests.support.sandbox import SandboxHandle


def truth(handle: SandboxHandle, object_type: str, client_id: str = "") -> list[dict[str, Any]]:
    """What the sandbox holds, newest first, as plain JSON values."""
    return [dict(obj) for obj in handle.sandbox.practice.ordered(object_type, client_id)]


def workspace(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["workspace"] == name]


async def test_a_full_read_matches_the_sandbox(dext: DextClient, sandbox: SandboxHandle) -> None:
    clients = dext.iter_clients()
    assert await clients.collect() == truth(sandbox, "client")
    assert clients.complete
    for client_id in sandbox.sandbox.practice.clients:
        docs = truth(sandbox, "document", client_id)
        assert len(docs) > 50  # several pages of costs at 50 a page
        summaries = dext.iter_documents(client_id, per_page=25)
        assert await summaries.collect() == [summarize(doc) for doc in docs]
        assert summaries.complete
        assert summaries.pages == -(-len(docs) // 25)
        costs = dext.iter_costs(client_id)
        assert await costs.collect() == workspace(docs, "costs")
        assert costs.complete
        sales = dext.iter_sales(client_id, per_page=7)
        assert await sales.collect() == workspace(docs, "sales")
        assert sales.complete
        suppliers = await dext.iter_suppliers(client_id, per_page=5).collect()
        assert suppliers == truth(sandbox, "supplier", client_id)
        reports = await dext.iter_expense_reports(client_id).collect()
        assert reports == truth(sandbox, "expense_report", client_id)
        connections = await dext.connections(client_id)
        assert connections == sandbox.sandbox.practice.connections[client_id]


async def test_pages_carry_the_pagination(dext: DextClient, sandbox: SandboxHandle) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    total = len(truth(sandbox, "document", client_id))
    page = await dext.documents(client_id, page=2, per_page=10)
    assert (page.page, page.per_page, page.total) == (2, 10, total)
    assert page.total_pages == -(-total // 10)
    assert page.has_next
    assert [item["id"] for item in page.items] == [
        doc["id"] for doc in truth(sandbox, "document", client_id)[10:20]
    ]


async def test_filters_select_what_the_contract_says(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    docs = truth(sandbox, "document", client_id)

    async def ids(**filters: Any) -> list[str]:
        return [d["id"] async for d in dext.iter_documents(client_id, per_page=100, **filters)]

    def expect(keep: Any) -> list[str]:
        return [d["id"] for d in docs if keep(d)]

    status = next(d["status"] for d in docs if d["status"] != docs[0]["status"])
    assert await ids(status=status) == expect(lambda d: d["status"] == status)
    assert await ids(workspace="sales") == expect(lambda d: d["workspace"] == "sales")
    name = next(d["supplier_name"] for d in docs if d["supplier_name"])
    needle = name[1:5].lower()
    found = await ids(supplier=needle)
    assert found == expect(lambda d: needle in (d["supplier_name"] or "").lower())
    assert found
    category = next(d["category_code"] for d in docs if d["category_code"])
    assert await ids(category=category) == expect(lambda d: d["category_code"] == category)
    dates = sorted(d["date"] for d in docs)
    low, high = dates[len(dates) // 4], dates[len(dates) // 2]
    window = await ids(date_from=date.fromisoformat(low), date_to=high)
    assert window == expect(lambda d: low <= d["date"] <= high)
    assert 0 < len(window) < len(docs)
    costs = [c["id"] async for c in dext.iter_costs(client_id, status=status)]
    assert costs == expect(lambda d: d["workspace"] == "costs" and d["status"] == status)


async def test_single_items_and_missing_ones(dext: DextClient, sandbox: SandboxHandle) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    docs = truth(sandbox, "document", client_id)
    cost = workspace(docs, "costs")[3]
    sale = workspace(docs, "sales")[0]
    assert await dext.cost(cost["id"]) == cost
    assert await dext.sale(sale["id"]) == sale
    with pytest.raises(UpstreamNotFound):
        await dext.sale(cost["id"])
    with pytest.raises(UpstreamNotFound):
        await dext.cost("doc_does/not?exist")
    with pytest.raises(UpstreamNotFound):
        await dext.documents("cl_nobody")


async def test_a_forbidden_client_raises_forbidden(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    await sandbox.apply({"action": "forbid", "object_type": "client", "object_id": client_id})
    with pytest.raises(UpstreamForbidden) as caught:
        await dext.costs(client_id)
    assert caught.value.status == 403
    assert await dext.clients()  # the practice itself is still readable


async def test_items_created_between_pages_are_seen_twice_not_lost(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    before = workspace(truth(sandbox, "document", client_id), "costs")
    scan = dext.iter_costs(client_id, per_page=10)
    seen = [await anext(scan) for _ in range(10)]  # exactly the first page
    for _ in range(3):
        await sandbox.apply(
            {"action": "create_document", "client_id": client_id, "workspace": "costs"}
        )
    seen += [item async for item in scan]
    # The three new items pushed three old ones onto the next page: yielded once each.
    assert scan.duplicates == 3
    assert [item["id"] for item in seen] == [item["id"] for item in before]
    assert scan.totals[0] == len(before)
    assert scan.totals[-1] == len(before) + 3
    assert not scan.complete  # the new items were not seen: not a basis for deletions


async def test_items_deleted_between_pages_make_the_scan_incomplete(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    before = workspace(truth(sandbox, "document", client_id), "costs")
    scan = dext.iter_costs(client_id, per_page=10)
    seen = [await anext(scan) for _ in range(10)]
    for doc in before[:2]:  # already seen: the rest moves up and two are skipped
        await sandbox.apply({"action": "delete", "object_type": "document", "object_id": doc["id"]})
    seen += [item async for item in scan]
    assert len(seen) == len(before) - 2
    assert {d["id"] for d in before} - {d["id"] for d in seen} == {
        before[10]["id"],
        before[11]["id"],
    }
    assert not scan.complete  # so nobody may conclude that the two skipped items are gone


async def test_create_document_with_an_idempotency_key(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    count = len(truth(sandbox, "document", client_id))
    first = await dext.create_document(
        client_id,
        workspace="costs",
        type="receipt",
        filename="lunch.jpg",
        content=b"\xff\xd8 fake jpeg",
        supplier_name="Pret",
        idempotency_key="upload-1",
    )
    again = await dext.create_document(
        client_id,
        workspace="costs",
        type="receipt",
        filename="lunch.jpg",
        content=b"\xff\xd8 fake jpeg",
        idempotency_key="upload-1",
    )
    assert first == again
    assert first["status"] == "processing"
    assert first["supplier_name"] == "Pret"
    assert len(truth(sandbox, "document", client_id)) == count + 1
    other = await dext.create_document(
        client_id, workspace="sales", type="invoice", filename="inv.pdf", content=b"%PDF"
    )
    assert other["id"] != first["id"]
    assert len(truth(sandbox, "document", client_id)) == count + 2


async def test_create_document_retried_after_a_502_creates_one(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    count = len(truth(sandbox, "document", client_id))
    await sandbox.fault(kind="502", path="/create_document", count=1)
    await dext.create_document(
        client_id, workspace="costs", type="invoice", filename="a.pdf", content=b"%PDF"
    )
    statuses = [
        r["status"] for r in sandbox.sandbox.access.requests if r["path"] == "/create_document"
    ]
    assert statuses == [502, 201]
    assert len(truth(sandbox, "document", client_id)) == count + 1


async def test_bad_paging_arguments_are_a_clear_error(dext: DextClient) -> None:
    with pytest.raises(ValueError, match="per_page"):
        await dext.costs("cl_x", per_page=51)
    with pytest.raises(ValueError, match="page"):
        await dext.clients(page=0)
