"""Freshness: how soon polling detects each upstream change, against a naive full-scan poller.

Run from the repo root: `.venv/bin/python bench/freshness.py [--speed 40] [--minutes 60]
[--drift all]` (`--drift`: the sandbox answers drift as the contract allows, see README).
InvoiceXT: `.venv/bin/python bench/freshness.py --provider invoicext` (freshness_invoicext.py).

Each strategy gets its own in-process sandbox with the same seed (50 clients x 2,000 items,
the simulation's realistic change stream, 60 requests per simulated minute), its own database
(`relay_bench_<random>`, dropped at the end) and a claimed Redis db (flushed at the end).
Time is compressed `--speed` times (the rate-limit window is 60/speed real seconds, so the
budget per simulated minute is the real one); every figure is reported in simulated minutes,
i.e. what a real practice would see.

1. Baseline with the simulation paused (not measured).
2. The simulation runs for `--minutes` simulated minutes while the strategy polls.
3. The simulation pauses; the strategy completes one full pass (drain), so late changes count.

From the sandbox's ground-truth change log: detection latency p50/p95 per event type (change ->
event stored; events are timestamped by a 50 ms watcher), missed changes, false events, 429s.
Strategies: `scheduler` (relay.poller with the default policy) and `naive` (a round-robin full
scan of every list, full items at per_page 50, on the same connector and the same budget).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ThrowawayStores, compare_strategies, pct, print_latency_table
from relay import snapshots
from relay.errors import UpstreamError, UpstreamNotFound
from relay.http import create_client_session
from relay.logs import configure_logging
from relay.poller import Poller
from relay.poller.plan import Policy
from relay.sandbox.dext.drift import parse_drift
from relay.sandbox.server import SANDBOX, Sandbox, SandboxOptions, create_sandbox_app
from relay.settings import Settings
from relay.sources import accounts
from relay.sources.dext import DextClient
from relay.sources.ratelimit import RateLimiter
from relay.vault import Vault, generate_key
from tests.support.loopback import serve
from tests.support.polling import expected_types, same_meaning

GOAL_TYPES = ("document.created", "document.status_changed")


@dataclass
class Env:
    """One strategy's world: sandbox, database, Redis db, account."""

    sandbox: Sandbox
    url: str
    pool: asyncpg.Pool
    redis: aioredis.Redis
    vault: Vault
    account_id: str
    speed: float
    seen_at: dict[str, float] = field(default_factory=dict)  # event id -> simulated time stored


# -- the naive baseline --------------------------------------------------------------------


@dataclass
class Naive:
    """Round robin over everything, one step at a time: the /clients list, then per client
    every /costs and /sales page (a complete scan, deletions confirmed by 404), suppliers,
    expense reports, connections; then /clients again. Same connector, same budget."""

    client: DextClient
    env: Env
    emit: bool = False
    queue: list[str] = field(default_factory=list)
    everyone: list[str] = field(default_factory=list)

    async def step(self) -> None:
        """Scan the next client (or the /clients list, at the start of each round)."""
        acc, pool, client = self.env.account_id, self.env.pool, self.client
        if not self.queue:
            clients = await client.iter_clients().collect()
            async with pool.acquire() as conn:
                await snapshots.diff_objects(
                    conn, account_id=acc, object_type="client", objects=clients,
                    client_id=None, emit=self.emit,
                )  # fmt: skip
            self.everyone = [str(cl["id"]) for cl in clients]
            self.queue = list(self.everyone)
            return
        cid = self.queue[0]
        async with pool.acquire() as conn:
            scan = await snapshots.begin_complete_scan(
                conn, account_id=acc, object_type="document", client_id=cid
            )
        for ws, fetch in (("costs", client.costs), ("sales", client.sales)):
            page_no = 1
            while True:
                page = await fetch(cid, page=page_no, per_page=50)
                async with pool.acquire() as conn:
                    await snapshots.diff_scan_page(
                        conn, account_id=acc, object_type="document", objects=page.items,
                        client_id=cid, emit=self.emit, scan_id=scan, page=f"{ws}:{page_no}",
                    )  # fmt: skip
                if not page.has_next:
                    break
                page_no += 1
        async with pool.acquire() as conn:
            first = await snapshots.finish_complete_scan(conn, scan, confirmed_gone=None)
            gone = []
            for oid in first.candidates:
                try:
                    await client.cost(oid)
                except UpstreamNotFound:
                    try:
                        await client.sale(oid)
                    except UpstreamNotFound:
                        gone.append(oid)
            await snapshots.finish_complete_scan(conn, scan, confirmed_gone=gone, emit=self.emit)
        for object_type, items in (
            ("supplier", await client.iter_suppliers(cid).collect()),
            ("expense_report", await client.iter_expense_reports(cid).collect()),
            ("connection", [await client.connections(cid)]),
        ):
            async with pool.acquire() as conn:
                await snapshots.diff_objects(
                    conn, account_id=acc, object_type=object_type, objects=items,
                    client_id=cid, emit=self.emit,
                )  # fmt: skip
        self.queue.pop(0)  # done: a step cancelled mid-way is redone from its start

    async def round(self) -> None:
        """From wherever the round robin is, until the client list and every client were
        scanned once more."""
        if not self.queue:
            await self.step()
        pending, listed = set(self.everyone), False
        while pending or not listed:
            current = self.queue[0] if self.queue else None
            await self.step()
            if current is None:
                listed = True
            pending.discard(current or "")


