"""Slack messages: every event type reads like a person wrote it and stays in Slack's limits.

The event types are relay.md's table (and invoicext-api.md's), written out here rather than
taken from the rules, so a type the renderer forgets shows up as a failure.
"""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import orjson
import pytest

from relay.delivery.slack import slack_message
from relay.settings import Settings
from relay.snapshots import diff_objects
from relay.vault import Vault
from tests.support.delivery import (
    DispatcherFactory,
    Endpoint,
    all_settled,
    store_events,
    subscribe,
    wait_until,
)
from tests.support.stores import make_account

HOSTILE = "<!channel> <https://evil.example|click> & *bold* _it_ `code`\n• fake line\u2028" + (
    "x" * 5000
)


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "doc_1",
        "client_id": "cli_1",
        "workspace": "costs",
        "type": "invoice",
        "status": "review",
        "supplier_name": "Acme Ltd",
        "supplier": {"id": "sup_1", "name": "Acme Ltd"},
        "category_code": "400",
        "category": {"code": "400", "name": "Advertising"},
        "tax_rate": {"code": "T1", "name": "Standard", "rate": "20.0"},
        "total_amount": "120.00",
        "currency": "GBP",
        "date": "2026-04-14",
        "integration": "xero",
        "publish_status": "unpublished",
        "publish": {"status": "unpublished", "external_id": None, "error_message": None},
        "approval_status": "approved",
        "approval": {"status": "approved", "stage": 1, "approver": "Sam Partner"},
        "description": "Ads",
        "paid": False,
    }
    doc.update(changes)
    return doc


def _event(
    type: str,
    obj: dict[str, Any],
    previous: dict[str, Any] | None = None,
    *,
    object_type: str | None = None,
    object_id: str = "doc_1",
    client_id: str | None = "cli_1",
) -> dict[str, Any]:
    return {
        "id": "evt_1",
        "type": type,
        "created_at": "2026-11-21T10:00:00Z",
        "account_id": "acc_1",
        "client_id": client_id,
        "object_type": object_type or type.split(".", 1)[0],
        "object_id": object_id,
        "data": {"object": obj, "previous": previous or {}},
    }


INVOICE = {
    "id": "inv_8xKp2mNq",
    "status": "processed",
    "supplier": {"name": "Acme Supplies Ltd", "address": "1 Road", "tax_id": "GB1"},
    "invoice_number": "INV-2026-0042",
    "currency": "GBP",
    "totals": {"subtotal": 1110.0, "tax_rate": 20, "tax_amount": 222.0, "total": 1332.0},
    "publications": [],
}
CLIENT = {"id": "cli_1", "name": "Bakery Ltd", "health_score": 20, "alert_level": "high"}
LEDGER = {"connected": False, "company_name": "Bakery Ltd", "last_sync": "2026-04-14T12:00:00Z"}
CONNECTION = {
    "main": {"software": "xero", "status": "expired", "organisation": "Bakery Ltd"},
    "additional": [],
}

