"""The console in a real browser: Debian's headless Chromium driven by Playwright, against the
real admin API on loopback, a real arq worker, the sandbox and a receiver that fails.

It walks the operator's morning: sign in, find the failing delivery, read the endpoint's
answer, fix the endpoint, press Retry and watch the row turn succeeded without a reload; then
bulk-retry, replay an event, rotate a secret, and sign out. It also checks that a supplier
named like markup shows as text and that a cross-site form post is refused. Screenshots of
every page are taken into the test's temporary directory; with RELAY_SCREENSHOTS=docs they
replace the README's pictures in docs/ (so an ordinary run leaves the checkout clean).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright
from standardwebhooks import Webhook

from relay import events
from relay.api.app import create_app
from relay.settings import Settings
from tests.support.sandbox import SandboxHandle
from tests.support.stores import AUTH, TEST_ADMIN_TOKEN
from workers.main import build_worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
XSS = "<img src=x onerror=alert(1)>"
ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass
class Receiver:
    """A webhook endpoint that fails (500 with a body) until fixed; then answers slowly."""

    failing: bool = True
    delay: float = 0.0
    hits: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append((await request.read(), dict(request.headers)))
        if self.failing:
            return web.Response(status=500, text="ledger sync down: <b>database locked</b>")
        await asyncio.sleep(self.delay)
        return web.Response(status=200, text="ok")


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"the browser tests need Debian's chromium at {CHROMIUM}: "
            "run `apt-get update && apt-get install -y chromium` (.ci/run does this in CI)"
        )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Stack:
    api: str
    receiver: Receiver
    receiver_url: str
    evil: str
    pool: asyncpg.Pool


@pytest.fixture
async def stack(
    aiohttp_server: ServerFactory,
    settings: Settings,
    pool: asyncpg.Pool,
    redis_client: Any,
    sandbox: SandboxHandle,
) -> AsyncIterator[Stack]:
    # The fixed endpoint answers slowly (3 s, so the page is there before the answer): give
    # attempts room for that.
    settings = settings.with_changes(delivery_timeout=10.0)
    api = await aiohttp_server(create_app(settings))
    receiver = Receiver()
    hooks = web.Application()
    hooks.router.add_post("/hook", receiver.handle)
    hook_server = await aiohttp_server(hooks)

    # Another site: a page whose script posts a form to the console (the cookie is SameSite
    # Strict, and loopback ports are one "site", so the browser may send it: Origin decides).
    async def evil_page(request: web.Request) -> web.Response:
        target = request.query["target"]
        html = (
            f'<form id="f" method="post" action="{target}"><input name="csrf" value="x"></form>'
            "<script>document.getElementById('f').submit()</script>"
        )
        return web.Response(text=html, content_type="text/html")

    evil = web.Application()
    evil.router.add_get("/", evil_page)
    evil_server = await aiohttp_server(evil)
    worker = build_worker(settings, poll_delay=0.05)
    running = asyncio.create_task(worker.async_run())
    try:
        yield Stack(
            api=str(api.make_url("")).rstrip("/"),
            receiver=receiver,
            receiver_url=str(hook_server.make_url("/hook")),
            evil=str(evil_server.make_url("/")),
            pool=pool,
        )
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)


async def _api(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, stack.api + path, json=body, headers=AUTH) as response,
    ):
        assert response.status < 300, await response.text()
        return await response.json()


async def _store(pool: asyncpg.Pool, *bodies: dict[str, Any]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await events.insert_events(conn, list(bodies))


def _event(type: str, object_id: str, **obj: Any) -> dict[str, Any]:
    return events.build_event(
        type,
        account_id=None,
        client_id="cl-42",
        object_id=object_id,
        object={"id": object_id, **obj},
    )


async def _until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 15) -> None:
    for _ in range(int(seconds * 10)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _statuses(pool: asyncpg.Pool) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT d.event_id, d.status FROM deliveries d WHERE generation = 0 ORDER BY d.id"
    )
    return {r["event_id"]: r["status"] for r in rows}


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: docs/ with RELAY_SCREENSHOTS=docs, else the test's tmp dir."""
    if os.environ.get("RELAY_SCREENSHOTS") == "docs":
        return Path(__file__).resolve().parents[2] / "docs"
    return tmp_path


