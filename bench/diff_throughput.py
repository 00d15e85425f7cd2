"""Diff throughput: a 100,000-object /costs snapshot with 1% changed, against a plain COPY.

Run from the repo root: `.venv/bin/python bench/diff_throughput.py [--objects N] [--runs N]`.
It creates its own database (`relay_bench_<random>`) on the server of DATABASE_URL (default
127.0.0.1:5432), drops it at the end, and prints the median of several runs of:
- COPY: the same rows copied into a plain table `(id text, data jsonb)`, the floor any diff
  that stores the objects has to compare with;
- diff: `relay.snapshots.diff_objects` over the whole snapshot with 1% of the objects changed
  (a different 1% each run), storing the changes and their events in one transaction;
- re-poll: the same diff with nothing changed;
- hashing alone: `relay.snapshots.quick_hash` over the snapshot, the Python work every diff
  does per object (one dumps in upstream key order, one digest; the key-sorted canonical hash
  only for the 1% that differ), and the diff's own Python CPU time: on a loaded machine wall
  time can be twice the CPU time, and these show how much is the diff's.
Goal: at least 100,000 objects/s and at least 0.6 of the COPY rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.db import create_pool, migrate
from relay.logs import configure_logging
from relay.settings import Settings
from relay.snapshots import diff_objects, quick_hash

CLIENT = "cli_bench"
STATUSES = ["processing", "review", "ready", "published", "archived"]
CATEGORIES = [("400", "Advertising"), ("410", "Travel"), ("420", "Office"), ("430", "Software")]
SUPPLIERS = ["Acme Ltd", "Beta Supplies", "Cafe Nero", "Dell UK", "Easyjet", "Amazon EU SARL"]


def make_cost(rng: random.Random, n: int) -> dict[str, Any]:
    """A /costs item shaped as dext-api.md says, about 1.5 KB as JSON."""
    code, name = rng.choice(CATEGORIES)
    supplier = rng.choice(SUPPLIERS)
    net = rng.randint(100, 500_000) / 100
    lines = [
        {
            "description": f"Line {i} for order {n}: {rng.choice(['goods', 'services', 'fees'])}",
            "quantity": str(rng.randint(1, 9)),
            "unit_price": f"{net / 3:.2f}",
            "amount": f"{net / 3:.2f}",
            "category_code": code,
            "tax_code": "T1",
        }
        for i in range(3)
    ]
    return {
        "id": f"doc_{n:08d}",
        "client_id": CLIENT,
        "workspace": "costs",
        "type": rng.choice(["receipt", "invoice", "credit_note", "expense"]),
        "source": rng.choice(["mobile", "email", "upload", "api", "bank_feed"]),
        "status": rng.choice(STATUSES),
        "supplier_name": supplier,
        "category_code": code,
        "total_amount": f"{net * 1.2:.2f}",
        "currency": "GBP",
        "date": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "integration": "xero",
        "publish_status": rng.choice(["unpublished", "queued", "published"]),
        "approval_status": rng.choice(["none", "pending", "approved"]),
        "created_at": f"2026-04-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:30:00Z",
        "supplier": {"id": f"sup_{SUPPLIERS.index(supplier)}", "name": supplier},
        "category": {"code": code, "name": name},
        "tax_rate": {"code": "T1", "name": "Standard rate 20%", "rate": "20.0"},
        "invoice_number": f"INV-{rng.randint(1000, 99999)}",
        "due_date": "2026-05-14",
        "net_amount": f"{net:.2f}",
        "tax_amount": f"{net * 0.2:.2f}",
        "paid": rng.random() < 0.5,
        "payment_method": rng.choice([None, "card", "bank_transfer"]),
        "description": f"Purchase {n} from {supplier}, captured by the practice for review",
        "project": rng.choice([None, "Website", "Fit-out"]),
        "line_items": lines,
        "publish": {
            "status": "unpublished",
            "external_id": None,
            "published_at": None,
            "error_message": None,
        },
        "approval": {"status": "pending", "stage": 1, "approver": "Sam Smith", "decided_at": None},
    }


def change_one_percent(objects: list[dict[str, Any]], run: int) -> int:
    """Change a different 1% of the objects each run (status and category): two events each."""
    changed = 0
    for n in range(run % 100, len(objects), 100):
        item = objects[n]
        item["status"] = STATUSES[(STATUSES.index(item["status"]) + 1) % len(STATUSES)]
        code, name = CATEGORIES[(run + n) % len(CATEGORIES)]
        if code == item["category_code"]:
            code, name = CATEGORIES[(run + n + 1) % len(CATEGORIES)]
        item["category"] = {"code": code, "name": name}
        item["category_code"] = code
        changed += 1
    return changed


async def time_copy(pool: asyncpg.Pool, objects: list[dict[str, Any]]) -> float:
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE plain_copy")
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "plain_copy", records=[(obj["id"], obj) for obj in objects], columns=("id", "data")
        )
        return time.perf_counter() - started


async def time_diff(
    pool: asyncpg.Pool, account_id: str, objects: list[dict[str, Any]], *, emit: bool
) -> tuple[float, int, float]:
    """Wall seconds, events stored, and this process's CPU seconds of one diff."""
    async with pool.acquire() as conn:
        started, cpu = time.perf_counter(), time.process_time()
        result = await diff_objects(
            conn,
            account_id=account_id,
            object_type="document",
            objects=objects,
            client_id=CLIENT,
            emit=emit,
        )
        return time.perf_counter() - started, len(result.events), time.process_time() - cpu