# type -> (event, words the message must carry)
SAMPLES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "document.created": (_event("document.created", _doc()), ["new invoice", "GBP 120.00"]),
    "document.categorized": (
        _event(
            "document.categorized",
            _doc(),
            {"category": {"code": "310", "name": "Travel"}, "category_code": "310"},
        ),
        ["recategorized", "*category*: 310 Travel → 400 Advertising"],
    ),
    "document.status_changed": (
        _event("document.status_changed", _doc(status="ready"), {"status": "review"}),
        ["*status*: review → ready"],
    ),
    "document.approval_changed": (
        _event(
            "document.approval_changed",
            _doc(),
            {
                "approval": {"status": "pending", "stage": 1, "approver": None},
                "approval_status": "pending",
                "description": "old",
                "paid": True,
            },
        ),
        ["*approval*: pending, stage 1 → approved by Sam Partner", "also changed: description"],
    ),
    "document.sync_status_changed": (
        _event(
            "document.sync_status_changed",
            _doc(publish={"status": "failed", "error_message": "Xero said no"}),
            {"publish": {"status": "queued"}, "publish_status": "queued"},
        ),
        ["*publish*: queued → failed: Xero said no"],
    ),
    "document.deleted": (_event("document.deleted", _doc()), ["deleted", "Acme Ltd"]),
    "expense_report.created": (
        _event(
            "expense_report.created",
            {
                "id": "er_1",
                "title": "April travel",
                "submitter": {"id": "u1", "name": "Jo"},
                "status": "submitted",
                "total_amount": "45.10",
                "currency": "GBP",
            },
            object_id="er_1",
        ),
        ["new expense report “April travel” by Jo, GBP 45.10"],
    ),
    "expense_report.status_changed": (
        _event(
            "expense_report.status_changed",
            {"id": "er_1", "title": "April travel", "status": "approved"},
            {"status": "submitted"},
            object_id="er_1",
        ),
        ["*status*: submitted → approved"],
    ),
    "supplier.created": (
        _event("supplier.created", {"id": "sup_1", "name": "Acme Ltd", "type": "supplier"}),
        ["new supplier Acme Ltd"],
    ),
    "supplier.updated": (
        _event(
            "supplier.updated",
            {"id": "sup_1", "name": "Acme Ltd", "email": "b@acme.test"},
            {"email": "a@acme.test"},
        ),
        ["*email*: a@acme.test → b@acme.test"],
    ),
    "client.health_changed": (
        _event(
            "client.health_changed",
            CLIENT,
            {"alert_level": "medium", "health_score": 50},
            object_id="cli_1",
        ),
        ["*alert level*: medium → high", "*health score*: 50 → 20"],
    ),
    "connection.status_changed": (
        _event(
            "connection.status_changed",
            CONNECTION,
            {"main": {"software": "xero", "status": "connected"}},
            object_id="cli_1",
        ),
        ["*main*: xero connected → xero expired"],
    ),
    "account.auth_failed": (
        _event(
            "account.auth_failed",
            {
                "id": "acc_1",
                "status": "broken",
                "error": {"code": "invalid_token", "message": "nope"},
            },
            object_id="acc_1",
            client_id=None,
        ),
        ["authentication failed", "nope"],
    ),
    "account.recovered": (
        _event("account.recovered", {"id": "acc_1", "status": "active"}, object_id="acc_1"),
        ["recovered"],
    ),
    "invoice.processed": (
        _event("invoice.processed", INVOICE, {"status": "processing"}, object_id=INVOICE["id"]),
        ["invoice INV-2026-0042 from Acme Supplies Ltd, GBP 1,332.00", "processing → processed"],
    ),
    "invoice.published": (
        _event(
            "invoice.published",
            {
                **INVOICE,
                "status": "published",
                "publications": [{"target": "xero", "external_id": "XRO-1"}],
            },
            {"publications": [], "status": "processed"},
            object_id=INVOICE["id"],
            client_id=None,
        ),
        ["published", "none → xero as XRO-1"],
    ),
    "invoice.failed": (
        _event("invoice.failed", {**INVOICE, "status": "failed"}, {"status": "processing"}),
        ["extraction failed", "processing → failed"],
    ),
    "invoice.deleted": (
        _event("invoice.deleted", INVOICE, object_id=INVOICE["id"], client_id=None),
        ["deleted", "Acme Supplies Ltd"],
    ),
    "bank.reconciled": (
        _event(
            "bank.reconciled",
            {
                "id": "rec_1",
                "statement_id": "st_1",
                "status": "completed",
                "date_from": "2026-04-01",
                "date_to": "2026-04-30",
                "matched_count": 40,
                "unmatched_count": 2,
            },
            object_type="reconciliation",
            object_id="rec_1",
            client_id=None,
        ),
        ["bank reconciliation 2026-04-01 to 2026-04-30: completed", "40 matched, 2 unmatched"],
    ),
    "connection.status_changed (InvoiceXT)": (
        _event(
            "connection.status_changed",
            LEDGER,
            {"connected": True},
            object_id="xero",
            client_id=None,
        ),
        ["xero ledger (Bakery Ltd)", "*connected*: yes → no"],
    ),
    "subscription.disabled": (
        _event(
            "subscription.disabled",
            {
                "id": "sub_1",
                "host": "hooks.example.com",
                "disabled_reason": "endpoint answered 410 Gone",
                "pending_failed": 3,
            },
            {"enabled": True, "disabled_reason": None},
            object_id="sub_1",
            client_id=None,
        ),
        ["subscription to hooks.example.com", "endpoint answered 410 Gone", "3 pending"],
    ),
    "relay.ping": (
        _event("relay.ping", {"message": "Test"}, object_type="relay", client_id=None),
        ["test message"],
    ),
    "document.snapshot": (_event("document.snapshot", _doc()), ["current state"]),
}


def _texts(message: dict[str, Any]) -> list[str]:
    out = [message["text"]]
    for block in message["blocks"]:
        if "text" in block:
            out.append(block["text"]["text"])
        out.extend(e["text"] for e in block.get("elements", []))
    return out


