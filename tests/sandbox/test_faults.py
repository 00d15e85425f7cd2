"""Every injectable fault, its targeting (path, count, probability), and that it still counts."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from tests.support.sandbox import Dext, SandboxFactory, SandboxHandle


async def _raw(dext: Dext, path: str) -> tuple[int, str, str, dict[str, str]]:
    async with dext.http.get(f"{dext.url}{path}", headers=dext.headers) as resp:
        return resp.status, resp.content_type, await resp.text(), dict(resp.headers)


@pytest.mark.parametrize("status", [502, 503])
async def test_edge_errors_are_html(dext: Dext, sandbox: SandboxHandle, status: int) -> None:
    await sandbox.fault(kind=str(status), path="/clients", count=2)
    first = await _raw(dext, "/clients")
    second = await _raw(dext, "/clients")
    third = await _raw(dext, "/clients")
    for got, content_type, text, headers in (first, second):
        assert (got, content_type) == (status, "text/html")
        assert text.startswith("<html>")
        assert "X-RateLimit-Remaining" in headers
    assert third[0] == 200
    assert int(third[3]["X-RateLimit-Remaining"]) == 10_000 - 4, "faulted requests count"


async def test_faults_target_a_path_prefix(dext: Dext, sandbox: SandboxHandle) -> None:
    await sandbox.fault(kind="503", path="/costs")
    client_id = (await dext.ok("/clients"))["data"][0]["id"]
    assert (await dext.get("/documents", client_id=client_id))[0] == 200
    assert (await dext.get("/costs", client_id=client_id))[0] == 503
    assert (await dext.get("/costs", client_id=client_id))[0] == 200


async def test_slow_responses(dext: Dext, sandbox: SandboxHandle) -> None:
    await sandbox.fault(kind="slow", delay=0.4)
    started = time.monotonic()
    status, _, _ = await dext.get("/clients")
    assert status == 200
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    await dext.get("/clients")
    assert time.monotonic() - started < 0.4


async def test_dropped_connection_sends_nothing(dext: Dext, sandbox: SandboxHandle) -> None:
    await sandbox.fault(kind="drop", path="/clients")
    parts = urlsplit(sandbox.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"GET /clients HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {dext.session}\r\n\r\n".encode()
    )
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()
    entry = sandbox.sandbox.access.requests[-1]
    assert (entry["fault"], entry["status"], entry["token_id"]) == ("drop", 0, "tok_1")


async def test_malformed_json(dext: Dext, sandbox: SandboxHandle) -> None:
    await sandbox.fault(kind="malformed_json", path="/clients")
    status, content_type, text, _ = await _raw(dext, "/clients")
    assert (status, content_type) == (200, "application/json")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    assert (await dext.get("/clients"))[0] == 200


async def test_extra_fields_and_wrong_types(dext: Dext, sandbox: SandboxHandle) -> None:
    client_id = (await dext.ok("/clients"))["data"][0]["id"]
    clean = (await dext.ok("/costs", client_id=client_id))["data"]
    await sandbox.fault(kind="extra_fields", path="/costs")
    extra = (await dext.ok("/costs", client_id=client_id))["data"]
    assert [{k: v for k, v in d.items() if not k.startswith("x_")} for d in extra] == clean
    assert all("x_sandbox_unknown" in d for d in extra)
    await sandbox.fault(kind="wrong_types", path="/costs")
    wrong = (await dext.ok("/costs", client_id=client_id))["data"]
    assert all(isinstance(d[next(iter(k for k in d if isinstance(c.get(k), dict)))], str)
               for d, c in zip(wrong, clean, strict=True))  # fmt: skip
    await sandbox.fault(kind="wrong_types", path="/connections")
    connection = await dext.ok("/connections", client_id=client_id)
    assert isinstance(connection["main"], str)


async def test_forced_session_expiry_and_processing_error(
    dext: Dext, sandbox: SandboxHandle
) -> None:
    await sandbox.fault(kind="session_expired")
    status, body, _ = await dext.get("/clients")
    assert (status, body["error"]["code"]) == (401, "session_expired")
    await sandbox.fault(kind="processing_error", path="/create_document")
    async with dext.http.post(
        f"{dext.url}/create_document", params={"client_id": "x"}, json={}, headers=dext.headers
    ) as resp:
        assert resp.status == 500
        assert (await resp.json())["error"]["code"] == "processing_error"
    assert (await dext.get("/clients"))[0] == 200


async def test_consume_budget_as_another_tool(sandbox_factory: SandboxFactory) -> None:
    box = await sandbox_factory(rate_limit=20, window_seconds=30)
    async with aiohttp.ClientSession() as http:
        dext = Dext(http, box.url, box.token)
        await dext.login()
        _, _, before = await dext.get("/clients")
        await box.fault(kind="consume_budget", amount=15)
        _, _, after = await dext.get("/clients")
    if before["X-RateLimit-Reset"] == after["X-RateLimit-Reset"]:  # same window
        assert int(before["X-RateLimit-Remaining"]) - int(after["X-RateLimit-Remaining"]) == 16
    else:
        assert after["X-RateLimit-Remaining"] == str(20 - 16)


async def test_probability_faults_are_seeded(sandbox_factory: SandboxFactory) -> None:
    async def run() -> list[int]:
        box = await sandbox_factory(seed=3)
        async with aiohttp.ClientSession() as http:
            dext = Dext(http, box.url, box.token)
            await dext.login()
            await box.fault(kind="503", probability=0.5)
            return [(await dext.get("/clients"))[0] for _ in range(30)]

    first, second = await run(), await run()
    assert first == second
    assert 5 < first.count(503) < 25


async def test_clearing_faults_and_rejecting_bad_ones(dext: Dext, sandbox: SandboxHandle) -> None:
    await sandbox.fault(kind="503", probability=1.0)
    assert (await dext.get("/clients"))[0] == 503
    await sandbox.clear_faults()
    assert (await dext.get("/clients"))[0] == 200
    for bad in (
        {"kind": "504"},
        {"kind": "503", "count": 0},
        {"kind": "503", "probability": 2},
        {"kind": "slow", "delay": -1},
        {"kind": "503", "path": "clients"},
    ):
        async with dext.http.post(f"{dext.url}/_sandbox/faults", json=bad) as resp:
            assert resp.status == 400, bad
            assert (await resp.json())["error"]["code"] == "validation_error"
