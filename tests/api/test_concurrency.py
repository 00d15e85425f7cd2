"""Account and subscription writes called many times at once, over real parallel HTTP calls.

Each test fires its calls with `asyncio.gather` at the real admin app on loopback and the real
Postgres, then checks every answer against the state Postgres ends in: one consistent state,
no lost update of a different field, 404 (never a 5xx) for whatever a DELETE overtook.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from relay.vault import Vault
from tests.support.api import answer, create_account
from tests.support.stores import TEST_SECRET_KEY

Client = TestClient[Any, Any]


async def create_subscription(client: Client, **overrides: Any) -> dict[str, Any]:
    status, body = await answer(
        client.post(
            "/v1/subscriptions",
            json={"url": "http://127.0.0.1:9/hook", "event_types": ["*"], **overrides},
        )
    )
    assert status == 201, body
    result: dict[str, Any] = body
    return result


async def test_concurrent_creates_are_one_resource_each(client: Client, pool: asyncpg.Pool) -> None:
    accounts = [
        client.post(
            "/v1/accounts",
            json={
                "provider": "dext",
                "name": f"Practice {n}",
                "base_url": "https://api.dext.example/v1",
                "api_token": f"token-{n}",
            },
        )
        for n in range(20)
    ]
    subscriptions = [
        client.post(
            "/v1/subscriptions",
            json={"url": f"http://127.0.0.1:9/{n}", "event_types": ["document.*"]},
        )
        for n in range(20)
    ]
    answers = await asyncio.gather(*(answer(r) for r in accounts + subscriptions))
    assert {status for status, _ in answers} == {201}
    account_ids = {body["id"] for _, body in answers[:20]}
    subscription_ids = {body["id"] for _, body in answers[20:]}
    assert len(account_ids) == len(subscription_ids) == 20
    assert len({body["secret"] for _, body in answers[20:]}) == 20
    stored = await pool.fetch("SELECT id, name FROM accounts")
    assert {r["id"] for r in stored} == account_ids
    assert sorted(r["name"] for r in stored) == sorted(f"Practice {n}" for n in range(20))
    assert {r["id"] for r in await pool.fetch("SELECT id FROM subscriptions")} == subscription_ids


async def test_concurrent_subscription_patches_of_different_fields_all_land(
    client: Client, pool: asyncpg.Pool
) -> None:
    sub = await create_subscription(client)
    changes: list[dict[str, Any]] = [
        {"description": "outreach"},
        {"filter": "data.object.alert_level == 'high'"},
        {"event_types": ["client.health_changed"]},
        {"account_ids": ["acc_1"]},
        {"client_ids": ["cli_1", "cli_2"]},
        {"url": "http://127.0.0.1:9/moved"},
        {"enabled": False},
    ]
    answers = await asyncio.gather(
        *(
            answer(client.patch(f"/v1/subscriptions/{sub['id']}", json=change))
            for change in changes * 3
        )
    )
    assert {status for status, _ in answers} == {200}
    for (_, body), change in zip(answers, changes * 3, strict=True):
        assert all(body[k] == v for k, v in change.items())  # each saw its own change
    status, final = await answer(client.get(f"/v1/subscriptions/{sub['id']}"))
    assert status == 200
    for change in changes:
        for name, value in change.items():
            assert final[name] == value, name
    assert final["disabled_reason"] == "disabled by an operator"


async def test_concurrent_account_patches_of_different_fields_all_land(
    client: Client, pool: asyncpg.Pool
) -> None:
    account = await create_account(client)
    changes: list[dict[str, Any]] = [
        {"name": "Renamed"},
        {"base_url": "https://eu.dext.example/v1"},
        {"api_token": "the-new-token"},
    ]
    answers = await asyncio.gather(
        *(
            answer(client.patch(f"/v1/accounts/{account['id']}", json=change))
            for change in changes * 5
        ),
        *(answer(client.post(f"/v1/accounts/{account['id']}/poll")) for _ in range(5)),
    )
    assert {status for status, _ in answers} == {200, 202}
    status, final = await answer(client.get(f"/v1/accounts/{account['id']}"))
    assert status == 200
    assert (final["name"], final["base_url"]) == ("Renamed", "https://eu.dext.example/v1")
    assert final["poll_requested_at"] is not None
    token_enc = await pool.fetchval(
        "SELECT api_token_enc FROM accounts WHERE id = $1", account["id"]
    )
    assert Vault((TEST_SECRET_KEY,)).decrypt(token_enc) == "the-new-token"


async def test_subscription_writes_racing_a_delete_end_deleted(
    client: Client, pool: asyncpg.Pool
) -> None:
    """PATCH, rotate-secret, test and DELETE all at once: each answers its success or 404 (or
    409 for a test of the subscription a PATCH just disabled), one DELETE wins, and nothing
    a PATCH does after it revives the subscription."""
    for _ in range(3):
        sub = await create_subscription(client)
        url = f"/v1/subscriptions/{sub['id']}"
        calls: list[Awaitable[aiohttp.ClientResponse]] = []
        for n in range(8):
            calls += [
                client.patch(url, json={"enabled": n % 2 == 0, "description": f"d{n}"}),
                client.post(f"{url}/rotate-secret"),
                client.post(f"{url}/test"),
            ]
            if n in (3, 5):
                calls.append(client.delete(url))
        answers = await asyncio.gather(*(answer(c) for c in calls))
        statuses = [status for status, _ in answers]
        assert set(statuses) <= {200, 202, 204, 404, 409}, answers
        assert statuses.count(204) == 1
        conflicts = [body for status, body in answers if status == 409]
        assert all("is disabled" in body["error"]["message"] for body in conflicts)
        row = await pool.fetchrow(
            "SELECT deleted_at, enabled, disabled_reason FROM subscriptions WHERE id = $1",
            sub["id"],
        )
        assert row is not None
        assert row["deleted_at"] is not None
        assert (row["enabled"], row["disabled_reason"]) == (False, "deleted")
        assert (await answer(client.get(url)))[0] == 404
        # Every ping answered 202 is stored and queued, none was made up.
        accepted = [body["id"] for status, body in answers if status == 202]
        stored = await pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE id = ANY($1::text[])", accepted
        )
        assert stored == len(accepted)


async def test_account_writes_racing_a_delete_end_deleted(
    client: Client, pool: asyncpg.Pool
) -> None:
    for _ in range(3):
        account = await create_account(client)
        url = f"/v1/accounts/{account['id']}"
        calls: list[Awaitable[aiohttp.ClientResponse]] = []
        for n in range(8):
            calls += [
                client.patch(url, json={"name": f"n{n}", "api_token": f"t{n}"}),
                client.post(f"{url}/poll"),
            ]
            if n in (2, 6):
                calls.append(client.delete(url))
        answers = await asyncio.gather(*(answer(c) for c in calls))
        statuses = [status for status, _ in answers]
        assert set(statuses) <= {200, 202, 204, 404}, answers
        assert statuses.count(204) == 1
        assert all(body == {"queued": True} for status, body in answers if status == 202)
        assert (await answer(client.get(url)))[0] == 404
        row = await pool.fetchrow(
            "SELECT deleted_at, name FROM accounts WHERE id = $1", account["id"]
        )
        assert row is not None
        assert row["deleted_at"] is not None
        # The stored name is one that a PATCH answered 200 with: no write after the DELETE.
        named = {body["name"] for status, body in answers if status == 200}
        assert row["name"] in named | {account["name"]}
