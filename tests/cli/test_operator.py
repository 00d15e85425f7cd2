"""The operator commands (`relay accounts|subscriptions|events|deliveries`) against a live API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relay.cli.accounts import baseline_bar
from relay.errors import ConfigError


async def test_accounts_add_list_show_poll(cli: Any) -> None:
    added = await cli(
        "accounts",
        "add",
        "--name",
        "Smith & Co",
        "--base-url",
        "https://dext.example/api",
        "--api-token",
        "tok-never-shown",
        "--json",
    )
    assert added.code == 0, added.err
    account = added.json()
    assert account["id"].startswith("acc_")
    assert account["status"] == "baselining"
    assert "tok-never-shown" not in added.out

    listed = await cli("accounts", "list")
    assert listed.code == 0
    header, *rows = listed.out.splitlines()
    assert header.split()[:4] == ["ID", "PROVIDER", "NAME", "STATUS"]
    assert any(account["id"] in row and "Smith & Co" in row for row in rows)

    shown = await cli("accounts", "show", account["id"])
    assert shown.code == 0
    assert "baselining" in shown.out
    assert "tok-never-shown" not in shown.out

    polled = await cli("accounts", "poll", account["id"], "--json")
    assert polled.code == 0, polled.err
    assert polled.json() == {"queued": True}


async def test_subscription_lifecycle_and_deliveries(cli: Any) -> None:
    added = await cli(
        "subscriptions",
        "add",
        "--url",
        "http://127.0.0.1:9/hook",
        "--event-types",
        "document.*,relay.ping",
        "--description",
        "ops",
    )
    assert added.code == 0, added.err
    assert "shown only once" in added.out
    secret = next(line.split()[-1] for line in added.out.splitlines() if line.startswith("secret"))
    assert secret.startswith("whsec_")
    sub_id = next(line.split()[-1] for line in added.out.splitlines() if line.startswith("id "))

    listed = await cli("subscriptions", "list", "--json")
    assert [s["id"] for s in listed.json()["data"]] == [sub_id]
    assert listed.json()["data"][0]["event_types"] == ["document.*", "relay.ping"]

    rotated = await cli("subscriptions", "rotate-secret", sub_id, "--json")
    assert rotated.code == 0
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != secret

    tested = await cli("subscriptions", "test", sub_id, "--json")
    assert tested.code == 0, tested.err

    events = await cli("events", "list", "--type", "relay.ping", "--json")
    assert events.code == 0, events.err
    [ping] = events.json()["data"]
    assert ping["type"] == "relay.ping"
    shown = await cli("events", "show", ping["id"])
    assert ping["id"] in shown.out

    async def deliveries() -> list[dict[str, Any]]:
        result = await cli("deliveries", "list", "--subscription-id", sub_id, "--json")
        assert result.code == 0, result.err
        data: list[dict[str, Any]] = result.json()["data"]
        return data

    for _ in range(100):  # fan-out runs in the worker; without one, a replay queues it
        if await deliveries():
            break
        replayed = await cli("events", "replay", ping["id"], "--json")
        assert replayed.code == 0, replayed.err
        await asyncio.sleep(0.05)
    [delivery, *_] = await deliveries()
    assert delivery["event_id"] == ping["id"]

    detail = await cli("deliveries", "show", delivery["id"])
    assert detail.code == 0
    assert delivery["id"] in detail.out

    table = await cli("deliveries", "list")
    assert table.out.splitlines()[0].split()[:3] == ["ID", "STATUS", "ATTEMPT_COUNT"]

    bulk = await cli("deliveries", "retry", "--all-failed", "--json")
    assert bulk.code == 0, bulk.err
    assert bulk.json() == {"queued": 0}


async def test_errors_are_one_line(cli: Any) -> None:
    missing = await cli("accounts", "show", "acc_0000000000000000000000000000")
    assert missing.code == 1
    assert missing.out == ""
    assert missing.err.startswith("relay: not_found")
    assert len(missing.err.strip().splitlines()) == 1

    bad = await cli("events", "list", "--since", "yesterday")
    assert bad.code == 1
    assert "HTTP 400" in bad.err

    down = await cli("accounts", "list", api_url="http://127.0.0.1:9")
    assert down.code == 1
    assert "cannot reach the admin API at http://127.0.0.1:9" in down.err

    wrong = await cli("accounts", "list", admin_token="wrong")
    assert wrong.code == 1
    assert "HTTP 401" in wrong.err

    with pytest.raises(ConfigError, match="RELAY_ADMIN_TOKEN"):
        await cli("accounts", "list", admin_token=None)


def test_the_baseline_bar_says_what_is_known_and_nothing_more() -> None:
    progress = {
        "clients_done": 12,
        "clients_total": 30,
        "items_seen": 4210,
        "items_total": None,
        "requests_left": 1000,
        "estimated_seconds_left": 1080.0,
    }
    assert baseline_bar(progress) == (
        "[############..................] 12/30 clients, 4,210 items, ~18 min left"
    )
    # With the items' total known the bar follows the items; hours read as hours.
    sized = {**progress, "items_total": 8420, "estimated_seconds_left": 7500.0}
    assert baseline_bar(sized) == (
        "[###############...............] 12/30 clients, 4,210 of 8,420 items, ~2 h 5 min left"
    )
    unknown = {k: None for k in progress} | {"clients_done": 0, "items_seen": 0}
    assert baseline_bar(unknown) == (
        "[..............................] client list not read yet, 0 items, "
        "time left not known yet"
    )
