"""`relay subscriptions add --ordering`, `replay` and `backfill` against a live API."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from relay.cli.jobs import progress_line
from relay.delivery.fanout import fan_out_events
from relay.events import build_event, insert_events


async def test_ordering_replay_and_backfill_from_the_cli(
    cli: Any, client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    added = await cli(
        "subscriptions", "add", "--url", "https://hooks.example.com/x", "--ordering", "object",
        "--json",
    )  # fmt: skip
    assert added.code == 0, added.err
    sub = added.json()
    assert sub["ordering"] == "object"

    replay = await cli("subscriptions", "replay", sub["id"], "--since", "2026-01-01T00:00:00Z")
    assert replay.code == 0, replay.err
    assert "replay done: 0 sent, 0 failed" in replay.out
    started = await cli("subscriptions", "backfill", sub["id"], "--object-types", "document,client",
                        "--no-wait")  # fmt: skip
    assert started.code == 0, started.err
    assert "backfill job_" in started.out
    assert "queued 0/0" in started.out
    bad = await cli("subscriptions", "backfill", sub["id"], "--object-types", "widget")
    assert bad.code == 1
    assert "invalid" in bad.err.lower()

    # Three events of one object: one head due, two parked behind it.
    bodies = [
        build_event("document.status_changed", account_id=None, client_id="c", object_id="d1",
                    object={"id": "d1"})
        for _ in range(3)
    ]  # fmt: skip
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, bodies)
    assert await fan_out_events(pool) == 3
    due = "SELECT count(*) FROM deliveries WHERE next_attempt_at IS NOT NULL"
    assert await pool.fetchval(due) == 1

    # PATCH back to unordered releases the parked ones; GET shows it; a bad value is a 400.
    response = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"ordering": "none"})
    assert (response.status, (await response.json())["ordering"]) == (200, "none")
    assert await pool.fetchval(due) == 3
    response = await client.get(f"/v1/subscriptions/{sub['id']}")
    assert (await response.json())["ordering"] == "none"
    response = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"ordering": "fifo"})
    assert response.status == 400
    assert (await response.json())["error"]["code"]


async def test_openapi_describes_the_recovery_routes(client: TestClient[Any, Any]) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert {
        "/v1/subscriptions/{id}/replay",
        "/v1/subscriptions/{id}/backfill",
        "/v1/jobs/{id}",
    } <= set(doc["paths"])
    props = doc["components"]["schemas"]["Subscription"]["properties"]
    assert props["ordering"]["enum"] == ["none", "object"]


def test_the_progress_line_counts_what_is_known() -> None:
    job = {"id": "job_1", "kind": "backfill", "total": 100, "queued": 60, "succeeded": 50,
           "failed": 0, "pending": 10}  # fmt: skip
    line = progress_line(job, 2.0)
    assert "queued 60/100" in line
    assert "sent 50" in line
    assert "25/s" in line
    assert line.count("#") == 15
