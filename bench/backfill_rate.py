"""Backfill of a 100,000-object practice: snapshots to a receiver, with no upstream request.

    .venv/bin/python bench/backfill_rate.py [--objects 100000]

COPYs N document snapshots (about 1.3 KB each, the /costs shape) into a fresh database, under an
account whose base_url is a closed port (any upstream request would fail, and none is made),
then starts `POST /v1/subscriptions/{id}/backfill`'s job (`relay.delivery.recovery`) for a
subscription whose receiver (its own process) answers 200, and runs one real `Dispatcher`
until the job is done and every delivery settled. Prints the end-to-end rate (snapshot events
built in Postgres, queued in batches, signed, sent and recorded) and checks that each object
arrived once with the `sequence` it reflects.

Uses its own database `relay_bench_<random>`, dropped at the end, and needs no Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PG_SERVER, free_port, run_receiver, tear_down
from relay.db import create_pool, migrate
from relay.delivery import Dispatcher, close_session, create_session
from relay.delivery.recovery import get_job, start_backfill
from relay.delivery.subscriptions import create_subscription
from relay.logs import configure_logging
from relay.settings import Settings
from relay.vault import Vault, generate_key
from workers.runtime import tune_gc


def document(n: int) -> dict[str, object]:
    return {
        "id": f"doc_{n}",
        "client_id": f"cli_{n % 200}",
        "workspace": "costs",
        "type": "invoice",
        "status": "published",
        "supplier": {"id": f"sup_{n % 500}", "name": "Office Supplies Ltd"},
        "category": {"code": "400", "name": "Office"},
        "total_amount": "1332.00",
        "currency": "GBP",
        "description": "Paper and toner " * 20,
        "line_items": [{"description": "Paper", "amount": "1332.00"}],
    }


async def seed(pool: asyncpg.Pool, objects: int) -> str:
    account: str = await pool.fetchval(
        "INSERT INTO accounts (provider, name, base_url, api_token_enc, baseline_completed_at) "
        "VALUES ('dext', 'Big practice', 'http://127.0.0.1:1', 'x', now()) RETURNING id"
    )
    records = [
        (account, "document", f"cli_{n % 200}", f"doc_{n}", document(n), secrets.token_bytes(16))
        for n in range(objects)
    ]
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "snapshots",
            records=records,
            columns=("account_id", "object_type", "client_id", "object_id", "data", "hash"),
        )
        # A few objects have had events: their snapshots carry those sequences.
        await conn.execute(
            "INSERT INTO object_sequences SELECT $1, 'document', 'doc_' || n, 3 "
            "FROM generate_series(0, 99) AS n",
            account,
        )
        await conn.execute("ANALYZE snapshots")
    return account


async def main(args: argparse.Namespace) -> None:
    configure_logging("json", "warning")
    name = f"relay_bench_{secrets.token_hex(4)}"
    settings = Settings(
        database_url=f"{PG_SERVER}/{name}",
        secret_keys=(generate_key(),),
        allow_private_targets=True,
        log_level="warning",
        delivery_endpoint_concurrency=64,
        delivery_concurrency=256,
        delivery_batch_size=256,
        delivery_poll_interval=0.2,
    )
    port = free_port()
    receiver = await asyncio.create_subprocess_exec(sys.executable, __file__, "--serve", str(port))
    await migrate(settings)
    pool = await create_pool(settings, min_size=2, max_size=10)
    try:
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        await seed(pool, args.objects)
        print(f"seeded {args.objects:,} snapshots in {time.perf_counter() - started:.1f} s")
        sub, _ = await create_subscription(
            pool, Vault(settings.secret_keys), settings,
            url=f"http://127.0.0.1:{port}/warehouse", event_types=["document.created"],
        )  # fmt: skip
        session = create_session(settings)
        dispatcher = Dispatcher(pool, settings, session, Vault(settings.secret_keys))
        tune_gc()
        task = asyncio.create_task(dispatcher.run())
        started = time.perf_counter()
        job = await start_backfill(pool, sub["id"])
        while not (job["status"] == "done" and job["pending"] == 0):
            await asyncio.sleep(1.0)
            job = await get_job(pool, job["id"])
            print(
                f"  {time.perf_counter() - started:6.1f} s: queued {job['queued']:,}/"
                f"{job['total']:,}, sent {job['succeeded']:,}, pending {job['pending']:,}",
                flush=True,
            )
        elapsed = time.perf_counter() - started
        dispatcher.stop()
        await task
        await close_session(session)
        rows = await pool.fetch(
            "SELECT count(*) AS n, count(DISTINCT object_id) AS objects, "
            "count(*) FILTER (WHERE sequence = 3) AS with_events FROM events "
            "WHERE type = 'document.snapshot'"
        )
        sent = await pool.fetchval("SELECT count(*) FROM delivery_attempts WHERE status_code = 200")
        assert rows[0]["n"] == rows[0]["objects"] == args.objects == sent, dict(rows[0])
        assert rows[0]["with_events"] == 100
        sample = await pool.fetchval("SELECT body FROM events LIMIT 1")
        print(f"a body as sent: {orjson.dumps(sample)[:160].decode()}...")
        print(
            f"backfill of {args.objects:,} snapshots: {elapsed:.1f} s end to end, "
            f"{args.objects / elapsed:,.0f} objects/s; {job['failed']} failed; upstream "
            f"requests 0 (the account's base_url is a closed port)"
        )
    finally:
        await tear_down(pool, receiver, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_receiver(args.serve)
    else:
        asyncio.run(main(args))
