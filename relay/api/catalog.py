"""The event catalogue behind `GET /v1/event-types` and `relay event-types`.

Generated, so it cannot drift from what Relay emits: the types of upstream changes, the fields
each watches and the `previous` of each example come from the rules table (`relay.snapshots.rules`),
the examples are made by the real diff function (`changed_event_types`) from a sample object
and an older version of it, and every example body is built by `relay.events.build_event`, the
function that builds the stored events. Only the events made outside a diff (the InvoiceXT
types, account, subscription and ping events) are listed by hand, next to the code contract
they follow (invoicext-api.md, relay.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from relay.events import build_event
from relay.snapshots.rules import (
    ANY_FIELD,
    DERIVED,
    ENVELOPE_OBJECT_TYPE,
    INVOICEXT_OBJECT_TYPES,
    RULES,
    Rule,
    changed_event_types,
    lookup,
)
from relay.sources.invoicext_events import webhook_payload

_AT = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
_ACCOUNT = "acc_01a2b3c4d5e6f7a8b9c0d1e2"
_CLIENT = "cli_3f9a"

# One sample per object type, in the shapes of dext-api.md / invoicext-api.md.
SAMPLES: dict[str, dict[str, Any]] = {
    "document": {
        "id": "doc_8d1e",
        "client_id": _CLIENT,
        "workspace": "costs",
        "type": "invoice",
        "source": "email",
        "status": "ready",
        "supplier_name": "Acme Supplies Ltd",
        "category_code": "400",
        "total_amount": "1332.00",
        "currency": "GBP",
        "date": "2026-11-18",
        "integration": "xero",
        "publish_status": "published",
        "approval_status": "approved",
        "created_at": "2026-11-18T09:12:00Z",
        "supplier": {"id": "sup_51c0", "name": "Acme Supplies Ltd"},
        "category": {"code": "400", "name": "Advertising"},
        "tax_rate": {"code": "T1", "name": "Standard", "rate": "20.0"},
        "invoice_number": "INV-2026-0042",
        "due_date": "2026-12-18",
        "net_amount": "1110.00",
        "tax_amount": "222.00",
        "paid": False,
        "publish": {
            "status": "published",
            "external_id": "XRO-77120",
            "published_at": "2026-11-21T09:58:00Z",
            "error_message": None,
        },
        "approval": {
            "status": "approved",
            "stage": 1,
            "approver": "Sam Partner",
            "decided_at": "2026-11-21T09:40:00Z",
        },
    },
    "expense_report": {
        "id": "exp_2b77",
        "client_id": _CLIENT,
        "title": "November travel",
        "submitter": {"id": "usr_9", "name": "Jo Field"},
        "status": "approved",
        "total_amount": "84.20",
        "currency": "GBP",
        "item_ids": ["doc_8d1f"],
        "submitted_at": "2026-11-20T16:00:00Z",
        "approver": "Sam Partner",
        "decided_at": "2026-11-21T09:30:00Z",
    },
    "supplier": {
        "id": "sup_51c0",
        "name": "Acme Supplies Ltd",
        "type": "supplier",
        "tax_number": "GB123456789",
        "default_category_code": "400",
        "default_tax_code": "T1",
        "auto_publish": True,
        "integration": "xero",
        "email": "accounts@acme.example",
    },
    "client": {
        "id": _CLIENT,
        "name": "Bakery Ltd",
        "practice_code": "BAK01",
        "organisation_type": "limited_company",
        "health_score": 31,
        "alert_level": "high",
        "bank_reconciliation_gap": 14,
        "debtor_days": 48.5,
        "last_sync_at": "2026-11-21T08:00:00Z",
    },
    "connection": {
        "main": {
            "software": "xero",
            "status": "expired",
            "organisation": "Bakery Ltd",
            "last_sync_at": "2026-11-20T22:00:00Z",
        },
        "additional": [],
        "default_publishing_integration": "xero",
        "default_expense_claims_integration": None,
    },
}

# A realistic older version of the fields a rule watches (top-level keys, whole old values).
# A rule without an entry here still gets an example: its first watched value is altered.
_BEFORE: dict[str, dict[str, Any]] = {
    "document.categorized": {
        "category": {"code": "310", "name": "Travel"},
        "category_code": "310",
    },
    "document.status_changed": {"status": "review"},
    "document.approval_changed": {
        "approval": {"status": "pending", "stage": 1, "approver": None, "decided_at": None},
        "approval_status": "pending",
    },
    "document.sync_status_changed": {
        "publish": {
            "status": "queued",
            "external_id": None,
            "published_at": None,
            "error_message": None,
        },
        "publish_status": "queued",
    },
    "expense_report.status_changed": {"status": "submitted"},
    "supplier.updated": {"email": "ap@acme.example"},
    "client.health_changed": {"health_score": 52, "alert_level": "medium"},
    "connection.status_changed": {
        "main": {
            "software": "xero",
            "status": "connected",
            "organisation": "Bakery Ltd",
            "last_sync_at": "2026-11-20T22:00:00Z",
        }
    },
}

_INVOICE_ID = "inv_8xKp2mNq"
_INVOICE: dict[str, Any] = {
    "id": _INVOICE_ID,
    "status": "processed",
    "supplier": {"name": "Acme Supplies Ltd", "address": "1 Mill Road", "tax_id": "GB1"},
    "invoice_number": "INV-2026-0042",
    "invoice_date": "2026-11-18",
    "due_date": "2026-12-18",
    "currency": "GBP",
    "line_items": [],
    "totals": {"subtotal": 1110.0, "tax_rate": 20, "tax_amount": 222.0, "total": 1332.0},
    "confidence": 0.97,
    "created_at": "2026-11-21T09:55:00Z",
    "publications": [],
}
_PUBLISHED = {
    **_INVOICE,
    "status": "published",
    "publications": [
        {"target": "xero", "external_id": "XRO-77120", "published_at": "2026-11-21T09:58:00Z"}
    ],
}
_RECONCILIATION: dict[str, Any] = {
    "id": "rec_41",
    "statement_id": "st_9",
    "status": "completed",
    "date_from": "2026-11-01",
    "date_to": "2026-11-20",
    "matched_count": 212,
    "unmatched_count": 3,
    "created_at": "2026-11-21T09:00:00Z",
    "completed_at": "2026-11-21T09:59:00Z",
}
_LEDGER = {"connected": False, "company_name": "Bakery Ltd", "last_sync": "2026-11-20T22:00:00Z"}
_SUBSCRIPTION: dict[str, Any] = {
    "id": "sub_7c2e",
    "kind": "webhook",
    "host": "hooks.example.com",
    "event_types": ["document.*"],
    "description": "ledger sync",
    "enabled": False,
    "disabled_reason": "every attempt failed since 2026-11-16T10:00:00Z (31 attempts "
    "without a success)",
    "disabled_at": "2026-11-21T10:00:00Z",
    "failing_since": "2026-11-16T10:00:00Z",
    "failed_attempts": 31,
    "pending_failed": 4,
}


@dataclass(frozen=True)
class _Other:
    """An event made outside a diff: (type, providers, description, object id, object,
    previous, client id)."""

    type: str
    providers: tuple[str, ...]
    description: str
    object_id: str
    object: dict[str, Any]
    previous: dict[str, Any]
    client_id: str | None = None
    # InvoiceXT: the snapshot type whose transition fires it (relay.snapshots.rules.DERIVED),
    # or None for a deletion (fired by the rules table, with an empty `previous`).
    derived_from: str | None = None


_OTHERS: tuple[_Other, ...] = (
    _Other(
        "account.auth_failed",
        ("dext", "invoicext"),
        "The upstream token stopped working: polling of the account pauses until it works "
        "again or is replaced.",
        _ACCOUNT,
        {
            "id": _ACCOUNT,
            "provider": "dext",
            "name": "Smith & Co",
            "status": "broken",
            "error": "invalid_token",
        },
        {},
    ),
    _Other(
        "account.recovered",
        ("dext", "invoicext"),
        "The upstream token works again (or a new one was set): polling resumes.",
        _ACCOUNT,
        {"id": _ACCOUNT, "provider": "dext", "name": "Smith & Co", "status": "active"},
        {},
    ),
    _Other(
        "invoice.processed",
        ("invoicext",),
        "An invoice is seen processed (or later) for the first time after the baseline.",
        _INVOICE_ID,
        _INVOICE,
        {"status": "processing"},
        derived_from="invoice",
    ),
    _Other(
        "invoice.published",
        ("invoicext",),
        "A new entry in an invoice's publications (one event per target).",
        _INVOICE_ID,
        _PUBLISHED,
        {"status": "processed", "publications": []},
        derived_from="invoice",
    ),
    _Other(
        "invoice.failed",
        ("invoicext",),
        "An invoice's extraction failed (processing -> failed, or new and failed).",
        _INVOICE_ID,
        {**_INVOICE, "status": "failed"},
        {"status": "processing"},
        derived_from="invoice",
    ),
    _Other(
        "invoice.deleted",
        ("invoicext",),
        "An invoice is gone after a complete scan and a 404 from GET /invoices/{id}.",
        _INVOICE_ID,
        _INVOICE,
        {},
    ),
    _Other(
        "bank.reconciled",
        ("invoicext",),
        "A bank reconciliation is seen completed for the first time after the baseline.",
        "rec_41",
        _RECONCILIATION,
        {"status": "running", "completed_at": None},
        derived_from="reconciliation",
    ),
    _Other(
        "subscription.disabled",
        ("relay",),
        "Relay disabled a subscription (410 Gone, or every attempt failing for "
        "RELAY_ENDPOINT_DISABLE_AFTER); sent to the other subscriptions that ask for it.",
        "sub_7c2e",
        _SUBSCRIPTION,
        {"enabled": True, "disabled_reason": None},
    ),
    _Other(
        "relay.ping",
        ("relay",),
        "A test event, sent on request (POST /v1/subscriptions/{id}/test) to one subscription.",
        "sub_7c2e",
        {"message": "Test event from Relay", "subscription_id": "sub_7c2e"},
        {},
    ),
)

# relay.md's "when", per type of the rules table; the fields watched are added from the rule.
_WHEN = {
    "document.created": "An item is seen for the first time after the account's baseline.",
    "document.categorized": "Its category, supplier (or customer) or tax rate changed.",
    "document.status_changed": "The inbox status changed (processing, review, ready, "
    "published, archived).",
    "document.approval_changed": "Its approval status or stage changed.",
    "document.sync_status_changed": "Its publish status, external id or integration changed.",
    "document.deleted": "An item is gone after a complete scan of its client (never after a "
    "partial one).",
    "expense_report.created": "A new expense report, after the account's baseline.",
    "expense_report.status_changed": "An expense report's approval status changed.",
    "supplier.created": "A new supplier, after the account's baseline.",
    "supplier.updated": "Any documented field of a supplier other than `id` changed (unknown "
    "fields never count).",
    "client.health_changed": "A client's health score or alert level changed (outreach "
    "triggers on this).",
    "connection.status_changed": "A client's main or additional integration changed status "
    "(one event per client and poll).",
}

_VERBS = {
    "created": "A {noun} is seen for the first time after the account's baseline.",
    "deleted": "A {noun} is gone after a complete scan of its client (never after a partial one).",
}


def _noun(object_type: str) -> str:
    return object_type.replace("_", " ")


def _description(rule: Rule) -> str:
    watched = [f for f in rule.fields if f != ANY_FIELD]
    if rule.event_type in _WHEN:
        suffix = f" Watches {', '.join(f'`{f}`' for f in watched)}." if watched else ""
        return _WHEN[rule.event_type] + suffix
    if rule.trigger != "changed":
        return _VERBS[rule.trigger].format(noun=_noun(rule.object_type))
    if ANY_FIELD in rule.fields:
        return f"Any documented field of a {_noun(rule.object_type)} other than `id` changed."
    shown = ", ".join(f"`{f}`" for f in watched)
    return f"Any of a {_noun(rule.object_type)}'s {shown} changed."


def _altered(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return f"previous {value}"
    return "previous"


def _before(rule: Rule, after: dict[str, Any]) -> dict[str, Any]:
    """An older version of `after` that makes this rule fire."""
    before = copy.deepcopy(after)
    if rule.event_type in _BEFORE:
        before.update(copy.deepcopy(_BEFORE[rule.event_type]))
        return before
    field = next((f for f in rule.fields if f != ANY_FIELD), None)
    if field is None:
        key = next(k for k in after if k != "id")
        before[key] = _altered(after[key])
        return before
    path = field.split(".")
    if "[]" in field:  # a list projection: an older list with one more entry
        head = path[0].removesuffix("[]")
        before[head] = [*copy.deepcopy(after.get(head) or []), {}]
        return before
    target = before
    for step in path[:-1]:
        target = target.setdefault(step, {})
    target[path[-1]] = _altered(lookup(after, path))
    return before


def _rule_entry(rule: Rule) -> dict[str, Any]:
    after = SAMPLES[rule.object_type]
    object_id = str(after.get("id", _CLIENT))  # a connection's id is its client's
    previous: dict[str, Any] = {}
    if rule.trigger == "changed":
        fired, previous = changed_event_types(rule.object_type, _before(rule, after), after)
        if rule.event_type not in fired:  # a rule the samples cannot show: a bug, say so
            raise RuntimeError(f"the catalogue's example does not fire {rule.event_type}")
    body = build_event(
        rule.event_type,
        account_id=_ACCOUNT,
        client_id=_CLIENT,
        object_id=object_id,
        object=after,
        previous=previous,
        at=_AT,
    )
    return {
        "type": rule.event_type,
        "object_type": rule.object_type,
        "providers": ["dext"],
        "description": _description(rule),
        "watches": [f for f in rule.fields if f != ANY_FIELD] if rule.fields else [],
        "example": _stable(body),
    }


def _stable(body: dict[str, Any]) -> dict[str, Any]:
    """A fixed example id, so the catalogue is the same on every call."""
    return {**body, "id": "evt_01a2b3c4d5e6f7a8b9c0d1e2f3"}


def _derived_extra(other: _Other) -> dict[str, Any]:
    """What joins `data` when the real derive function fires `other.type` for the sample's
    transition (older version: the sample with `previous` applied); a RuntimeError if it does
    not fire, since then the catalogue would describe an event Relay never sends."""
    if other.derived_from is None:
        return {}
    before = {**other.object, **other.previous}
    for event_type, extra in DERIVED[other.derived_from](before, other.object):
        if event_type == other.type:
            return extra
    raise RuntimeError(f"the catalogue's example does not fire {other.type}")


def _other_entry(other: _Other) -> dict[str, Any]:
    invoicext = other.providers == ("invoicext",)
    object_type = ENVELOPE_OBJECT_TYPE.get(other.derived_from or "") if invoicext else None
    body = _stable(
        build_event(
            other.type,
            account_id=None if other.type in ("relay.ping", "subscription.disabled") else _ACCOUNT,
            client_id=other.client_id,
            object_id=other.object_id,
            object=other.object,
            previous=other.previous,
            at=_AT,
            object_type=object_type,
            extra=_derived_extra(other),
        )
    )
    entry: dict[str, Any] = {
        "type": other.type,
        "object_type": body["object_type"],
        "providers": list(other.providers),
        "description": other.description,
        "watches": [],
        "example": body,
    }
    if invoicext:
        payload = webhook_payload(body)
        assert payload is not None  # InvoiceXT types always have the seed's body
        entry["webhook_example"] = orjson.loads(payload)
    return entry


def _ledger_entry() -> dict[str, Any]:
    """InvoiceXT's `connection.status_changed`: one ledger's `connected` flipped."""
    body = _stable(
        build_event(
            "connection.status_changed",
            account_id=_ACCOUNT,
            client_id=None,
            object_id="xero",
            object=_LEDGER,
            previous={"connected": True},
            at=_AT,
        )
    )
    return {"example": body}


def event_types() -> list[dict[str, Any]]:
    """Every event type Relay emits, in table order, each with a one-line description, its
    providers, the fields it watches and an example body (the stored shape, as
    `GET /v1/events` returns it; InvoiceXT types also carry `webhook_example`)."""
    # InvoiceXT's rows are its transitions (listed with their samples below), not diffs.
    entries = [
        _rule_entry(rule) for rule in RULES if rule.object_type not in INVOICEXT_OBJECT_TYPES
    ]
    for entry in entries:
        if entry["type"] == "connection.status_changed":
            entry["providers"] = ["dext", "invoicext"]
            entry["description"] += " InvoiceXT: a ledger's `connected` flipped."
            entry["invoicext_example"] = _ledger_entry()["example"]
    entries.extend(_other_entry(other) for other in _OTHERS)
    return entries


CATALOGUE: list[dict[str, Any]] = event_types()
