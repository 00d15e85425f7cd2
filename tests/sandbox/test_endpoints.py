"""Every endpoint of the Dext contract: shapes, filters, pagination, errors, create_document."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

from tests.support.sandbox import Dext, SandboxFactory, SandboxHandle

SUMMARY = {
    "id", "client_id", "workspace", "type", "source", "status", "supplier_name", "category_code",
    "total_amount", "currency", "date", "integration", "publish_status", "approval_status",
    "created_at",
}  # fmt: skip
FULL_EXTRA = {
    "category", "tax_rate", "invoice_number", "due_date", "net_amount", "tax_amount", "paid",
    "payment_method", "description", "project", "line_items", "publish", "approval",
}  # fmt: skip
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
MONEY = re.compile(r"^-?\d+\.\d{2}$")


async def _client_ids(dext: Dext) -> list[str]:
    return [c["id"] for c in (await dext.ok("/clients"))["data"]]


async def test_clients_have_the_contract_fields_and_bands(dext: Dext) -> None:
    body = await dext.ok("/clients")
    assert body["pagination"] == {"page": 1, "per_page": 25, "total": 3, "total_pages": 1}
    for client in body["data"]:
        assert isinstance(client["health_score"], int)
        assert 0 <= client["health_score"] <= 100
        score = client["health_score"]
        band = "none" if score >= 71 else "medium" if score >= 36 else "high"
        assert client["alert_level"] == band
        assert isinstance(client["bank_reconciliation_gap"], int)
        assert isinstance(client["debtor_days"], int | float)
        assert TIME.match(client["last_sync_at"])
        assert client["name"]
        assert client["practice_code"]
        assert client["organisation_type"]


async def test_connections_is_one_object_per_client(dext: Dext) -> None:
    softwares = {
        "xero", "quickbooks_online", "quickbooks_desktop", "sage", "kashflow", "freeagent",
        "zoho", "billcom", "approvalmax",
    }  # fmt: skip
    for client_id in await _client_ids(dext):
        body = await dext.ok("/connections", client_id=client_id)
        for link in [body["main"], *body["additional"]]:
            assert set(link) == {"software", "status", "organisation", "last_sync_at"}
            assert link["software"] in softwares
            assert link["status"] in {"connected", "unintegrated", "mismatch", "expired"}
        assert body["default_publishing_integration"] in softwares
        assert "default_expense_claims_integration" in body


async def test_documents_summary_agrees_with_full_items(dext: Dext) -> None:
    for client_id in await _client_ids(dext):
        summaries = await dext.all_pages("/documents", per_page=100, client_id=client_id)
        costs = await dext.all_pages("/costs", client_id=client_id)
        sales = await dext.all_pages("/sales", client_id=client_id)
        assert len(summaries) == 60
        assert {s["workspace"] for s in summaries} == {"costs", "sales"}
        full = {item["id"]: item for item in costs + sales}
        assert [s["id"] for s in summaries] == sorted(
            full, key=lambda i: (full[i]["created_at"], i), reverse=True
        ), "newest first, then id descending"
        for summary in summaries:
            item = full[summary["id"]]
            assert set(summary) == SUMMARY
            assert {k: item[k] for k in SUMMARY} == summary
            assert set(item) >= SUMMARY | FULL_EXTRA
            party = item["customer" if item["workspace"] == "sales" else "supplier"]
            assert summary["category_code"] == (item["category"] or {}).get("code")
            assert summary["publish_status"] == item["publish"]["status"]
            assert summary["approval_status"] == item["approval"]["status"]
            if party is not None:
                assert summary["supplier_name"] == party["name"]
            for amount in ("total_amount", "net_amount", "tax_amount"):
                assert MONEY.match(item[amount]), item[amount]
            if item["status"] != "processing":
                total = float(item["net_amount"]) + float(item["tax_amount"])
                assert f"{total:.2f}" == item["total_amount"]
            if item["workspace"] == "sales" and item["integration"] is not None:
                main = (await dext.ok("/connections", client_id=client_id))["main"]
                assert item["integration"] == main["software"]
        assert len({s["id"] for s in summaries}) == len(summaries)


async def test_the_practice_has_a_realistic_mix(dext: Dext) -> None:
    seen: dict[str, set[Any]] = {}
    for client_id in await _client_ids(dext):
        for item in await dext.all_pages("/documents", per_page=100, client_id=client_id):
            for key in ("type", "source", "status", "publish_status", "approval_status"):
                seen.setdefault(key, set()).add(item[key])
    assert seen["type"] == {"receipt", "invoice", "credit_note", "expense"}
    assert seen["status"] >= {"review", "ready", "published", "archived"}
    assert seen["publish_status"] >= {"unpublished", "published", "failed"}
    assert seen["approval_status"] >= {"none", "approved"}
    assert len(seen["source"]) >= 5


async def test_single_items_and_their_workspace(dext: Dext) -> None:
    client_id = (await _client_ids(dext))[0]
    cost = (await dext.ok("/costs", client_id=client_id, per_page=1))["data"][0]
    sale = (await dext.ok("/sales", client_id=client_id, per_page=1))["data"][0]
    assert await dext.ok(f"/costs/{cost['id']}") == cost
    assert await dext.ok(f"/sales/{sale['id']}") == sale
    for path in (f"/sales/{cost['id']}", f"/costs/{sale['id']}", "/costs/nope"):
        status, body, _ = await dext.get(path)
        assert (status, body["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("name", "value", "check"),
    [
        ("status", "published", lambda d, v: d["status"] == v),
        ("workspace", "sales", lambda d, v: d["workspace"] == v),
        ("supplier", "co", lambda d, v: v in (d["supplier_name"] or "").lower()),
        ("category", "429", lambda d, v: d["category_code"] == v),
        ("date_from", "2026-03-01", lambda d, v: d["date"] >= v),
        ("date_to", "2026-02-01", lambda d, v: d["date"] <= v),
    ],
)
async def test_document_filters(dext: Dext, name: str, value: str, check: Any) -> None:
    matched = 0
    for client_id in await _client_ids(dext):
        everything = await dext.all_pages("/documents", per_page=100, client_id=client_id)
        for path in ("/documents", "/costs", "/sales"):
            found = await dext.all_pages(path, client_id=client_id, **{name: value})
            assert all(check(d, value) for d in found)
            expected = [
                d["id"]
                for d in everything
                if check(d, value) and (path == "/documents" or d["workspace"] == path[1:])
            ]
            assert [d["id"] for d in found] == expected
            matched += len(found)
    assert matched > 0, "the filter value must select something in the test practice"


async def test_supplier_filter_is_case_insensitive_and_partial(dext: Dext) -> None:
    client_id = (await _client_ids(dext))[0]
    doc = next(
        d
        for d in await dext.all_pages("/documents", per_page=100, client_id=client_id)
        if d["supplier_name"]
    )
    needle = doc["supplier_name"][1:4].upper()
    found = await dext.all_pages("/documents", client_id=client_id, supplier=needle)
    assert doc["id"] in {d["id"] for d in found}


async def test_suppliers_and_expense_reports(dext: Dext) -> None:
    for client_id in await _client_ids(dext):
        suppliers = await dext.all_pages("/suppliers", client_id=client_id)
        assert {s["type"] for s in suppliers} == {"supplier", "customer"}
        for supplier in suppliers:
            assert set(supplier) >= {
                "id", "name", "type", "tax_number", "default_category_code", "default_tax_code",
                "auto_publish", "integration", "email",
            }  # fmt: skip
        reports = await dext.all_pages("/expense_reports", client_id=client_id)
        assert reports
        docs = {d["id"]: d for d in await dext.all_pages("/costs", client_id=client_id)}
        for report in reports:
            assert report["client_id"] == client_id
            assert report["status"] in {"draft", "submitted", "approved", "rejected", "reimbursed"}
            assert set(report["submitter"]) == {"id", "name"}
            assert MONEY.match(report["total_amount"])
            assert all(docs[i]["type"] == "expense" for i in report["item_ids"])
            for claim in report["mileage_claims"]:
                assert set(claim) == {"date", "from", "to", "miles", "amount"}


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/documents", {}, 400, "validation_error"),
        ("/documents", {"client_id": "cl_missing"}, 404, "not_found"),
        ("/connections", {"client_id": "cl_missing"}, 404, "not_found"),
        ("/suppliers", {"client_id": "cl_missing"}, 404, "not_found"),
        ("/clients", {"per_page": 101}, 400, "validation_error"),
        ("/clients", {"per_page": 0}, 400, "validation_error"),
        ("/clients", {"page": 0}, 400, "validation_error"),
        ("/clients", {"page": "two"}, 400, "validation_error"),
        ("/nowhere", {}, 404, "not_found"),
    ],
)
async def test_errors_are_json_envelopes(
    dext: Dext, path: str, params: dict[str, Any], status: int, code: str
) -> None:
    got, body, headers = await dext.get(path, **params)
    assert (got, body["error"]["code"]) == (status, code)
    assert body["error"]["message"]
    assert "X-RateLimit-Remaining" in headers


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"per_page": 50}, 200),
        ({"per_page": 51}, 400),
        ({"status": "lost"}, 400),
        ({"workspace": "both"}, 400),
        ({"date_from": "14/04/2026"}, 400),
    ],
)
async def test_full_item_limits_and_bad_filters(
    dext: Dext, params: dict[str, Any], status: int
) -> None:
    client_id = (await _client_ids(dext))[0]
    for path in ("/costs", "/sales"):
        got, _, _ = await dext.get(path, client_id=client_id, **params)
        assert got == status


async def test_pagination_shape_and_past_the_end(dext: Dext) -> None:
    client_id = (await _client_ids(dext))[0]
    body = await dext.ok("/documents", client_id=client_id, per_page=7, page=3)
    assert body["pagination"] == {"page": 3, "per_page": 7, "total": 60, "total_pages": 9}
    assert len(body["data"]) == 7
    last = await dext.ok("/documents", client_id=client_id, per_page=7, page=9)
    assert len(last["data"]) == 4
    beyond = await dext.ok("/documents", client_id=client_id, per_page=7, page=10)
    assert beyond["data"] == []
    assert beyond["pagination"]["total"] == 60


async def test_pages_shift_when_items_arrive_between_requests(
    dext: Dext, sandbox: SandboxHandle
) -> None:
    client_id = (await _client_ids(dext))[0]
    page1 = await dext.ok("/documents", client_id=client_id, per_page=10, page=1)
    await sandbox.advance(60)
    for _ in range(3):
        await sandbox.apply({"action": "create_document", "client_id": client_id})
    page2 = await dext.ok("/documents", client_id=client_id, per_page=10, page=2)
    assert page2["pagination"]["total"] == 63
    # The last 3 items of the old page 1 are now the first 3 of page 2: seen twice.
    assert [d["id"] for d in page2["data"][:3]] == [d["id"] for d in page1["data"][7:]]
    order = [d["id"] for d in await dext.all_pages("/documents", client_id=client_id)]
    deleted = page2["data"][5]["id"]
    await sandbox.apply({"action": "delete", "object_type": "document", "object_id": deleted})
    page3 = await dext.ok("/documents", client_id=client_id, per_page=10, page=3)
    # Deleting an item of page 2 pulls page 3 up by one: its old first item is missed.
    assert [d["id"] for d in page3["data"]] == order[21:31]
    seen = {d["id"] for d in page1["data"] + page2["data"] + page3["data"]}
    assert order[20] not in seen
    assert order[20] != deleted


async def test_forbidden_client(dext: Dext, sandbox: SandboxHandle) -> None:
    client_id = (await _client_ids(dext))[0]
    cost = (await dext.ok("/costs", client_id=client_id, per_page=1))["data"][0]
    await sandbox.apply({"action": "forbid", "object_type": "client", "object_id": client_id})
    for path, params in (("/documents", {"client_id": client_id}), (f"/costs/{cost['id']}", {})):
        status, body, _ = await dext.get(path, **params)
        assert (status, body["error"]["code"]) == (403, "forbidden")
    await sandbox.apply(
        {"action": "forbid", "object_type": "client", "object_id": client_id, "forbidden": False}
    )
    assert (await dext.get("/documents", client_id=client_id))[0] == 200


async def _create(dext: Dext, client_id: str, body: Any, key: str | None = None) -> tuple[int, Any]:
    headers = dict(dext.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    async with dext.http.post(
        f"{dext.url}/create_document", params={"client_id": client_id}, json=body, headers=headers
    ) as resp:
        return resp.status, await resp.json()


CAPTURE = {
    "workspace": "costs",
    "type": "receipt",
    "filename": "lunch.jpg",
    "content_base64": "aGVsbG8gd29ybGQ=",
    "supplier_name": "Café Nero",
}


async def test_create_document_and_idempotency_key(dext: Dext, sandbox: SandboxHandle) -> None:
    client_id = (await _client_ids(dext))[0]
    status, first = await _create(dext, client_id, CAPTURE, key="k-1")
    assert status == 201
    assert first["status"] == "processing"
    assert first["source"] == "api"
    assert first["supplier_name"] == "Café Nero"
    assert first["workspace"] == "costs"
    status, again = await _create(dext, client_id, CAPTURE, key="k-1")
    assert (status, again) == (201, first)
    status, other = await _create(dext, client_id, CAPTURE, key="k-2")
    assert status == 201
    assert other["id"] != first["id"]
    status, plain = await _create(dext, client_id, CAPTURE)
    assert status == 201
    assert plain["id"] not in (first["id"], other["id"])
    docs = await dext.all_pages("/documents", per_page=100, client_id=client_id)
    assert len(docs) == 63
    assert docs[0]["id"] in {first["id"], other["id"], plain["id"]}
    created = [c for c in await sandbox.changes() if c["kind"] == "created"]
    assert {c["object_id"] for c in created} == {first["id"], other["id"], plain["id"]}


async def test_idempotency_key_expires(sandbox_factory: SandboxFactory) -> None:
    box = await sandbox_factory(idempotency_ttl=0.2)
    async with aiohttp.ClientSession() as http:
        dext = Dext(http, box.url, box.token)
        await dext.login()
        client_id = (await _client_ids(dext))[0]
        _, first = await _create(dext, client_id, CAPTURE, key="k")
        await asyncio.sleep(0.3)
        _, second = await _create(dext, client_id, CAPTURE, key="k")
    assert first["id"] != second["id"]


@pytest.mark.parametrize(
    "change",
    [
        {"workspace": "inbox"},
        {"type": "invoice", "workspace": "sales", "filename": ""},
        {"type": "receipt", "workspace": "sales"},
        {"content_base64": "not base64!"},
        {"content_base64": ""},
        {"supplier_name": 12},
    ],
)
async def test_create_document_rejects_bad_input(dext: Dext, change: dict[str, Any]) -> None:
    client_id = (await _client_ids(dext))[0]
    status, body = await _create(dext, client_id, {**CAPTURE, **change})
    assert (status, body["error"]["code"]) == (400, "validation_error")


async def test_create_document_rejects_non_json(dext: Dext) -> None:
    client_id = (await _client_ids(dext))[0]
    async with dext.http.post(
        f"{dext.url}/create_document",
        params={"client_id": client_id},
        data=b"{nope",
        headers=dext.headers,
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "validation_error"