def time_hashing(objects: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for obj in objects:
        quick_hash("document", obj)
    return time.perf_counter() - started


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>10,.0f} objects/s  ({seconds * 1000:7.1f} ms)"


async def bench(settings: Settings, count: int, runs: int) -> bool:
    await migrate(settings)
    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        await pool.execute("CREATE TABLE plain_copy (id text, data jsonb)")
        account_id: str = await pool.fetchval(
            "INSERT INTO accounts (provider, name, base_url, api_token_enc)"
            " VALUES ('dext', 'bench', 'http://127.0.0.1:1', 'x') RETURNING id"
        )
        rng = random.Random(7)
        objects = [make_cost(rng, n) for n in range(count)]
        size = statistics.mean(len(orjson.dumps(obj)) for obj in objects[:1000])
        print(f"objects: {count:,} /costs items, {size:,.0f} bytes each as JSON; {runs} runs")

        seconds, _, _ = await time_diff(pool, account_id, objects, emit=False)
        print(f"first scan (all new, baseline):     {rate(count, seconds)}")
        await pool.execute("VACUUM ANALYZE snapshots")

        copies: list[float] = []
        diffs: list[float] = []
        diff_cpus: list[float] = []
        repolls: list[float] = []
        hashings: list[float] = []
        events = 0
        for run in range(runs):
            copies.append(await time_copy(pool, objects))
            changed = change_one_percent(objects, run)
            seconds, emitted, cpu = await time_diff(pool, account_id, objects, emit=True)
            diffs.append(seconds)
            diff_cpus.append(cpu)
            events += emitted
            if emitted != 2 * changed:
                raise AssertionError(f"run {run}: {changed} changed objects gave {emitted} events")
            seconds, emitted, _ = await time_diff(pool, account_id, objects, emit=True)
            repolls.append(seconds)
            if emitted:
                raise AssertionError(f"run {run}: an unchanged re-poll emitted {emitted} events")
            hashings.append(time_hashing(objects))

        copy_s, diff_s, repoll_s = (statistics.median(t) for t in (copies, diffs, repolls))
        ratio = copy_s / diff_s
        print(f"plain COPY (id, data jsonb):        {rate(count, copy_s)}")
        print(f"diff, 1% changed, events stored:    {rate(count, diff_s)}")
        print(f"re-poll, nothing changed:           {rate(count, repoll_s)}")
        print(f"hashing alone (Python):             {rate(count, statistics.median(hashings))}")
        print(f"diff's Python CPU time:             {rate(count, statistics.median(diff_cpus))}")
        print(f"events stored per diff:             {events // runs:,}")
        print(f"diff rate / COPY rate:              {ratio:.2f}")
        ok = count / diff_s >= 100_000 and ratio >= 0.6
        print(f"goal (>= 100,000 objects/s and >= 0.6 of COPY): {'met' if ok else 'NOT met'}")
        return ok
    finally:
        await pool.close()


async def drop_database(server: str, name: str) -> None:
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    configure_logging("console", "warning")
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/relay")
    parts = urlsplit(base)
    server = urlunsplit(parts._replace(path=""))
    name = f"relay_bench_{secrets.token_hex(4)}"
    settings = Settings(database_url=f"{server}/{name}")
    try:
        ok = asyncio.run(bench(settings, args.objects, args.runs))
    finally:
        asyncio.run(drop_database(server, name))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