# -- running a strategy ----------------------------------------------------------------------


async def keep_statistics(env: Env, stop: asyncio.Event) -> None:
    """ANALYZE snapshots every few seconds: a baseline grows the table from nothing faster than
    autovacuum re-analyzes it, and with stale statistics the diff queries pick a hash join
    over the whole table (~140 ms a page instead of ~1 ms)."""
    while not stop.is_set():
        await env.pool.execute("ANALYZE snapshots")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3.0)


async def watch_events(env: Env, stop: asyncio.Event) -> None:
    last = 0
    while not stop.is_set():
        rows = await env.pool.fetch("SELECT seq, id FROM events WHERE seq > $1", last)
        now = env.sandbox.clock.now()
        for row in rows:
            env.seen_at.setdefault(row["id"], now)
            last = max(last, row["seq"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def run_strategy(name: str, args: argparse.Namespace, base: Settings) -> dict[str, Any]:
    speed = args.speed
    options = SandboxOptions(
        seed=args.seed, clients=args.clients, items=args.items, rate_limit=60, speed=speed,
        simulate=False, port=0, drift=parse_drift(args.drift),
    )  # fmt: skip
    app = create_sandbox_app(options)
    runner, url = await serve(app, access_log=None)
    sandbox = app[SANDBOX]
    stores = await ThrowawayStores.open(base)
    pool, rconn = stores.pool, stores.redis
    vault = Vault((generate_key(),))
    http = create_client_session(timeout=30.0)
    try:
        account = await accounts.create_account(
            pool, vault, provider="dext", name=name, base_url=url,
            api_token=sandbox.token.api_token,
        )  # fmt: skip
        env = Env(sandbox, url, pool, rconn, vault, account.id, speed)
        policy = Policy().scaled(speed)
        window = 60.0 / speed

        if name == "scheduler":
            poller = Poller(pool=pool, redis=rconn, http=http, vault=vault, policy=policy)

            async def baseline() -> None:
                while (await accounts.get_account(pool, env.account_id)).status != "active":
                    await poller.run_account(env.account_id, run_seconds=5.0)

            async def poll_loop(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    await poller.run_account(env.account_id, run_seconds=5.0)

            async def drain() -> None:
                await accounts.request_poll(pool, rconn, env.account_id)
                while (await accounts.get_account(pool, env.account_id)).poll_requested_at:
                    await poller.run_account(env.account_id, run_seconds=5.0)

        else:
            token = sandbox.token.api_token
            limiter = RateLimiter(rconn, token, limit=60, window_seconds=window, margin=2)
            client = DextClient(url, token, session=http, limiter=limiter)

            naive = Naive(client, env)

            async def baseline() -> None:
                await naive.round()
                naive.emit = True

            async def poll_loop(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    await naive.step()

            async def drain() -> None:
                await naive.round()

        return await measure(name, env, args, baseline, poll_loop, drain)
    finally:
        await http.close()
        await stores.close()
        await runner.cleanup()


async def measure(
    name: str,
    env: Env,
    args: argparse.Namespace,
    baseline: Callable[[], Awaitable[None]],
    poll_loop: Callable[[asyncio.Event], Awaitable[None]],
    drain: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    started = time.time()
    stop_stats = asyncio.Event()
    stats = asyncio.create_task(keep_statistics(env, stop_stats))
    await baseline()
    print(f"  {name}: baseline done in {time.time() - started:.0f} s real", flush=True)
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch_events(env, stop_watch))
    env.sandbox.sync()
    seq0 = env.sandbox.practice.log.seq
    env.sandbox.simulation.paused = False
    stop_poll = asyncio.Event()
    poller = asyncio.create_task(poll_loop(stop_poll))
    await asyncio.sleep(args.minutes * 60.0 / env.speed)
    env.sandbox.sync()
    env.sandbox.simulation.paused = True
    seq1 = env.sandbox.practice.log.seq
    # Stop polling mid-pass (every write is transactional); the drain makes a full pass.
    stop_poll.set()
    poller.cancel()
    with contextlib.suppress(UpstreamError, asyncio.CancelledError):
        await poller
    print(
        f"  {name}: {seq1 - seq0} changes in {args.minutes} simulated minutes; draining", flush=True
    )
    await drain()
    await asyncio.sleep(0.2)
    stop_watch.set()
    stop_stats.set()
    await asyncio.gather(watcher, stats)
    changes = env.sandbox.practice.log.since(seq0)[: seq1 - seq0]
    events = await env.pool.fetch(
        "SELECT id, type, object_id, body->'data'->'object' AS object, "
        "body->'data'->'previous' AS previous FROM events ORDER BY seq"
    )
    summary = env.sandbox.access.summary()["tokens"]
    throttled = sum(t["rate_limited"] for t in summary.values())
    max_window = max((t["max_in_window"] for t in summary.values()), default=0)
    return score(name, env, changes, events, throttled, max_window)


def score(
    name: str,
    env: Env,
    changes: list[dict[str, Any]],
    events: list[asyncpg.Record],
    throttled: int,
    max_window: int,
) -> dict[str, Any]:
    """Match ground truth to events per (object, type): each event covers the changes of its
    type on its object since the previous such event; latency counts from each change."""
    wanted: dict[tuple[str, str], list[float]] = defaultdict(list)
    after: dict[tuple[str, float], dict[str, Any]] = {}  # (object, at) -> fields' new values
    for change in changes:
        fields = {k: list(v) for k, v in (change.get("changes") or {}).items()}
        at = datetime.fromisoformat(change["at"]).timestamp()
        after.setdefault((change["object_id"], at), {}).update({k: v[1] for k, v in fields.items()})
        for event_type in expected_types(change["object_type"], change["kind"], fields):
            wanted[(change["object_id"], event_type)].append(at)
    got: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    created: dict[str, tuple[float, dict[str, Any]]] = {}
    for event in events:
        seen = env.seen_at.get(event["id"], env.sandbox.clock.now())
        shown = _object(event)
        got[(event["object_id"], event["type"])].append((seen, shown))
        if event["type"].endswith(".created"):
            created.setdefault(event["object_id"], (seen, shown))
    latencies: dict[str, list[float]] = defaultdict(list)
    missed: dict[str, int] = defaultdict(int)
    false: dict[str, int] = defaultdict(int)
    falses: list[tuple[str, str]] = []
    misses: list[tuple[str, str]] = []
    for key in set(wanted) | set(got):
        pending = sorted(wanted.get(key, []))
        # An object first seen after more changes carries them in its `created` event: those
        # the created object already shows count as detected with it.
        if key[0] in created and not key[1].endswith(".created"):
            born, shown = created[key[0]]
            absorbed = [
                at
                for at in pending
                if at <= born
                and all(
                    same_meaning(shown.get(k), v) for k, v in _new_values(key, at, after).items()
                )
            ]
            latencies[key[1]].extend((born - at) / 60.0 for at in absorbed)
            pending = [at for at in pending if at not in absorbed]
        for seen, showing in sorted(got.get(key, []), key=lambda pair: pair[0]):
            covered = _shown_by(key, [at for at in pending if at <= seen], showing, after)
            if not covered:
                false[key[1]] += 1
                falses.append(key)
                continue
            latencies[key[1]].extend((seen - at) / 60.0 for at in covered)
            pending = pending[len(covered) :]
        missed[key[1]] += len(pending)
        if pending:
            misses.append(key)
    return {
        "name": name,
        "explained": [_explain(key, changes, events, env) for key in falses[:3]],
        "latencies": latencies,
        "missed": dict(missed),
        "false": dict(false),
        "false_keys": falses[:10],
        "missed_keys": misses[:10],
        "throttled": throttled,
        "max_window": max_window,
    }


def _object(event: asyncpg.Record) -> dict[str, Any]:
    obj = event["object"] or {}
    if isinstance(obj, str):  # jsonb, where the pool has no codec for it
        obj = orjson.loads(obj)
    return obj if isinstance(obj, dict) else {}


def _shown_by(
    key: tuple[str, str],
    candidates: list[float],
    shown: dict[str, Any],
    after: dict[tuple[str, float], dict[str, Any]],
) -> list[float]:
    """The changes (times, oldest first) an event covers: those before it was seen, up to the
    last one whose new values it shows. An event is seen some time after the read it was made
    from, so a change made between that read and the event's storing is not in it: it is the
    next event's (counting it covered here made that next, true, event look false). When the
    event shows none of them (a drifted answer nulls fields), it covers them all, as before."""
    if key[1] not in _ABOUT:
        return candidates
    for i in range(len(candidates) - 1, -1, -1):
        values = _new_values(key, candidates[i], after)
        if values and all(same_meaning(shown.get(k), v) for k, v in values.items()):
            return candidates[: i + 1]
    return candidates


def _new_values(
    key: tuple[str, str], at: float, after: dict[tuple[str, float], dict[str, Any]]
) -> dict[str, Any]:
    """The new values the change at `at` gave the object's fields that `key`'s event type is
    about (every field it changed, for a type `_ABOUT` does not list)."""
    fields = after.get((key[0], at), {})
    about = _ABOUT.get(key[1])
    return fields if about is None else {k: v for k, v in fields.items() if k in about}


def _explain(
    key: tuple[str, str], changes: list[dict[str, Any]], events: list[asyncpg.Record], env: Env
) -> list[str]:
    """What the upstream did to a falsely reported object, and every event relay stored on it
    (simulated times), so a false event can be told from a bench artefact."""
    object_id, event_type = key
    about = _ABOUT.get(event_type)
    lines = [f"{object_id}, {event_type}: upstream changes"]
    for change in changes:
        if change["object_id"] == object_id:
            fields = change.get("changes") or {}
            lines.append(f"  {change['at']} {change['kind']} {orjson.dumps(fields).decode()}")
    lines.append("relay's events")
    for event in events:
        if event["object_id"] != object_id:
            continue
        seen = env.seen_at.get(event["id"])
        at = datetime.fromtimestamp(seen, UTC).isoformat() if seen is not None else "?"
        obj = _object(event)
        shown = {k: obj.get(k) for k in (about or obj)}
        lines.append(f"  {at} {event['type']} previous={event['previous']} object={shown}")
    return lines


# The fields each document event type is about: a created object absorbs a change of that type
# when it shows those fields' new values (unwatched fields that changed with them, which
# `--drift retype` may null or retype in the answer, do not decide it).
_ABOUT: dict[str, tuple[str, ...]] = {
    "document.categorized": (
        "category",
        "category_code",
        "supplier",
        "customer",
        "supplier_name",
        "tax_rate",
    ),
    "document.status_changed": ("status",),
    "document.approval_changed": ("approval", "approval_status"),
    "document.sync_status_changed": ("publish", "publish_status", "integration"),
}


def report(results: list[dict[str, Any]]) -> None:
    print_latency_table(results)
    for r in results:
        print(
            f"  {r['name']}: missed {sum(r['missed'].values())}, false {sum(r['false'].values())}, "
            f"429s {r['throttled']}, max requests in one window {r['max_window']}"
        )
        if r["false_keys"]:
            print(f"    false events (object, type): {r['false_keys']}")
            for lines in r["explained"]:
                print("\n".join(f"      {line}" for line in lines))
        if r["missed_keys"]:
            print(f"    missed (object, type): {r['missed_keys']}")
    if len(results) == 2:
        smart, naive = results
        for t in GOAL_TYPES:
            a, b = (
                pct(smart["latencies"].get(t, []), 0.95),
                pct(naive["latencies"].get(t, []), 0.95),
            )
            print(f"  p95 {t}: naive/scheduler = {b / a:.1f}x (goal >= 5x)")


async def main(args: argparse.Namespace) -> None:
    configure_logging("console", "error", cache=False)
    banner = (
        f"freshness: {args.clients} clients x {args.items} items, seed {args.seed}, 60 requests "
        f"per simulated minute, speed {args.speed}x ({60 / args.speed:.2f} s windows), "
        f"{args.minutes} simulated minutes of changes"
    )

    async def run(name: str, base: Settings) -> dict[str, Any]:
        return await run_strategy(name, args, base)

    await compare_strategies(banner, args.strategies.split(","), run, report)


if __name__ == "__main__":
    # `--provider invoicext`: the InvoiceXT run (bench/freshness_invoicext.py, its own options).
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--provider", choices=["dext", "invoicext"], default="dext")
    known, rest = first.parse_known_args()
    if known.provider == "invoicext":
        from bench import freshness_invoicext

        asyncio.run(freshness_invoicext.main(freshness_invoicext.parser().parse_args(rest)))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=40.0, help="time compression (40)")
    parser.add_argument("--minutes", type=float, default=60.0, help="simulated minutes (60)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--strategies", default="scheduler,naive")
    parser.add_argument(
        "--drift", default="none", help="the sandbox's drift switches: all, none or a list (none)"
    )
    asyncio.run(main(parser.parse_args()))
