"""Baselines per client: a client that appears after the account's baseline is history, not news."""

from __future__ import annotations

from typing import Any

import asyncpg

from relay.poller import Poller
from relay.poller.progress import baseline_progress
from relay.sources import accounts
from relay.vault import Vault
from tests.support.polling import check_round, events_after, last_seq, settle
from tests.support.sandbox import SandboxHandle


async def change_seq(sandbox: SandboxHandle) -> int:
    return int((await sandbox.state())["change_seq"])


async def _late_client(sandbox: SandboxHandle, items: int) -> str:
    entries = await sandbox.add_client(items)
    [client] = [e for e in entries if e["object_type"] == "client"]
    return str(client["object_id"])


async def _client_tasks_baselined(pool: asyncpg.Pool, account_id: str, cid: str) -> bool:
    value = await pool.fetchval(
        "SELECT bool_and(baselined_at IS NOT NULL) FROM poll_tasks WHERE account_id = $1 "
        "AND client_id = $2 AND kind IN ('baseline', 'suppliers', 'expense_reports', "
        "'connections')",
        account_id,
        cid,
    )
    return bool(value)


def _later_changes(sandbox: SandboxHandle, cid: str) -> list[dict[str, Any]]:
    """A change of every kind on the late client's history, and a new item."""
    practice = sandbox.sandbox.practice
    published = practice.select("document", cid, lambda d: d["status"] == "published")
    supplier = practice.select("supplier", cid, lambda s: True)[0]
    return [
        {"action": "create_document", "client_id": cid},
        {"action": "delete", "object_type": "document", "object_id": published[0]["id"]},
        {
            "action": "update",
            "object_type": "document",
            "object_id": published[1]["id"],
            "set": {"status": "archived"},
        },
        {
            "action": "update",
            "object_type": "supplier",
            "object_id": supplier["id"],
            "set": {"email": "late@supplier.example"},
        },
        {
            "action": "update",
            "object_type": "client",
            "object_id": cid,
            "set": {"health_score": 9, "alert_level": "high"},
        },
    ]


