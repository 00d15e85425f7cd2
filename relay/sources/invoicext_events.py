"""InvoiceXT's webhook body: seed 004's planned payload, rendered from a relay event.

Relay stores every event in its own envelope (`GET /v1/events` shows that); what an InvoiceXT
subscriber receives is the payload seed 004 plans (`invoicext-api.md`, "Webhook body"):

    {"event", "timestamp", "data": {...}, "webhook_id", "account_id"}

with `webhook_id` the event id (so it equals the `webhook-id` header). It is rendered once,
when the event is stored, from the objects the connector read, so money keeps its spelling
(`relay.exactjson`): `0.10` stays `0.10`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.exactjson import dumps

INVOICE_TYPES = frozenset(
    {"invoice.processed", "invoice.published", "invoice.failed", "invoice.deleted"}
)
RECONCILIATION_FIELDS = (
    "id",
    "statement_id",
    "status",
    "date_from",
    "date_to",
    "matched_count",
    "unmatched_count",
    "completed_at",
)


def is_invoicext(body: Mapping[str, Any]) -> bool:
    """Whether an envelope is an InvoiceXT account's event (its types, or a shared type whose
    object says so: ledgers carry no client, account objects name their provider)."""
    kind = body.get("type")
    if kind in INVOICE_TYPES or kind == "bank.reconciled":
        return True
    obj = body.get("data", {}).get("object", {})
    if kind == "connection.status_changed":
        return body.get("client_id") is None and "integration" in obj
    if kind in ("account.auth_failed", "account.recovered"):
        return isinstance(obj, Mapping) and obj.get("provider") == "invoicext"
    return False


def _invoice_data(obj: Mapping[str, Any]) -> dict[str, Any]:
    supplier = obj.get("supplier")
    totals = obj.get("totals")
    return {
        "id": obj.get("id"),
        "status": obj.get("status"),
        "invoice_number": obj.get("invoice_number"),
        "supplier": supplier.get("name") if isinstance(supplier, Mapping) else supplier,
        "total": totals.get("total") if isinstance(totals, Mapping) else None,
        "currency": obj.get("currency"),
    }


def webhook_data(body: Mapping[str, Any]) -> dict[str, Any]:
    """`data` of the seed's payload for one envelope."""
    kind = body["type"]
    data = body.get("data", {})
    obj: Mapping[str, Any] = data.get("object", {})
    if kind in INVOICE_TYPES:
        out = _invoice_data(obj)
        if kind == "invoice.published":
            publication = data.get("publication") or {}
            for name in ("target", "external_id", "published_at"):
                out[name] = publication.get(name)
        return out
    if kind == "bank.reconciled":
        return {name: obj.get(name) for name in RECONCILIATION_FIELDS}
    if kind == "connection.status_changed":
        previous = data.get("previous", {})
        return {
            "integration": obj.get("integration"),
            "connected": obj.get("connected"),
            "previous_connected": previous.get("connected", not obj.get("connected")),
            "company_name": obj.get("company_name"),
            "last_sync": obj.get("last_sync"),
        }
    return {"id": obj.get("id"), "status": obj.get("status"), "error": obj.get("error")}


def webhook_payload(body: Mapping[str, Any]) -> bytes | None:
    """The bytes an InvoiceXT subscriber receives for this envelope; None for Dext events."""
    if not is_invoicext(body):
        return None
    return dumps(
        {
            "event": body["type"],
            "timestamp": body["created_at"],
            "data": webhook_data(body),
            "webhook_id": body["id"],
            "account_id": body["account_id"],
        }
    )
