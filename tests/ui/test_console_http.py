"""The console over plain HTTP: sign-in, sessions, CSRF, headers, rate limit, escaping."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient
from yarl import URL

from relay import events
from relay.ui.auth import COOKIE, LOGIN_MAX_FAILURES
from tests.support.api import create_account
from tests.support.stores import TEST_ADMIN_TOKEN

XSS = "<img src=x onerror=alert(1)>"


async def sign_in(client: TestClient[Any, Any]) -> str:
    """Sign in with the admin token; returns the session's CSRF token."""
    response = await client.post(
        "/ui/login", data={"token": TEST_ADMIN_TOKEN}, allow_redirects=False
    )
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/ui/"
    page = await client.get("/ui/")
    html = await page.text()
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found[1]


async def test_pages_need_a_session_and_sign_in_sets_a_strict_httponly_cookie(
    browser: TestClient[Any, Any],
) -> None:
    response = await browser.get("/ui/deliveries", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/ui/login"
    login = await browser.post("/ui/login", data={"token": TEST_ADMIN_TOKEN}, allow_redirects=False)
    cookie = login.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain HTTP here; set when served over TLS
    assert TEST_ADMIN_TOKEN not in cookie
    page = await browser.get("/ui/deliveries")
    assert page.status == 200
    assert TEST_ADMIN_TOKEN not in await page.text()


async def test_every_console_response_carries_the_security_headers(
    browser: TestClient[Any, Any],
) -> None:
    for path in ("/ui/login", "/ui/static/console.js", "/ui/nope"):
        response = await browser.get(path, allow_redirects=False)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    html = await (await browser.get("/ui/login")).text()
    assert "<script>" not in html  # no inline script: only <script src=...>
    assert 'style="' not in html


async def test_a_cross_site_post_is_refused_and_changes_nothing(
    browser: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    account = await create_account(browser)
    csrf = await sign_in(browser)
    path = f"/ui/accounts/{account['id']}/poll"
    # A form on another site: the browser sends the cookie only if SameSite allowed it, but
    # even then the Origin and the missing CSRF token give it away.
    forged = await browser.post(path, data={}, headers={"Origin": "https://evil.example"})
    assert forged.status == 403
    wrong_token = await browser.post(path, data={"csrf": "guess"})
    assert wrong_token.status == 403
    cross = await browser.post(
        path, data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status == 403
    requested = await pool.fetchval(
        "SELECT poll_requested_at FROM accounts WHERE id = $1", account["id"]
    )
    assert requested is None
    ok = await browser.post(path, data={"csrf": csrf}, allow_redirects=False)
    assert ok.status == 303
    assert await pool.fetchval(
        "SELECT poll_requested_at FROM accounts WHERE id = $1", account["id"]
    )


async def test_wrong_tokens_are_rate_limited_per_address(browser: TestClient[Any, Any]) -> None:
    for _ in range(LOGIN_MAX_FAILURES):
        wrong = await browser.post("/ui/login", data={"token": "nope"})
        assert wrong.status == 401
        assert "nope" not in await wrong.text()
    limited = await browser.post("/ui/login", data={"token": TEST_ADMIN_TOKEN})
    assert limited.status == 429  # even the right token, until the window passes


async def test_sign_out_and_expiry_end_the_session(
    browser: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    csrf = await sign_in(browser)
    jar = browser.session.cookie_jar
    cookie = jar.filter_cookies(URL(str(browser.make_url("/ui/"))))[COOKIE].value
    out = await browser.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303
    async with aiohttp.ClientSession(cookies={COOKIE: cookie}) as replay:
        stale = await replay.get(browser.make_url("/ui/"), allow_redirects=False)
        assert stale.status == 303  # the old cookie no longer opens anything
    await sign_in(browser)
    await pool.execute("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
    expired = await browser.get("/ui/", allow_redirects=False)
    assert expired.status == 303
    assert expired.headers["Location"] == "/ui/login"


async def test_upstream_text_renders_as_text(
    browser: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    account = await create_account(browser, name=XSS)
    body = events.build_event(
        "supplier.created",
        account_id=account["id"],
        client_id="c1",
        object_id="s1",
        object={"id": "s1", "name": XSS, "description": XSS},
    )
    async with pool.acquire() as conn, conn.transaction():
        await events.insert_events(conn, [body])
    await sign_in(browser)
    for path in ("/ui/", f"/ui/accounts/{account['id']}", "/ui/events", f"/ui/events/{body['id']}"):
        html = await (await browser.get(path)).text()
        assert XSS not in html, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in html, path


async def test_every_page_and_fragment_renders(
    browser: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    account = await create_account(browser)
    await sign_in(browser)
    pages = {
        "/ui/": ("backlog", "accounts", "subscriptions", "events", "chart"),
        f"/ui/accounts/{account['id']}": ("account", "events"),
        "/ui/subscriptions": ("subscriptions",),
        "/ui/deliveries": ("deliveries",),
        "/ui/deliveries?status=failed&since=2026-01-01T00:00": ("deliveries",),
        "/ui/events?type=document.*": ("events",),
    }
    for path, fragments in pages.items():
        page = await browser.get(path)
        assert page.status == 200, (path, await page.text())
        for name in fragments:
            sep = "&" if "?" in path else "?"
            part = await browser.get(f"{path}{sep}fragment={name}")
            assert part.status == 200, (path, name, await part.text())
    bad = await browser.get("/ui/deliveries?since=yesterday")
    assert bad.status == 400
    assert "since" in await bad.text()
    missing = await browser.get("/ui/events/evt_missing")
    assert missing.status == 404
