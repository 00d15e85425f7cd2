"""The fixtures start a working sandbox: authenticate, list, and the rate-limit headers."""

from __future__ import annotations

import aiohttp

from tests.support.sandbox import SandboxHandle


async def test_fixture_serves_the_contract(sandbox: SandboxHandle) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sandbox.url}/authenticate", json={"api_token": sandbox.token}) as r:
            assert r.status == 200
            assert r.headers["X-RateLimit-Limit"] == "10000"
            session = (await r.json())["session_token"]
        headers = {"Authorization": f"Bearer {session}"}
        async with http.get(f"{sandbox.url}/clients", headers=headers) as r:
            assert r.status == 200
            body = await r.json()
        assert body["pagination"]["total"] == 3
        assert int(r.headers["X-RateLimit-Remaining"]) == 9998
