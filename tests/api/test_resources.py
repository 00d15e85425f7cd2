"""Events, subscriptions and deliveries over HTTP, against the real stores."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from relay.api.app import create_app
from relay.delivery.fanout import fan_out_events
from relay.events import build_event, insert_events
from relay.settings import Settings
from tests.support.api import AUTH, ClientFactory, create_account, error_of

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


async def store_events(pool: asyncpg.Pool, bodies: list[dict[str, Any]]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, bodies)


def doc_event(
    type: str, account_id: str, *, client: str = "c1", obj: str = "d1", minutes: int = 0
) -> dict[str, Any]:
    return build_event(
        type,
        account_id=account_id,
        client_id=client,
        object_id=obj,
        object={"id": obj, "status": "ready"},
        previous={"status": "review"} if type != "document.created" else {},
        at=T0 + timedelta(minutes=minutes),
    )


async def create_subscription(client: TestClient[Any, Any], **overrides: Any) -> dict[str, Any]:
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["document.*"], **overrides}
    response = await client.post("/v1/subscriptions", json=body)
    assert response.status == 201, await response.text()
    data: dict[str, Any] = await response.json()
    return data


# ---- events ------------------------------------------------------------------------------------


async def test_events_are_listed_newest_first_in_the_webhook_shape(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    account = await create_account(client)
    bodies = [
        doc_event("document.created", account["id"], obj="d1", minutes=0),
        doc_event("document.status_changed", account["id"], obj="d1", minutes=1),
        doc_event("document.status_changed", account["id"], client="c2", obj="d2", minutes=2),
        doc_event("supplier.created", account["id"], obj="s1", minutes=3),
    ]
    await store_events(pool, bodies)
    page = await (await client.get("/v1/events")).json()
    assert page == {"data": list(reversed(bodies)), "next_cursor": None}

    one = await client.get(f"/v1/events/{bodies[1]['id']}")
    assert one.status == 200
    assert await one.json() == bodies[1]

    async def ids(**params: str) -> list[str]:
        response = await client.get("/v1/events", params=params)
        assert response.status == 200, await response.text()
        return [e["id"] for e in (await response.json())["data"]]

    assert await ids(type="document.status_changed") == [bodies[2]["id"], bodies[1]["id"]]
    assert await ids(type="document.*") == [b["id"] for b in reversed(bodies[:3])]
    assert await ids(client_id="c2") == [bodies[2]["id"]]
    assert await ids(object_id="d1") == [bodies[1]["id"], bodies[0]["id"]]
    assert await ids(account_id="acc_other") == []
    assert await ids(since="2026-11-21T10:01:00Z", until="2026-11-21T11:02:00+01:00") == [
        bodies[1]["id"]
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-21"}, "since"),
        ({"until": "2026-11-21T10:00:00"}, "until"),  # no offset
        ({"until": "2026-13-01T10:00:00Z"}, "until"),
        ({"since": "9999-12-31T23:59:59-05:00"}, "since"),  # overflows in UTC
        ({"limit": "500"}, "limit"),
        ({"cursor": "eyJzZXEiOiAieCJ9"}, "cursor"),  # {"seq": "x"}
        ({"kind": "document"}, "kind"),
    ],
)
async def test_event_list_rejects_bad_filters(
    client: TestClient[Any, Any], query: dict[str, str], field: str
) -> None:
    error = await error_of(await client.get("/v1/events", params=query), 400)
    assert error["field"] == field


async def test_event_pages_hold_still_while_events_arrive(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    account = await create_account(client)
    old = [doc_event("document.created", account["id"], obj=f"d{i}") for i in range(9)]
    await store_events(pool, old)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
        response, _ = await asyncio.gather(
            client.get("/v1/events", params=params),
            store_events(pool, [doc_event("document.created", account["id"], obj="new")]),
        )
        page = await response.json()
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i for i in seen if i in {b["id"] for b in old}] == [b["id"] for b in reversed(old)]
    assert len(seen) == len(set(seen))


async def test_replay_creates_deliveries_for_matching_subscriptions(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    account = await create_account(client)
    event = doc_event("document.status_changed", account["id"])
    await store_events(pool, [event])
    wanted = await create_subscription(client)
    await create_subscription(client, event_types=["supplier.*"])
    response = await client.post(f"/v1/events/{event['id']}/replay")
    assert response.status == 202
    assert await response.json() == {"queued": 1}
    only = await client.post(
        f"/v1/events/{event['id']}/replay", json={"subscription_ids": [wanted["id"]]}
    )
    assert await only.json() == {"queued": 1}
    rows = await pool.fetch(
        "SELECT subscription_id, generation FROM deliveries WHERE event_id = $1 ORDER BY 2",
        event["id"],
    )
    assert [(r["subscription_id"], r["generation"]) for r in rows] == [
        (wanted["id"], 0),
        (wanted["id"], 1),
    ]

    await error_of(await client.post("/v1/events/evt_missing/replay"), 404)
    await error_of(
        await client.post(
            f"/v1/events/{event['id']}/replay", json={"subscription_ids": ["sub_missing"]}
        ),
        404,
    )
    for bad in ({"subscription_ids": "sub_x"}, {"subscription_ids": []}, {"all": True}):
        await error_of(await client.post(f"/v1/events/{event['id']}/replay", json=bad), 400)
    await error_of(await client.get("/v1/events/evt_missing"), 404)


# ---- subscriptions -----------------------------------------------------------------------------


async def test_subscription_lifecycle(client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    created = await create_subscription(
        client,
        kind="slack",
        account_ids=["acc_1"],
        filter="data.object.alert_level == 'high'",
        description="alerts",
    )
    secret = created.pop("secret")
    assert secret.startswith("whsec_")
    assert created["id"].startswith("sub_")
    assert created["kind"] == "slack"
    assert created["enabled"] is True
    assert created["disabled_reason"] is None

    fetched = await (await client.get(f"/v1/subscriptions/{created['id']}")).json()
    assert fetched == created
    assert secret not in str(fetched)
    listing = await (await client.get("/v1/subscriptions")).json()
    assert listing == {"data": [created], "next_cursor": None}

    response = await client.patch(
        f"/v1/subscriptions/{created['id']}",
        json={"enabled": False, "filter": None, "event_types": ["*"], "client_ids": ["c9"]},
    )
    assert response.status == 200, await response.text()
    patched = await response.json()
    assert patched["enabled"] is False
    assert patched["disabled_reason"]
    assert patched["filter"] is None
    assert patched["event_types"] == ["*"]
    assert patched["client_ids"] == ["c9"]

    rotated = await client.post(f"/v1/subscriptions/{created['id']}/rotate-secret")
    assert rotated.status == 200
    new_secret = (await rotated.json())["secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != secret

    assert (await client.delete(f"/v1/subscriptions/{created['id']}")).status == 204
    await error_of(await client.get(f"/v1/subscriptions/{created['id']}"), 404)
    for method, suffix in [
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/rotate-secret"),
        ("POST", "/test"),
    ]:
        response = await client.request(
            method,
            f"/v1/subscriptions/{created['id']}{suffix}",
            json={} if method == "PATCH" else None,
        )
        await error_of(response, 404)


async def test_test_sends_a_ping_delivery(client: TestClient[Any, Any]) -> None:
    subscription = await create_subscription(client, event_types=["client.health_changed"])
    response = await client.post(f"/v1/subscriptions/{subscription['id']}/test")
    assert response.status == 202
    delivery = await response.json()
    assert delivery["subscription_id"] == subscription["id"]
    assert delivery["status"] == "pending"
    event = await (await client.get(f"/v1/events/{delivery['event_id']}")).json()
    assert event["type"] == "relay.ping"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_types": ["*"]}, "url"),
        ({"url": "http://127.0.0.1:9/h"}, "event_types"),
        ({"url": "ftp://example.com/h", "event_types": ["*"]}, "url"),
        ({"url": "http://127.0.0.1:9/h", "event_types": []}, "event_types"),
        ({"url": "http://127.0.0.1:9/h", "event_types": "document.*"}, "event_types"),
        ({"url": "http://127.0.0.1:9/h", "event_types": [1]}, "event_types[0]"),
        ({"url": "http://127.0.0.1:9/h", "event_types": ["Document!"]}, "event_types[0]"),
        ({"url": "http://127.0.0.1:9/h", "event_types": ["*"], "kind": "email"}, "kind"),
        ({"url": "http://127.0.0.1:9/h", "event_types": ["*"], "filter": "a ==="}, "filter"),
        ({"url": "http://127.0.0.1:9/h", "event_types": ["*"], "account_ids": "a"}, "account_ids"),
        ({"url": "http://127.0.0.1:9/h", "event_types": ["*"], "secret": "whsec_x"}, "secret"),
    ],
)
async def test_subscription_create_rejects_bad_input(
    client: TestClient[Any, Any], pool: asyncpg.Pool, body: dict[str, Any], field: str
) -> None:
    error = await error_of(await client.post("/v1/subscriptions", json=body), 400)
    assert error["field"] == field
    assert await pool.fetchval("SELECT count(*) FROM subscriptions") == 0


async def test_private_targets_are_refused_unless_allowed(
    aiohttp_client: ClientFactory, settings: Settings, pool: asyncpg.Pool
) -> None:
    strict = create_app(settings.with_changes(allow_private_targets=False))
    client = await aiohttp_client(strict, headers=AUTH)
    for url in (
        "http://127.0.0.1/h",
        "http://[::1]/h",
        "http://169.254.169.254/",
        "http://2130706433/",
    ):
        response = await client.post("/v1/subscriptions", json={"url": url, "event_types": ["*"]})
        error = await error_of(response, 400)
        assert error["field"] == "url"
    good = await client.post(
        "/v1/subscriptions", json={"url": "https://hooks.example.com/x", "event_types": ["*"]}
    )
    assert good.status == 201
    sub = await good.json()
    patch = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"url": "http://10.0.0.1/"})
    assert (await error_of(patch, 400))["field"] == "url"


# ---- deliveries --------------------------------------------------------------------------------


async def test_deliveries_list_get_and_retry(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    account = await create_account(client)
    sub_a = await create_subscription(client)
    sub_b = await create_subscription(client, event_types=["document.created"])
    events = [doc_event("document.created", account["id"], obj=f"d{i}") for i in range(3)]
    await store_events(pool, events)
    assert await fan_out_events(pool) == 6

    listing = await (await client.get("/v1/deliveries")).json()
    assert len(listing["data"]) == 6
    assert listing["next_cursor"] is None
    first = listing["data"][0]
    assert first["status"] == "pending"
    assert first["attempts"] == []

    async def ids(**params: str) -> set[str]:
        response = await client.get("/v1/deliveries", params=params)
        assert response.status == 200, await response.text()
        return {d["id"] for d in (await response.json())["data"]}

    assert len(await ids(subscription_id=sub_b["id"])) == 3
    assert len(await ids(event_id=events[0]["id"])) == 2
    assert await ids(status="failed") == set()

    # Paging through deliveries in pages of 4 sees each once.
    page1 = await (await client.get("/v1/deliveries", params={"limit": "4"})).json()
    page2 = await (
        await client.get("/v1/deliveries", params={"limit": "4", "cursor": page1["next_cursor"]})
    ).json()
    assert len(page1["data"]) == 4
    assert len(page2["data"]) == 2
    assert page2["next_cursor"] is None
    assert {d["id"] for d in page1["data"] + page2["data"]} == await ids()

    got = await client.get(f"/v1/deliveries/{first['id']}")
    assert got.status == 200
    assert (await got.json())["id"] == first["id"]

    # Two deliveries of subscription A fail for good; a bulk retry queues exactly those.
    failed = await pool.fetch(
        "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL WHERE id IN ("
        "SELECT id FROM deliveries WHERE subscription_id = $1 ORDER BY id LIMIT 2) RETURNING id",
        sub_a["id"],
    )
    assert await ids(status="failed") == {r["id"] for r in failed}
    response = await client.post(
        "/v1/deliveries/retry",
        json={"status": "failed", "subscription_id": sub_b["id"]},
    )
    assert response.status == 202
    assert await response.json() == {"queued": 0}
    response = await client.post(
        "/v1/deliveries/retry",
        json={"status": "failed", "since": "2000-01-01T00:00:00Z", "until": "2999-01-01T00:00:00Z"},
    )
    assert await response.json() == {"queued": 2}
    assert await ids(status="failed") == set()

    one = await client.post(f"/v1/deliveries/{first['id']}/retry")
    assert one.status == 202
    assert (await one.json())["status"] == "pending"

    # Being sent right now (a live lease): a retry would send it twice, so it is a 409.
    sending = listing["data"][1]["id"]
    await pool.execute(
        "UPDATE deliveries SET lease_token = gen_random_uuid(), "
        "leased_until = now() + interval '30 seconds' WHERE id = $1",
        sending,
    )
    conflict = await error_of(await client.post(f"/v1/deliveries/{sending}/retry"), 409)
    assert "being sent right now" in conflict["message"]
    # Its worker died (the lease ran out): retried at once.
    await pool.execute(
        "UPDATE deliveries SET status = 'failed', leased_until = now() - interval '1 second' "
        "WHERE id = $1",
        sending,
    )
    revived = await client.post(f"/v1/deliveries/{sending}/retry")
    assert revived.status == 202
    assert (await revived.json())["status"] == "pending"

    await error_of(await client.get("/v1/deliveries/dlv_missing"), 404)
    await error_of(await client.post("/v1/deliveries/dlv_missing/retry"), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "status"),
        ({"status": "pending"}, "status"),
        ({"status": "failed", "since": "last week"}, "since"),
        ({"status": "failed", "until": 5}, "until"),
        ({"status": "failed", "subscription_id": ["sub_1"]}, "subscription_id"),
        ({"status": "failed", "everything": True}, "everything"),
    ],
)
async def test_bulk_retry_rejects_bad_input(
    client: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    error = await error_of(await client.post("/v1/deliveries/retry", json=body), 400)
    assert error["field"] == field


@pytest.mark.parametrize(
    ("query", "field"),
    [({"status": "done"}, "status"), ({"cursor": "abc"}, "cursor"), ({"limit": "-1"}, "limit")],
)
async def test_delivery_list_rejects_bad_filters(
    client: TestClient[Any, Any], query: dict[str, str], field: str
) -> None:
    error = await error_of(await client.get("/v1/deliveries", params=query), 400)
    assert error["field"] == field
