"""Outreach through the real poller: the sandbox's client health moves, one Slack-worthy event.

The same rule as tests/delivery/test_outreach.py, end to end: the simulated practice changes a
client's health, the poller sees it, the diff stores `client.health_changed`, and the real
fan-out with the subscription's JMESPath filter decides who hears of it.
"""

from __future__ import annotations

import asyncpg

from relay.cli.operator import OUTREACH_FILTER
from relay.delivery import fan_out_events
from relay.delivery.subscriptions import create_subscription
from relay.poller import Poller
from relay.settings import Settings
from relay.sources import accounts
from relay.vault import Vault
from tests.support.polling import settle
from tests.support.sandbox import SandboxHandle


async def _health(sandbox: SandboxHandle, client_id: str, score: int, level: str) -> None:
    change = {
        "action": "update",
        "object_type": "client",
        "object_id": client_id,
        "set": {"health_score": score, "alert_level": level},
    }
    assert await sandbox.apply(change)


async def _outreach_count(pool: asyncpg.Pool, subscription_id: str) -> int:
    await fan_out_events(pool)
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE subscription_id = $1", subscription_id
        )
    )


async def test_outreach_fires_once_per_entry_into_high(
    pool: asyncpg.Pool,
    poller: Poller,
    account: accounts.Account,
    sandbox: SandboxHandle,
    vault: Vault,
    settings: Settings,
) -> None:
    await settle(poller, account.id)  # the baseline: nothing emitted
    sub, _ = await create_subscription(
        pool,
        vault,
        settings.with_changes(allow_private_targets=True),
        url="http://127.0.0.1:9/slack",
        kind="slack",
        event_types=["client.health_changed"],
        filter=OUTREACH_FILTER,
    )
    client_id = sorted(sandbox.sandbox.practice.clients)[0]
    await _health(sandbox, client_id, 55, "medium")
    await settle(poller, account.id)
    assert await _outreach_count(pool, sub["id"]) == 0

    await _health(sandbox, client_id, 30, "high")  # enters high
    await settle(poller, account.id)
    assert await _outreach_count(pool, sub["id"]) == 1

    for score in (28, 22):  # daily refreshes while it stays high
        await _health(sandbox, client_id, score, "high")
        await settle(poller, account.id)
    assert await _outreach_count(pool, sub["id"]) == 1

    await _health(sandbox, client_id, 60, "medium")  # leaves high
    await settle(poller, account.id)
    assert await _outreach_count(pool, sub["id"]) == 1
    await _health(sandbox, client_id, 12, "high")  # and enters again: news again
    await settle(poller, account.id)
    assert await _outreach_count(pool, sub["id"]) == 2

    health_events = await pool.fetchval(
        "SELECT count(*) FROM events WHERE type = 'client.health_changed' AND object_id = $1",
        client_id,
    )
    assert health_events == 6  # every change is an event; the filter picks two
