"""The subscriptions store: create/list/get/update/delete/rotate, validation, and matching."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook

from relay.delivery.signing import secret_key
from relay.delivery.subscriptions import (
    Matcher,
    delete_subscription,
    get_subscription,
    list_subscriptions,
    load_matchers,
    rotate_secret,
    signing_keys,
    signing_keys_change_at,
    type_matches,
    update_subscription,
)
from relay.errors import InvalidInput, NotFound
from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import subscribe


async def test_create_returns_secret_once_and_stores_it_encrypted(
    pool: asyncpg.Pool, vault: Vault, settings: Settings
) -> None:
    record, secret = await subscribe(
        pool,
        vault,
        settings,
        "https://hooks.example.com/a",
        event_types=["document.*", "client.health_changed"],
        client_ids=["c1"],
        filter="data.object.alert_level == 'high'",
        description="outreach",
    )
    assert record["id"].startswith("sub_")
    assert secret.startswith("whsec_")
    assert "secret" not in record
    assert record["event_types"] == ["client.health_changed", "document.*"]
    assert record["account_ids"] is None
    assert record["client_ids"] == ["c1"]
    assert record["enabled"] is True
    stored = await pool.fetchval("SELECT secret_enc FROM subscriptions WHERE id = $1", record["id"])
    assert secret not in stored
    assert vault.decrypt(stored) == secret
    assert await get_subscription(pool, record["id"]) == record


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "http://169.254.169.254/"}, "url"),
        ({"url": "ftp://x.example.com/"}, "url"),
        ({"kind": "email"}, "kind"),
        ({"event_types": []}, "event_types"),
        ({"event_types": ["document"]}, "event_types"),
        ({"event_types": ["doc*"]}, "event_types"),
        ({"event_types": "document.*"}, "event_types"),
        ({"filter": "data.object.[[["}, "filter"),
        ({"filter": "a ==="}, "filter"),
        ({"account_ids": "acc_1"}, "account_ids"),
        ({"client_ids": [1]}, "client_ids"),
        ({"description": "x" * 2000}, "description"),
    ],
)
async def test_bad_input_is_a_typed_error(
    pool: asyncpg.Pool, vault: Vault, settings: Settings, changes: dict[str, object], field: str
) -> None:
    strict = settings.with_changes(allow_private_targets=False)
    args = {"url": "https://hooks.example.com/x", "event_types": ["*"], **changes}
    url = args.pop("url")
    with pytest.raises(InvalidInput) as info:
        await subscribe(pool, vault, strict, str(url) if isinstance(url, str) else url, **args)  # type: ignore[arg-type]
    assert info.value.field == field
    record, _ = await subscribe(pool, vault, strict, "https://hooks.example.com/ok")
    with pytest.raises(InvalidInput) as info:
        await update_subscription(pool, strict, record["id"], changes)
    assert info.value.field == field
    assert await pool.fetchval("SELECT count(*) FROM subscriptions") == 1


async def test_private_target_refused_unless_allowed(
    pool: asyncpg.Pool, vault: Vault, settings: Settings
) -> None:
    strict = settings.with_changes(allow_private_targets=False)
    with pytest.raises(InvalidInput, match="RELAY_ALLOW_PRIVATE_TARGETS"):
        await subscribe(pool, vault, strict, "http://localhost:9000/hook")
    record, _ = await subscribe(pool, vault, settings, "http://localhost:9000/hook")
    assert record["url"] == "http://localhost:9000/hook"


async def test_list_is_newest_first_with_cursor(
    pool: asyncpg.Pool, vault: Vault, settings: Settings
) -> None:
    ids = []
    for i in range(5):
        ids.append((await subscribe(pool, vault, settings, f"https://h.example.com/{i}"))[0]["id"])
        # Ids order by creation to the millisecond; within one, by their random part.
        await asyncio.sleep(0.002)
    await delete_subscription(pool, ids[2])
    page, cursor = await list_subscriptions(pool, limit=2)
    assert [s["id"] for s in page] == [ids[4], ids[3]]
    assert cursor is not None
    page, cursor = await list_subscriptions(pool, limit=2, cursor=cursor)
    assert [s["id"] for s in page] == [ids[1], ids[0]]
    assert cursor is None
    for bad in ("nope", "!!!", "c3ViX2Zvbw"):
        with pytest.raises(InvalidInput) as info:
            await list_subscriptions(pool, cursor=bad)
        assert info.value.field == "cursor"
    with pytest.raises(InvalidInput):
        await list_subscriptions(pool, limit=201)


async def test_update_delete_and_not_found(
    pool: asyncpg.Pool, vault: Vault, settings: Settings
) -> None:
    record, _ = await subscribe(pool, vault, settings, "https://h.example.com/a")
    updated = await update_subscription(
        pool, settings, record["id"], {"enabled": False, "event_types": ["supplier.*"]}
    )
    assert (updated["enabled"], updated["disabled_reason"]) == (False, "disabled by an operator")
    assert updated["event_types"] == ["supplier.*"]
    assert await load_matchers(pool) == []
    enabled = await update_subscription(pool, settings, record["id"], {"enabled": True})
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)
    with pytest.raises(InvalidInput):
        await update_subscription(pool, settings, record["id"], {"secret": "x"})
    await delete_subscription(pool, record["id"])
    for call in (
        get_subscription(pool, record["id"]),
        update_subscription(pool, settings, record["id"], {"enabled": True}),
        delete_subscription(pool, record["id"]),
        rotate_secret(pool, vault, record["id"]),
    ):
        with pytest.raises(NotFound):
            await call


async def test_rotate_keeps_the_old_secret_for_a_day(
    pool: asyncpg.Pool, vault: Vault, settings: Settings
) -> None:
    record, old = await subscribe(pool, vault, settings, "https://h.example.com/a")
    _, new = await rotate_secret(pool, vault, record["id"])
    assert new != old
    row = await pool.fetchrow(
        "SELECT secret_enc, previous_secret_enc, "
        "previous_secret_expires_at - now() AS left FROM subscriptions WHERE id = $1",
        record["id"],
    )
    assert vault.decrypt(row["secret_enc"]) == new
    assert vault.decrypt(row["previous_secret_enc"]) == old
    assert 23.9 * 3600 < row["left"].total_seconds() <= 24 * 3600
    Webhook(new)  # a secret any Standard Webhooks library accepts


def test_type_matching() -> None:
    assert type_matches(["*"], "supplier.updated")
    assert type_matches(["document.*"], "document.deleted")
    assert not type_matches(["document.*"], "documents.deleted")
    assert type_matches(["client.health_changed"], "client.health_changed")
    assert not type_matches(["client.health_changed"], "client.health")
    assert not type_matches(["supplier.*"], "document.created")


def test_matcher_ids_and_filter() -> None:
    m = Matcher(
        id="sub_1",
        event_types=("client.health_changed",),
        account_ids=frozenset({"acc_1"}),
        client_ids=None,
        filter="data.object.alert_level == 'high' && contains(keys(data.previous), 'alert_level')",
    )
    high = {"data": {"object": {"alert_level": "high"}, "previous": {"alert_level": "medium"}}}
    # Staying high while the score moves: `previous` holds only the score.
    still = {"data": {"object": {"alert_level": "high"}, "previous": {"health_score": 30}}}
    assert m.matches("client.health_changed", "acc_1", "c1", high)
    assert not m.matches("client.health_changed", "acc_1", "c1", still)
    assert not m.matches("client.health_changed", "acc_2", "c1", high)
    assert not m.matches("document.created", "acc_1", "c1", high)
    only_c2 = Matcher("sub_2", ("*",), None, frozenset({"c2"}), None)
    assert only_c2.matches("document.created", None, "c2", {})
    assert not only_c2.matches("document.created", None, "c1", {})
    assert not only_c2.matches("account.auth_failed", "acc_1", None, {})
    # A filter that errors on a body (a type error) does not match rather than crash.
    typed = Matcher("sub_3", ("*",), None, None, "data.object.total > `5`")
    assert not typed.matches("document.created", None, None, {"data": {"object": {"total": "x"}}})


async def test_each_replaced_secret_signs_until_its_own_overlap_ends(
    pool: asyncpg.Pool, vault: Vault, settings: Settings
) -> None:
    """S0 -> S1 -> S2 in quick succession: S0 keeps its 24 h from the first rotation, S1 its
    24 h from the second; neither is cut short by the other rotation."""
    record, s0 = await subscribe(pool, vault, settings, "https://h.example.com/a")
    _, s1 = await rotate_secret(pool, vault, record["id"])
    _, s2 = await rotate_secret(pool, vault, record["id"])
    row = await pool.fetchrow(
        "SELECT secret_enc, previous_secret_enc, previous_secret_expires_at, older_secrets "
        "FROM subscriptions WHERE id = $1",
        record["id"],
    )
    assert row is not None
    [older] = row["older_secrets"]
    s0_ends = datetime.fromisoformat(older["expires_at"])
    s1_ends = row["previous_secret_expires_at"]
    assert s0_ends < s1_ends

    def keys_at(now: datetime) -> list[bytes]:
        return signing_keys(
            vault,
            row["secret_enc"],
            row["previous_secret_enc"],
            row["previous_secret_expires_at"],
            now,
            row["older_secrets"],
        )

    before = s0_ends - timedelta(seconds=1)
    assert keys_at(before) == [secret_key(s2), secret_key(s1), secret_key(s0)]
    assert signing_keys_change_at(s1_ends, row["older_secrets"], before) == s0_ends
    between = s0_ends + timedelta(microseconds=1)
    assert keys_at(between) == [secret_key(s2), secret_key(s1)]
    assert keys_at(s1_ends) == [secret_key(s2)]
    assert signing_keys_change_at(s1_ends, row["older_secrets"], s1_ends) is None
