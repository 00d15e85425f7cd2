"""The dispatcher's fan-out keeps the live subscriptions' matchers and reads them again only
when what decides matching changed (issue 16): never a stale answer, and no reload per pass.

That is told by one version row (schema.sql, `subscription_matching`): which changes move it,
that a transaction moves it once, that concurrent writers never deadlock on it, and that a
database from before it migrates."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from relay.db import connect, create_pool, migrate, schema_is_current
from relay.delivery.endpoints import Streak, disable_endpoint, lock_streaks, record_streaks
from relay.delivery.fanout import fan_out_events
from relay.delivery.subscriptions import (
    Matcher,
    MatcherCache,
    MatcherIndex,
    delete_subscription,
    get_subscription,
    load_matchers,
    rotate_secret,
    update_subscription,
)
from relay.errors import NotFound
from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import (
    DispatcherFactory,
    Endpoint,
    all_settled,
    event_body,
    store_events,
    subscribe,
    wait_until,
)


async def _ids(cache: MatcherCache, pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as conn:
        return sorted(m.id for m in await cache.matchers(conn))


async def _truth(pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as conn:
        return sorted(m.id for m in await load_matchers(conn))


async def test_the_cache_answers_what_loading_answers_and_reloads_only_on_change(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    cache = MatcherCache()
    assert await _ids(cache, pool) == []
    a, _ = await subscribe(pool, vault, dsettings, endpoint.url("/a"))
    b, _ = await subscribe(pool, vault, dsettings, endpoint.url("/b"))
    assert await _ids(cache, pool) == sorted([a["id"], b["id"]]) == await _truth(pool)
    loads = cache.loads
    for _ in range(3):  # nothing changed: no reload
        assert await _ids(cache, pool) == sorted([a["id"], b["id"]])
    # Changes that cannot change matching: no reload either.
    await update_subscription(pool, dsettings, a["id"], {"description": "renamed"})
    await rotate_secret(pool, vault, a["id"])
    assert await _ids(cache, pool) == sorted([a["id"], b["id"]])
    assert cache.loads == loads

    async def matcher_of(sub_id: str) -> Matcher:
        async with pool.acquire() as conn:
            return next(m for m in await cache.matchers(conn) if m.id == sub_id)

    await update_subscription(pool, dsettings, a["id"], {"event_types": ["client.*"]})
    assert (await matcher_of(a["id"])).event_types == ("client.*",)
    await update_subscription(pool, dsettings, a["id"], {"enabled": False})
    assert await _ids(cache, pool) == [b["id"]] == await _truth(pool)
    await update_subscription(pool, dsettings, a["id"], {"enabled": True})
    assert await _ids(cache, pool) == sorted([a["id"], b["id"]])
    await delete_subscription(pool, b["id"])
    assert await _ids(cache, pool) == [a["id"]] == await _truth(pool)
    assert cache.loads == loads + 4


async def test_a_running_dispatcher_sees_subscriptions_come_and_go(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    a, _ = await subscribe(pool, vault, dsettings, endpoint.url("/a"))
    await start_dispatcher()
    await store_events(pool, event_body(object_id="doc_1"))
    await wait_until(lambda: all_settled(pool, 1), what="the first event to A")
    await subscribe(pool, vault, dsettings, endpoint.url("/b"))
    await store_events(pool, event_body(object_id="doc_2"))
    await wait_until(lambda: all_settled(pool, 3), what="the second event to A and B")
    await update_subscription(pool, dsettings, a["id"], {"enabled": False})
    await store_events(pool, event_body(object_id="doc_3"))
    await wait_until(lambda: all_settled(pool, 4), what="the third event to B alone")
    assert sorted(h.path for h in endpoint.hits) == ["/a", "/a", "/b", "/b"]


async def test_the_cache_keeps_one_index_per_load(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    """Fan-out's index of the matchers is built once per load, not once per pass (it cost
    11 ms a pass with 10,000 subscriptions), and a new load gets a new one."""
    cache = MatcherCache()

    async def index_of() -> MatcherIndex:
        async with pool.acquire() as conn:
            return await cache.index(conn)

    a, _ = await subscribe(pool, vault, dsettings, endpoint.url("/a"), client_ids=["cli_1"])
    index = await index_of()
    assert [m.id for m in index.candidates("document.created", "cli_1")] == [a["id"]]
    for _ in range(3):
        assert await index_of() is index
    b, _ = await subscribe(pool, vault, dsettings, endpoint.url("/b"), client_ids=["cli_1"])
    assert await index_of() is not index
    found = {m.id for m in (await index_of()).candidates("document.created", "cli_1")}
    assert found == {a["id"], b["id"]}


# ---- the version: which changes move it, and how often ------------------------------------------


async def _version(pool: asyncpg.Pool) -> int | None:
    version: int | None = await pool.fetchval("SELECT version FROM subscription_matching")
    return version


async def _reloaded(cache: MatcherCache, pool: asyncpg.Pool) -> bool:
    """One pass of the cache: True when it reloaded. Its answer is always what loading gives."""
    loads = cache.loads
    async with pool.acquire() as conn:
        cached = sorted(await cache.matchers(conn), key=lambda m: m.id)
    async with pool.acquire() as conn:
        assert cached == sorted(await load_matchers(conn), key=lambda m: m.id)
    return cache.loads > loads


async def _matchers_of(cache: MatcherCache, pool: asyncpg.Pool) -> list[Matcher]:
    async with pool.acquire() as conn:
        return await cache.matchers(conn)


async def test_every_kind_of_matching_change_reloads_the_cache_once(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    cache = MatcherCache()
    keep, _ = await subscribe(pool, vault, dsettings, endpoint.url("/keep"))
    assert await _reloaded(cache, pool)
    assert not await _reloaded(cache, pool)

    async def changed(step: str) -> None:
        assert await _reloaded(cache, pool), step
        assert not await _reloaded(cache, pool), f"{step}: a second pass reloads nothing"

    a, _ = await subscribe(pool, vault, dsettings, endpoint.url("/a"))
    await changed("create")
    for patch in (
        {"event_types": ["document.*"]},
        {"filter": "data.object.total > `100`"},
        {"filter": None},
        {"client_ids": ["cli_1"]},
        {"client_ids": None},
        {"account_ids": ["acc_1"]},
        {"ordering": "object"},
        {"ordering": "none"},
        {"enabled": False},
        {"enabled": True},
    ):
        await update_subscription(pool, dsettings, a["id"], patch)
        await changed(f"PATCH {patch}")
    async with pool.acquire() as conn, conn.transaction():
        assert await disable_endpoint(conn, a["id"], "endpoint answered 410 Gone")
    await changed("disabled by the recorder")
    await update_subscription(pool, dsettings, a["id"], {"enabled": True})
    await changed("enabled again")
    await delete_subscription(pool, a["id"])
    await changed("soft delete")
    await pool.execute("DELETE FROM subscriptions WHERE id = $1", keep["id"])
    await changed("hard delete")
    await subscribe(pool, vault, dsettings, endpoint.url("/b"))
    await changed("create")
    await pool.execute("TRUNCATE subscriptions CASCADE")
    await changed("truncate")
    assert cache.loads == 18


async def test_changes_that_cannot_change_matching_leave_the_version_alone(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    cache = MatcherCache()
    a, _ = await subscribe(pool, vault, dsettings, endpoint.url("/a"), event_types=["client.*"])
    off, _ = await subscribe(pool, vault, dsettings, endpoint.url("/off"))
    await update_subscription(pool, dsettings, off["id"], {"enabled": False})
    assert await _reloaded(cache, pool)
    version = await _version(pool)
    ids = [a["id"], off["id"]]

    async with pool.acquire() as conn, conn.transaction():  # the recorder's streak
        locked = await lock_streaks(conn, ids, ids)
        assert sorted(locked) == sorted(ids)
        now = datetime.now(UTC)
        # A streak that long disables nobody: `record_streaks` writes failing_since and
        # failed_attempts only, as on every failed batch.
        assert not await record_streaks(
            conn, [Streak(i, False, 3, now) for i in ids], locked, disable_after=3600
        )
    assert await pool.fetchval("SELECT failed_attempts FROM subscriptions WHERE id = $1", a["id"])
    await pool.execute("UPDATE subscriptions SET updated_at = now()")
    for patch in (
        {"description": "renamed"},
        {"url": endpoint.url("/elsewhere")},
        {"kind": "slack"},
        {"kind": "webhook"},
        {"event_types": ["client.*"]},  # the value it has
        {"enabled": True},  # enabled already: only its streak is reset
    ):
        await update_subscription(pool, dsettings, a["id"], patch)
    await rotate_secret(pool, vault, a["id"])
    await pool.execute("UPDATE subscriptions SET secret_enc = secret_enc || ''")

    assert await _version(pool) == version
    assert not await _reloaded(cache, pool)


async def test_one_transaction_bumps_the_version_once_however_many_rows_it_changes(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    """Versions come from a sequence, one value per bump: a transaction that bumped per row
    would move it by the number of rows."""
    await pool.execute(
        "INSERT INTO subscriptions (url, event_types, secret_enc) "
        "SELECT 'http://127.0.0.1:1/' || n, '{*}', 'x' FROM generate_series(1, 300) AS n"
    )
    cache = MatcherCache()
    assert await _reloaded(cache, pool)
    before = await _version(pool)
    assert before is not None
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE subscriptions SET event_types = '{document.*}'")
        await conn.execute(
            "UPDATE subscriptions SET enabled = false WHERE id IN "
            "(SELECT id FROM subscriptions ORDER BY id LIMIT 10)"
        )
        await conn.execute(
            "DELETE FROM subscriptions WHERE id = (SELECT min(id) FROM subscriptions)"
        )
        await conn.execute(
            "INSERT INTO subscriptions (url, event_types, secret_enc) "
            "VALUES ('http://127.0.0.1:1/new', '{client.*}', 'x')"
        )
    assert await _version(pool) == before + 1
    assert await _reloaded(cache, pool)
    assert len(await _truth(pool)) == 300 - 10 + 1
    # One statement over every row is one bump too.
    await pool.execute("UPDATE subscriptions SET ordering = 'object'")
    assert await _version(pool) == before + 2
    assert await _reloaded(cache, pool)


async def test_a_rolled_back_change_bumps_nothing(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    a, _ = await subscribe(pool, vault, dsettings, endpoint.url("/a"))
    cache = MatcherCache()
    assert await _reloaded(cache, pool)
    version = await _version(pool)

    async with pool.acquire() as conn:
        undone = conn.transaction()
        await undone.start()
        await conn.execute("UPDATE subscriptions SET enabled = false")
        await conn.execute(
            "INSERT INTO subscriptions (url, event_types, secret_enc) "
            "VALUES ('http://127.0.0.1:1/', '{*}', 'x')"
        )
        await undone.rollback()
        # A savepoint rolled back inside a transaction that commits.
        async with conn.transaction():
            await conn.execute("UPDATE subscriptions SET description = 'kept'")
            savepoint = conn.transaction()
            await savepoint.start()
            await conn.execute("UPDATE subscriptions SET event_types = '{client.*}'")
            await savepoint.rollback()
    assert await _version(pool) == version
    assert not await _reloaded(cache, pool)
    assert (await get_subscription(pool, a["id"]))["description"] == "kept"


async def test_without_its_row_the_cache_reloads_every_pass_and_a_change_makes_it_again(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    """A TRUNCATE of every table (as this suite's `pool` fixture does) loses the row. Until a
    change makes it again no pass can tell, so each reloads; the row made again never carries
    a version the cache saw before, or the cache would keep matchers older than that."""
    await subscribe(pool, vault, dsettings, endpoint.url("/a"))
    cache = MatcherCache()
    assert await _reloaded(cache, pool)
    seen = await _version(pool)
    assert seen is not None
    await pool.execute("TRUNCATE subscription_matching")
    assert await _reloaded(cache, pool)
    assert await _reloaded(cache, pool)
    await subscribe(pool, vault, dsettings, endpoint.url("/b"))
    made = await _version(pool)
    assert made is not None
    assert made > seen
    assert await _reloaded(cache, pool)
    assert not await _reloaded(cache, pool)


# ---- concurrent writers: the version row never closes a lock cycle -------------------------------


async def _chain(settings: Settings, ids: list[str], *, immediate: bool) -> list[BaseException]:
    """Transaction i changes ids[i], waits, then changes ids[i + 1] (each in id order, as the
    recorder locks): a chain of waits that ends, unless the version row is locked at the first
    change. Then whoever holds it wants its neighbour's row while the neighbour, holding that
    row, waits for the version: a deadlock. `immediate` makes the bump fire as each statement
    ends (`SET CONSTRAINTS`), which is how the test shows it would. Returns what each raised."""

    async def one(n: int) -> None:
        conn = await connect(settings)
        try:
            async with conn.transaction():
                if immediate:
                    await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                await conn.execute(
                    "UPDATE subscriptions SET client_ids = $2 WHERE id = $1", ids[n], [f"t{n}"]
                )
                await asyncio.sleep(0.3)  # every transaction holds its first row by then
                await conn.execute(
                    "UPDATE subscriptions SET account_ids = $2 WHERE id = $1", ids[n + 1], [f"t{n}"]
                )
        finally:
            await conn.close()

    answers = await asyncio.gather(*(one(n) for n in range(len(ids) - 1)), return_exceptions=True)
    return [a for a in answers if isinstance(a, BaseException)]


async def _make(pool: asyncpg.Pool, count: int) -> list[str]:
    rows = await pool.fetch(
        "INSERT INTO subscriptions (url, event_types, secret_enc) "
        "SELECT 'http://127.0.0.1:1/' || n, '{*}', 'x' FROM generate_series(1, $1) AS n "
        "RETURNING id",
        count,
    )
    return sorted(r["id"] for r in rows)


async def test_transactions_changing_overlapping_subscriptions_never_deadlock_on_the_version(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    ids = await _make(pool, 9)
    cache = MatcherCache()
    assert await _reloaded(cache, pool)
    before = await _version(pool)
    assert before is not None

    assert await _chain(settings, ids, immediate=False) == []

    assert await _version(pool) == before + 8  # each of the 8 commits bumped it once
    assert await _reloaded(cache, pool)
    by_id = {m.id: m for m in await _matchers_of(cache, pool)}
    for n in range(8):
        assert by_id[ids[n]].client_ids == {f"t{n}"}
        assert by_id[ids[n + 1]].account_ids == {f"t{n}"}


async def test_the_chain_does_deadlock_when_the_version_is_bumped_mid_transaction(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    """The control: the workload above is one the deferred bump is needed for."""
    ids = await _make(pool, 9)
    failures = await _chain(settings, ids, immediate=True)
    assert failures
    assert all(isinstance(f, asyncpg.DeadlockDetectedError) for f in failures)


async def test_recorders_admin_writes_and_fan_out_at_once_end_with_the_cache_current(
    pool: asyncpg.Pool, vault: Vault, dsettings: Settings, endpoint: Endpoint
) -> None:
    """The real writers at once: recorders locking overlapping sets of subscriptions (in id
    order) and disabling dead ones in the same transaction, PATCHes and DELETEs of the same
    rows, and a fan-out pass with the cache running all the while. None fails, and the cache
    then holds exactly what loading does, and fans an event out to exactly those."""
    subs = [
        (await subscribe(pool, vault, dsettings, endpoint.url(f"/{n}")))[0]["id"] for n in range(12)
    ]
    ids = sorted(subs)
    cache = MatcherCache()
    assert await _reloaded(cache, pool)

    async def recorder(chosen: list[str]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            locked = await lock_streaks(conn, chosen, chosen)
            now = datetime.now(UTC) - timedelta(hours=1)
            await record_streaks(
                conn, [Streak(i, False, 20, now) for i in chosen], locked, disable_after=60
            )

    async def patches(n: int) -> None:
        for round in range(4):
            sub_id = ids[(n + round) % len(ids)]
            with contextlib.suppress(NotFound):
                await update_subscription(
                    pool, dsettings, sub_id, {"event_types": [f"document.{'ab'[round % 2]}x"]}
                )
                await update_subscription(pool, dsettings, sub_id, {"enabled": round % 2 == 0})

    async def fan_out() -> None:
        for n in range(10):
            await store_events(pool, event_body(object_id=f"doc_{n}"))
            await fan_out_events(pool, matchers=cache)

    work = [recorder(sorted(ids[n : n + 5])) for n in range(0, 10, 2)]
    work += [patches(n) for n in range(6)]
    work += [delete_subscription(pool, ids[3]), delete_subscription(pool, ids[8]), fan_out()]
    await asyncio.gather(*work)

    await _reloaded(cache, pool)  # whether or not the last fan-out pass saw the last change
    assert not await _reloaded(cache, pool)
    disabled = "SELECT count(*) FROM events WHERE type = 'subscription.disabled'"
    assert await pool.fetchval(disabled) >= 3  # ids[9:] at least: no PATCH enables them
    await update_subscription(pool, dsettings, ids[10], {"enabled": True})
    await pool.execute("DELETE FROM deliveries")
    [event_id] = await store_events(pool, event_body("document.ax"))
    await fan_out_events(pool, matchers=cache)
    sent_to = await pool.fetch(
        "SELECT subscription_id FROM deliveries WHERE event_id = $1", event_id
    )
    async with pool.acquire() as conn:
        wants = [
            m.id for m in await load_matchers(conn) if m.matches("document.ax", None, "cli_1", {})
        ]
    assert ids[10] in wants
    assert sorted(r["subscription_id"] for r in sent_to) == sorted(wants)


# ---- migrating ----------------------------------------------------------------------------------

# The shape before the version (schema.sql until it came): subscriptions and nothing else.
_BEFORE_THE_VERSION = """
DROP TRIGGER subscriptions_matching_rows ON subscriptions;
DROP TRIGGER subscriptions_matching_changed ON subscriptions;
DROP TRIGGER subscriptions_matching_truncated ON subscriptions;
DROP FUNCTION relay_bump_subscription_matching();
DROP TABLE subscription_matching;
DROP SEQUENCE subscription_matching_versions;
UPDATE relay_schema SET digest = 'before the version';
"""


async def test_a_database_from_before_the_version_migrates_and_starts_are_no_change(
    scratch_settings: Settings,
) -> None:
    await migrate(scratch_settings)
    pool = await create_pool(scratch_settings)
    try:
        await pool.execute(_BEFORE_THE_VERSION)
        ids = await _make(pool, 5)
        assert not await schema_is_current(pool)

        await migrate(scratch_settings)
        await migrate(scratch_settings)  # every start runs the schema again

        assert await schema_is_current(pool)
        triggers = await pool.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'subscriptions'::regclass "
            "AND tgname LIKE 'subscriptions_matching_%' ORDER BY tgname"
        )
        assert [t["tgname"] for t in triggers] == [
            "subscriptions_matching_changed",
            "subscriptions_matching_rows",
            "subscriptions_matching_truncated",
        ]
        cache = MatcherCache()
        assert await _reloaded(cache, pool)
        assert sorted(m.id for m in await _matchers_of(cache, pool)) == ids
        version = await _version(pool)
        await migrate(scratch_settings)  # a worker starting: no dispatcher reloads for it
        assert await _version(pool) == version
        assert not await _reloaded(cache, pool)
        await pool.execute("UPDATE subscriptions SET enabled = false WHERE id = $1", ids[0])
        assert await _reloaded(cache, pool)
        assert sorted(m.id for m in await _matchers_of(cache, pool)) == ids[1:]
    finally:
        await pool.close()


async def test_the_sweeper_reads_the_matchers_again_only_when_they_changed(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    """Every sweeper tick fans out with the dispatcher's cache (or, in a process without one,
    a cache of its own): loaded afresh, each tick stalled the worker's loop for 80-100 ms
    with 10,000 subscriptions. What a tick fans out still follows every change."""
    from workers.delivery import sweep_deliveries

    await subscribe(pool, vault, dsettings, endpoint.url("/a"))
    alone: dict[str, Any] = {"pool": pool, "settings": dsettings}
    await store_events(pool, event_body(object_id="doc_1"))
    assert await sweep_deliveries(alone) == 1
    cache = alone["matchers"]
    loads = cache.loads
    for n in range(2, 5):
        await store_events(pool, event_body(object_id=f"doc_{n}"))
        assert await sweep_deliveries(alone) == 1
    assert cache.loads == loads
    await subscribe(pool, vault, dsettings, endpoint.url("/b"))
    await store_events(pool, event_body(object_id="doc_5"))
    assert await sweep_deliveries(alone) == 2  # b is seen at once
    assert cache.loads == loads + 1

    dispatcher = await start_dispatcher()
    shared: dict[str, Any] = {"pool": pool, "settings": dsettings, "dispatcher": dispatcher}
    await wait_until(lambda: all_settled(pool), what="the dispatcher's first passes")
    await sweep_deliveries(shared)
    loads = dispatcher.matchers.loads
    for _ in range(3):
        await sweep_deliveries(shared)
    assert dispatcher.matchers.loads == loads
    assert "matchers" not in shared
