"""Per-object ordering: ordered vs unordered delivery, and what one failing object costs.

    .venv/bin/python bench/ordering_throughput.py [--objects 1000] [--events 10] [--runs 2]

1,000 objects x 10 events (one `sequence` each, stored poll after poll as a diff would) to one
subscription whose receiver (its own process) answers 200, delivered and recorded by one real
`Dispatcher`, in the same run:
- unordered: every delivery due at once (`ordering: "none"`);
- ordered: `ordering: "object"`, the same deliveries queued per object (only each object's
  head is due; each recorded success promotes the next);
- ordered with one failing object: the receiver answers 500 to every event of `doc_0`, whose
  deliveries are retried (short schedule) and then failed, each releasing the next.
It prints both rates and their ratio (goal: ordered >= 0.8 of unordered), and for the failing
run when the other objects finished compared with the ordered run (goal: later by no more than
one claim round, shown as the ordered run's time per event of an object).

Uses its own database `relay_bench_<random>`, dropped at the end, and needs no Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PG_SERVER, free_port, run_receiver, tear_down
from relay.db import create_pool, migrate
from relay.delivery import Dispatcher, close_session, create_session
from relay.delivery.subscriptions import create_subscription
from relay.events import build_event, insert_events
from relay.logs import configure_logging
from relay.settings import Settings
from relay.vault import Vault, generate_key
from workers.runtime import tune_gc

FAILING = b'"object_id":"doc_0"'


def status_of(path: str, body: bytes) -> int:
    """The receiver's answer: 200, except 500 to doc_0 when `/fail-doc0`."""
    return 500 if path == "/fail-doc0" and FAILING in body else 200


async def seed_events(pool: asyncpg.Pool, objects: int, events: int) -> None:
    """`events` polls, each changing every object once, stored as the events module does."""
    async with pool.acquire() as conn:
        account = await conn.fetchval(
            "INSERT INTO accounts (provider, name, base_url, api_token_enc) "
            "VALUES ('dext', 'Bench', 'http://127.0.0.1:1', 'x') RETURNING id"
        )
        for r in range(events):
            bodies = [
                build_event(
                    "document.status_changed",
                    account_id=account,
                    client_id=f"cli_{n % 50}",
                    object_id=f"doc_{n}",
                    object={"id": f"doc_{n}", "status": f"s{r}", "total_amount": "1332.00"},
                    previous={"status": f"s{r - 1}"},
                )
                for n in range(objects)
            ]
            async with conn.transaction():
                await insert_events(conn, bodies)
        await conn.execute("DELETE FROM event_fanout_queue")  # `queue` makes their deliveries


