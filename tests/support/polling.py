"""Polling support, a pytest plugin registered in tests/conftest.py: the `http` session the
upstream clients share, the test policy, and the ground truth for the polling tests (which
events the sandbox's change log calls for).

The mapping is written from relay.md's events table, independently of `relay.snapshots.rules`, so
the tests check the implementation against the contract rather than against itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest

from relay.http import create_client_session
from relay.poller import Poller
from relay.poller.plan import Policy, force_full_pass
from relay.snapshots.rules import normalized
from relay.sources.dext import DextClient

# The default policy with the sandbox's generous limit: every test pass is one budget window.
TEST_POLICY = replace(Policy(), rate_limit=10_000, lease_seconds=5.0)
# `make_client(handle, **client_options)` of tests/sources: a DextClient for a sandbox.
MakeClient = Callable[..., DextClient]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session for the upstream clients and pollers of a test, closed after."""
    session = create_client_session(timeout=10.0)
    yield session
    await session.close()


CATEGORIZED = ("category", "category_code", "supplier", "customer", "supplier_name", "tax_rate")
# The fields each event type is about, to compare before/after with the ground truth.
WATCHED = {
    "document.categorized": CATEGORIZED,
    "document.status_changed": ("status",),
    "document.approval_changed": ("approval", "approval_status"),
    "document.sync_status_changed": ("publish", "publish_status", "integration"),
    "expense_report.status_changed": ("status",),
    "client.health_changed": ("health_score", "alert_level"),
    "connection.status_changed": ("main", "additional"),
}


def _sub(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _statuses(links: Any) -> list[Any]:
    return [_sub(link, "status") for link in links] if isinstance(links, list) else []


def net_changes(entries: list[dict[str, Any]]) -> dict[str, tuple[str, str, dict[str, list[Any]]]]:
    """Per object id: (object_type, what happened, {field: [first old, last new]}).

    What happened is `created`, `deleted` or `updated`; an object created and deleted within
    the entries, or changed back to where it was, is left out (a poll cannot see it).
    """
    by_object: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in sorted(entries, key=lambda e: e["seq"]):
        by_object[entry["object_id"]].append(entry)
    out: dict[str, tuple[str, str, dict[str, list[Any]]]] = {}
    for object_id, items in by_object.items():
        kinds = [e["kind"] for e in items]
        object_type = items[0]["object_type"]
        if kinds[0] == "created":
            if kinds[-1] != "deleted":
                out[object_id] = (object_type, "created", {})
            continue
        if "deleted" in kinds:
            out[object_id] = (object_type, "deleted", {})
            continue
        fields: dict[str, list[Any]] = {}
        for entry in items:
            for name, (old, new) in (entry.get("changes") or {}).items():
                if name in fields:
                    fields[name][1] = new
                else:
                    fields[name] = [old, new]
        fields = {k: v for k, v in fields.items() if v[0] != v[1]}
        if fields:
            out[object_id] = (object_type, "updated", fields)
    return out


def expected_types(object_type: str, what: str, fields: dict[str, list[Any]]) -> set[str]:
    """The event types relay.md's table gives a net change."""
    if what == "created":
        return {f"{object_type}.created"} & {
            "document.created",
            "supplier.created",
            "expense_report.created",
        }
    if what == "deleted":
        return {"document.deleted"} if object_type == "document" else set()
    changed = set(fields)
    if object_type == "document":
        types = set()
        category = fields.get("category")
        if (category and _sub(category[0], "code") != _sub(category[1], "code")) or changed & {
            "category_code",
            "supplier",
            "customer",
            "supplier_name",
            "tax_rate",
        }:
            types.add("document.categorized")
        if "status" in changed:
            types.add("document.status_changed")
        approval = fields.get("approval")
        if "approval_status" in changed or (
            approval
            and any(_sub(approval[0], k) != _sub(approval[1], k) for k in ("status", "stage"))
        ):
            types.add("document.approval_changed")
        publish = fields.get("publish")
        if changed & {"publish_status", "integration"} or (
            publish
            and any(_sub(publish[0], k) != _sub(publish[1], k) for k in ("status", "external_id"))
        ):
            types.add("document.sync_status_changed")
        return types
    if object_type == "expense_report":
        return {"expense_report.status_changed"} if "status" in changed else set()
    if object_type == "supplier":
        return {"supplier.updated"} if changed - {"id"} else set()
    if object_type == "client":
        return {"client.health_changed"} if changed & {"health_score", "alert_level"} else set()
    if object_type == "connection":
        main = fields.get("main")
        additional = fields.get("additional")
        if (main and _sub(main[0], "status") != _sub(main[1], "status")) or (
            additional and _statuses(additional[0]) != _statuses(additional[1])
        ):
            return {"connection.status_changed"}
    return set()


async def events_after(pool: asyncpg.Pool, seq: int) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT seq, body FROM events WHERE seq > $1 ORDER BY seq", seq)
    return [{**row["body"], "_seq": row["seq"]} for row in rows]


async def last_seq(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(max(seq), 0) FROM events"))


def _equal(a: Any, b: Any) -> bool:
    return bool(a == b)


def check_round(
    entries: list[dict[str, Any]],
    events: list[dict[str, Any]],
    same: Callable[[Any, Any], bool] = _equal,
) -> set[str]:
    """Assert the events are exactly the ones the change log calls for, with the right
    before/after (compared by `same`; under drift, up to spelling and unknown fields);
    returns the event types seen."""
    expected: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for object_id, (object_type, what, fields) in net_changes(entries).items():
        for event_type in expected_types(object_type, what, fields):
            expected[(object_id, event_type)] = fields
    got: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        got[(event["object_id"], event["type"])].append(event)
    missing = sorted(set(expected) - set(got))
    false = sorted(set(got) - set(expected))
    doubled = sorted(key for key, found in got.items() if len(found) > 1)
    assert not missing, f"missed: {missing}"
    assert not false, f"false events: {false}"
    assert not doubled, f"duplicated: {doubled}"
    for (object_id, event_type), fields in expected.items():
        event = got[(object_id, event_type)][0]
        for name in WATCHED.get(event_type, ()):
            if name in fields:
                old, new = fields[name]
                assert same(event["data"]["object"].get(name), new), (event_type, name)
                assert same(event["data"]["previous"].get(name), old), (event_type, name)
        if event_type.endswith((".created", ".deleted")):
            assert event["data"]["previous"] == {}
    return {event_type for _, event_type in expected}


async def settle(poller: Poller, account_id: str) -> None:
    """One full pass over everything of the account, as `POST /v1/accounts/{id}/poll` asks."""
    await force_full_pass(poller.pool, account_id)
    report = await poller.run_account(account_id, run_seconds=120, idle_exit=True)
    assert report.outcome in ("done", "broken"), report


# What drift may add to or change inside a watched object without changing its meaning.
_DRIFTABLE_KEYS = frozenset({"software"})


def _meaning(value: Any) -> Any:
    """A value as the contract means it: unknown (`x_drift_...`) and drifting enum keys out,
    spelling normalized."""
    if isinstance(value, dict):
        return {
            key: _meaning(item)
            for key, item in value.items()
            if not key.startswith("x_drift") and key not in _DRIFTABLE_KEYS
        }
    if isinstance(value, list):
        return [_meaning(item) for item in value]
    return normalized(value)


def same_meaning(a: Any, b: Any) -> bool:
    return bool(_meaning(a) == _meaning(b))
