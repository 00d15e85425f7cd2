"""Upstream objects in the shapes of dext-api.md, and helpers, for the snapshot tests."""

from __future__ import annotations

import copy
from typing import Any

import asyncpg

from relay.snapshots import diff_objects

CLIENT = "cli_1"


async def stored_events(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every stored event body, oldest first."""
    return [row["body"] for row in await pool.fetch("SELECT body FROM events ORDER BY seq")]


def cost(doc_id: str, **changes: Any) -> dict[str, Any]:
    """A full /costs item; `changes` replace top-level fields."""
    item: dict[str, Any] = {
        "id": doc_id,
        "client_id": CLIENT,
        "workspace": "costs",
        "type": "invoice",
        "source": "email",
        "status": "review",
        "supplier_name": "Acme Ltd",
        "category_code": "400",
        "total_amount": "120.00",
        "currency": "GBP",
        "date": "2026-04-14",
        "integration": "xero",
        "publish_status": "unpublished",
        "approval_status": "pending",
        "created_at": "2026-04-14T12:30:00Z",
        "supplier": {"id": "sup_1", "name": "Acme Ltd"},
        "category": {"code": "400", "name": "Advertising"},
        "tax_rate": {"code": "T1", "name": "Standard", "rate": "20.0"},
        "invoice_number": "INV-1",
        "due_date": "2026-05-14",
        "net_amount": "100.00",
        "tax_amount": "20.00",
        "paid": False,
        "payment_method": None,
        "description": "Ads",
        "project": None,
        "line_items": [
            {
                "description": "Ads",
                "quantity": "1",
                "unit_price": "100.00",
                "amount": "100.00",
                "category_code": "400",
                "tax_code": "T1",
            }
        ],
        "publish": {
            "status": "unpublished",
            "external_id": None,
            "published_at": None,
            "error_message": None,
        },
        "approval": {"status": "pending", "stage": 1, "approver": "Sam", "decided_at": None},
    }
    item.update(copy.deepcopy(changes))
    return item


def summary(item: dict[str, Any]) -> dict[str, Any]:
    """The /documents summary of a full item."""
    keys = [
        "id",
        "client_id",
        "workspace",
        "type",
        "source",
        "status",
        "supplier_name",
        "category_code",
        "total_amount",
        "currency",
        "date",
        "integration",
        "publish_status",
        "approval_status",
        "created_at",
    ]
    return {key: item[key] for key in keys}


def client(client_id: str, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": client_id,
        "name": "Bakery",
        "practice_code": "BAK01",
        "organisation_type": "limited_company",
        "health_score": 80,
        "alert_level": "none",
        "bank_reconciliation_gap": 3,
        "debtor_days": 21.5,
        "last_sync_at": "2026-04-14T12:00:00Z",
    }
    obj.update(changes)
    return obj


def connection(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "main": {
            "software": "xero",
            "status": "connected",
            "organisation": "Bakery Ltd",
            "last_sync_at": "2026-04-14T12:00:00Z",
        },
        "additional": [
            {
                "software": "approvalmax",
                "status": "connected",
                "organisation": "Bakery Ltd",
                "last_sync_at": "2026-04-14T12:00:00Z",
            }
        ],
        "default_publishing_integration": "xero",
        "default_expense_claims_integration": None,
    }
    obj.update(copy.deepcopy(changes))
    return obj


def supplier(sup_id: str, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": sup_id,
        "name": "Acme Ltd",
        "type": "supplier",
        "tax_number": "GB123",
        "default_category_code": "400",
        "default_tax_code": "T1",
        "auto_publish": False,
        "integration": "xero",
        "email": "ap@acme.test",
    }
    obj.update(changes)
    return obj


def expense_report(report_id: str, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": report_id,
        "client_id": CLIENT,
        "title": "April travel",
        "submitter": {"id": "u1", "name": "Alex"},
        "status": "submitted",
        "total_amount": "84.20",
        "currency": "GBP",
        "item_ids": ["d1", "d2"],
        "mileage_claims": [
            {"date": "2026-04-02", "from": "Leeds", "to": "York", "miles": 25, "amount": "11.25"}
        ],
        "submitted_at": "2026-04-10T09:00:00Z",
        "approver": None,
        "decided_at": None,
    }
    obj.update(copy.deepcopy(changes))
    return obj


async def diff(
    pool: asyncpg.Pool,
    account_id: str,
    object_type: str,
    objects: list[dict[str, Any]],
    *,
    emit: bool = True,
    client_id: str | None = CLIENT,
) -> Any:
    async with pool.acquire() as conn:
        return await diff_objects(
            conn,
            account_id=account_id,
            object_type=object_type,
            objects=objects,
            client_id=None if object_type == "client" else client_id,
            emit=emit,
        )


async def snapshot_versions(pool: asyncpg.Pool) -> dict[str, Any]:
    """Each snapshot row's physical version: a rewrite of a row changes its xmin."""
    rows = await pool.fetch("SELECT object_id, xmin::text AS v FROM snapshots")
    return {row["object_id"]: row["v"] for row in rows}
