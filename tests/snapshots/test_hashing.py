"""The diff's hashing: stale stored hashes, duplicates, and bad input in a streamed key COPY."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import orjson
import pytest

from relay.errors import InvalidInput
from relay.snapshots import content_hash, diff_objects, quick_hash
from relay.snapshots.rules import canonical
from tests.support.snapshots import CLIENT, client, cost, diff, snapshot_versions, stored_events
from tests.support.stores import make_account


def sha256_hash(object_type: str, obj: dict[str, Any]) -> bytes:
    """The hash an earlier release stored: SHA-256 of the canonical JSON, cut to 16 bytes."""
    raw = orjson.dumps(canonical(object_type, obj), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).digest()[:16]


async def test_hash_of_an_older_digest_is_refreshed_without_a_change(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await diff(pool, account, "document", [cost("d1"), cost("d2")])
    await diff(pool, account, "client", [client(CLIENT)])
    for object_type, obj in (
        ("document", cost("d1")),
        ("document", cost("d2")),
        ("client", client(CLIENT)),
    ):
        await pool.execute(  # as stored by a release before quick hashes
            "UPDATE snapshots SET hash = $2, quick_hash = NULL WHERE object_id = $1",
            obj["id"],
            sha256_hash(object_type, obj),
        )
    events_before = await stored_events(pool)

    # d2 really changed; d1 and the client only carry a hash from the older digest, and the
    # client's volatile field moved as well: neither counts as a change.
    page = [cost("d1"), cost("d2", status="ready")]
    first = await diff(pool, account, "document", page)
    resynced = await diff(
        pool, account, "client", [client(CLIENT, last_sync_at="2026-05-01T00:00:00Z")]
    )
    assert (first.created, first.changed) == ([], ["d2"])
    assert [e["type"] for e in first.events] == ["document.status_changed"]
    assert (resynced.created, resynced.changed, resynced.events) == ([], [], [])
    assert await pool.fetchval("SELECT hash FROM snapshots WHERE object_id = 'd1'") == (
        content_hash("document", cost("d1"))
    )
    assert await pool.fetchval("SELECT quick_hash FROM snapshots WHERE object_id = 'd1'") == (
        quick_hash("document", cost("d1"))
    )

    # Refreshed once, the hashes match again: the next poll writes nothing at all.
    settled = await snapshot_versions(pool)
    again = await diff(pool, account, "document", page)
    assert (again.created, again.changed, again.events) == ([], [], [])
    assert await snapshot_versions(pool) == settled
    assert len(await stored_events(pool)) == len(events_before) + 1


async def test_keys_in_another_order_are_no_change(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    stored = cost("d1")
    await diff(pool, account, "document", [stored])
    events_before = await stored_events(pool)
    reordered = dict(reversed(list(stored.items())))
    assert reordered == stored
    assert quick_hash("document", reordered) != quick_hash("document", stored)
    assert content_hash("document", reordered) == content_hash("document", stored)

    # Settled by the canonical hash: no change, nothing written, poll after poll.
    settled = await snapshot_versions(pool)
    for _ in range(2):
        again = await diff(pool, account, "document", [reordered])
        assert (again.created, again.changed, again.events) == ([], [], [])
        assert await snapshot_versions(pool) == settled
    assert await pool.fetchval("SELECT quick_hash FROM snapshots WHERE object_id = 'd1'") == (
        quick_hash("document", stored)
    )
    # A real change in the new order is still one.
    changed = await diff(pool, account, "document", [{**reordered, "status": "ready"}])
    assert changed.changed == ["d1"]
    assert [e["type"] for e in changed.events] == ["document.status_changed"]
    assert len(await stored_events(pool)) == len(events_before) + 1


@pytest.mark.parametrize(
    ("versions_on_page", "changed"),
    [(["ready", "review"], []), (["review", "ready"], ["d1"])],
    ids=["last is the stored one", "last is new"],
)
async def test_a_duplicate_is_judged_by_its_last_version(
    pool: asyncpg.Pool, versions_on_page: list[str], changed: list[str]
) -> None:
    account = await make_account(pool)
    # The two copies end up in different messages of the key COPY.
    filler = [{"id": f"f{i:05}", "status": "review"} for i in range(20_000)]
    await diff(pool, account, "document", [cost("d1"), *filler], emit=False)
    before = await snapshot_versions(pool)
    first, last = (cost("d1", status=status) for status in versions_on_page)
    result = await diff(pool, account, "document", [first, *filler, last])
    assert (result.seen, result.created, result.changed) == (20_001, [], changed)
    assert [e["type"] for e in result.events] == ["document.status_changed"] * len(changed)
    rewritten = {oid for oid, v in (await snapshot_versions(pool)).items() if before[oid] != v}
    assert rewritten == set(changed)


async def test_bad_object_after_many_keys_already_sent_writes_nothing(
    pool: asyncpg.Pool,
) -> None:
    account = await make_account(pool)
    # About 40 bytes of key each: 20,000 fill several COPY messages before the bad one.
    page: list[Any] = [{"id": f"d{i:05}", "status": "review"} for i in range(20_000)]
    page.append({"id": "huge", "amount": 2**70})
    async with pool.acquire() as conn:
        with pytest.raises(InvalidInput) as caught:
            await diff_objects(
                conn,
                account_id=account,
                object_type="document",
                objects=page,
                client_id=CLIENT,
                emit=True,
            )
        assert caught.value.field == "objects"
        # The connection is fine afterwards and the next diff works.
        result = await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=page[:3],
            client_id=CLIENT,
            emit=True,
        )
    assert result.created == ["d00000", "d00001", "d00002"]
    assert await pool.fetchval("SELECT count(*) FROM snapshots") == 3
