"""A tiny Dext client for the sandbox's tests: log in, page through lists, snapshot everything."""

from __future__ import annotations

from typing import Any

import aiohttp

Snapshot = dict[tuple[str, str], dict[str, Any]]


class Dext:
    """Talks to a sandbox the way the contract says a client must (one session, Bearer auth)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, api_token: str) -> None:
        self.http = http
        self.url = url
        self.api_token = api_token
        self.session: str | None = None

    async def login(self) -> dict[str, Any]:
        async with self.http.post(
            f"{self.url}/authenticate", json={"api_token": self.api_token}
        ) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 200, body
        self.session = body["session_token"]
        return body

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session}"}

    async def get(self, path: str, **params: Any) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        """(status, JSON body, headers) of one GET."""
        query = {k: str(v) for k, v in params.items()}
        async with self.http.get(f"{self.url}{path}", params=query, headers=self.headers) as r:
            if r.content_type == "application/json":
                return r.status, await r.json(), r.headers
            return r.status, await r.text(), r.headers

    async def ok(self, path: str, **params: Any) -> Any:
        status, body, _ = await self.get(path, **params)
        assert status == 200, (path, status, body)
        return body

    async def all_pages(self, path: str, per_page: int = 50, **params: Any) -> list[Any]:
        items: list[Any] = []
        page = 1
        while True:
            body = await self.ok(path, page=page, per_page=per_page, **params)
            items.extend(body["data"])
            if page >= body["pagination"]["total_pages"]:
                return items
            page += 1

    async def snapshot(self) -> Snapshot:
        """Every object the API serves, keyed by (object_type, id); connections by client id."""
        out: Snapshot = {}
        for client in await self.all_pages("/clients", per_page=100):
            cid = client["id"]
            out[("client", cid)] = client
            out[("connection", cid)] = await self.ok("/connections", client_id=cid)
            for path in ("/costs", "/sales"):
                for item in await self.all_pages(path, client_id=cid):
                    out[("document", item["id"])] = item
            for supplier in await self.all_pages("/suppliers", per_page=100, client_id=cid):
                out[("supplier", supplier["id"])] = supplier
            for report in await self.all_pages("/expense_reports", per_page=100, client_id=cid):
                out[("expense_report", report["id"])] = report
        return out


def replay(before: Snapshot, changes: list[dict[str, Any]]) -> Snapshot:
    """Apply change-log entries to a snapshot, checking each `old` value against the state."""
    state = {key: dict(value) for key, value in before.items()}
    for entry in changes:
        key = (entry["object_type"], entry["object_id"])
        if entry["kind"] in ("created", "existing"):
            assert key not in state, entry
            state[key] = dict(entry["object"])
        elif entry["kind"] == "deleted":
            assert state.pop(key) == entry["object"], entry
        else:
            current = state[key]
            for field, (old, new) in entry["changes"].items():
                assert current.get(field) == old, (entry["seq"], field, current.get(field), old)
                assert old != new, entry
                current[field] = new
            assert current == entry["object"], entry["seq"]
    return state
