"""`ordering: "object"`: one object's events one at a time in `sequence` order, others flow."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from relay.events import build_event, insert_events
from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import DispatcherFactory, Endpoint, make_account, subscribe, wait_until
from tests.support.workers import spawn_worker

# A retry delay no test waits out: a test makes the retry due itself once it has seen what
# must happen while the retry waits (`_fall_due`), so a loaded machine cannot reorder them.
NEVER = 3600.0
# How long a test waits for what it expects: generous, since the condition, not the clock,
# ends the wait.
DEADLINE = 60.0


@dataclass
class Ledger:
    """A receiver that records (object, sequence, ok) per request, fails chosen attempts, and
    notes the most requests of one object it ever had in flight at once."""

    base: str = ""
    fail: dict[str, int] = field(default_factory=dict)  # event id -> failures left
    seen: list[tuple[str, int, bool, float]] = field(default_factory=list)
    inflight: dict[str, int] = field(default_factory=dict)
    most_at_once: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        obj = body["object_id"]
        self.inflight[obj] = self.inflight.get(obj, 0) + 1
        self.most_at_once = max(self.most_at_once, self.inflight[obj])
        try:
            await asyncio.sleep(0.005)  # widen the window two sends of one object would share
            left = self.fail.get(body["id"], 0)
            ok = left == 0
            if not ok:
                self.fail[body["id"]] = left - 1
            self.seen.append((obj, body["sequence"], ok, time.monotonic()))
            return web.Response(status=200 if ok else 500)
        finally:
            self.inflight[obj] -= 1

    def delivered(self, obj: str) -> list[int]:
        return [s for o, s, ok, _ in self.seen if o == obj and ok]


@pytest.fixture
async def ledger() -> AsyncIterator[Ledger]:
    ledger = Ledger()
    app = web.Application()
    app.router.add_post("/hook", ledger.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ledger.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield ledger
    await runner.cleanup()


async def store_rounds(pool: asyncpg.Pool, account: str, objects: int, rounds: int) -> list[Any]:
    """`rounds` polls, each changing every object once: events stored as a diff would."""
    bodies: list[dict[str, Any]] = []
    for r in range(rounds):
        batch = [
            build_event(
                "document.status_changed",
                account_id=account,
                client_id="cli_1",
                object_id=f"doc_{n}",
                object={"id": f"doc_{n}", "status": f"s{r}"},
            )
            for n in range(objects)
        ]
        async with pool.acquire() as conn, conn.transaction():
            await insert_events(conn, batch)
        bodies.extend(batch)
    return bodies


async def test_a_retried_event_holds_back_its_object_only_even_with_two_workers(
    pool: asyncpg.Pool,
    dsettings: Settings,
    vault: Vault,
    ledger: Ledger,
    start_dispatcher: DispatcherFactory,
) -> None:
    account = await make_account(pool)
    # The retry falls due when the test says so, not after a second that a loaded machine may
    # need for the other 95 deliveries.
    settings = dsettings.with_changes(retry_schedule=(NEVER, NEVER))
    sub, _ = await subscribe(pool, vault, settings, ledger.base + "/hook", ordering="object")
    assert sub["ordering"] == "object"
    bodies = await store_rounds(pool, account, objects=20, rounds=5)
    first_of_doc0 = next(b for b in bodies if b["object_id"] == "doc_0")
    ledger.fail[first_of_doc0["id"]] = 1
    await start_dispatcher(settings)
    await start_dispatcher(settings)
    # Every other object finishes while doc_0's event 1 waits for its retry, and nothing more
    # of doc_0 goes meanwhile.
    await wait_until(
        lambda: _all_delivered(ledger, [f"doc_{n}" for n in range(1, 20)], 5),
        DEADLINE,
        "every other object delivered while doc_0 waits",
    )
    assert [(o, s, ok) for o, s, ok, _ in ledger.seen if o == "doc_0"] == [("doc_0", 1, False)]
    others_done = max(at for o, _, _, at in ledger.seen if o != "doc_0")
    await _fall_due(pool, first_of_doc0["id"])
    await wait_until(lambda: _settled(pool, 100), DEADLINE, "every delivery settled")

    for n in range(20):
        assert ledger.delivered(f"doc_{n}") == [1, 2, 3, 4, 5]
    assert ledger.most_at_once == 1  # never two events of one object at once, two workers
    # doc_0's event 2 went only after event 1 succeeded.
    doc0 = [(s, ok, at) for o, s, ok, at in ledger.seen if o == "doc_0"]
    assert [(s, ok) for s, ok, _ in doc0] == [
        (1, False),
        (1, True),
        (2, True),
        (3, True),
        (4, True),
        (5, True),
    ]
    assert others_done < doc0[1][2]


async def test_an_exhausted_event_releases_the_next(
    pool: asyncpg.Pool,
    dsettings: Settings,
    vault: Vault,
    ledger: Ledger,
    start_dispatcher: DispatcherFactory,
) -> None:
    account = await make_account(pool)
    settings = dsettings.with_changes(retry_schedule=(0.1,))
    await subscribe(pool, vault, settings, ledger.base + "/hook", ordering="object")
    bodies = await store_rounds(pool, account, objects=2, rounds=3)
    ledger.fail[bodies[0]["id"]] = 99  # doc_0's first event never succeeds
    await start_dispatcher(settings)
    await wait_until(lambda: _settled(pool, 6), DEADLINE, "every delivery settled")
    assert [s for o, s, _, _ in ledger.seen if o == "doc_0"] == [1, 1, 2, 3]
    assert ledger.delivered("doc_0") == [2, 3]
    assert ledger.delivered("doc_1") == [1, 2, 3]
    status = await pool.fetchval(
        "SELECT status FROM deliveries WHERE event_id = $1", bodies[0]["id"]
    )
    assert status == "failed"


async def test_unordered_subscription_is_not_held_back(
    pool: asyncpg.Pool,
    dsettings: Settings,
    vault: Vault,
    ledger: Ledger,
    start_dispatcher: DispatcherFactory,
) -> None:
    account = await make_account(pool)
    settings = dsettings.with_changes(retry_schedule=(NEVER,))
    sub, _ = await subscribe(pool, vault, settings, ledger.base + "/hook")
    assert sub["ordering"] == "none"
    bodies = await store_rounds(pool, account, objects=1, rounds=3)
    ledger.fail[bodies[0]["id"]] = 1
    await start_dispatcher(settings)
    # No order asked for: 2 and 3 go while 1 waits for its retry.
    await wait_until(lambda: _all_delivered(ledger, ["doc_0"], 2), DEADLINE, "events 2 and 3")
    assert ledger.delivered("doc_0") == [2, 3]
    await _fall_due(pool, bodies[0]["id"])
    await wait_until(lambda: _settled(pool, 3), DEADLINE, "every delivery settled")
    assert ledger.delivered("doc_0") == [2, 3, 1]


async def _all_delivered(ledger: Ledger, objects: list[str], count: int) -> bool:
    return all(len(ledger.delivered(obj)) >= count for obj in objects)


async def _fall_due(pool: asyncpg.Pool, event_id: str) -> None:
    """Once the event's first attempt is recorded as failed with a retry waiting, make that
    retry due now, as its time coming would."""

    async def made_due() -> bool:
        status = await pool.execute(
            "UPDATE deliveries SET next_attempt_at = now() WHERE event_id = $1 "
            "AND status = 'pending' AND attempt_count = 1 AND next_attempt_at > now()",
            event_id,
        )
        return bool(status == "UPDATE 1")

    await wait_until(made_due, DEADLINE, f"a retry of {event_id} waiting")


async def _settled(pool: asyncpg.Pool, count: int) -> bool:
    row = await pool.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'pending') AS pending "
        "FROM deliveries"
    )
    assert row is not None
    return bool(row["n"] == count and row["pending"] == 0)


async def test_sigkill_mid_sequence_keeps_each_objects_order(
    pool: asyncpg.Pool,
    vault: Vault,
    settings: Settings,
    endpoint: Endpoint,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    account = await make_account(pool)
    await subscribe(pool, vault, settings, endpoint.url("/hold"), ordering="object")
    await store_rounds(pool, account, objects=5, rounds=4)
    log = tmp_path / "worker.log"
    first = await spawn_worker(worker_env, log)
    second: asyncio.subprocess.Process | None = None
    try:
        await wait_until(lambda: _hits(endpoint, 5), DEADLINE, f"held heads ({log})")
        await asyncio.sleep(0.5)  # room for a sixth request, were one handed out
        assert sorted(_sequences(endpoint)) == [1] * 5  # one head per object, no more
        # ... and, however slow the machine, none could be: the rest are parked, not due.
        assert await _parked(pool) == 15
        first.send_signal(signal.SIGKILL)  # every head is in flight
        await first.wait()
        endpoint.release.set()
        second = await spawn_worker(worker_env, log)
        await wait_until(lambda: _settled(pool, 20), DEADLINE, f"recovery ({log})")
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()
    by_object: dict[str, list[int]] = {}
    for hit in endpoint.to("/hold"):
        body = orjson.loads(hit.body)
        by_object.setdefault(body["object_id"], []).append(body["sequence"])
    # The killed worker's heads went again (same webhook-id), then the rest in order.
    assert by_object == {f"doc_{n}": [1, 1, 2, 3, 4] for n in range(5)}


async def _parked(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE status = 'pending' AND next_attempt_at IS NULL"
        )
    )


async def _hits(endpoint: Endpoint, n: int) -> bool:
    return len(endpoint.to("/hold")) >= n


def _sequences(endpoint: Endpoint) -> list[int]:
    return [orjson.loads(h.body)["sequence"] for h in endpoint.to("/hold")]
