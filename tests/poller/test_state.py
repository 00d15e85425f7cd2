"""The poller's Postgres state: task schedules round-trip, full passes, leases, due accounts."""

from __future__ import annotations

import asyncio

import asyncpg

from relay.poller.plan import CLIENT_KINDS, Policy, TaskKind, after_run, rank
from relay.poller.state import (
    accounts_due,
    all_baselined,
    claim_lease,
    ensure_tasks,
    force_full_pass,
    load_tasks,
    next_due_at,
    release_lease,
    renew_lease,
    save_task,
)

POLICY = Policy()
T0 = 1_800_000_000.0


async def make_account(pool: asyncpg.Pool) -> str:
    return str(
        await pool.fetchval(
            "INSERT INTO accounts (provider, name, base_url, api_token_enc) "
            "VALUES ('dext', 'test', 'http://127.0.0.1:1', 'x') RETURNING id"
        )
    )


async def test_tasks_round_trip_through_postgres(pool: asyncpg.Pool) -> None:
    acc = await make_account(pool)
    await ensure_tasks(pool, acc, ["c1", "c2"], T0, POLICY)
    await ensure_tasks(pool, acc, ["c1", "c2"], T0 + 500, POLICY)  # idempotent
    tasks = await load_tasks(pool, acc)
    assert len(tasks) == 1 + 2 * len(CLIENT_KINDS)
    assert all(t.due_at == T0 for t in tasks)
    head = next(t for t in tasks if t.kind is TaskKind.HEAD and t.client_id == "c1")
    head = after_run(head, T0 + 10, POLICY, changed=2, cost=3)
    head.cursor = {"page": 4, "scan_id": "x"}
    await save_task(pool, head)
    again = next(t for t in await load_tasks(pool, acc) if t.key == head.key)
    assert again == head
    assert not await all_baselined(pool, acc)
    # a client that disappeared upstream loses its tasks
    await ensure_tasks(pool, acc, ["c1"], T0, POLICY)
    assert {t.client_id for t in await load_tasks(pool, acc)} == {"", "c1"}


async def test_full_pass_forces_every_task_and_restarts_sweeps(pool: asyncpg.Pool) -> None:
    acc = await make_account(pool)
    await ensure_tasks(pool, acc, ["c1"], T0, POLICY)
    for t in await load_tasks(pool, acc):
        done = after_run(t, T0, POLICY, changed=0, cost=1)
        if t.kind is TaskKind.SWEEP:
            done = after_run(t, T0, POLICY, changed=0, cost=1, finished=False)
            done.cursor = {"page": 3}
        await save_task(pool, done)
    assert await next_due_at(pool, acc) == T0  # the sweep is mid-way: still due
    forced = await force_full_pass(pool, acc)
    assert forced == len(CLIENT_KINDS)  # everything but the finished baseline
    tasks = await load_tasks(pool, acc)
    assert all(t.forced for t in tasks if t.kind is not TaskKind.BASELINE)
    assert next(t for t in tasks if t.kind is TaskKind.SWEEP).cursor == {}
    assert await next_due_at(pool, acc) == 0.0
    assert rank(tasks, T0, POLICY)[0].forced


async def test_only_one_worker_holds_an_account(pool: asyncpg.Pool) -> None:
    acc = await make_account(pool)
    results = await asyncio.gather(*(claim_lease(pool, acc, f"w{n}", 30) for n in range(8)))
    assert sum(results) == 1
    winner = f"w{results.index(True)}"
    loser = "w0" if winner != "w0" else "w1"
    assert await renew_lease(pool, acc, winner, 30)
    assert not await renew_lease(pool, acc, loser, 30)
    assert not await claim_lease(pool, acc, loser, 30)
    await release_lease(pool, acc, winner)
    assert await claim_lease(pool, acc, loser, 0.05)
    await asyncio.sleep(0.1)  # the holder died: its lease expires and another worker takes over
    assert await claim_lease(pool, acc, winner, 30)
    assert not await renew_lease(pool, acc, loser, 30)


async def test_an_account_is_due_when_new_forced_or_a_task_falls_due(pool: asyncpg.Pool) -> None:
    fresh, waiting = await make_account(pool), await make_account(pool)
    far = T0 * 2  # every task of `waiting` is due in the far future
    await ensure_tasks(pool, waiting, ["c1"], far, POLICY)
    assert await accounts_due(pool, [fresh, waiting], 5.0) == {fresh}  # no tasks yet: due
    await force_full_pass(pool, waiting)
    assert await accounts_due(pool, [fresh, waiting], 5.0) == {fresh, waiting}
    await pool.execute("UPDATE poll_tasks SET forced = false WHERE account_id = $1", waiting)
    await pool.execute(
        "UPDATE poll_tasks SET due_at = now() + interval '3 seconds' "
        "WHERE account_id = $1 AND kind = 'head'",
        waiting,
    )
    assert await accounts_due(pool, [waiting], 5.0) == {waiting}  # within the lookahead
    assert await accounts_due(pool, [waiting], 1.0) == set()
