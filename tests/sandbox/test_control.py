"""The /_sandbox control surface: applying changes, the clock, state, and `relay sandbox` itself."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from typing import Any

import aiohttp
import pytest

from tests.support.sandbox import Dext, SandboxHandle, Snapshot, replay


async def _first_cost(dext: Dext) -> dict[str, Any]:
    client_id = (await dext.ok("/clients"))["data"][0]["id"]
    costs = await dext.all_pages("/costs", client_id=client_id)
    return next(c for c in costs if c["status"] == "ready" and c["approval"]["status"] == "none")


async def test_update_keeps_summary_and_full_item_consistent(
    dext: Dext, sandbox: SandboxHandle
) -> None:
    item = await _first_cost(dext)
    code, name = ("420", "Entertainment")
    if item["category_code"] == code:
        code, name = ("400", "Advertising & Marketing")
    [entry] = await sandbox.apply(
        {
            "action": "update",
            "object_type": "document",
            "object_id": item["id"],
            "set": {"approval_status": "pending", "category_code": code},
        }
    )
    after = await dext.ok(f"/costs/{item['id']}")
    assert after["approval"] == {**item["approval"], "status": "pending"}
    assert after["category"] == {"code": code, "name": name}
    assert entry["changes"] == {
        "approval": [item["approval"], after["approval"]],
        "approval_status": ["none", "pending"],
        "category": [item["category"], after["category"]],
        "category_code": [item["category_code"], code],
    }
    assert entry["object"] == after
    summary = next(
        d
        for d in await dext.all_pages("/documents", client_id=item["client_id"])
        if d["id"] == item["id"]
    )
    assert summary["approval_status"] == "pending"
    assert summary["category_code"] == code
    # A partial nested object merges into the old one.
    [entry] = await sandbox.apply(
        {
            "action": "update",
            "object_type": "document",
            "object_id": item["id"],
            "set": {"publish": {"status": "queued"}},
        }
    )
    assert entry["changes"]["publish_status"] == ["unpublished", "queued"]
    assert entry["changes"]["publish"][1] == {**item["publish"], "status": "queued"}
    # Setting what is already there changes nothing and logs nothing.
    assert (
        await sandbox.apply(
            {
                "action": "update",
                "object_type": "document",
                "object_id": item["id"],
                "set": {"publish_status": "queued"},
            }
        )
        == []
    )


async def test_client_connection_and_supplier_changes(dext: Dext, sandbox: SandboxHandle) -> None:
    client = (await dext.ok("/clients"))["data"][0]
    [health] = await sandbox.apply(
        {"action": "update", "object_type": "client", "object_id": client["id"],
         "set": {"health_score": 20}}
    )  # fmt: skip
    assert health["changes"]["health_score"] == [client["health_score"], 20]
    assert (await dext.ok("/clients"))["data"][0]["alert_level"] == "high"
    connection = await dext.ok("/connections", client_id=client["id"])
    [link] = await sandbox.apply(
        {"action": "update", "object_type": "connection", "object_id": client["id"],
         "set": {"main": {"status": "expired"}}}
    )  # fmt: skip
    assert link["changes"] == {
        "main": [connection["main"], {**connection["main"], "status": "expired"}]
    }
    assert link["object"] == await dext.ok("/connections", client_id=client["id"])
    supplier = (await dext.ok("/suppliers", client_id=client["id"]))["data"][0]
    [gone] = await sandbox.apply(
        {"action": "delete", "object_type": "supplier", "object_id": supplier["id"]}
    )
    assert gone["kind"] == "deleted"
    assert gone["object"] == supplier
    remaining = await dext.all_pages("/suppliers", client_id=client["id"])
    assert supplier["id"] not in {s["id"] for s in remaining}


async def test_create_document_through_the_control_surface(
    dext: Dext, sandbox: SandboxHandle
) -> None:
    client_id = (await dext.ok("/clients"))["data"][0]["id"]
    [entry] = await sandbox.apply(
        {"action": "create_document", "client_id": client_id, "workspace": "sales",
         "type": "invoice", "processed": True}
    )  # fmt: skip
    created = await dext.ok(f"/sales/{entry['object_id']}")
    assert entry["object"] == created
    assert created["status"] in ("review", "ready")
    assert created["customer"] is not None
    assert created["type"] == "invoice"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"action": "explode"}, 400),
        ({"action": "update", "object_type": "document", "object_id": "nope", "set": {}}, 404),
        ({"action": "update", "object_type": "planet", "object_id": "x"}, 400),
        ({"action": "delete", "object_type": "document"}, 400),
        ({"action": "create_document", "client_id": "nope"}, 404),
        ({"action": "create_document", "client_id": None, "workspace": "x"}, 404),
        ([1, 2], 400),
    ],
)
async def test_bad_changes_are_rejected(
    dext: Dext, sandbox: SandboxHandle, body: Any, status: int
) -> None:
    async with dext.http.post(f"{sandbox.url}/_sandbox/changes", json=body) as resp:
        assert resp.status == status
        assert "error" in await resp.json()


async def test_update_rejects_unknown_and_immutable_fields(
    dext: Dext, sandbox: SandboxHandle
) -> None:
    item = await _first_cost(dext)
    for values in ({"colour": "red"}, {"id": "x"}, {"created_at": "2020-01-01T00:00:00Z"}):
        async with dext.http.post(
            f"{sandbox.url}/_sandbox/changes",
            json={"action": "update", "object_type": "document", "object_id": item["id"],
                  "set": values},
        ) as resp:  # fmt: skip
            assert resp.status == 400


async def test_clock_state_and_change_paging(sandbox: SandboxHandle) -> None:
    state = await sandbox.state()
    assert state["clients"] == 3
    assert state["tokens"][0]["api_token"] == sandbox.token
    assert state["counts"]["documents"] == 180
    result = await sandbox.advance(3600)
    assert result["now_unix"] - state["now_unix"] >= 3600
    client_id = state["client_ids"][0]
    for _ in range(3):
        await sandbox.apply({"action": "create_document", "client_id": client_id})
    async with sandbox.http.get(f"{sandbox.url}/_sandbox/changes?since=1&limit=1") as resp:
        body = await resp.json()
    assert [e["seq"] for e in body["data"]] == [2]
    assert body["change_seq"] == 3
    for bad in ({"seconds": -1}, {"seconds": "soon"}, {"seconds": 10**9}, {}):
        async with sandbox.http.post(f"{sandbox.url}/_sandbox/clock/advance", json=bad) as resp:
            assert resp.status == 400


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_relay_sandbox_command_serves_a_changing_practice() -> None:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "sandbox", "--port", str(port), "--speed", "3600",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"{url}/_sandbox/state") as resp:
                        first = await resp.json()
                        break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("relay sandbox did not start")
            dext = Dext(http, url, "sandbox-token-1")
            await dext.login()
            assert (await dext.ok("/clients"))["pagination"]["total"] == 5
            await asyncio.sleep(1.5)
            async with http.get(f"{url}/_sandbox/state") as resp:
                second = await resp.json()
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert second["now_unix"] - first["now_unix"] >= 3600
    assert second["change_seq"] > first["change_seq"]
    assert b"sandbox_started" in stderr
    assert f"http://127.0.0.1:{port}".encode() in stderr


async def test_a_client_added_mid_run_brings_history_not_changes(
    dext: Dext, sandbox: SandboxHandle
) -> None:
    before = await dext.snapshot()
    entries = await sandbox.add_client(120)
    after = await dext.snapshot()
    assert replay(before, entries) == after, "the log accounts for every new object"
    assert entries == await sandbox.changes(), "the entries are the log's, in order"
    [client] = [e for e in entries if e["object_type"] == "client"]
    cid = client["object_id"]
    assert cid not in {k[1] for k in before if k[0] == "client"}
    assert (await dext.ok("/clients"))["pagination"]["total"] == len(before_clients(before)) + 1
    # The client and its connection are new; its backlog is history, not change.
    kinds = {(e["object_type"], e["kind"]) for e in entries}
    assert kinds == {
        ("client", "created"),
        ("connection", "created"),
        ("supplier", "existing"),
        ("document", "existing"),
        ("expense_report", "existing"),
    }
    docs = [e for e in entries if e["object_type"] == "document"]
    assert len(docs) == 120
    assert {e["client_id"] for e in entries} == {cid}
    served = await dext.all_pages("/costs", client_id=cid) + await dext.all_pages(
        "/sales", client_id=cid
    )
    assert sorted(d["id"] for d in served) == sorted(e["object_id"] for e in docs)
    # Its items are older than now, like any practice's backlog.
    now = (await sandbox.state())["now"]
    assert all(e["object"]["created_at"] < now for e in docs)

    # Later changes of the new client are logged as usual.
    [created] = await sandbox.apply({"action": "create_document", "client_id": cid})
    assert created["kind"] == "created"
    assert created["client_id"] == cid


def before_clients(snapshot: Snapshot) -> list[str]:
    return [key[1] for key in snapshot if key[0] == "client"]


@pytest.mark.parametrize(
    "body",
    [
        {"action": "create_client", "items": -1},
        {"action": "create_client", "items": "5"},
        {"action": "create_client", "items": True},
        {"action": "create_client", "items": 10**9},
        {"action": "create_client", "items": 3, "name": "x"},
    ],
)
async def test_create_client_rejects_bad_input(
    sandbox: SandboxHandle, body: dict[str, Any]
) -> None:
    async with sandbox.http.post(f"{sandbox.url}/_sandbox/changes", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "validation_error"
    assert (await sandbox.state())["clients"] == 3
