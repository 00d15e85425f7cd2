"""The shared core both sandboxes stand on: windows, logs, and faults through the one edge."""

from __future__ import annotations

import ast
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from relay.sandbox.faults import parse_fault
from relay.sandbox.ratelimit import Usage, Window
from relay.sandbox.records import ChangeLog
from tests.support.sandbox import IxtHandle, SandboxHandle

IxtFactory = Callable[..., Awaitable[IxtHandle]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _root(ixt: IxtHandle) -> str:
    return ixt.url.removesuffix("/api/v1")


async def _control(
    http: aiohttp.ClientSession, ixt: IxtHandle, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, f"{_root(ixt)}/_sandbox{path}", json=body) as resp:
        return resp.status, await resp.json()


async def _get(
    http: aiohttp.ClientSession, ixt: IxtHandle, path: str
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {ixt.token}"}
    async with http.get(f"{ixt.url}{path}", headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def test_a_fixed_window_resets_at_its_end_and_counts_refusals() -> None:
    window, usage = Window(10.0), Usage()
    quotas = [window.count(usage, 2, 100.0 + i) for i in range(3)]
    assert [q.count for q in quotas] == [1, 2, 3]
    assert quotas[2].exceeded
    assert (quotas[2].window_start, quotas[2].reset) == (100.0, 110)
    assert quotas[2].headers() == {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "110",
    }
    after = window.count(usage, 2, 110.0)
    assert (after.count, after.exceeded) == (1, False), "all budget back at the window's end"


def test_a_rolling_window_gives_each_request_back_after_its_span() -> None:
    window, usage = Window(10.0, rolling=True), Usage()
    for at in (100.0, 104.0, 108.0):
        window.count(usage, 2, at)
    assert window.peek(usage, 2, 109.0).exceeded, "the refused third counts too"
    later = window.peek(usage, 2, 110.5)
    assert (later.count, later.window_start, later.reset) == (2, 104.0, 114.0)
    assert later.headers(reset_decimals=3)["X-RateLimit-Reset"] == "114.000"
    assert window.peek(usage, 2, 118.0).count == 0


def test_the_change_log_numbers_entries_and_pages_them() -> None:
    log = ChangeLog()
    for n in range(5):
        log.add({"n": n})
    assert [e["seq"] for e in log] == [1, 2, 3, 4, 5]
    assert [e["n"] for e in log.since(2, limit=2)] == [2, 3]
    assert (log.seq, len(log)) == (5, 5)
    assert log[3:] == log.since(3), "a list's slices, for the benchmarks and tests that take them"
    assert log[0]["seq"] == 1


def test_each_provider_names_its_fault_kinds() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        parse_fault({"kind": "session_expired"}, frozenset({"502"}))
    aliased = parse_fault(
        {"kind": "malformed"}, frozenset({"malformed_json"}), {"malformed": "malformed_json"}
    )
    assert aliased.kind == "malformed_json"


async def test_an_invoicext_fault_armed_over_http_fires_at_the_edge_and_still_counts(
    http: aiohttp.ClientSession, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(rate_limit=50, items=2)
    status, armed = await _control(
        http, ixt, "POST", "/faults", {"kind": "502", "path": "/invoices", "count": 2}
    )
    assert (status, armed) == (200, {"kind": "502", "path": "/invoices", "count": 2})
    status, listed = await _control(http, ixt, "GET", "/faults")
    assert status == 200
    assert [(f["kind"], f["count"]) for f in listed["armed"]] == [("502", 2)]
    assert (await _get(http, ixt, "/usage/stats"))[0] == 200, "another path is untouched"
    for _ in range(2):
        status, headers, body = await _get(http, ixt, "/invoices")
        assert status == 502
        assert headers["Content-Type"].startswith("text/html")
        assert b"nginx" in body
        assert headers["X-RateLimit-Limit"] == "50"
    status, headers, _ = await _get(http, ixt, "/invoices")
    assert status == 200
    assert headers["X-RateLimit-Remaining"] == str(50 - 4), "the faulted requests counted"
    assert ixt.box.api_calls == 4, "and in the month"
    assert [r["status"] for r in ixt.box.requests] == [200, 502, 502, 200]
    assert (await _control(http, ixt, "GET", "/faults"))[1] == {"armed": []}


async def test_invoicext_serves_the_shared_slow_drop_and_malformed_faults(
    http: aiohttp.ClientSession, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(items=2)
    await _control(http, ixt, "POST", "/faults", {"kind": "slow", "delay": 0.3})
    started = time.monotonic()
    assert (await _get(http, ixt, "/invoices"))[0] == 200
    assert time.monotonic() - started >= 0.3
    await _control(http, ixt, "POST", "/faults", {"kind": "malformed", "path": "/invoices"})
    status, _, body = await _get(http, ixt, "/invoices")
    assert status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    await _control(http, ixt, "POST", "/faults", {"kind": "drop", "path": "/invoices"})
    parts = urlsplit(ixt.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"GET /api/v1/invoices HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {ixt.token}\r\n\r\n".encode()
    )
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()
    assert ixt.box.requests[-1]["status"] == 0
    status, cleared = await _control(http, ixt, "DELETE", "/faults")
    assert (status, cleared) == (200, {"faults": []})


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/faults", {"kind": "session_expired"}),  # Dext's kind, not InvoiceXT's
        ("POST", "/faults", {"kind": "502", "count": "two"}),
        ("POST", "/clock/advance", {"seconds": "soon"}),
        ("POST", "/clock/advance", {"seconds": 91 * 86400}),
        ("POST", "/simulation", {"change_rate": "fast"}),
        ("POST", "/tokens", {"rate_limit": "many"}),
        ("POST", "/changes", {"action": "nonsense"}),
        ("GET", "/changes?since=yesterday", None),
    ],
)
async def test_invoicext_control_refuses_bad_input_clearly(
    http: aiohttp.ClientSession, ixt_factory: IxtFactory, method: str, path: str, body: Any
) -> None:
    ixt = await ixt_factory(items=1)
    status, answer = await _control(http, ixt, method, path, body)
    assert status == 400
    assert isinstance(answer["error"], str)
    assert answer["error"]


async def test_invoicext_control_answers_as_before(
    http: aiohttp.ClientSession, ixt_factory: IxtFactory
) -> None:
    ixt = await ixt_factory(items=1)
    status, advanced = await _control(http, ixt, "POST", "/clock/advance", {"seconds": 60})
    assert status == 200
    assert set(advanced) == {"now", "changes"}
    status, made = await _control(http, ixt, "POST", "/changes", {"action": "upload"})
    assert status == 200
    assert made["changes"] == []  # an upload is news only once processed
    _, done = await _control(
        http, ixt, "POST", "/changes", {"action": "process", "id": made["object"]["id"]}
    )
    assert [c["event"] for c in done["changes"]] == ["invoice.processed"]
    status, changes = await _control(
        http, ixt, "GET", f"/changes?since={done['changes'][0]['seq'] - 1}"
    )
    assert (status, changes) == (200, {"data": done["changes"]})
    missing = await _control(http, ixt, "POST", "/changes", {"action": "process", "id": "inv_x"})
    assert missing == (404, {"error": "no such object"})
    await _get(http, ixt, "/invoices")
    status, summary = await _control(http, ixt, "GET", "/requests/summary")
    assert (status, summary) == (200, {"total": 1, "by_status": {"200": 1}})


async def test_dext_refuses_the_bare_500_fault(sandbox: SandboxHandle) -> None:
    async with sandbox.http.post(f"{sandbox.url}/_sandbox/faults", json={"kind": "500"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "validation_error"


def _sandbox_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.update({node.module, *(f"{node.module}.{a.name}" for a in node.names)})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name.startswith("relay.sandbox.")}


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("dext", ("relay.sandbox.invoicext",)),
        ("invoicext", ("relay.sandbox.dext",)),
        (".", ("relay.sandbox.dext", "relay.sandbox.invoicext")),
    ],
)
def test_providers_are_siblings_over_a_core_that_knows_neither(
    folder: str, forbidden: tuple[str, ...]
) -> None:
    root = Path(__file__).resolve().parents[2] / "relay" / "sandbox"
    # server.py assembles the providers: the one core module that names them.
    files = [p for p in (root / folder).glob("*.py") if folder != "." or p.name != "server.py"]
    assert files
    breaches = {
        (p.name, name) for p in files for name in _sandbox_imports(p) if name.startswith(forbidden)
    }
    assert not breaches
