"""Delivery on the shape users have: `relay api` + `relay worker` processes, many subscriptions.

    .venv/bin/python bench/delivery_shape.py [--workers 1,2] [--runs 1] [--receiver both]

`bench/delivery_throughput.py` runs this after its own (one subscription, a backlog seeded
before the clock, one `Dispatcher` object), so one run prints both shapes. Here:

1. Throughput: `relay api` and `relay worker` x N started as users start them (arq, the
   poller, the sweeper and all), 200 subscriptions each with its own secret and path, 100
   stored events; the clock starts at the first of 100 `POST /v1/events/{id}/replay` calls
   (each makes 200 deliveries: 20,000 in all, created while the workers dispatch) and stops
   at the last arrival at the receiver. Against it, in the same run, a raw aiohttp loop posts
   the same Standard Webhooks bodies, signed with each subscription's secret, to the same
   paths. Receivers, each in its own process: an aiohttp server that reads each body and
   answers 204, and a bare HTTP/1.1 protocol answering 204. Checked afterwards: every
   delivery succeeded with exactly one recorded attempt, and the receiver saw each once.
2. Latency: 200 subscriptions each filtered to one client, events stored at 2,000/s for a few
   seconds, 10 to a transaction (a diff page's changes) and then each alone; p50/p99 from
   each event's commit (Postgres' clock, read by the storing transaction's last statement)
   to its delivery's first attempt (goal: p99 under 50 ms), after a discarded warm-up, with
   each part's CPU per event. `--latency-subscriptions 10000` runs it over 10,000
   subscriptions and as many clients (still one delivery an event).
3. Fan-out: one event stored (as the diff stores them) matching 10,000 subscriptions; seconds
   from its commit to the last of its 10,000 arrivals (goal: under 5 s).
4. Storing single events with the NOTIFY inside each transaction and after it, alternated.

Uses its own database `relay_bench_<random>` (dropped at the end) and a free Redis db number
(claimed as the test suite claims them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
from pathlib import Path

import aiohttp
import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shape_phases import (  # noqa: E402
    add_many_subscriptions,
    add_subscriptions,
    fan_out,
    latency,
    raw_run,
    retire_subscriptions,
    store_events,
    store_rate,
    throughput_run,
)
from shape_processes import (  # noqa: E402
    PG_SERVER,
    REDIS_SERVER,
    TOKEN,
    CpuMeter,
    Deployment,
    claim_redis_db,
    cpu_text,
    free_port,
    release_redis_db,
    wait_http,
)
from shape_receivers import serve  # noqa: E402

from relay.db import create_pool, migrate  # noqa: E402
from relay.settings import Settings  # noqa: E402
from relay.vault import generate_key  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    name = f"relay_bench_{secrets.token_hex(4)}"
    db_number, claim = claim_redis_db()
    secret_keys = (generate_key(),)
    settings = Settings(
        database_url=f"{PG_SERVER}/{name}",
        redis_url=f"{REDIS_SERVER}/{db_number}",
        secret_keys=secret_keys,
        allow_private_targets=True,
    )
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RELAY_SECRET_KEY": secret_keys[0],
        "RELAY_ADMIN_TOKEN": TOKEN,
        "RELAY_ALLOW_PRIVATE_TARGETS": "1",
        "RELAY_LOG_FORMAT": "json",
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_RETRY_SCHEDULE": "1",
    }
    kinds = ["aiohttp", "protocol"] if args.receiver == "both" else [args.receiver]
    receivers: dict[str, tuple[str, asyncio.subprocess.Process]] = {}
    for kind in kinds:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", str(port), "--receiver", kind
        )
        receivers[kind] = (f"http://127.0.0.1:{port}", proc)
    await migrate(settings)
    if args.log_statements:
        # Profiling: every statement of this database, with its duration, in the server log.
        conn = await asyncpg.connect(settings.database_url)
        await conn.execute(f'ALTER DATABASE "{name}" SET log_min_duration_statement = 0')
        # and the plan (with actual rows) of any statement slower than 40 ms
        for setting in (
            "session_preload_libraries = 'auto_explain'",
            "auto_explain.log_min_duration = 40",
            "auto_explain.log_analyze = on",
            "auto_explain.log_nested_statements = on",
        ):
            await conn.execute(f'ALTER DATABASE "{name}" SET {setting}')
        await conn.close()
    pool = await create_pool(settings, min_size=2, max_size=52)
    deployment = Deployment(env, free_port())
    api_base = f"http://127.0.0.1:{deployment.api_port}"
    headers = {"authorization": f"Bearer {TOKEN}"}
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    try:
        await deployment.start_api()
        for _, (base, _) in receivers.items():
            await wait_http(f"{base}/_stats")
        async with aiohttp.ClientSession(headers=headers) as api:
            for kind, (base, _) in receivers.items():
                await retire_subscriptions(pool)
                subs = await add_subscriptions(api, api_base, base, args.subscriptions, kind)
                await pool.execute(
                    "TRUNCATE events, event_fanout_queue, deliveries, delivery_attempts"
                )
                events = await store_events(pool, args.events, fanned_out=True)
                event_ids = [e["id"] for e in events]
                bodies = [(e["id"], orjson.dumps(e)) for e in events]
                for count in worker_counts:
                    await deployment.start_workers(count)
                    assert deployment.api is not None
                    parts = {
                        "workers": [w.pid for w in deployment.workers],
                        "api": [deployment.api.pid],
                        "receiver": [receivers[kind][1].pid],
                    }
                    meter = CpuMeter(pool, name, parts)
                    rates, raws, cpu_ratios, whole_ratios = [], [], [], []
                    n_all = len(event_ids) * len(subs)
                    for run in range(args.runs):
                        raw, raw_cpu, raw_served = await raw_run(
                            base, subs, bodies, args.concurrency, receivers[kind][1].pid
                        )
                        raws.append(raw)
                        rate, cpu, replayed = await throughput_run(
                            pool, api, api_base, base, event_ids, len(subs), meter
                        )
                        rates.append(rate)
                        cpu_ratios.append(raw_cpu / cpu["workers"])
                        # Both fill the two cores: the rates' ratio follows what each costs the
                        # whole machine per delivery, the receiver's share included.
                        whole_ratios.append((raw_cpu + raw_served) / sum(cpu.values()))
                        print(
                            f"  {kind} receiver, {count} worker(s), run {run + 1}: "
                            f"relay {rate:,.0f}/s  raw {raw:,.0f}/s  ratio {rate / raw:.2f} "
                            f"(replays done after {replayed:.2f} s of {n_all / rate:.2f}); "
                            f"CPU ms per delivery: {cpu_text(cpu)}; raw loop {raw_cpu:.3f}, "
                            f"its receiver {raw_served:.3f}; whole-machine CPU ratio "
                            f"{whole_ratios[-1]:.2f}",
                            flush=True,
                        )
                    await deployment.stop_workers()
                    ratio = statistics.median(r / b for r, b in zip(rates, raws, strict=True))
                    print(
                        f"users' shape ({args.subscriptions} subscriptions, {args.events} "
                        f"replays x {len(subs)}, {kind} receiver, {count} relay worker(s), "
                        f"median of {args.runs}): relay {statistics.median(rates):,.0f}/s, "
                        f"raw aiohttp loop {statistics.median(raws):,.0f}/s, "
                        f"median per-run ratio {ratio:.2f}; raw loop's CPU per request / "
                        f"the workers' per delivery {statistics.median(cpu_ratios):.2f}, "
                        f"the whole baseline's / relay's {statistics.median(whole_ratios):.2f}",
                        flush=True,
                    )
            base = receivers[kinds[0]][0]
            if args.store_seconds > 0 or args.latency_seconds > 0 or args.fan_out > 0:
                await deployment.start_workers(1)
            if args.latency_seconds > 0:
                await retire_subscriptions(pool)
                clients = args.latency_subscriptions
                if clients <= 200:
                    await add_subscriptions(
                        api, api_base, base, clients, "lat", client_ids=lambda i: [f"cli_{i}"]
                    )
                else:
                    await add_many_subscriptions(
                        pool, settings, base, clients, "lat", client_ids=lambda i: [f"cli_{i}"]
                    )
                # Warm-up, not reported: the bench's 48 storing connections each look up the
                # types of their statements once (asyncpg's introspection, ~10 ms of Postgres
                # CPU apiece), which made the first measured second a backlog of its own.
                await latency(pool, args.rate, 1.0, args.store, 10, clients)
                parts = {
                    "workers": [w.pid for w in deployment.workers],
                    "receiver": [receivers[kinds[0]][1].pid],
                    "bench (storing)": [os.getpid()],
                }
                for per_tx in (int(k) for k in args.per_transaction.split(",") if k):
                    meter = CpuMeter(pool, name, parts)
                    await meter.start()
                    stored, lat = await latency(
                        pool, args.rate, args.latency_seconds, args.store, per_tx, clients
                    )
                    cpu = meter.stop(len(lat))
                    lat.sort()
                    p50 = lat[len(lat) // 2]
                    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                    print(
                        f"latency ({args.rate:,} events/s asked for {args.latency_seconds:g} s "
                        f"over {clients:,} subscriptions, {per_tx} event(s) per transaction, "
                        "1 worker, "
                        f"{kinds[0]} receiver): commit->first attempt p50 {p50:.1f} ms, "
                        f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms ({stored:,.0f} events/s "
                        f"stored, {args.store} transactions); CPU ms per event: {cpu_text(cpu)}",
                        flush=True,
                    )
            if args.fan_out > 0:
                await retire_subscriptions(pool)
                seconds = await fan_out(pool, settings, base, args.fan_out)
                print(
                    f"fan-out (one event to {args.fan_out:,} subscriptions, 1 worker, "
                    f"{kinds[0]} receiver): all delivered {seconds:.2f} s after its commit",
                    flush=True,
                )
            if args.store_seconds > 0:
                # Last: its 48 clients leave thousands of events and dead rows behind, and
                # the autovacuum that follows slowed the latency phase run after it (Postgres
                # CPU per event 0.53-0.59 ms against 0.17-0.35 run alone).
                await retire_subscriptions(pool)
                store_rates = {"plain": [], "outbox": []}
                for _ in range(args.runs):
                    for store in store_rates:  # alternated, so both see the same machine
                        store_rates[store].append(await store_rate(pool, args.store_seconds, store))
                plain, out = (statistics.median(store_rates[k]) for k in ("plain", "outbox"))
                print(
                    f"storing single events (48 clients, one event per transaction, median of "
                    f"{args.runs}): NOTIFY inside the transaction {plain:,.0f}/s, after the "
                    f"commit (events.outbox) {out:,.0f}/s, ratio {out / plain:.2f}",
                    flush=True,
                )
    finally:
        await deployment.stop()
        await pool.close()
        for _, proc in receivers.values():
            proc.terminate()
            await proc.wait()
        conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        release_redis_db(db_number, claim)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--subscriptions", type=int, default=200)
    parser.add_argument("--events", type=int, default=100, help="replay calls (one per event)")
    parser.add_argument("--concurrency", type=int, default=64, help="the raw loop's lanes")
    parser.add_argument("--fan-out", type=int, default=10_000, help="0 skips the fan-out phase")
    parser.add_argument("--rate", type=int, default=2_000, help="events/s of the latency phase")
    parser.add_argument(
        "--store-seconds", type=float, default=3.0, help="per store-rate run; 0 skips it"
    )
    parser.add_argument(
        "--store",
        choices=("outbox", "plain"),
        default="outbox",
        help="how the latency phase stores each event: events.outbox() (NOTIFY after the "
        "commit) or a plain transaction (the trigger's NOTIFY inside it)",
    )
    parser.add_argument("--latency-seconds", type=float, default=3.0, help="0 skips it")
    parser.add_argument(
        "--latency-subscriptions",
        type=int,
        default=200,
        help="subscriptions of the latency phase, each filtered to one client of as many",
    )
    parser.add_argument(
        "--per-transaction",
        default="10,1",
        help="events per storing transaction in the latency phase, comma-separated runs "
        "(10: a diff page's changes; 1: each event alone, which one bench process cannot "
        "store at 2,000/s on this machine)",
    )
    parser.add_argument(
        "--receiver",
        choices=("aiohttp", "protocol", "both"),
        default="both",
        help="an aiohttp server reading each body, a bare HTTP/1.1 protocol, or both",
    )
    parser.add_argument(
        "--log-statements",
        action="store_true",
        help="profiling: log every statement of the bench database with its duration, "
        "and the plans of those slower than 40 ms (auto_explain)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed.serve, parsed.receiver)
    else:
        asyncio.run(main(parsed))
