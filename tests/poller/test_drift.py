"""Polling a sandbox whose answers drift as the contract allows: every change, nothing else.

The drift switches (relay/sandbox/dext/drift.py) change copies of answers only, so the sandbox's
change log stays the ground truth; an event it does not call for is a false one.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from relay.poller import Poller, account_warnings
from relay.sandbox.dext.drift import DRIFT_KINDS
from relay.sources import accounts
from relay.vault import Vault
from tests.support.polling import (
    check_round,
    events_after,
    expected_types,
    last_seq,
    net_changes,
    same_meaning,
    settle,
)
from tests.support.sandbox import SandboxFactory, SandboxHandle


async def _drifting(sandbox_factory: SandboxFactory, **options: Any) -> SandboxHandle:
    return await sandbox_factory(drift=frozenset(DRIFT_KINDS), drift_rate=0.3, **options)


async def _account(pool: asyncpg.Pool, vault: Vault, handle: SandboxHandle) -> accounts.Account:
    return await accounts.create_account(
        pool, vault, provider="dext", name="drift", base_url=handle.url, api_token=handle.token
    )


async def _settle_clean_scan(poller: Poller, account_id: str, handle: SandboxHandle) -> None:
    """Poll with every drift on, then once more without unusable objects: a scan that set one
    aside deletes nothing, so deletions are confirmed by the next clean scan."""
    await settle(poller, account_id)
    kinds = sorted(handle.sandbox.drift.kinds)
    await handle.drift([k for k in kinds if k != "unusable"])
    await settle(poller, account_id)
    await handle.drift(kinds)


async def test_every_change_is_found_and_nothing_else_with_every_drift_on(
    pool: asyncpg.Pool, poller: Poller, vault: Vault, sandbox_factory: SandboxFactory
) -> None:
    handle = await _drifting(sandbox_factory)
    account = await _account(pool, vault, handle)
    await settle(poller, account.id)
    after = await accounts.get_account(pool, account.id)
    assert after.status == "active"
    assert await last_seq(pool) == 0  # the baseline, drift and all, emits nothing
    seen: set[str] = set()
    expected = found = 0
    for _ in range(3):
        seq, since = await last_seq(pool), int((await handle.state())["change_seq"])
        await handle.simulate(paused=False, change_rate=8)
        await handle.advance(7200)
        await handle.simulate(paused=True)
        await _settle_clean_scan(poller, account.id, handle)
        events, changes = await events_after(pool, seq), await handle.changes(since)
        seen |= check_round(changes, events, same=same_meaning)  # none missed, none false
        expected += sum(len(expected_types(*net)) for net in net_changes(changes).values())
        found += len(events)
    # Nothing changes upstream now, only the answers' shapes: nothing at all.
    seq = await last_seq(pool)
    for _ in range(2):
        await _settle_clean_scan(poller, account.id, handle)
    assert await events_after(pool, seq) == []
    assert {"document.created", "document.deleted", "document.status_changed"} <= seen, seen
    shown = (await account_warnings.warnings_of(pool, [account.id]))[account.id]
    assert {w["kind"] for w in shown} == {"not_an_object", "missing_id", "unusable_field"}
    assert all(w["count"] > 0 and w["example"] for w in shown)
    assert found == expected > 50
    print(f"drift all: {expected} events expected, {found} found, 0 false")


@pytest.mark.parametrize("path", ["/costs", "/expense_reports"])
async def test_decimal_string_quantities_and_miles_do_not_stop_the_baseline(
    pool: asyncpg.Pool,
    poller: Poller,
    vault: Vault,
    sandbox_factory: SandboxFactory,
    path: str,
) -> None:
    handle = await sandbox_factory(drift=frozenset({"retype"}), drift_rate=1.0)
    practice = handle.sandbox.practice
    for cid in practice.clients:  # every client has a report with mileage to spell
        report = practice.select("expense_report", cid, lambda r: True)[0]
        claim = {"date": "2026-04-01", "from": "A", "to": "B", "miles": 26, "amount": "11.70"}
        change = {"action": "update", "object_type": "expense_report", "object_id": report["id"]}
        assert await handle.apply({**change, "set": {"mileage_claims": [claim]}})
    account = await _account(pool, vault, handle)
    await settle(poller, account.id)
    after = await accounts.get_account(pool, account.id)
    assert after.status == "active"
    assert after.baseline_completed_at is not None
    stored = await pool.fetchval("SELECT count(*) FROM snapshots WHERE object_type = 'document'")
    assert stored == sum(len(d) for d in handle.sandbox.practice.documents.values())
    # The upstream really sent decimal strings, and Relay stored them as sent.
    column = "line_items" if path == "/costs" else "mileage_claims"
    inner = "quantity" if path == "/costs" else "miles"
    spelled = await pool.fetchval(
        f"SELECT count(*) FROM snapshots, jsonb_array_elements(data->'{column}') AS e "
        f"WHERE jsonb_typeof(e->'{inner}') = 'string'"
    )
    assert spelled > 0
    # ... and the changes after it arrive as events.
    seq, since = await last_seq(pool), int((await handle.state())["change_seq"])
    await handle.simulate(paused=False, change_rate=8)
    await handle.advance(3600)
    await handle.simulate(paused=True)
    await settle(poller, account.id)
    events = await events_after(pool, seq)
    assert events
    check_round(await handle.changes(since), events, same=same_meaning)


async def test_unknown_fields_coming_and_going_cause_no_event(
    pool: asyncpg.Pool, poller: Poller, vault: Vault, sandbox_factory: SandboxFactory
) -> None:
    handle = await sandbox_factory(drift=frozenset({"unknown"}), drift_rate=0.5)
    account = await _account(pool, vault, handle)
    await settle(poller, account.id)
    seq = await last_seq(pool)
    for _ in range(4):
        await settle(poller, account.id)
    assert await events_after(pool, seq) == []
    # They did come and go, and travel in the stored objects.
    carried = await pool.fetchval(
        "SELECT count(*) FROM snapshots WHERE object_type = 'supplier' "
        "AND EXISTS (SELECT 1 FROM jsonb_object_keys(data) AS k WHERE k LIKE 'x_drift%')"
    )
    assert carried > 0
