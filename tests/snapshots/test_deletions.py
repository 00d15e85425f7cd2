"""Deletion detection: only complete scans, only confirmed candidates, once, and re-appearance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from relay.errors import InvalidInput, NotFound
from relay.snapshots import (
    begin_complete_scan,
    changed_summary_ids,
    diff_objects,
    diff_scan_page,
    finish_complete_scan,
    mark_scan_partial,
    record_scan_page,
)
from tests.support.snapshots import CLIENT, cost, stored_events, summary
from tests.support.stores import make_account

if TYPE_CHECKING:
    from relay.db import Connection


async def baseline(pool: asyncpg.Pool, account: str, ids: list[str]) -> None:
    async with pool.acquire() as conn:
        await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=[cost(i) for i in ids],
            client_id=CLIENT,
            emit=False,
        )


async def scan_pages(conn: Connection, account: str, pages: list[list[dict[str, Any]]]) -> int:
    """A complete scan reading `pages` through diff_scan_page, as the poller does."""
    scan_id = await begin_complete_scan(
        conn, account_id=account, object_type="document", client_id=CLIENT
    )
    for number, page in enumerate(pages, start=1):
        await diff_scan_page(
            conn,
            account_id=account,
            object_type="document",
            objects=page,
            client_id=CLIENT,
            emit=True,
            scan_id=scan_id,
            page=f"costs:{number}",
        )
    return scan_id


async def test_partial_scan_deletes_nothing_even_when_confirmed(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await baseline(pool, account, ["d1", "d2", "d3"])
    async with pool.acquire() as conn:
        scan_id = await scan_pages(conn, account, [[cost("d1")]])
        await mark_scan_partial(conn, scan_id, "page costs:2 answered 502")
        outcome = await finish_complete_scan(conn, scan_id, confirmed_gone={"d2", "d3"})
    assert outcome.refused == "page costs:2 answered 502"
    assert (outcome.candidates, outcome.deleted, outcome.events) == ([], [], [])
    assert await pool.fetchval("SELECT count(*) FROM snapshots WHERE deleted_at IS NOT NULL") == 0
    assert await stored_events(pool) == []


async def test_a_page_never_recorded_makes_the_scan_partial(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await baseline(pool, account, ["d1", "d2"])
    async with pool.acquire() as conn:
        scan_id = await scan_pages(conn, account, [[cost("d1")]])
        outcome = await finish_complete_scan(
            conn, scan_id, confirmed_gone={"d2"}, expected_pages=["costs:1", "costs:2"]
        )
        assert outcome.refused is not None
        assert "costs:2" in outcome.refused
        # The refusal sticks: the same scan never deletes later either.
        again = await finish_complete_scan(conn, scan_id, confirmed_gone={"d2"})
    assert again.refused == outcome.refused
    assert await stored_events(pool) == []


async def test_unconfirmed_candidate_is_returned_not_deleted(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await baseline(pool, account, ["d1", "d2", "d3"])
    async with pool.acquire() as conn:
        # d2 slipped between two shifting pages: the scan did not see it.
        scan_id = await scan_pages(conn, account, [[cost("d3")], [cost("d1")]])
        outcome = await finish_complete_scan(
            conn, scan_id, confirmed_gone=None, expected_pages=["costs:1", "costs:2"]
        )
    assert outcome.refused is None
    assert outcome.candidates == ["d2"]
    assert (outcome.deleted, outcome.events) == ([], [])
    assert await pool.fetchval("SELECT count(*) FROM snapshots WHERE deleted_at IS NOT NULL") == 0
    assert await stored_events(pool) == []


async def test_confirmed_candidate_is_deleted_exactly_once(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await baseline(pool, account, ["d1", "d2", "d3"])
    last_seen = cost("d2", status="ready")
    async with pool.acquire() as conn:
        await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=[last_seen],
            client_id=CLIENT,
            emit=False,
        )
        scan_id = await scan_pages(conn, account, [[cost("d1"), cost("d3")]])
        first = await finish_complete_scan(conn, scan_id, confirmed_gone=None)
        assert first.candidates == ["d2"]
        # d1 was seen by the scan: confirming it (a stale 404) must not delete it.
        outcome = await finish_complete_scan(conn, scan_id, confirmed_gone={"d2", "d1"})
        repeat = await finish_complete_scan(conn, scan_id, confirmed_gone={"d2"})
    assert outcome.deleted == ["d2"]
    assert (repeat.candidates, repeat.deleted, repeat.events) == ([], [], [])
    (event,) = await stored_events(pool)
    assert event == outcome.events[0]
    assert event["type"] == "document.deleted"
    assert (event["object_type"], event["object_id"], event["client_id"]) == (
        "document",
        "d2",
        CLIENT,
    )
    assert event["data"] == {"object": last_seen, "previous": {}}
    deleted = await pool.fetch("SELECT object_id FROM snapshots WHERE deleted_at IS NOT NULL")
    assert [row["object_id"] for row in deleted] == ["d2"]
    assert await pool.fetchval("SELECT finished_at IS NOT NULL FROM snapshot_scans") is True


async def test_object_stored_after_the_scan_began_is_no_candidate(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await baseline(pool, account, ["d1"])
    async with pool.acquire() as conn:
        scan_id = await begin_complete_scan(
            conn, account_id=account, object_type="document", client_id=CLIENT
        )
        # A hot poll stores d2 while the sweep runs; the sweep's pages never show it.
        await baseline(pool, account, ["d2"])
        await record_scan_page(conn, scan_id, 1, ["d1"])
        outcome = await finish_complete_scan(conn, scan_id, confirmed_gone={"d2"})
    assert (outcome.candidates, outcome.deleted) == ([], [])


async def test_recording_a_page_again_adds_to_what_it_saw(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await baseline(pool, account, ["d1", "d2"])
    async with pool.acquire() as conn:
        scan_id = await begin_complete_scan(
            conn, account_id=account, object_type="document", client_id=CLIENT
        )
        await record_scan_page(conn, scan_id, 1, ["d1"])
        await record_scan_page(conn, scan_id, 1, ["d2"])  # re-fetched after a shift
        outcome = await finish_complete_scan(conn, scan_id, confirmed_gone={"d1", "d2"})
    assert (outcome.candidates, outcome.deleted) == ([], [])


async def test_deleted_item_that_reappears_is_created_again(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await baseline(pool, account, ["d1", "d2"])
    async with pool.acquire() as conn:
        scan_id = await scan_pages(conn, account, [[cost("d1")]])
        await finish_complete_scan(conn, scan_id, confirmed_gone={"d2"})
        # A deleted item is "new" to the summary check, so the poller fetches its detail.
        ids = await changed_summary_ids(
            conn,
            account_id=account,
            client_id=CLIENT,
            summaries=[summary(cost("d1")), summary(cost("d2"))],
        )
        assert ids == ["d2"]
        back = await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=[cost("d2")],
            client_id=CLIENT,
            emit=True,
        )
        assert back.created == ["d2"]
        again = await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=[cost("d2")],
            client_id=CLIENT,
            emit=True,
        )
        assert again.events == []
    types = [(e["type"], e["object_id"]) for e in await stored_events(pool)]
    assert types == [("document.deleted", "d2"), ("document.created", "d2")]
    assert await pool.fetchval("SELECT count(*) FROM snapshots WHERE deleted_at IS NOT NULL") == 0


async def test_scans_are_per_client(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    await baseline(pool, account, ["d1"])
    async with pool.acquire() as conn:
        await diff_objects(
            conn,
            account_id=account,
            object_type="document",
            objects=[cost("x1", client_id="cli_2")],
            client_id="cli_2",
            emit=False,
        )
        scan_id = await scan_pages(conn, account, [[cost("d1")]])
        outcome = await finish_complete_scan(conn, scan_id, confirmed_gone={"x1"})
    assert (outcome.candidates, outcome.deleted) == ([], [])


async def test_bad_scan_calls_are_clear_errors(pool: asyncpg.Pool) -> None:
    account = await make_account(pool)
    async with pool.acquire() as conn:
        with pytest.raises(InvalidInput):
            await begin_complete_scan(
                conn, account_id=account, object_type="client", client_id=CLIENT
            )
        with pytest.raises(NotFound):
            await record_scan_page(conn, 424242, 1, ["d1"])
        with pytest.raises(NotFound):
            await finish_complete_scan(conn, 424242, confirmed_gone=None)
        with pytest.raises(NotFound):
            await mark_scan_partial(conn, 424242, "x")
