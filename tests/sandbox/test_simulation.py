"""The simulation: every kind of change happens, and the log is exactly what the API shows."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.support.sandbox import Dext, SandboxFactory, SandboxHandle, replay

DOCUMENT_FIELDS = {
    # Relay's document event families, by the top-level fields that signal them.
    "categorized": {"category", "supplier", "customer", "tax_rate"},
    "status": {"status"},
    "approval": {"approval"},
    "sync": {"publish", "integration"},
}


def _families(changes: list[dict[str, Any]]) -> set[str]:
    seen = set()
    for entry in changes:
        kind, obj = entry["kind"], entry["object_type"]
        fields = set(entry["changes"])
        if kind != "updated":
            seen.add(f"{obj}.{kind}")
        elif obj == "document":
            seen.update(f"document.{n}" for n, watch in DOCUMENT_FIELDS.items() if fields & watch)
        elif obj == "expense_report" and "status" in fields:
            seen.add("expense_report.status")
        elif obj == "supplier":
            seen.add("supplier.updated")
        elif obj == "client" and fields & {"health_score", "alert_level"}:
            seen.add("client.health")
        elif obj == "connection" and any(
            old.get("status") != new.get("status") for old, new in _links(entry["changes"])
        ):
            seen.add("connection.status")
    return seen


def _links(changes: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    pairs = []
    if "main" in changes:
        pairs.append((changes["main"][0], changes["main"][1]))
    if "additional" in changes:
        pairs.extend(zip(changes["additional"][0], changes["additional"][1], strict=False))
    return pairs


async def test_simulation_makes_every_kind_of_change_exactly_as_logged(
    sandbox_factory: SandboxFactory,
) -> None:
    # Lively enough that a simulated week shows every kind of change on a small practice.
    box = await sandbox_factory(clients=4, items=40, change_rate=3.0)
    async with aiohttp.ClientSession() as http:
        dext = Dext(http, box.url, box.token)
        await dext.login()
        before = await dext.snapshot()
        await box.simulate(paused=False)
        result = await box.advance(7 * 86400)
        changes = result["changes"]
        after = await dext.snapshot()
    assert changes == await box.changes(), "advance returns exactly the changes it logged"
    assert [c["seq"] for c in changes] == list(range(1, len(changes) + 1))
    assert [c["at"] for c in changes] == sorted(c["at"] for c in changes)
    assert replay(before, changes) == after
    assert _families(changes) >= {
        "document.created",
        "document.deleted",
        "document.categorized",
        "document.status",
        "document.approval",
        "document.sync",
        "expense_report.created",
        "expense_report.status",
        "supplier.created",
        "supplier.updated",
        "client.health",
        "connection.status",
    }


async def test_paused_simulation_changes_nothing(sandbox: SandboxHandle) -> None:
    result = await sandbox.advance(3 * 86400)
    assert result["changes"] == []
    assert await sandbox.changes() == []


async def test_same_seed_and_advances_give_the_same_changes_however_chunked(
    sandbox_factory: SandboxFactory,
) -> None:
    def strip(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "real_at"} for e in entries]

    one = await sandbox_factory(seed=7, simulate=True, speed=0.0, window_seconds=60)
    two = await sandbox_factory(seed=7, simulate=True, speed=0.0, window_seconds=60)
    other = await sandbox_factory(seed=8, simulate=True, speed=0.0, window_seconds=60)
    await one.advance(6 * 3600)
    for _ in range(4):
        await two.advance(1.5 * 3600)
    await other.advance(6 * 3600)
    first = strip(await one.changes())
    assert len(first) > 10
    assert first == strip(await two.changes())
    assert first != strip(await other.changes())


async def test_change_rate_zero_runs_only_follow_ups(sandbox_factory: SandboxFactory) -> None:
    box = await sandbox_factory(simulate=True, change_rate=0.0, speed=0.0, window_seconds=60)
    async with aiohttp.ClientSession() as http:
        dext = Dext(http, box.url, box.token)
        await dext.login()
        client_id = (await dext.ok("/clients"))["data"][0]["id"]
        async with http.post(
            f"{box.url}/create_document",
            params={"client_id": client_id},
            json={
                "workspace": "costs",
                "type": "receipt",
                "filename": "a.jpg",
                "content_base64": "aGVsbG8=",
            },
            headers=dext.headers,
        ) as resp:
            created = await resp.json()
        assert created["status"] == "processing"
        result = await box.advance(2 * 86400)
        finished = await dext.ok(f"/costs/{created['id']}")
    mine = [c for c in result["changes"] if c["object_id"] == created["id"]]
    assert len(mine) == 1
    assert mine[0]["changes"]["status"] == ["processing", finished["status"]]
    assert finished["status"] in ("review", "ready")
    assert mine[0]["object"] == finished
    others = [c for c in result["changes"] if c["object_id"] != created["id"]]
    assert all(c["object_type"] == "document" for c in others), "no spontaneous changes"


async def test_real_time_simulation_runs_in_the_background(sandbox_factory: SandboxFactory) -> None:
    # 2 simulated hours per real second: a second brings a dozen or so changes.
    box = await sandbox_factory(simulate=True, speed=7200.0, change_rate=3.0)
    first = await box.state()
    await asyncio.sleep(1.2)
    # No request in between: the background task brought the simulation forward.
    assert box.sandbox.practice.log.seq > first["change_seq"]
    assert box.sandbox.simulation.done_until - first["now_unix"] >= 3600
