"""Freshness of InvoiceXT polling on a Starter budget: relay's head-first lists vs naive.

Run from the repo root: `.venv/bin/python bench/freshness.py --provider invoicext
[--speed 1440] [--hours 24] [--items 1000]` (or this file directly, same options).

Each strategy gets its own in-process InvoiceXT sandbox with the same seed (Starter plan: 100
requests in any rolling hour, 5,000 calls a month; `--items` invoices of history), its own
database (dropped at the end) and a claimed Redis db. Simulated time runs `--speed` times
faster; the sandbox's day of uploads (~40 an hour, each `processing` then `processed` or
`failed` within minutes), publications (~30 an hour, of recent invoices), reconciliations
and ledger drops runs for `--hours` simulated hours while the strategy polls; then the
simulation pauses and one complete pass drains what is left. Figures are simulated minutes.

Strategies, on the same connector, limiter, hourly limit and monthly pace:
- `relay`: `Poller.run_account` (relay.poller.lists: each list's head often, whole rarely).
- `naive`: round-robin complete scans of every page of every list, one after the other.

From the sandbox's ground truth (`log`): p50/p95 detection latency of `invoice.processed` and
`invoice.published` (change -> event stored), missed and false events, 429s, the most requests
in any rolling hour, and calls spent against what the month affords.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ThrowawayStores, compare_strategies, pct, print_latency_table
from relay.errors import UpstreamError
from relay.http import create_client_session
from relay.logs import configure_logging
from relay.poller import Poller
from relay.poller.lists import ListPoller
from relay.poller.plan import Policy
from relay.sandbox.invoicext.account import InvoicextSandbox
from relay.sandbox.invoicext.api import create_invoicext_app
from relay.settings import Settings
from relay.sources import accounts
from relay.sources.source import ListSpec
from relay.vault import Vault, generate_key
from tests.support.loopback import serve

GOAL_TYPES = ("invoice.processed", "invoice.published")


class NaiveLists(ListPoller):
    """Every cycle a complete scan of every list: round-robin over all pages."""

    async def _full_due(self, spec: ListSpec, pace: float) -> bool:
        return True

    async def _fresh_head(self) -> int:
        return 0  # no page 1 between a scan's pages: plain round-robin


@dataclass
class World:
    box: InvoicextSandbox
    url: str
    pool: asyncpg.Pool
    redis: aioredis.Redis
    account_id: str
    seen_at: dict[str, float] = field(default_factory=dict)


async def watch_events(world: World, stop: asyncio.Event) -> None:
    last = 0
    while not stop.is_set():
        rows = await world.pool.fetch("SELECT seq, id FROM events WHERE seq > $1", last)
        now = world.box.clock.now()
        for row in rows:
            world.seen_at.setdefault(row["id"], now)
            last = max(last, row["seq"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def run_strategy(name: str, args: argparse.Namespace, base: Settings) -> dict[str, Any]:
    box = InvoicextSandbox(
        seed=args.seed, items=args.items, plan="starter", speed=args.speed, simulate=False
    )
    runner, url = await serve(create_invoicext_app(box), access_log=None)
    url = f"{url}/api/v1"
    stores = await ThrowawayStores.open(base)
    pool, rconn = stores.pool, stores.redis
    vault = Vault((generate_key(),))
    http = create_client_session(timeout=30.0)
    try:
        account = await accounts.create_account(
            pool, vault, provider="invoicext", name=name, base_url=url, api_token=box.token.value
        )
        world = World(box, url, pool, rconn, account.id)
        policy = Policy().scaled(args.speed)
        poller = Poller(pool=pool, redis=rconn, http=http, vault=vault, policy=policy)
        client, _ = poller.make_source(account)
        naive = NaiveLists(pool, client, account, time.time)
        drainer = NaiveLists(pool, client, account, time.time)

        async def naive_cycle(emit: bool) -> None:
            budget = await client.budget()
            await naive.cycle(emit, budget.pace_seconds)

        started = time.time()
        if name == "relay":
            while (await accounts.get_account(pool, account.id)).status != "active":
                await poller.run_account(account.id, run_seconds=5.0)
        else:
            await naive_cycle(False)
        print(f"  {name}: baseline done in {time.time() - started:.0f} s real", flush=True)
        stop_watch = asyncio.Event()
        watcher = asyncio.create_task(watch_events(world, stop_watch))
        box.sync()
        mark, calls0, t0 = len(box.log), box.api_calls, box.clock.now()
        box.simulate = True
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                if name == "relay":
                    await poller.run_account(account.id, run_seconds=5.0)
                else:
                    await naive_cycle(True)

        task = asyncio.create_task(loop())
        await asyncio.sleep(args.hours * 3600.0 / args.speed)
        box.sync()
        box.simulate = False
        calls, t1 = box.api_calls - calls0, box.clock.now()
        stop.set()
        task.cancel()
        with contextlib.suppress(UpstreamError, asyncio.CancelledError):
            await task
        box.advance(900)  # no new arrivals; extractions under way finish (ground truth too)
        truth = box.log[mark:]
        print(f"  {name}: {len(truth)} changes in {args.hours} simulated hours; draining")
        budget = await client.budget()
        await drainer.cycle(True, budget.pace_seconds)
        await asyncio.sleep(0.2)
        stop_watch.set()
        await watcher
        events = await pool.fetch(
            "SELECT id, type, object_id, body->'data'->'publication'->>'target' AS target"
            " FROM events WHERE account_id = $1 ORDER BY seq",
            account.id,
        )
        hits = sorted(r["at"] for r in box.requests)
        j, most = 0, 0
        for i, at in enumerate(hits):
            while hits[j] <= at - box.window:
                j += 1
            most = max(most, i - j + 1)
        period_left = (box.period[1] - t0) / 86400.0
        affordable = (box.monthly_limit - calls0) * (t1 - t0) / 86400.0 / period_left
        return {
            "name": name,
            **score(world, truth, events),
            "throttled": sum(1 for r in box.requests if r["status"] == 429),
            "max_hour": most,
            "calls": calls,
            "affordable": affordable,
        }
    finally:
        await http.close()
        await stores.close()
        await runner.cleanup()


def score(world: World, truth: list[dict[str, Any]], events: list[Any]) -> dict[str, Any]:
    """Ground-truth changes per (object, event type, publication target) in time order; each
    relay event takes the earliest change of its key not yet taken that happened before it was
    seen. An event with none is false; a change no event took is missed."""
    wanted: dict[tuple[str, str, str | None], list[float]] = defaultdict(list)
    for entry in truth:
        at = datetime.fromisoformat(entry["at"]).timestamp()
        wanted[(entry["id"], entry["event"], entry.get("target"))].append(at)
    latencies: dict[str, list[float]] = defaultdict(list)
    false: dict[str, int] = defaultdict(int)
    for event in events:
        target = event["target"] if event["type"] == "invoice.published" else None
        pending = sorted(wanted.get((event["object_id"], event["type"], target), []))
        seen = world.seen_at.get(event["id"], world.box.clock.now())
        if pending and pending[0] <= seen + 1.0:
            wanted[(event["object_id"], event["type"], target)] = pending[1:]
            latencies[event["type"]].append(max(seen - pending[0], 0.0) / 60.0)
        else:
            false[event["type"]] += 1
    missed: dict[str, int] = defaultdict(int)
    for key, left in wanted.items():
        missed[key[1]] += len(left)
    return {
        "latencies": latencies,
        "missed": {k: v for k, v in missed.items() if v},
        "false": dict(false),
    }


def report(results: list[dict[str, Any]]) -> None:
    print_latency_table(results)
    for r in results:
        print(
            f"  {r['name']}: missed {sum(r['missed'].values())}, false "
            f"{sum(r['false'].values())}, 429s {r['throttled']}, most requests in any rolling "
            f"hour {r['max_hour']} (limit 100), calls {r['calls']} of {r['affordable']:.0f} "
            "the month affords over the run"
        )
    if len(results) == 2:
        smart, naive = results
        for t in GOAL_TYPES:
            a = pct(smart["latencies"].get(t, []), 0.95)
            b = pct(naive["latencies"].get(t, []), 0.95)
            print(f"  p95 {t}: naive/relay = {b / a:.1f}x (goal >= 5x)")


async def main(args: argparse.Namespace) -> None:
    configure_logging("console", "error", cache=False)
    banner = (
        f"freshness (InvoiceXT, Starter: 100/h, 5,000/month): {args.items} invoices, seed "
        f"{args.seed}, speed {args.speed}x, {args.hours} simulated hours"
    )

    async def run(name: str, base: Settings) -> dict[str, Any]:
        return await run_strategy(name, args, base)

    await compare_strategies(banner, args.strategies.split(","), run, report)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speed", type=float, default=1440.0, help="time compression (1440)")
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours (24)")
    p.add_argument("--items", type=int, default=1000, help="invoices of history (1000)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--strategies", default="relay,naive")
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
