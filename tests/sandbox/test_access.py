"""Sessions, revoked tokens, and the per-token fixed-window rate limit."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp

from tests.support.sandbox import Dext, SandboxFactory, SandboxHandle

WINDOW = 2.0


async def _next_window(window: float = WINDOW) -> float:
    """Sleep to just after the next window boundary; returns that window's start."""
    start = (math.floor(time.time() / window) + 1) * window
    await asyncio.sleep(start - time.time() + 0.02)
    return start


async def _auth(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/authenticate", json={"api_token": token}) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_session_expires_after_its_ttl(sandbox_factory: SandboxFactory) -> None:
    box = await sandbox_factory(session_ttl=0.3)
    async with aiohttp.ClientSession() as http:
        dext = Dext(http, box.url, box.token)
        login = await dext.login()
        assert login["expires_at"].endswith("Z")
        assert (await dext.get("/clients"))[0] == 200
        await asyncio.sleep(0.35)
        status, body, headers = await dext.get("/clients")
        assert (status, body["error"]["code"]) == (401, "session_expired")
        assert "X-RateLimit-Remaining" in headers, "an expired session still counts"
        await dext.login()
        assert (await dext.get("/clients"))[0] == 200


async def test_expire_all_sessions_and_unknown_sessions(sandbox: SandboxHandle) -> None:
    async with aiohttp.ClientSession() as http:
        dext = Dext(http, sandbox.url, sandbox.token)
        await dext.login()
        async with http.post(f"{sandbox.url}/_sandbox/sessions/expire") as resp:
            assert (await resp.json())["expired"] == 1
        status, body, _ = await dext.get("/clients")
        assert (status, body["error"]["code"]) == (401, "session_expired")
        dext.session = "sess_made_up"
        status, body, headers = await dext.get("/clients")
        assert (status, body["error"]["code"]) == (401, "session_expired")
        assert "X-RateLimit-Remaining" not in headers, "an unknown session counts against nothing"
        async with http.get(f"{sandbox.url}/clients") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_revoked_token_is_invalid_everywhere_until_restored(sandbox: SandboxHandle) -> None:
    async with aiohttp.ClientSession() as http:
        dext = Dext(http, sandbox.url, sandbox.token)
        await dext.login()
        async with http.post(f"{sandbox.url}/_sandbox/tokens/{sandbox.token}/revoke") as resp:
            assert (await resp.json())["revoked"] is True
        status, body, _ = await dext.get("/clients")
        assert (status, body["error"]["code"]) == (401, "invalid_token")
        status, body, headers = await _auth(http, sandbox.url, sandbox.token)
        assert (status, body["error"]["code"]) == (401, "invalid_token")
        assert "X-RateLimit-Limit" in headers, "a revoked token's requests still count"
        status, body, headers = await _auth(http, sandbox.url, "never-issued")
        assert (status, body["error"]["code"]) == (401, "invalid_token")
        assert "X-RateLimit-Limit" not in headers
        async with http.post(f"{sandbox.url}/_sandbox/tokens/tok_1/restore") as resp:
            assert (await resp.json())["revoked"] is False
        assert (await dext.get("/clients"))[0] == 200


async def test_authenticate_rejects_bad_bodies(sandbox: SandboxHandle) -> None:
    async with aiohttp.ClientSession() as http:
        for body in (b"{", b"[]", b'{"api_token": 5}', b'{"api_token": "x", "mfa_code": 1}'):
            async with http.post(f"{sandbox.url}/authenticate", data=body) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["code"] == "validation_error"


async def test_new_tokens_have_their_own_budget(sandbox_factory: SandboxFactory) -> None:
    box = await sandbox_factory(rate_limit=3, window_seconds=WINDOW)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{box.url}/_sandbox/tokens", json={"api_token": "second", "rate_limit": 5}
        ) as resp:
            assert resp.status == 201
        await _next_window()
        statuses = [(await _auth(http, box.url, box.token))[0] for _ in range(4)]
        other = [(await _auth(http, box.url, "second"))[0] for _ in range(6)]
    assert statuses == [200, 200, 200, 429]
    assert other == [200] * 5 + [429]


async def test_fixed_windows_count_everything_and_headers_are_on_every_answer(
    sandbox_factory: SandboxFactory,
) -> None:
    box = await sandbox_factory(rate_limit=5, window_seconds=WINDOW)
    async with aiohttp.ClientSession() as http:
        dext = Dext(http, box.url, box.token)
        start = await _next_window()
        await dext.login()  # 1: /authenticate counts
        answers = [await dext.get("/clients")]  # 2
        answers.append(await dext.get("/documents"))  # 3: a 400 counts
        answers.append(await dext.get("/nowhere"))  # 4: a 404 counts
        answers.append(await dext.get("/clients"))  # 5
        answers += [await dext.get("/clients") for _ in range(4)]  # 6..9: 429s count too
        assert time.time() < start + WINDOW, "the test must fit in one window"
        statuses = [a[0] for a in answers]
        assert statuses == [200, 400, 404, 200, 429, 429, 429, 429]
        remaining = [int(a[2]["X-RateLimit-Remaining"]) for a in answers]
        assert remaining == [3, 2, 1, 0, 0, 0, 0, 0]
        for _, _body, headers in answers:
            assert headers["X-RateLimit-Limit"] == "5"
            assert headers["X-RateLimit-Reset"] == str(math.ceil(start + WINDOW))
        limited = answers[4:]
        for _, body, _ in limited:
            assert body["error"]["code"] == "rate_limit_exceeded"
        retry_after = [h.get("Retry-After") for _, _, h in limited]
        assert retry_after[0] is not None, "Retry-After is sometimes present..."
        assert retry_after[1] is None, "... and sometimes not"
        assert retry_after[2] is not None
        assert retry_after[3] is None
        assert 1 <= int(retry_after[0]) <= math.ceil(WINDOW)
        # The next window starts afresh.
        await _next_window()
        status, _, headers = await dext.get("/clients")
        assert status == 200
        assert headers["X-RateLimit-Remaining"] == "4"
    summary = await box.requests_summary()
    stats = summary["tokens"]["tok_1"]
    assert stats["total"] == 10
    assert stats["rate_limited"] == 4
    assert stats["max_in_window"] == 9
    assert [w["count"] for w in stats["windows"]] == [9, 1]
    assert stats["windows"][0]["start"] == start


async def test_speed_sets_the_window_length(sandbox_factory: SandboxFactory) -> None:
    box = await sandbox_factory(window_seconds=None, speed=30.0)
    state = await box.state()
    assert state["window_seconds"] == 2.0
    async with aiohttp.ClientSession() as http:
        _, _, headers = await _auth(http, box.url, box.token)
    assert int(headers["X-RateLimit-Reset"]) % 2 == 0, "windows are aligned to the epoch"


async def test_request_log_never_holds_tokens(sandbox: SandboxHandle) -> None:
    async with aiohttp.ClientSession() as http:
        dext = Dext(http, sandbox.url, sandbox.token)
        await dext.login()
        await dext.get("/clients", page=1)
        async with http.get(f"{sandbox.url}/_sandbox/requests?since=1") as resp:
            body = await resp.json()
            text = await resp.text()
    assert sandbox.token not in text
    assert (dext.session or "") not in text
    [entry] = body["data"]
    assert entry["n"] == 2
    assert entry["path"] == "/clients"
    assert entry["query"] == "page=1"
    assert entry["token_id"] == "tok_1"
    assert entry["status"] == 200
    assert entry["window_count"] == 2
