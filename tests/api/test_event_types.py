"""GET /v1/event-types and `relay event-types`: the whole contract's table, true examples."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.cli.main import build_parser
from relay.cli.operator import run_operator_command
from relay.errors import ConfigError
from relay.settings import Settings
from relay.snapshots.rules import RULES, changed_event_types

# relay.md's events table and invoicext-api.md's, written out (not read from the code).
CONTRACT_TYPES = {
    "document.created",
    "document.categorized",
    "document.status_changed",
    "document.approval_changed",
    "document.sync_status_changed",
    "document.deleted",
    "expense_report.created",
    "expense_report.status_changed",
    "supplier.created",
    "supplier.updated",
    "client.health_changed",
    "connection.status_changed",
    "account.auth_failed",
    "account.recovered",
    "invoice.processed",
    "invoice.published",
    "invoice.failed",
    "invoice.deleted",
    "bank.reconciled",
    "subscription.disabled",
    "relay.ping",
}
OBJECT_TYPES = {
    "document",
    "expense_report",
    "supplier",
    "client",
    "connection",
    "account",
    "invoice",
    "reconciliation",
    "subscription",
    "relay",
}
BODY_KEYS = {
    "id",
    "type",
    "created_at",
    "account_id",
    "client_id",
    "object_type",
    "object_id",
    "data",
}


def _check_body(body: dict[str, Any], event_type: str) -> None:
    """The body shape of relay.md's "Webhook requests" (as GET /v1/events returns it)."""
    # `sequence` (relay.md: every event carries one) is allowed, nothing else unexpected.
    assert BODY_KEYS <= set(body) <= {*BODY_KEYS, "sequence"}, event_type
    assert body["type"] == event_type
    assert re.fullmatch(r"evt_[0-9a-f]+", body["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["created_at"])
    assert body["object_type"] in OBJECT_TYPES
    if body["object_type"] != "reconciliation":
        assert body["object_type"] == event_type.split(".", 1)[0]
    assert isinstance(body["object_id"], str)
    assert body["object_id"]
    for key in ("account_id", "client_id"):
        assert body[key] is None or isinstance(body[key], str)
    # InvoiceXT's `invoice.published` also names the publication it reports (one event per
    # new publication), as the stored events do.
    extra = {"publication"} if event_type == "invoice.published" else set()
    assert set(body["data"]) == {"object", "previous", *extra}
    assert isinstance(body["data"]["object"], dict)
    assert isinstance(body["data"]["previous"], dict)
    if event_type.endswith((".created", ".deleted")):
        assert body["data"]["previous"] == {}


async def _catalogue(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    response = await client.get("/v1/event-types")
    assert response.status == 200
    payload = await response.json()
    assert payload["next_cursor"] is None
    return list(payload["data"])


async def test_every_contract_type_is_listed_with_a_line_and_a_valid_example(
    client: TestClient[Any, Any],
) -> None:
    entries = await _catalogue(client)
    types = [e["type"] for e in entries]
    assert len(types) == len(set(types))
    assert set(types) == CONTRACT_TYPES
    for entry in entries:
        description = entry["description"]
        assert "\n" not in description
        assert 20 < len(description) <= 240, entry["type"]
        assert description.endswith(".")
        assert set(entry["providers"]) <= {"dext", "invoicext", "relay"}
        _check_body(entry["example"], entry["type"])
        assert entry["object_type"] == entry["example"]["object_type"]
    ledger = next(e for e in entries if e["type"] == "connection.status_changed")
    _check_body(ledger["invoicext_example"], "connection.status_changed")
    assert ledger["providers"] == ["dext", "invoicext"]


async def test_rule_examples_are_what_the_diff_really_emits(
    client: TestClient[Any, Any],
) -> None:
    by_type = {e["type"]: e for e in await _catalogue(client)}
    for rule in RULES:
        entry = by_type[rule.event_type]
        assert entry["watches"] == [f for f in rule.fields if f != "*"]
        for field in entry["watches"]:
            assert f"`{field}`" in entry["description"]
        if rule.trigger != "changed":
            continue
        after = entry["example"]["data"]["object"]
        previous = entry["example"]["data"]["previous"]
        assert previous
        before = {**after, **previous}
        fired, diffed = changed_event_types(rule.object_type, before, after)
        assert rule.event_type in fired
        assert diffed == previous  # `previous` is exactly what a diff would put there


async def test_invoicext_types_show_their_webhook_body_too(client: TestClient[Any, Any]) -> None:
    for entry in await _catalogue(client):
        if entry["providers"] != ["invoicext"]:
            assert "webhook_example" not in entry
            continue
        hook = entry["webhook_example"]
        assert set(hook) == {"event", "timestamp", "data", "webhook_id", "account_id"}
        assert hook["event"] == entry["type"]
        assert hook["webhook_id"] == entry["example"]["id"]
        if entry["type"].startswith("invoice."):
            assert {"id", "status", "invoice_number", "supplier", "total", "currency"} <= set(
                hook["data"]
            )
            assert isinstance(hook["data"]["supplier"], str)
    published = next(e for e in await _catalogue(client) if e["type"] == "invoice.published")
    assert {"target", "external_id", "published_at"} <= set(published["webhook_example"]["data"])


async def test_the_route_needs_the_token_and_is_in_openapi(
    client: TestClient[Any, Any], anon: aiohttp.ClientSession
) -> None:
    async with anon.get(client.make_url("/v1/event-types")) as response:
        assert response.status == 401
    spec = await (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/event-types"]["get"]
    assert operation["operationId"] == "list_event_types"
    assert "EventType" in spec["components"]["schemas"]
    assert "GET /v1/event-types" in spec["info"]["description"]


def _run(argv: list[str], settings: Settings) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_operator_command(build_parser().parse_args(argv), settings)
    return code, out.getvalue()


async def test_relay_event_types_prints_the_catalogue(
    client: TestClient[Any, Any], settings: Settings
) -> None:
    use = settings.with_changes(api_url=str(client.make_url("")).rstrip("/"))
    code, out = await asyncio.to_thread(_run, ["event-types"], use)
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [e["type"] for e in await _catalogue(client)]
    assert any(line.startswith("client.health_changed") and "outreach" in line for line in lines)

    code, out = await asyncio.to_thread(_run, ["event-types", "--json"], use)
    assert code == 0
    assert orjson.loads(out)["data"] == await _catalogue(client)

    code, out = await asyncio.to_thread(_run, ["event-types", "--type", "invoice.published"], use)
    assert code == 0
    assert out.splitlines()[0].startswith("invoice.published")
    assert "example:" in out
    assert "webhook example:" in out
    assert '"type": "invoice.published"' in out

    with pytest.raises(ConfigError, match="no event type 'nope'"):
        await asyncio.to_thread(_run, ["event-types", "--type", "nope"], use)