def _check_limits(message: dict[str, Any]) -> None:
    assert set(message) == {"text", "blocks"}
    assert 0 < len(message["text"]) <= 1000
    assert 2 <= len(message["blocks"]) <= 50
    for block in message["blocks"]:
        assert block["type"] in ("section", "context")
        if block["type"] == "section":
            assert block["text"]["type"] == "mrkdwn"
            assert 0 < len(block["text"]["text"]) <= 3000
            assert "fields" not in block
        else:
            assert 1 <= len(block["elements"]) <= 10
            assert all(len(e["text"]) <= 3000 for e in block["elements"])
    for text in _texts(message):
        # No raw angle brackets: no <!channel>, no <url|label> link a value could smuggle in.
        assert "<" not in text
        assert ">" not in text.replace("&gt;", "")
    assert "\n" not in message["blocks"][0]["text"]["text"]
    assert "://" not in orjson.dumps(message).decode()  # link-free, even with URLs in values


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_event_type_reads_well(name: str) -> None:
    event, words = SAMPLES[name]
    message = slack_message(event, "Bakery Ltd" if event["client_id"] else None)
    _check_limits(message)
    shown = "\n".join(_texts(message))
    for word in words:
        assert word.lower() in shown.lower(), (word, shown)
    if event["client_id"]:
        assert message["blocks"][0]["text"]["text"].startswith("*Bakery Ltd")
        assert "Bakery Ltd" in message["text"]


def test_the_watched_change_comes_first_then_one_short_line() -> None:
    event = SAMPLES["document.approval_changed"][0]
    event = copy.deepcopy(event)
    event["data"]["previous"].update({f"field_{n}": n for n in range(30)})
    message = slack_message(event, "Bakery Ltd")
    lines = message["blocks"][2]["text"]["text"].split("\n")
    assert lines[0] == "• *approval*: pending, stage 1 → approved by Sam Partner"
    assert len(lines) == 2
    assert lines[1].startswith("_also changed: description, paid, field 0")
    assert lines[1].endswith(" and 26 more_")
    headline = message["blocks"][0]["text"]["text"]
    assert headline == "*Bakery Ltd — invoice from Acme Ltd, GBP 120.00: approval changed*"
    assert message["text"].startswith("Bakery Ltd — invoice from Acme Ltd, GBP 120.00")


@pytest.mark.parametrize("name", list(SAMPLES))
def test_hostile_and_long_text_stays_text_and_in_limits(name: str) -> None:
    event = copy.deepcopy(SAMPLES[name][0])

    def poison(value: Any) -> Any:
        if isinstance(value, str):
            return HOSTILE
        if isinstance(value, dict):
            return {k: poison(v) for k, v in value.items()}
        if isinstance(value, list):
            return [poison(v) for v in value] * 50
        return value

    event["data"] = poison(event["data"])
    event["object_id"] = HOSTILE
    event["client_id"] = HOSTILE if event["client_id"] else None
    event["data"]["previous"].update({HOSTILE + str(n): HOSTILE for n in range(100)})
    message = slack_message(event, HOSTILE)
    _check_limits(message)
    if name != "relay.ping":  # a ping's headline is fixed
        assert "&lt;!channel&gt;" in message["blocks"][0]["text"]["text"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"type": "document.created"},
        {"type": "document.created", "data": None},
        {"type": "document.created", "data": {"object": [], "previous": "x"}},
        {"type": 7, "object_id": {"a": 1}, "client_id": 5, "data": {"object": {"type": []}}},
        {
            "type": "document.categorized",
            "data": {"object": {"supplier": 3}, "previous": {"supplier": []}},
        },
        {"event": "invoice.processed", "data": INVOICE, "timestamp": "2026-04-14T12:30:00Z"},
    ],
)
def test_odd_bodies_still_give_a_valid_message(body: dict[str, Any]) -> None:
    _check_limits(slack_message(body))


async def test_the_client_is_named_from_its_snapshot(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    account_id = await make_account(pool)
    async with pool.acquire() as conn:
        await diff_objects(
            conn,
            account_id=account_id,
            object_type="client",
            objects=[{"id": "cli_7", "name": "Bakery & Sons", "health_score": 80}],
            client_id=None,
            emit=False,
        )
    await subscribe(pool, vault, dsettings, endpoint.url("/ok"), kind="slack")
    hook, _ = await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    event = copy.deepcopy(SAMPLES["document.approval_changed"][0])
    event.update(account_id=account_id, client_id="cli_7", id="evt_named1")
    await start_dispatcher()
    await store_events(pool, event)
    await wait_until(lambda: all_settled(pool, 2), what="both deliveries")
    slack = next(h for h in endpoint.hits if "webhook-signature" not in h.headers)
    message = orjson.loads(slack.body)
    assert message["blocks"][0]["text"]["text"].startswith("*Bakery &amp; Sons — invoice from")
    assert "client Bakery &amp; Sons (cli_7)" in message["blocks"][1]["elements"][0]["text"]
    # The webhook gets the stored event untouched.
    webhook = next(h for h in endpoint.hits if "webhook-signature" in h.headers)
    assert orjson.loads(webhook.body) == event
    assert hook["kind"] == "webhook"
