"""Set aside, never stop: objects no one can use are counted and shown; polling goes on."""

from __future__ import annotations

from collections import Counter

import asyncpg
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from relay.api.metrics import worker_families
from relay.metrics import WorkerMetrics
from relay.poller import Poller, account_warnings
from relay.poller.plan import force_full_pass
from relay.sources import accounts
from relay.vault import Vault
from tests.support.polling import events_after, last_seq, settle
from tests.support.sandbox import SandboxFactory, SandboxHandle


async def _account(pool: asyncpg.Pool, vault: Vault, handle: SandboxHandle) -> accounts.Account:
    return await accounts.create_account(
        pool, vault, provider="dext", name="odd", base_url=handle.url, api_token=handle.token
    )


async def test_unusable_objects_are_shown_counted_and_logged_once_per_kind(
    pool: asyncpg.Pool,
    poller: Poller,
    vault: Vault,
    redis_client: aioredis.Redis,
    sandbox_factory: SandboxFactory,
) -> None:
    handle = await sandbox_factory(drift=frozenset({"unusable"}), drift_rate=1.0)
    account = await _account(pool, vault, handle)
    await force_full_pass(pool, account.id)
    with capture_logs() as logs:
        report = await poller.run_account(account.id, run_seconds=120, idle_exit=True)
    assert report.outcome == "done"
    after = await accounts.get_account(pool, account.id)
    assert after.status == "active"  # odd objects on every page: the baseline still finished
    logged = Counter(e["kind"] for e in logs if e["event"] == "upstream_objects_set_aside")
    assert logged
    assert set(logged.values()) == {1}  # one line per kind for the whole run
    assert report.upstream is not None
    counted = report.upstream.set_aside
    shown = (await account_warnings.warnings_of(pool, [account.id]))[account.id]
    assert {w["kind"]: w["count"] for w in shown} == dict(counted)
    assert sum(counted.values()) > 10  # one per list page read
    assert all(handle.token not in w["example"] for w in shown)
    # The deployment's metric counts them per account and kind.
    metrics = WorkerMetrics(redis_client)
    metrics.poll_run(account.id, report.outcome, report.upstream)
    assert await metrics.flush()
    [family] = [
        f for f in await worker_families(redis_client) if f.name.endswith("objects_set_aside")
    ]
    samples = {s.labels["kind"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert samples == {kind: float(n) for kind, n in counted.items()}


async def test_a_scan_that_set_an_object_aside_deletes_nothing(
    pool: asyncpg.Pool, poller: Poller, vault: Vault, sandbox_factory: SandboxFactory
) -> None:
    handle = await sandbox_factory(drift=frozenset({"unusable"}), drift_rate=1.0)
    account = await _account(pool, vault, handle)
    await settle(poller, account.id)
    cid = sorted(handle.sandbox.practice.clients)[0]
    [doc] = handle.sandbox.practice.select("document", cid, lambda d: True)[:1]
    assert await handle.apply(
        {"action": "delete", "object_type": "document", "object_id": doc["id"]}
    )
    seq = await last_seq(pool)
    for _ in range(2):
        await settle(poller, account.id)
    assert [e["type"] for e in await events_after(pool, seq)] == []
    assert await pool.fetchval(
        "SELECT deleted_at IS NULL FROM snapshots WHERE object_id = $1", doc["id"]
    )
    await handle.drift("none")
    await settle(poller, account.id)
    deleted = [e for e in await events_after(pool, seq) if e["type"] == "document.deleted"]
    assert [e["object_id"] for e in deleted] == [doc["id"]]


async def test_an_unusable_connections_answer_never_stops_the_baseline(
    pool: asyncpg.Pool, poller: Poller, vault: Vault, sandbox: SandboxHandle
) -> None:
    await sandbox.fault(kind="wrong_types", path="/connections", probability=1.0)
    account = await _account(pool, vault, sandbox)
    await settle(poller, account.id)
    after = await accounts.get_account(pool, account.id)
    assert after.status == "active"
    assert after.last_error is None
    [shown] = (await account_warnings.warnings_of(pool, [account.id]))[account.id]
    assert shown["kind"] == "unusable_field"
    assert shown["count"] == len(sandbox.sandbox.practice.clients)
    assert "/connections" in shown["example"]
    assert "main: expected an object" in shown["example"]
