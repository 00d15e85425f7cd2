"""InvoiceXT end to end: the sandbox's changes become exactly the contract's events, once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from relay.poller import Poller
from relay.poller.lists import ListPoller
from relay.sandbox.faults import Fault
from relay.sources import accounts
from relay.vault import Vault
from tests.support.sandbox import IxtHandle

IxtFactory = Callable[..., Awaitable[IxtHandle]]


async def _account(pool: asyncpg.Pool, vault: Vault, ixt: IxtHandle, **kw: Any) -> accounts.Account:
    return await accounts.create_account(
        pool, vault, provider="invoicext", name="ixt", base_url=ixt.url, api_token=ixt.token, **kw
    )


async def _events(pool: asyncpg.Pool, account_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT body, payload FROM events WHERE account_id = $1 ORDER BY seq", account_id
    )
    return [{**row["body"], "_payload": row["payload"]} for row in rows]


async def _scans_due(pool: asyncpg.Pool, account_id: str, *, due: bool = True) -> None:
    """Make the account's next cycle run a complete scan of every list (`due`), or not:
    its finished scans say they ended an hour ago (or in an hour), so no test races the clock."""
    await pool.execute(
        "UPDATE snapshot_scans SET finished_at = now() + $2 * interval '1 hour'"
        " WHERE account_id = $1 AND finished_at IS NOT NULL",
        account_id,
        -1 if due else 1,
    )


async def test_a_deletion_waits_for_a_complete_scan(
    pool: asyncpg.Pool, vault: Vault, ixt_poller: Poller, ixt_factory: IxtFactory
) -> None:
    """A head read never deletes: the deletion is reported by the next complete scan, once."""
    ixt = await ixt_factory()
    box = ixt.box
    account = await _account(pool, vault, ixt)
    report = await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
    assert report.outcome == "done", report
    gone = next(iter(box.invoices.values()))
    box.delete(gone["id"], box.sync())
    await _scans_due(pool, account.id, due=False)
    for _ in range(3):  # head reads only: the invoice is missing, but no scan says so yet
        report = await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
        assert report.outcome == "done", report
    assert [e["type"] for e in await _events(pool, account.id)] == []
    await _scans_due(pool, account.id)
    for _ in range(2):  # the complete scan confirms it (404), and a second one repeats nothing
        report = await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
        assert report.outcome == "done", report
    events = await _events(pool, account.id)
    assert [(e["type"], e["object_id"]) for e in events] == [("invoice.deleted", gone["id"])]


async def test_every_event_type_once_with_the_seed_body(
    pool: asyncpg.Pool, vault: Vault, ixt_poller: Poller, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory()
    box = ixt.box
    account = await _account(pool, vault, ixt)
    report = await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
    assert report.outcome == "done", report
    assert await _events(pool, account.id) == []  # the baseline emits nothing
    assert (await accounts.get_account(pool, account.id)).status == "active"

    box.drift = True  # unknown fields everywhere: never a change
    box.shift = True  # pages computed at request time, shifting
    now = box.sync()
    fresh = box.upload(now)
    failing = box.upload(now)
    old = next(i for i in box.invoices.values() if i["status"] == "processed")
    box.finish_extraction(fresh["id"], "processed", now)
    box.publish(fresh["id"], "xero", now)  # processing -> processed -> published between polls
    box.finish_extraction(failing["id"], "failed", now)
    box.publish(old["id"], "quickbooks", now)
    box.publish(old["id"], "xero", now)
    gone = next(i for i in box.invoices.values() if i["status"] == "published" and i is not old)
    box.delete(gone["id"], now)
    rec = box.start_reconciliation(now)
    box.complete_reconciliation(rec["id"], now)
    box.set_connected("xero", False, now)
    box.sync_ledgers(now + 60)  # last_sync moves: no event
    truth = Counter(entry["event"] for entry in box.log)

    for _ in range(3):  # re-polls find nothing new, even with shifted pages
        report = await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
        assert report.outcome == "done", report
    # The deletion needs a complete scan, due only `pages * pace / FULL_SHARE` after the last
    # one (0.1 s here): three quick re-polls may all be head reads. Make it due, then poll.
    await _scans_due(pool, account.id)
    report = await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
    assert report.outcome == "done", report
    events = await _events(pool, account.id)
    assert Counter(e["type"] for e in events) == truth
    assert truth == {
        "invoice.processed": 1,
        "invoice.published": 3,
        "invoice.failed": 1,
        "invoice.deleted": 1,
        "bank.reconciled": 1,
        "connection.status_changed": 1,
    }
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
        assert event["client_id"] is None
        payload = orjson.loads(event["_payload"])
        assert payload["webhook_id"] == event["id"]
        assert payload["event"] == event["type"]
        assert payload["account_id"] == account.id
        assert payload["timestamp"] == event["created_at"]
    processed = by_type["invoice.processed"][0]
    assert processed["object_id"] == fresh["id"]
    data = orjson.loads(processed["_payload"])["data"]
    assert data == {
        "id": fresh["id"],
        "status": "published",
        "invoice_number": fresh["invoice_number"],
        "supplier": fresh["supplier"]["name"],
        "total": float(fresh["totals"]["total"]),
        "currency": fresh["currency"],
    }
    # Money is carried exactly: the body spells the total as the upstream did (two places).
    assert f'"total":{fresh["totals"]["total"]}'.encode() in processed["_payload"]
    targets = sorted(
        (e["object_id"], orjson.loads(e["_payload"])["data"]["target"])
        for e in by_type["invoice.published"]
    )
    assert targets == sorted(
        [(fresh["id"], "xero"), (old["id"], "quickbooks"), (old["id"], "xero")]
    )
    reconciled = by_type["bank.reconciled"][0]
    assert reconciled["object_type"] == "reconciliation"
    assert orjson.loads(reconciled["_payload"])["data"]["matched_count"] == rec["matched_count"]
    connection = by_type["connection.status_changed"][0]
    assert connection["object_type"] == "connection"
    assert connection["object_id"] == "xero"
    assert orjson.loads(connection["_payload"])["data"]["previous_connected"] is True
    assert by_type["invoice.deleted"][0]["object_id"] == gone["id"]
    # The last version seen, money spelled as InvoiceXT wrote it.
    assert (
        f'"total":{gone["totals"]["total"]}'.encode() in by_type["invoice.deleted"][0]["_payload"]
    )


async def test_a_missing_scope_polls_the_rest_and_a_revoked_key_recovers(
    pool: asyncpg.Pool, vault: Vault, ixt_poller: Poller, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory()
    box = ixt.box
    box.token.scopes = ("invoices:read", "settings:read")
    account = await _account(pool, vault, ixt)
    await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
    shown = await accounts.get_account(pool, account.id)
    assert shown.status == "active"
    assert shown.last_error is not None
    assert "bank:read" in shown.last_error
    box.upload(box.sync(), status="processed")
    await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
    assert [e["type"] for e in await _events(pool, account.id)] == ["invoice.processed"]

    box.token.revoked = True
    for _ in range(3):
        report = await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
        assert report.outcome == "broken"
    types = [e["type"] for e in await _events(pool, account.id)]
    assert types.count("account.auth_failed") == 1
    box.token.revoked = False
    report = await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
    assert report.outcome == "done"
    events = await _events(pool, account.id)
    assert [e["type"] for e in events][-1] == "account.recovered"
    recovered = orjson.loads(events[-1]["_payload"])
    assert recovered["data"]["id"] == account.id
    assert recovered["data"]["status"] == "active"


async def test_502_html_is_retried_and_the_monthly_limit_stops_polling(
    pool: asyncpg.Pool, vault: Vault, ixt_poller: Poller, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory()
    box = ixt.box
    account = await _account(pool, vault, ixt)
    box.faults.add(Fault("502", "/invoices", 2))
    report = await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
    assert report.outcome == "done", report
    assert Counter(r["status"] for r in box.requests)[502] == 2
    # Other tools of the key spent the month: one refusal, then nothing until the period ends.
    box.api_calls = box.monthly_limit
    await asyncio.sleep(1.1)  # the client re-reads the usage once a (compressed) hour
    report = await ixt_poller.run_account(account.id, run_seconds=2.0, idle_exit=True)
    assert report.outcome == "error"
    shown = await accounts.get_account(pool, account.id)
    assert shown.last_error is not None
    assert "monthly" in shown.last_error
    mark = len(box.requests)
    report = await ixt_poller.run_account(account.id, run_seconds=0.5, idle_exit=True)
    assert report.outcome == "error"
    assert len(box.requests) == mark  # stopped, not retrying
    assert Counter(r["status"] for r in box.requests)[429] <= 1


async def test_the_month_paces_the_account_below_the_hourly_limit(
    pool: asyncpg.Pool, vault: Vault, ixt_poller: Poller, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(monthly_limit=2000)
    account = await _account(pool, vault, ixt)
    await ixt_poller.run_account(account.id, run_seconds=5.0, idle_exit=True)
    shown = await accounts.get_account(pool, account.id)
    monthly = shown.rate_limit["monthly"]
    assert monthly["api_calls_limit"] == 2000
    # 16.6 simulated days left of April over ~1,960 calls: one call every ~12 min simulated,
    # 0.2 s real at 3600x, far slower than the hourly limit's 100,000 an hour would allow.
    month_left = (ixt.box.period[1] - ixt.box.clock.now()) / 3600.0
    assert 0.8 * month_left / 2000 < monthly["pace_seconds"] < 1.2 * month_left / 1900
    assert shown.rate_limit["limit"] == 100_000


async def test_between_complete_scans_only_the_head_is_read_and_nothing_is_deleted(
    pool: asyncpg.Pool, vault: Vault, ixt_poller: Poller, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(items=250)  # three pages of 100
    box = ixt.box
    account = await _account(pool, vault, ixt)
    await ixt_poller.run_account(account.id, run_seconds=10.0, idle_exit=True)
    account = await accounts.get_account(pool, account.id)
    client, _ = ixt_poller.make_source(account)
    lists = ListPoller(pool, client, account, time.time)
    now = box.sync()
    fresh = box.upload(now, status="processed")
    oldest = min(box.invoices.values(), key=lambda i: (i["created_at"], i["id"]))
    box.delete(oldest["id"], now)
    mark = len(box.requests)
    # A slow pace (the month affords little): the last complete scan is recent enough.
    await lists.cycle(True, pace=1000.0)
    paths = [r["path"] for r in box.requests[mark:]]
    assert paths.count("/invoices") == 1  # page 1 only, not the three
    assert [(e["type"], e["object_id"]) for e in await _events(pool, account.id)] == [
        ("invoice.processed", fresh["id"])
    ]
    # With the pace of a generous budget the complete scan is due again: now it is deleted.
    await lists.cycle(True, pace=0.0)
    types = [e["type"] for e in await _events(pool, account.id)]
    assert types == ["invoice.processed", "invoice.deleted"]


async def test_the_account_resource_shows_the_hour_the_month_and_missing_scopes(
    pool: asyncpg.Pool, vault: Vault, ixt_poller: Poller, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(monthly_limit=100_000)
    ixt.box.token.scopes = ("invoices:read", "settings:read")
    account = await _account(pool, vault, ixt)
    await ixt_poller.run_account(account.id, run_seconds=5.0, idle_exit=True)
    shown = (await accounts.get_account(pool, account.id)).public()["rate_limit"]
    assert shown["limit"] == 100_000
    assert shown["window_seconds"] == 1.0  # the hour, compressed 3600x
    assert shown["monthly"]["api_calls_limit"] == 100_000
    assert 0 < shown["monthly"]["api_calls"] < 10
    assert shown["missing_scopes"] == ["bank:read"]
