"""Outreach that fires once: the documented rule through the real diff and the real fan-out.

`previous` holds only what changed, so a daily health-score refresh of a client that stays
high carries no `alert_level` in it. The old README rule (`previous.alert_level != 'high'`)
read that missing key as null and fired every day; the documented one asks whether the level
changed at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from relay.cli.main import build_parser
from relay.cli.operator import OUTREACH_FILTER
from relay.delivery import fan_out_events
from relay.settings import Settings
from relay.snapshots import diff_objects
from relay.vault import Vault
from tests.support.delivery import subscribe

OUTREACH = "data.object.alert_level == 'high' && contains(keys(data.previous), 'alert_level')"
OLD_RULE = "data.object.alert_level == 'high' && data.previous.alert_level != 'high'"


def _client(client_id: str, score: int, level: str) -> dict[str, Any]:
    return {
        "id": client_id,
        "name": f"Client {client_id}",
        "practice_code": client_id.upper(),
        "health_score": score,
        "alert_level": level,
        "bank_reconciliation_gap": 0,
        "debtor_days": 20,
        "last_sync_at": "2026-04-14T12:00:00Z",
    }


class Practice:
    """The clients as the upstream shows them now; `poll()` diffs them like a /clients poll."""

    def __init__(self, pool: asyncpg.Pool, account_id: str) -> None:
        self.pool = pool
        self.account_id = account_id
        self.clients: dict[str, dict[str, Any]] = {}

    async def poll(self, **changes: tuple[int, str]) -> None:
        for client_id, (score, level) in changes.items():
            self.clients[client_id] = _client(client_id, score, level)
        async with self.pool.acquire() as conn:
            await diff_objects(
                conn,
                account_id=self.account_id,
                object_type="client",
                objects=list(self.clients.values()),
                client_id=None,
                emit=True,
            )
        await fan_out_events(self.pool)


async def _fired(pool: asyncpg.Pool, subscription_id: str) -> list[tuple[str, int]]:
    """(client, health score) of each event delivered to the subscription, oldest first."""
    rows = await pool.fetch(
        "SELECT e.object_id, (e.body->'data'->'object'->>'health_score')::int AS score "
        "FROM deliveries d JOIN events e ON e.id = d.event_id "
        "WHERE d.subscription_id = $1 ORDER BY e.seq",
        subscription_id,
    )
    return [(r["object_id"], r["score"]) for r in rows]


async def test_outreach_fires_when_a_client_becomes_high_and_only_then(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings
) -> None:
    account_id = await pool.fetchval(
        "INSERT INTO accounts (provider, name, base_url, api_token_enc, status,"
        " baseline_completed_at) VALUES ('dext', 'Practice', 'http://127.0.0.1:1', 'x',"
        " 'active', now()) RETURNING id"
    )
    practice = Practice(pool, account_id)
    await practice.poll(c1=(80, "none"))  # clients have no `created` event: nothing yet
    url = "http://127.0.0.1:9/outreach"
    kw = {"event_types": ["client.health_changed"]}
    outreach, _ = await subscribe(pool, vault, dsettings, url, filter=OUTREACH, **kw)
    old, _ = await subscribe(pool, vault, dsettings, url, filter=OLD_RULE, **kw)
    every, _ = await subscribe(pool, vault, dsettings, url, **kw)

    # c2 first appears after the account's baseline, already high: its baseline, no news.
    await practice.poll(c2=(20, "high"))
    await practice.poll(c1=(50, "medium"))  # worse, not high
    await practice.poll(c1=(30, "high"))  # entering high: the one outreach
    await practice.poll(c1=(25, "high"))  # the daily refresh while high
    await practice.poll(c1=(22, "high"), c2=(15, "high"))  # again; c2's first reading
    await practice.poll(c1=(45, "medium"))  # leaving high
    await practice.poll(c1=(10, "high"))  # entering high again: news again
    # c3 appears after the baseline at medium; its first health reading takes it to high.
    await practice.poll(c3=(60, "medium"))
    await practice.poll(c3=(30, "high"))

    assert await _fired(pool, outreach["id"]) == [("c1", 30), ("c1", 10), ("c3", 30)]
    # Every health change is an event (the rule is the subscription's, not the diff's) ...
    assert await _fired(pool, every["id"]) == [
        ("c1", 50),
        ("c1", 30),
        ("c1", 25),
        ("c1", 22),
        ("c2", 15),
        ("c1", 45),
        ("c1", 10),
        ("c3", 30),
    ]
    # ... and the old rule spammed each refresh of a client that stayed high.
    assert await _fired(pool, old["id"]) == [
        ("c1", 30),
        ("c1", 25),
        ("c1", 22),
        ("c2", 15),
        ("c1", 10),
        ("c3", 30),
    ]
    body = await pool.fetchval(
        "SELECT e.body FROM deliveries d JOIN events e ON e.id = d.event_id "
        "WHERE d.subscription_id = $1 ORDER BY e.seq LIMIT 1",
        outreach["id"],
    )
    assert body["data"]["previous"] == {"alert_level": "medium", "health_score": 50}


def test_the_help_example_is_the_tested_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["subscriptions", "add", "--help"])
    shown = capsys.readouterr().out
    assert f'--filter "{OUTREACH}"' in shown
    assert OUTREACH_FILTER == OUTREACH
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert OUTREACH in readme
    assert "previous.alert_level !=" not in readme + shown