async def test_an_operator_fixes_a_failing_endpoint_from_the_console(
    chromium: Any, stack: Stack, sandbox: SandboxHandle, shots: Path
) -> None:
    pool = stack.pool
    DOCS = shots
    await _api(
        stack,
        "POST",
        "/v1/accounts",
        {
            "provider": "dext",
            "name": "Smith & Co",
            "base_url": sandbox.url,
            "api_token": sandbox.token,
        },
    )
    sub = await _api(
        stack,
        "POST",
        "/v1/subscriptions",
        {"url": stack.receiver_url, "event_types": ["*"], "description": "Ledger sync"},
    )
    first = _event("document.created", "doc-1", supplier={"name": XSS}, total="120.00")
    await _store(pool, first)
    await _until(lambda: _failed(pool, 1), "the first delivery to fail for good")

    context = await chromium.new_context(viewport={"width": 1366, "height": 900})
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    # Sign in: the token goes into the form once and never into a URL.
    await page.goto(stack.api + "/ui/")
    assert page.url.endswith("/ui/login")
    await page.screenshot(path=str(DOCS / "console-sign-in.png"))
    await page.fill("#token", TEST_ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/ui/")
    assert TEST_ADMIN_TOKEN not in page.url
    await page.wait_for_selector("#live-status[data-state=live]")
    assert await page.inner_text("#failed-count") == "1"
    assert "Smith & Co" in await page.inner_text("main")
    await page.screenshot(path=str(DOCS / "console-overview.png"), full_page=True)

    # Find the failing delivery and read what the endpoint said.
    await page.click("nav >> text=Deliveries")
    await page.wait_for_url("**/ui/deliveries")
    delivery_id = await pool.fetchval("SELECT id FROM deliveries WHERE event_id = $1", first["id"])
    row = page.locator(f"tr#{delivery_id}")
    assert "failed" in await row.locator("td.status").inner_text()
    await row.locator("summary").click()
    excerpt = row.locator("pre.excerpt").first
    assert await excerpt.inner_text() == "ledger sync down: <b>database locked</b>"
    await page.screenshot(path=str(DOCS / "console-deliveries.png"), full_page=True)

    # Fix the endpoint (slow, so the page is there before the answer), press Retry, and watch
    # the row turn succeeded with no reload: a marker set on this document survives.
    stack.receiver.failing = False
    stack.receiver.delay = 3.0
    await row.get_by_role("button", name=f"Retry {delivery_id}").click()
    await page.wait_for_url("**/ui/deliveries?notice=retried")
    await page.evaluate("window.__sameDocument = true")
    assert "succeeded" not in await row.locator("td.status").inner_text()
    await row.locator("td.status >> text=succeeded").wait_for(timeout=15_000)
    assert await page.evaluate("window.__sameDocument === true")
    stack.receiver.delay = 0.0

    # Bulk retry: two more fail; count them, confirm, and both are sent again.
    stack.receiver.failing = True
    since = datetime.now(UTC) - timedelta(seconds=2)
    more = [_event("document.categorized", f"doc-{i}") for i in (2, 3)]
    await _store(pool, *more)
    await _until(lambda: _failed(pool, 2), "two more failed deliveries")
    await page.goto(stack.api + "/ui/deliveries?status=failed")
    await page.click("details.bulk summary")
    await page.fill("#bulk-since", since.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.click("details.bulk button[type=submit]")
    await page.wait_for_url("**/ui/deliveries/retry/preview")
    assert "2 failed deliveries" in await page.inner_text("#retry-count")
    stack.receiver.failing = False
    await page.get_by_role("button", name="Retry 2 now").click()
    await page.wait_for_url("**/ui/deliveries?notice=bulk&n=2")
    assert "2 failed deliveries queued" in await page.inner_text(".notice")
    await _until(
        lambda: _all(pool, {m["id"] for m in more}, "succeeded"), "the bulk retry to succeed"
    )

    # Replay an event: the body as sent, pretty-printed, and sent once more, same webhook-id.
    await page.goto(stack.api + f"/ui/events/{first['id']}")
    body_text = await page.inner_text("#event-body")
    assert f'"id": "{first["id"]}"' in body_text
    assert XSS in body_text  # the supplier's name, shown as the characters it is
    await page.screenshot(path=str(DOCS / "console-event.png"), full_page=True)
    before = sum(1 for _, h in stack.receiver.hits if h["webhook-id"] == first["id"])
    await page.get_by_role("button", name="Replay to every matching subscription").click()
    await page.wait_for_url("**notice=replayed**")
    assert "queued again for 1" in await page.inner_text(".notice")
    await _until(lambda: _hits(stack, first["id"], before + 1), "the replay to reach the endpoint")

    # Events list: the markup-like supplier is text, nothing ran.
    await page.goto(stack.api + "/ui/events")
    assert XSS in await page.inner_text("main")
    assert await page.locator("main img").count() == 0
    await page.screenshot(path=str(DOCS / "console-events.png"), full_page=True)

    # Rotate the secret: shown once; the next webhook verifies with it.
    await page.goto(stack.api + "/ui/subscriptions")
    await page.screenshot(path=str(DOCS / "console-subscriptions.png"), full_page=True)
    await page.locator(f"tr#{sub['id']}").get_by_role("button", name="Rotate secret").click()
    await page.wait_for_url(f"**/ui/subscriptions/{sub['id']}/rotate")
    secret = await page.inner_text("#new-secret")
    assert secret.startswith("whsec_")
    assert secret != sub["secret"]
    await page.goto(stack.api + "/ui/subscriptions")
    await page.locator(f"tr#{sub['id']}").get_by_role("button", name="Send test").click()
    await page.wait_for_url("**notice=test")
    await _until(lambda: _ping(stack), "the test event")
    raw, headers = next((r, h) for r, h in stack.receiver.hits if b"relay.ping" in r)
    assert Webhook(secret).verify(raw, headers)["type"] == "relay.ping"

    # The account page.
    account_id = await pool.fetchval("SELECT id FROM accounts")
    await page.goto(stack.api + f"/ui/accounts/{account_id}")
    await page.get_by_role("button", name="Poll now").click()
    await page.wait_for_url("**notice=poll")
    assert "Poll requested" in await page.inner_text(".notice")
    await page.screenshot(path=str(DOCS / "console-account.png"), full_page=True)

    # A cross-site form post (cookie sent: loopback ports are one site) is refused.
    target = stack.api + f"/ui/subscriptions/{sub['id']}/disable"
    await page.goto(stack.evil + "?target=" + target)
    await page.wait_for_url(target)
    assert "Refused" in await page.inner_text("h1")
    assert await pool.fetchval("SELECT enabled FROM subscriptions WHERE id = $1", sub["id"])

    # Sign out: the session is gone, the pages ask to sign in again.
    await page.goto(stack.api + "/ui/")
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/ui/login?notice=signed_out")
    await page.goto(stack.api + "/ui/deliveries")
    assert page.url.endswith("/ui/login")
    assert dialogs == []  # no script from upstream or endpoint text ever ran
    await context.close()


async def _failed(pool: asyncpg.Pool, count: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 'failed'") == count


async def _all(pool: asyncpg.Pool, ids: set[str], status: str) -> bool:
    found = await _statuses(pool)
    return all(found.get(i) == status for i in ids)


async def _hits(stack: Stack, event_id: str, count: int) -> bool:
    return sum(1 for _, h in stack.receiver.hits if h["webhook-id"] == event_id) >= count


async def _ping(stack: Stack) -> bool:
    return any(b"relay.ping" in raw for raw, _ in stack.receiver.hits)
