"""Accounts over HTTP and the store functions the poll scheduler will call."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from relay.poller import account_warnings
from relay.settings import Settings
from relay.sources import accounts
from relay.sources.models import SetAside, SetAsideTally
from relay.vault import Vault
from tests.support.api import create_account, error_of

ACCOUNT_KEYS = {
    "id",
    "provider",
    "name",
    "base_url",
    "status",
    "baseline_completed_at",
    "last_poll_at",
    "last_error",
    "rate_limit",
    "created_at",
}


@pytest.mark.usefixtures("all_logs")
async def test_create_returns_the_account_without_its_token(
    client: TestClient[Any, Any], pool: asyncpg.Pool, settings: Settings
) -> None:
    with capture_logs() as logs:
        response = await client.post(
            "/v1/accounts",
            json={
                "provider": "invoicext",
                "name": "North Ledger",
                "base_url": "https://api.invoicext.example",
                "api_token": "tok-very-secret-123",
                "backfill": True,
            },
        )
        text = await response.text()
    assert response.status == 201, text
    account = await response.json()
    assert set(account) >= ACCOUNT_KEYS
    assert account["id"].startswith("acc_")
    assert account["provider"] == "invoicext"
    assert account["status"] == "baselining"
    assert account["baseline_completed_at"] is None
    assert account["backfill"] is True
    assert account["rate_limit"] == {
        "limit": None,
        "remaining": None,
        "reset_at": None,
        "throttled_last_hour": 0,
    }
    assert account["created_at"].endswith("Z")
    assert "tok-very-secret-123" not in text
    assert all("tok-very-secret-123" not in repr(entry) for entry in logs)

    stored = await pool.fetchval("SELECT api_token_enc FROM accounts WHERE id = $1", account["id"])
    assert "tok-very-secret-123" not in stored
    assert Vault(settings.secret_keys).decrypt(stored) == "tok-very-secret-123"

    fetched = await client.get(f"/v1/accounts/{account['id']}")
    assert fetched.status == 200
    assert await fetched.json() == account


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "base_url": "https://a.example", "api_token": "t"}, "provider"),
        (
            {"provider": "xero", "name": "x", "base_url": "https://a.example", "api_token": "t"},
            "provider",
        ),
        (
            {"provider": "dext", "name": 5, "base_url": "https://a.example", "api_token": "t"},
            "name",
        ),
        (
            {"provider": "dext", "name": "", "base_url": "https://a.example", "api_token": "t"},
            "name",
        ),
        (
            {"provider": "dext", "name": "x", "base_url": "ftp://a.example", "api_token": "t"},
            "base_url",
        ),
        ({"provider": "dext", "name": "x", "base_url": "not a url", "api_token": "t"}, "base_url"),
        (
            {
                "provider": "dext",
                "name": "x",
                "base_url": "https://a.example:99999",
                "api_token": "t",
            },
            "base_url",
        ),
        (
            {"provider": "dext", "name": "x", "base_url": "https://a.example", "api_token": None},
            "api_token",
        ),
        (
            {
                "provider": "dext",
                "name": "x\u0000y",
                "base_url": "https://a.example",
                "api_token": "t",
            },
            "name",
        ),
        (
            {
                "provider": "dext",
                "name": "x",
                "base_url": "https://a.example",
                "api_token": "t",
                "backfill": "yes",
            },
            "backfill",
        ),
        (
            {
                "provider": "dext",
                "name": "x",
                "base_url": "https://a.example",
                "api_token": "t",
                "colour": "red",
            },
            "colour",
        ),
    ],
)
async def test_create_rejects_bad_input_naming_the_field(
    client: TestClient[Any, Any], pool: asyncpg.Pool, body: dict[str, Any], field: str
) -> None:
    error = await error_of(await client.post("/v1/accounts", json=body), 400)
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    assert field in error["message"]
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 0


@pytest.mark.parametrize(
    "raw", [b"{", b"[]", b'"text"', b"null", b"", b"\xff\xfe", b'{"provider": "dext",}']
)
async def test_create_rejects_bodies_that_are_not_a_json_object(
    client: TestClient[Any, Any], raw: bytes
) -> None:
    response = await client.post(
        "/v1/accounts", data=raw, headers={"Content-Type": "application/json"}
    )
    error = await error_of(response, 400)
    assert error["code"] == "invalid_request"


async def test_huge_body_is_a_413_in_the_envelope(client: TestClient[Any, Any]) -> None:
    body = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = await client.post(
        "/v1/accounts", data=io.BytesIO(body), headers={"Content-Type": "application/json"}
    )
    error = await error_of(response, 413)
    assert error["code"] == "payload_too_large"


async def test_unknown_ids_are_404_on_every_account_route(client: TestClient[Any, Any]) -> None:
    missing = "acc_000000000000ffffffffffffffff"
    for method, path, body in [
        ("GET", f"/v1/accounts/{missing}", None),
        ("PATCH", f"/v1/accounts/{missing}", {"name": "x"}),
        ("DELETE", f"/v1/accounts/{missing}", None),
        ("POST", f"/v1/accounts/{missing}/poll", None),
        ("GET", "/v1/accounts/%00", None),
        ("GET", "/v1/accounts/" + "a" * 300, None),
    ]:
        response = await client.request(method, path, json=body)
        error = await error_of(response, 404)
        assert error["code"] == "not_found", (method, path)


async def test_patch_changes_fields_and_a_new_token_clears_broken(
    client: TestClient[Any, Any], pool: asyncpg.Pool, settings: Settings
) -> None:
    account = await create_account(client)
    assert await accounts.mark_broken(pool, account["id"], "invalid_token") is True
    broken = await (await client.get(f"/v1/accounts/{account['id']}")).json()
    assert broken["status"] == "broken"
    assert broken["last_error"] == "invalid_token"

    response = await client.patch(f"/v1/accounts/{account['id']}", json={"name": "Renamed"})
    assert response.status == 200
    renamed = await response.json()
    assert renamed["name"] == "Renamed"
    assert renamed["status"] == "broken"  # a rename alone does not clear it

    response = await client.patch(
        f"/v1/accounts/{account['id']}",
        json={"api_token": "new-upstream-token", "base_url": "http://other.example:8090/v1"},
    )
    text = await response.text()
    assert response.status == 200, text
    assert "new-upstream-token" not in text
    fixed = await response.json()
    assert fixed["status"] == "baselining"
    assert fixed["last_error"] is None
    assert fixed["base_url"] == "http://other.example:8090/v1"
    assert fixed["poll_requested_at"] is not None  # the new token is tried at once
    stored = await accounts.get_account(pool, account["id"])
    assert accounts.account_token(Vault(settings.secret_keys), stored) == "new-upstream-token"


@pytest.mark.parametrize(
    "body",
    [{"provider": "invoicext"}, {"name": None}, {"base_url": "javascript:alert(1)"}, [1]],
)
async def test_patch_rejects_bad_input(client: TestClient[Any, Any], body: Any) -> None:
    account = await create_account(client)
    await error_of(await client.patch(f"/v1/accounts/{account['id']}", json=body), 400)
    unchanged = await (await client.get(f"/v1/accounts/{account['id']}")).json()
    assert unchanged == account


async def test_delete_is_soft_keeps_events_and_hides_the_account(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    account = await create_account(client)
    other = await create_account(client, name="Other")
    await pool.execute(
        "INSERT INTO events (type, account_id, object_type, object_id, body) "
        "VALUES ('document.created', $1, 'document', 'd1', '{}'::jsonb)",
        account["id"],
    )
    response = await client.delete(f"/v1/accounts/{account['id']}")
    assert response.status == 204
    await error_of(await client.get(f"/v1/accounts/{account['id']}"), 404)
    await error_of(await client.delete(f"/v1/accounts/{account['id']}"), 404)
    await error_of(await client.post(f"/v1/accounts/{account['id']}/poll"), 404)
    listed = await (await client.get("/v1/accounts")).json()
    assert [a["id"] for a in listed["data"]] == [other["id"]]
    assert await pool.fetchval("SELECT count(*) FROM events WHERE account_id = $1", account["id"])
    pollable = await accounts.list_pollable_accounts(pool)
    assert [a.id for a in pollable] == [other["id"]]


async def test_poll_now_is_recorded_durably_and_wakes_the_scheduler(
    client: TestClient[Any, Any], pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    account = await create_account(client)
    pubsub = redis_client.pubsub()
    try:
        await pubsub.subscribe(accounts.POLL_CHANNEL)
        response = await client.post(f"/v1/accounts/{account['id']}/poll")
        assert response.status == 202
        assert await response.json() == {"queued": True}
        message = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                break
        assert message is not None
        assert message["data"] == account["id"].encode()
    finally:
        await pubsub.aclose()
    requested = await pool.fetchval(
        "SELECT poll_requested_at FROM accounts WHERE id = $1", account["id"]
    )
    assert requested is not None
    # A pass that began before the request does not clear it; one that began after does.
    await accounts.clear_poll_request(pool, account["id"], requested - timedelta(seconds=1))
    assert (await accounts.get_account(pool, account["id"])).poll_requested_at == requested
    await accounts.clear_poll_request(pool, account["id"], requested)
    assert (await accounts.get_account(pool, account["id"])).poll_requested_at is None


async def test_pagination_is_newest_first_and_stable_under_concurrent_inserts(
    client: TestClient[Any, Any],
) -> None:
    existing = [(await create_account(client, name=f"a{i}"))["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        # Another client inserts while we page, concurrently with the page request.
        page_resp, _ = await asyncio.gather(
            client.get(f"/v1/accounts{query}"), create_account(client, name=f"new{pages}")
        )
        assert page_resp.status == 200
        page = await page_resp.json()
        assert len(page["data"]) <= 3
        seen += [a["id"] for a in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    old = [i for i in seen if i in existing]
    assert old == list(reversed(existing))  # every one, once, newest first
    assert len(seen) == len(set(seen))
    assert pages >= 3


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("limit=5&limit=6", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=WyJ4Il0", "cursor"),  # base64url of ["x"]
        ("cursor=%00", "cursor"),
        ("colour=red", "colour"),
    ],
)
async def test_list_rejects_bad_limits_cursors_and_parameters(
    client: TestClient[Any, Any], query: str, field: str
) -> None:
    error = await error_of(await client.get(f"/v1/accounts?{query}"), 400)
    assert error["field"] == field


async def test_limit_boundaries_are_accepted(client: TestClient[Any, Any]) -> None:
    await create_account(client)
    await create_account(client)
    one = await (await client.get("/v1/accounts?limit=1")).json()
    assert len(one["data"]) == 1
    assert one["next_cursor"]
    most = await (await client.get("/v1/accounts?limit=200")).json()
    assert len(most["data"]) == 2
    assert most["next_cursor"] is None


async def test_scheduler_state_transitions(pool: asyncpg.Pool, settings: Settings) -> None:
    vault = Vault(settings.secret_keys)
    account = await accounts.create_account(
        pool, vault, provider="dext", name="P", base_url="https://x.example", api_token="tok"
    )
    assert account.status == "baselining"
    assert accounts.account_token(vault, account) == "tok"
    assert "tok" not in repr(account).replace("token", "")

    await accounts.record_poll_error(pool, account.id, "upstream_unavailable")
    assert (await accounts.get_account(pool, account.id)).last_error == "upstream_unavailable"
    await accounts.record_poll_success(pool, account.id)
    polled = await accounts.get_account(pool, account.id)
    assert polled.last_error is None
    assert polled.last_poll_at is not None

    await accounts.complete_baseline(pool, account.id)
    done = await accounts.get_account(pool, account.id)
    assert done.status == "active"
    assert done.baseline_completed_at is not None

    reset = datetime(2026, 11, 21, 10, 1, tzinfo=UTC)
    await accounts.record_rate_limit(
        pool, account.id, {"limit": 60, "remaining": 12, "reset_at": reset, "other": 1}
    )
    await accounts.record_rate_limit(pool, account.id, {"throttled_last_hour": 3})
    shown = (await accounts.get_account(pool, account.id)).public()["rate_limit"]
    assert shown == {
        "limit": 60,
        "remaining": 12,
        "reset_at": "2026-11-21T10:01:00Z",
        "throttled_last_hour": 3,
    }

    assert await accounts.mark_broken(pool, account.id, "invalid_token") is True
    assert await accounts.mark_broken(pool, account.id, "invalid_token") is False
    assert [a.id for a in await accounts.list_pollable_accounts(pool)] == []
    # Retried once the broken_retry interval has passed ...
    retried = await accounts.list_pollable_accounts(pool, broken_retry=timedelta(0))
    assert [a.id for a in retried] == [account.id]
    # ... or at once when someone asks for a poll.
    redis_free_request = "UPDATE accounts SET poll_requested_at = now() WHERE id = $1"
    await pool.execute(redis_free_request, account.id)
    assert [a.id for a in await accounts.list_pollable_accounts(pool)] == [account.id]

    assert await accounts.mark_recovered(pool, account.id) is True
    assert await accounts.mark_recovered(pool, account.id) is False
    recovered = await accounts.get_account(pool, account.id)
    assert recovered.status == "active"
    assert recovered.last_error is None


async def test_a_new_account_shows_a_baseline_not_started_and_openapi_says_so(
    client: TestClient[Any, Any],
) -> None:
    account = await create_account(client)
    assert account["baseline"] == {
        "clients_done": 0,
        "clients_total": None,
        "items_seen": 0,
        "items_total": None,
        "requests_left": None,
        "estimated_seconds_left": None,
    }
    shown = await (await client.get(f"/v1/accounts/{account['id']}")).json()
    assert shown["baseline"] == account["baseline"]
    spec = await (await client.get("/openapi.json")).json()
    baseline = spec["components"]["schemas"]["Account"]["properties"]["baseline"]
    assert baseline["type"] == ["object", "null"]
    assert set(baseline["required"]) == set(account["baseline"])


async def test_warnings_show_what_polls_set_aside_per_kind(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    created = await create_account(client)
    assert created["warnings"] == []
    quiet = await create_account(client, name="quiet")
    for reason in ("/costs page 1 item 3: expected an object, got str", "/sales page 2 item 0"):
        tally = SetAsideTally()
        tally.add(SetAside("not_an_object", reason))
        tally.add(SetAside("not_an_object", reason))
        tally.add(SetAside("unusable_field", "/clients page 1 item 1 (id c9): health_score"))
        with capture_logs() as logs:
            await account_warnings.record_set_aside(pool, created["id"], tally)
        assert sorted(e["kind"] for e in logs if e["event"] == "upstream_objects_set_aside") == [
            "not_an_object",
            "unusable_field",
        ]
    response = await client.get(f"/v1/accounts/{created['id']}")
    assert response.status == 200
    shown = {w["kind"]: w for w in (await response.json())["warnings"]}
    assert set(shown) == {"not_an_object", "unusable_field"}
    assert shown["not_an_object"]["count"] == 4
    assert shown["not_an_object"]["example"] == "/sales page 2 item 0"  # the latest
    assert shown["unusable_field"]["count"] == 2
    first = datetime.fromisoformat(shown["not_an_object"]["first_seen"])
    assert first <= datetime.fromisoformat(shown["not_an_object"]["last_seen"])
    listed = {
        a["id"]: a["warnings"] for a in (await (await client.get("/v1/accounts")).json())["data"]
    }
    assert len(listed[created["id"]]) == 2
    assert listed[quiet["id"]] == []