async def queue(pool: asyncpg.Pool, subscription_id: str, ordered: bool) -> None:
    """One delivery per event, as fan-out makes them: all due, or per object only the head."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("TRUNCATE deliveries, delivery_attempts")
        await conn.execute(
            "INSERT INTO deliveries (event_id, subscription_id, next_attempt_at, order_key) "
            "SELECT id, $1, CASE WHEN NOT $2 OR sequence = 1 THEN now() END, "
            "CASE WHEN $2 THEN account_id || chr(31) || object_type || chr(31) || object_id END "
            "FROM events ORDER BY seq",
            subscription_id,
            ordered,
        )
    await pool.execute("VACUUM ANALYZE deliveries")


async def deliver(pool: asyncpg.Pool, settings: Settings) -> float:
    """Run one dispatcher until nothing is pending; returns the seconds it took."""
    session = create_session(settings)
    dispatcher = Dispatcher(pool, settings, session, Vault(settings.secret_keys))
    tune_gc()
    started = time.perf_counter()
    task = asyncio.create_task(dispatcher.run())
    while await pool.fetchval(  # noqa: ASYNC110
        "SELECT EXISTS (SELECT FROM deliveries WHERE status = 'pending')"
    ):
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    dispatcher.stop()
    await task
    await close_session(session)
    return elapsed


async def others_done(pool: asyncpg.Pool) -> float:
    """Seconds from the first attempt to the last success of every object but doc_0."""
    row = await pool.fetchrow(
        "SELECT extract(epoch FROM max(a.at) FILTER (WHERE e.object_id <> 'doc_0' "
        "AND a.status_code = 200) - min(a.at)) AS s "
        "FROM delivery_attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id "
        "JOIN events AS e ON e.id = d.event_id"
    )
    assert row is not None
    return float(row["s"])


async def check_order(pool: asyncpg.Pool, objects: int, events: int) -> None:
    """Every success of an ordered run came in `sequence` order, one object at a time."""
    bad = await pool.fetchval(
        "SELECT count(*) FROM (SELECT e.object_id, e.sequence, a.at, lag(e.sequence) OVER "
        "(PARTITION BY e.object_id ORDER BY a.at) AS before FROM delivery_attempts AS a "
        "JOIN deliveries AS d ON d.id = a.delivery_id JOIN events AS e ON e.id = d.event_id "
        "WHERE a.status_code = 200) AS s WHERE before IS NOT NULL AND before >= sequence"
    )
    ok = await pool.fetchval("SELECT count(*) FROM delivery_attempts WHERE status_code = 200")
    assert bad == 0, f"{bad} successes out of sequence order"
    assert ok == objects * events, f"{ok} of {objects * events} delivered"


async def main(args: argparse.Namespace) -> None:
    configure_logging("json", "error")  # doc_0's failures are the point, not news
    name = f"relay_bench_{secrets.token_hex(4)}"
    settings = Settings(
        database_url=f"{PG_SERVER}/{name}",
        secret_keys=(generate_key(),),
        allow_private_targets=True,
        log_level="error",
        retry_schedule=(0.05, 0.05),
        delivery_endpoint_concurrency=64,
        delivery_concurrency=256,
        delivery_batch_size=256,
        delivery_poll_interval=0.2,
    )
    port = free_port()
    receiver = await asyncio.create_subprocess_exec(sys.executable, __file__, "--serve", str(port))
    await migrate(settings)
    pool = await create_pool(settings, min_size=2, max_size=10)
    n = args.objects * args.events
    try:
        await asyncio.sleep(1.0)
        vault = Vault(settings.secret_keys)
        subs = {}
        for path, ordering in (("/ok", "none"), ("/ok", "object"), ("/fail-doc0", "object")):
            sub, _ = await create_subscription(
                pool, vault, settings, url=f"http://127.0.0.1:{port}{path}",
                event_types=["*"], ordering=ordering,
            )  # fmt: skip
            subs[(path, ordering)] = sub["id"]
        await seed_events(pool, args.objects, args.events)
        unordered, ordered, ratios, delays, rounds = [], [], [], [], []
        for run in range(args.runs):
            await queue(pool, subs[("/ok", "none")], ordered=False)
            unordered.append(n / await deliver(pool, settings))
            await queue(pool, subs[("/ok", "object")], ordered=True)
            ordered.append(n / await deliver(pool, settings))
            await check_order(pool, args.objects, args.events)
            healthy = await others_done(pool)
            await queue(pool, subs[("/fail-doc0", "object")], ordered=True)
            await deliver(pool, settings)
            failing = await others_done(pool)
            ratios.append(ordered[-1] / unordered[-1])
            delays.append(failing - healthy)
            rounds.append(healthy / args.events)
            print(
                f"run {run + 1}: unordered {unordered[-1]:,.0f}/s  ordered {ordered[-1]:,.0f}/s"
                f"  ratio {ratios[-1]:.2f}  others done {healthy:.2f} s (healthy) vs "
                f"{failing:.2f} s (doc_0 failing)",
                flush=True,
            )
        print(
            f"ordering ({args.objects:,} objects x {args.events} events, one subscription, "
            f"median of {args.runs}): unordered {statistics.median(unordered):,.0f}/s, "
            f"ordered {statistics.median(ordered):,.0f}/s, ratio "
            f"{statistics.median(ratios):.2f} (goal >= 0.80)"
        )
        print(
            f"one failing object: the others finished {statistics.median(delays):+.3f} s later "
            f"than with none failing; one claim round (an object's turn) is "
            f"{statistics.median(rounds):.3f} s (goal: no more than one round)"
        )
    finally:
        await tear_down(pool, receiver, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_receiver(args.serve, status_of)
    else:
        asyncio.run(main(args))