async def test_a_late_client_is_baselined_silently_then_its_changes_flow_once(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    await settle(poller, account.id)
    assert await last_seq(pool) == 0
    baseline_done = (await accounts.get_account(pool, account.id)).baseline_completed_at

    cid = await _late_client(sandbox, 150)
    await settle(poller, account.id)
    # Its 150 items, suppliers and expense reports are stored, and none is news.
    assert await last_seq(pool) == 0, await events_after(pool, 0)
    stored = await pool.fetchval(
        "SELECT count(*) FROM snapshots WHERE object_type = 'document' AND client_id = $1", cid
    )
    assert stored == 150
    assert await _client_tasks_baselined(pool, account.id, cid)
    after = await accounts.get_account(pool, account.id)
    assert after.status == "active"
    assert after.baseline_completed_at == baseline_done, "the account's baseline stays as it was"

    # From now on the late client is like every other: each change is exactly one event.
    seq, since = await last_seq(pool), await change_seq(sandbox)
    for change in _later_changes(sandbox, cid):
        assert await sandbox.apply(change), change
    await settle(poller, account.id)
    seen = check_round(await sandbox.changes(since), await events_after(pool, seq))
    assert seen >= {
        "document.created",
        "document.deleted",
        "document.status_changed",
        "supplier.updated",
        "client.health_changed",
    }, seen
    # ... and a re-poll repeats none of them.
    seq = await last_seq(pool)
    await settle(poller, account.id)
    assert await events_after(pool, seq) == []
    # Two busy simulated hours over every client, the late one among them: exactly as logged.
    seq, since = await last_seq(pool), await change_seq(sandbox)
    await sandbox.simulate(paused=False, change_rate=8)
    await sandbox.advance(7200)
    await sandbox.simulate(paused=True)
    entries = await sandbox.changes(since)
    assert any(e["client_id"] == cid for e in entries)
    await settle(poller, account.id)
    check_round(entries, await events_after(pool, seq))


async def test_an_incomplete_first_scan_of_a_late_client_is_no_baseline(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    await settle(poller, account.id)
    cid = await _late_client(sandbox, 160)
    # Make the clients task due, so only the late client's first reads run in this pass; every
    # /sales page of it is malformed, so its first document scan sees only its costs.
    await pool.execute(
        "UPDATE poll_tasks SET due_at = now() WHERE account_id = $1 AND kind = 'clients'",
        account.id,
    )
    await sandbox.fault(kind="malformed_json", path="/sales", count=1000)
    await poller.run_account(account.id, run_seconds=60, idle_exit=True)
    docs = list(sandbox.sandbox.practice.documents[cid].values())
    sales = sum(1 for d in docs if d["workspace"] == "sales")
    assert sales, "the seed gives the late client some sales items"
    assert not await _client_tasks_baselined(pool, account.id, cid)
    # The account is active; its late client shows as a baseline of its own, not done yet.
    fresh = await accounts.get_account(pool, account.id)
    [progress] = (await baseline_progress(pool, [fresh], poller.policy)).values()
    assert progress is not None
    assert (progress.clients_done, progress.clients_total) == (0, 1)
    assert progress.items_seen == len(docs) - sales
    await sandbox.clear_faults()

    # The next complete scan is the baseline: its sales items are history too.
    since, seq = await change_seq(sandbox), await last_seq(pool)
    await settle(poller, account.id)
    assert await _client_tasks_baselined(pool, account.id, cid)
    assert await events_after(pool, seq) == []
    fresh = await accounts.get_account(pool, account.id)
    assert await baseline_progress(pool, [fresh], poller.policy) == {account.id: None}
    stored = await pool.fetchval(
        "SELECT count(*) FROM snapshots WHERE object_type = 'document' AND client_id = $1", cid
    )
    assert stored == 160
    # And then it emits like every other client.
    await sandbox.apply({"action": "create_document", "client_id": cid})
    await settle(poller, account.id)
    check_round(await sandbox.changes(since), await events_after(pool, seq))
    assert [e["type"] for e in await events_after(pool, seq)] == ["document.created"]


async def test_an_account_whose_first_scan_missed_a_page_is_still_baselining(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    await sandbox.fault(kind="malformed_json", path="/sales", count=1000)
    await settle(poller, account.id)
    assert (await accounts.get_account(pool, account.id)).status == "baselining"
    # The failed baselines wait their retry; the pass did not spin on them.
    due = await pool.fetch(
        "SELECT client_id, due_at > now() AS later, forced FROM poll_tasks "
        "WHERE account_id = $1 AND kind = 'baseline'",
        account.id,
    )
    assert due
    assert all(row["later"] and not row["forced"] for row in due)
    await sandbox.clear_faults()
    await settle(poller, account.id)
    after = await accounts.get_account(pool, account.id)
    assert after.status == "active"
    stored = await pool.fetchval("SELECT count(*) FROM snapshots WHERE object_type = 'document'")
    assert stored == sum(len(docs) for docs in sandbox.sandbox.practice.documents.values())
    assert await last_seq(pool) == 0, "what the first scan missed is history too"


async def test_backfill_sends_the_first_scan_but_a_late_client_is_history_still(
    pool: asyncpg.Pool, poller: Poller, vault: Vault, sandbox: SandboxHandle
) -> None:
    account = await accounts.create_account(
        pool,
        vault,
        provider="dext",
        name="backfilled",
        base_url=sandbox.url,
        api_token=sandbox.token,
        backfill=True,
    )
    await settle(poller, account.id)
    practice = sandbox.sandbox.practice
    created = await pool.fetchval("SELECT count(*) FROM events WHERE type = 'document.created'")
    assert created == sum(len(docs) for docs in practice.documents.values())
    seq = await last_seq(pool)
    cid = await _late_client(sandbox, 80)
    await settle(poller, account.id)
    assert await events_after(pool, seq) == []
    assert await _client_tasks_baselined(pool, account.id, cid)
