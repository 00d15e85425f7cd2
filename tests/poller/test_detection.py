"""Polling the sandbox: every change in its ground-truth log becomes exactly one right event."""

from __future__ import annotations

import asyncpg

from relay.poller import Poller
from relay.sources import accounts
from tests.support.polling import check_round, events_after, last_seq, settle
from tests.support.sandbox import SandboxHandle


async def change_seq(sandbox: SandboxHandle) -> int:
    return int((await sandbox.state())["change_seq"])


async def test_baseline_emits_nothing_and_repolls_are_silent(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    await settle(poller, account.id)
    assert await last_seq(pool) == 0
    after = await accounts.get_account(pool, account.id)
    assert after.status == "active"
    assert after.baseline_completed_at is not None
    stored = await pool.fetchval("SELECT count(*) FROM snapshots WHERE object_type = 'document'")
    assert stored == sum(len(docs) for docs in sandbox.sandbox.practice.documents.values())
    for _ in range(2):
        await settle(poller, account.id)
    assert await last_seq(pool) == 0


def _changes_of_every_kind(sandbox: SandboxHandle) -> list[dict[str, object]]:
    practice = sandbox.sandbox.practice
    cid, other = sorted(practice.clients)[:2]
    docs = practice.select("document", cid, lambda d: d["status"] == "published")
    ready = practice.select("document", other, lambda d: d["status"] in ("ready", "review"))
    supplier = practice.select("supplier", cid, lambda s: True)[0]
    report = practice.select("expense_report", cid, lambda r: r["status"] == "draft")
    connection = practice.connections[other]
    doc = ready[0]
    changes: list[dict[str, object]] = [
        {"action": "create_document", "client_id": cid},
        {"action": "delete", "object_type": "document", "object_id": docs[0]["id"]},
        # an old item deep in the list: published -> archived
        {
            "action": "update",
            "object_type": "document",
            "object_id": docs[-1]["id"],
            "set": {"status": "archived"},
        },
        # a detail-only change on an old item (no summary field moves): the sweep finds it
        {
            "action": "update",
            "object_type": "document",
            "object_id": docs[-2]["id"],
            "set": {"tax_rate": {"code": "ZZ", "name": "Zero test rate", "rate": "0.00"}},
        },
        {
            "action": "update",
            "object_type": "document",
            "object_id": doc["id"],
            "set": {
                "category": {"code": "7999", "name": "Test category"},
                "approval": {"status": "pending", "stage": 2, "approver": None, "decided_at": None},
            },
        },
        {
            "action": "update",
            "object_type": "document",
            "object_id": ready[1]["id"],
            "set": {"publish": {**ready[1]["publish"], "status": "queued"}},
        },
        {
            "action": "update",
            "object_type": "supplier",
            "object_id": supplier["id"],
            "set": {"email": "changed@supplier.example"},
        },
        {
            "action": "update",
            "object_type": "client",
            "object_id": cid,
            "set": {"health_score": 12, "alert_level": "high"},
        },
        {
            "action": "update",
            "object_type": "connection",
            "object_id": other,
            "set": {
                "main": {
                    **connection["main"],
                    "status": "expired"
                    if connection["main"]["status"] != "expired"
                    else "connected",
                }
            },
        },
    ]
    if report:
        changes.append(
            {
                "action": "update",
                "object_type": "expense_report",
                "object_id": report[0]["id"],
                "set": {"status": "submitted"},
            }
        )
    return changes


async def test_every_kind_of_change_is_exactly_one_event(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    await settle(poller, account.id)
    seen: set[str] = set()
    # Round 1: one change of every kind through the control surface.
    seq, since = await last_seq(pool), await change_seq(sandbox)
    for change in _changes_of_every_kind(sandbox):
        assert await sandbox.apply(change), change
    await settle(poller, account.id)
    seen |= check_round(await sandbox.changes(since), await events_after(pool, seq))
    # Rounds 2-4: the simulation runs for two busy hours between polls.
    for _ in range(3):
        seq, since = await last_seq(pool), await change_seq(sandbox)
        await sandbox.simulate(paused=False, change_rate=8)
        await sandbox.advance(7200)
        await sandbox.simulate(paused=True)
        await settle(poller, account.id)
        seen |= check_round(await sandbox.changes(since), await events_after(pool, seq))
    # ... and once more without changes: nothing.
    seq = await last_seq(pool)
    await settle(poller, account.id)
    assert await events_after(pool, seq) == []
    assert seen >= {
        "document.created",
        "document.deleted",
        "document.categorized",
        "document.status_changed",
        "document.approval_changed",
        "document.sync_status_changed",
        "supplier.updated",
        "client.health_changed",
        "connection.status_changed",
        "expense_report.created",
        "expense_report.status_changed",
    }, seen
