"""Polling under trouble: revoked tokens, partial and shifting scans, rivals, kills, flushes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest
import redis.asyncio as aioredis

from relay.poller import Poller
from relay.poller.plan import Policy
from relay.poller.state import claim_lease
from relay.settings import Settings
from relay.sources import accounts
from relay.vault import Vault
from tests.support.polling import TEST_POLICY, check_round, events_after, last_seq, settle
from tests.support.sandbox import SandboxFactory, SandboxHandle
from workers.main import build_worker


async def change_seq(sandbox: SandboxHandle) -> int:
    return int((await sandbox.state())["change_seq"])


async def event_types(pool: asyncpg.Pool) -> list[str]:
    return [row["type"] for row in await pool.fetch("SELECT type FROM events ORDER BY seq")]


async def test_revoked_token_is_one_auth_failed_and_recovery_one_recovered(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    await settle(poller, account.id)
    await sandbox._control("POST", f"/tokens/{sandbox.token}/revoke")
    before = len((await sandbox._control("GET", "/requests?since=0"))["data"])
    for _ in range(3):
        await settle(poller, account.id)
    after = len((await sandbox._control("GET", "/requests?since=0"))["data"])
    assert after - before <= 3  # one refused /authenticate per pass: no retry storm
    assert await event_types(pool) == ["account.auth_failed"]
    broken = await accounts.get_account(pool, account.id)
    assert broken.status == "broken"
    assert "invalid_token" in (broken.last_error or "")
    # A broken account waits 15 minutes before the scheduler tries it again ...
    assert account.id not in {a.id for a in await accounts.list_pollable_accounts(pool)}
    await sandbox._control("POST", f"/tokens/{sandbox.token}/restore")
    for _ in range(2):
        await settle(poller, account.id)
    assert await event_types(pool) == ["account.auth_failed", "account.recovered"]
    assert (await accounts.get_account(pool, account.id)).status == "active"
    body = (await events_after(pool, 0))[0]
    assert body["object_type"] == "account"
    assert body["object_id"] == account.id


async def test_a_partial_scan_deletes_nothing_and_the_next_complete_one_does(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    await settle(poller, account.id)
    seq, since = await last_seq(pool), await change_seq(sandbox)
    cid = sorted(sandbox.sandbox.practice.clients)[0]
    old = sandbox.sandbox.practice.select("document", cid, lambda d: d["status"] == "archived")
    await sandbox.apply({"action": "delete", "object_type": "document", "object_id": old[0]["id"]})
    # Every /costs page of this pass is malformed: each scan is partial and may delete nothing.
    await sandbox.fault(kind="malformed_json", path="/costs", count=1000)
    await settle(poller, account.id)
    assert "document.deleted" not in await event_types(pool)
    await sandbox.clear_faults()
    await settle(poller, account.id)
    check_round(await sandbox.changes(since), await events_after(pool, seq))
    assert (await event_types(pool)).count("document.deleted") == 1


async def test_pages_shifting_under_a_scan_cause_no_false_deletion(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    await settle(poller, account.id)
    seq, since = await last_seq(pool), await change_seq(sandbox)
    practice = sandbox.sandbox.practice
    cid = sorted(practice.clients)[0]
    # Slow pages, while items are created and deleted on the client being scanned.
    await sandbox.fault(kind="slow", path="/costs", delay=0.05, count=1000)
    poll = asyncio.create_task(settle(poller, account.id))
    for n in range(25):
        await sandbox.apply({"action": "create_document", "client_id": cid})
        if n % 3 == 0:
            docs = practice.select("document", cid, lambda d: d["status"] == "published")
            await sandbox.apply(
                {
                    "action": "delete",
                    "object_type": "document",
                    "object_id": docs[n % len(docs)]["id"],
                }
            )
        await asyncio.sleep(0.02)
    await poll
    await sandbox.clear_faults()
    await settle(poller, account.id)
    types = check_round(await sandbox.changes(since), await events_after(pool, seq))
    assert {"document.created", "document.deleted"} <= types


async def test_two_pollers_never_hold_one_account_at_once(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    rival = replace(poller, holder="rival")
    reports = await asyncio.gather(
        poller.run_account(account.id, idle_exit=True),
        rival.run_account(account.id, idle_exit=True),
    )
    assert sorted(r.outcome for r in reports) == ["done", "leased"]
    # A holder that died keeps the account only until its lease expires.
    assert await claim_lease(pool, account.id, "dead-worker", 0.2)
    assert (await poller.run_account(account.id, idle_exit=True)).outcome == "leased"
    await asyncio.sleep(0.3)
    assert (await poller.run_account(account.id, idle_exit=True)).outcome == "done"


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[None]:
    """A real arq worker (cron and jobs) in this loop; leaving the block kills it: its jobs
    are cancelled wherever they are, as when the process dies (then its resources close)."""
    policy = replace(TEST_POLICY, lease_seconds=1.0, run_seconds=30.0, sweep_pages=1)
    worker = build_worker(
        settings,
        ctx={"settings": settings, "poll_policy": policy},
        poll_delay=0.05,
        handle_signals=False,  # the loop's SIGINT and SIGTERM stay pytest's
    )
    task = asyncio.create_task(worker.async_run())
    try:
        yield
    finally:
        # close() cancels the loop and the jobs wherever they are, then waits for them (and
        # for arq's shielded bookkeeping) before it shuts down and closes the pool. A
        # cancellation that lands inside a redis-py pipeline's own cleanup (the UNWATCH of
        # arq's enqueue, when the job is already queued) leaves that pipeline holding a
        # connection redis-py has already disconnected; its __del__ still warns "Unclosed
        # client session", which `filterwarnings = error` turns into a failure. No socket is
        # open and a killed process leaves no such warning: it is ignored while this worker
        # dies, and its garbage collected here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Unclosed client session", ResourceWarning)
            await worker.close()
            await asyncio.gather(task, return_exceptions=True)
            del worker, task
            gc.collect()


async def wait_until_settled(pool: asyncpg.Pool, account_id: str) -> None:
    """Until the requested full pass is done (no forced task and the request cleared)."""
    async with asyncio.timeout(120):  # a full pass takes seconds; generous for a busy machine
        while True:
            forced = await pool.fetchval(
                "SELECT count(*) FROM poll_tasks WHERE account_id = $1 AND forced", account_id
            )
            requested = await pool.fetchval(
                "SELECT poll_requested_at FROM accounts WHERE id = $1", account_id
            )
            if not forced and requested is None:
                return
            await asyncio.sleep(0.1)


async def test_a_worker_killed_mid_scan_loses_and_duplicates_nothing(
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    settings: Settings,
    poller: Poller,
    account: accounts.Account,
    sandbox: SandboxHandle,
) -> None:
    await settle(poller, account.id)
    seq, since = await last_seq(pool), await change_seq(sandbox)
    await sandbox.simulate(paused=False, change_rate=8)
    await sandbox.advance(7200)
    await sandbox.simulate(paused=True)
    await sandbox.fault(kind="slow", path="/costs", delay=0.1, count=1000)
    await accounts.request_poll(pool, redis_client, account.id)
    async with running_worker(settings):
        # Kill it once the sweep is under way (a scan cursor is stored mid-scan).
        async with asyncio.timeout(60):
            while True:
                mid_scan = await pool.fetchval(
                    "SELECT count(*) FROM poll_tasks WHERE account_id = $1 AND kind = 'sweep' "
                    "AND cursor ? 'scan_id'",
                    account.id,
                )
                if mid_scan:
                    break
                await asyncio.sleep(0.02)
    # A killed process releases nothing: its lease stays until it expires.
    await claim_lease(pool, account.id, "killed-worker", 1.0)
    await sandbox.clear_faults()
    async with running_worker(settings):
        await wait_until_settled(pool, account.id)
    check_round(await sandbox.changes(since), await events_after(pool, seq))


async def test_polling_resumes_after_redis_is_flushed(
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    settings: Settings,
    poller: Poller,
    account: accounts.Account,
    sandbox: SandboxHandle,
) -> None:
    await settle(poller, account.id)
    async with running_worker(settings):
        for _ in range(2):
            seq, since = await last_seq(pool), await change_seq(sandbox)
            await sandbox.simulate(paused=False, change_rate=8)
            await sandbox.advance(3600)
            await sandbox.simulate(paused=True)
            await accounts.request_poll(pool, redis_client, account.id)
            await asyncio.sleep(0.2)
            await redis_client.flushdb()  # queue, job ids and limiter state gone mid-run
            await wait_until_settled(pool, account.id)
            check_round(await sandbox.changes(since), await events_after(pool, seq))


@pytest.mark.parametrize("status", ["broken", "active"])
async def test_the_cron_enqueues_only_what_is_due(
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    settings: Settings,
    account: accounts.Account,
    status: str,
) -> None:
    from arq.connections import RedisSettings, create_pool

    from workers.polling import schedule_polls

    arq = await create_pool(
        RedisSettings.from_dsn(settings.redis_url), default_queue_name=settings.queue_name
    )
    try:
        ctx = {"pool": pool, "redis": arq, "settings": settings}
        if status == "broken":
            await accounts.mark_broken(pool, account.id, "test")
        # a new account has no tasks yet: due at once (unless broken within 15 minutes)
        assert await schedule_polls(ctx) == (0 if status == "broken" else 1)
        assert await schedule_polls(ctx) == 0  # its job is queued: the same id is not re-added
        await redis_client.flushdb()
        assert await schedule_polls(ctx) == (0 if status == "broken" else 1)
        if status == "broken":
            await accounts.request_poll(pool, redis_client, account.id)
            assert await schedule_polls(ctx) == 1  # a poll request is tried at once
    finally:
        await arq.aclose()


async def test_a_scaled_policy_retries_a_broken_account_after_its_scaled_time(
    pool: asyncpg.Pool, settings: Settings, account: accounts.Account
) -> None:
    from arq.connections import RedisSettings, create_pool

    from workers.polling import schedule_polls

    fast = Policy().scaled(900.0)  # the sandbox's clock 900x: 15 minutes are one second
    assert fast.broken_retry == 1.0
    arq = await create_pool(
        RedisSettings.from_dsn(settings.redis_url), default_queue_name=settings.queue_name
    )
    try:
        await accounts.mark_broken(pool, account.id, "invalid_token")
        scaled = {"pool": pool, "redis": arq, "settings": settings, "poll_policy": fast}
        real_time = {**scaled, "poll_policy": Policy()}
        assert await schedule_polls(scaled) == 0  # just broken: it waits
        await asyncio.sleep(fast.broken_retry + 0.2)
        assert await schedule_polls(real_time) == 0  # unscaled, it would wait 15 real minutes
        assert await schedule_polls(scaled) == 1  # scaled, its retry is due after one second
    finally:
        await arq.aclose()


async def test_a_malformed_list_neither_stops_the_pass_nor_fakes_a_baseline(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    await sandbox.fault(kind="malformed_json", path="/suppliers", count=1000)
    await settle(poller, account.id)
    # Everything else was polled; the suppliers have no baseline yet, so neither has the account.
    assert await pool.fetchval("SELECT count(*) FROM snapshots WHERE object_type = 'document'")
    assert not await pool.fetchval("SELECT count(*) FROM snapshots WHERE object_type = 'supplier'")
    assert (await accounts.get_account(pool, account.id)).status == "baselining"
    await sandbox.clear_faults()
    await settle(poller, account.id)
    assert (await accounts.get_account(pool, account.id)).status == "active"
    assert await pool.fetchval("SELECT count(*) FROM snapshots WHERE object_type = 'supplier'")
    assert await event_types(pool) == []  # the suppliers' first good read is their baseline


async def test_no_window_gets_more_than_the_budget_and_nothing_is_throttled(
    pool: asyncpg.Pool, poller: Poller, vault: Vault, sandbox_factory: SandboxFactory
) -> None:
    box = await sandbox_factory(rate_limit=12, window_seconds=1.0)
    tight = replace(poller, policy=replace(TEST_POLICY, rate_limit=12, window_seconds=1.0))
    account = await accounts.create_account(
        pool, vault, provider="dext", name="tight", base_url=box.url, api_token=box.token
    )
    await settle(tight, account.id)
    assert (await accounts.get_account(pool, account.id)).status == "active"
    summary = (await box.requests_summary())["tokens"]
    (stats,) = summary.values()
    assert stats["total"] > 2 * 12  # the pass needed several windows ...
    assert stats["max_in_window"] <= 12 - TEST_POLICY.safety_margin  # ... each within budget
    assert stats["rate_limited"] == 0
    recorded = (await accounts.get_account(pool, account.id)).rate_limit
    assert recorded["limit"] == 12
