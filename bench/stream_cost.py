"""The live stream's cost: delivery throughput with 200 SSE listeners and a stalled one.

    .venv/bin/python bench/stream_cost.py [--deliveries 5000] [--runs 3] [--listeners 200]
        [--type client.health_changed]

Delivery is measured as in bench/delivery_throughput.py (N due deliveries, one dispatcher,
a local receiver process, delivered *and recorded* per second), first with nothing else
running, then with a real `relay api` process serving `GET /v1/events/stream` to `--listeners`
readers (one more process; each follows every event unless `--type` filters them) plus one
reader that connects and never reads a byte. It prints the median of the runs of each and the
median of the ratio "with listeners / without". After each run it waits until every reader has
every event of that run, so the figure also checks that the stream lost nothing, and prints
how long that took.

On 2 shared cores the API and the readers compete with the dispatcher and Postgres for CPU:
the ratio is the cost a fully loaded machine pays, not a lock or wait in the delivery path
(there is none: the stream only reads). Needs Postgres and Redis (the API's), uses its own
database `relay_bench_<random>`, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from delivery_throughput import run_dispatcher, seed_pending

from bench.common import PG_SERVER, free_port, tear_down
from relay.db import create_pool, migrate
from relay.delivery.subscriptions import create_subscription
from relay.logs import configure_logging
from relay.settings import Settings
from relay.vault import Vault, generate_key

REDIS_URL = os.environ.get("RELAY_BENCH_REDIS", "redis://127.0.0.1:6379/0")
TOKEN = "bench-admin-token"
BENCH_DIR = Path(__file__).resolve().parent


async def listen(url: str, count: int, type: str) -> None:
    """The readers' process: `count` streams and a stalled one; prints the fewest events any
    reader has, every 0.2 s, until stdin closes."""
    received = [0] * count
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        opened = asyncio.Event()
        ready = 0

        async def reader(i: int) -> None:
            nonlocal ready
            params = {"type": type} if type != "*" else {}
            async with http.get(
                url + "/v1/events/stream", params=params, headers=headers
            ) as response:
                assert response.status == 200, response.status
                ready += 1
                if ready == count:
                    opened.set()
                async for line in response.content:
                    if line.startswith(b"id: "):
                        received[i] += 1

        tasks = [asyncio.create_task(reader(i)) for i in range(count)]
        host, port = url.removeprefix("http://").split(":")
        _, stalled = await asyncio.open_connection(host, int(port))
        stalled.write(
            f"GET /v1/events/stream HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        await opened.wait()
        print("ready", flush=True)
        stdin = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        done = asyncio.create_task(stdin.read())
        while not done.done():
            print(f"min {min(received)} max {max(received)}", flush=True)
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        stalled.close()


async def wait_http(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def main(args: argparse.Namespace) -> None:
    configure_logging("json", "warning")
    name = f"relay_bench_{secrets.token_hex(4)}"
    key = generate_key()
    settings = Settings(
        database_url=f"{PG_SERVER}/{name}",
        secret_keys=(key,),
        allow_private_targets=True,
        log_level="warning",
        retry_schedule=(1.0,),
        delivery_endpoint_concurrency=64,
        delivery_concurrency=256,
    )
    receiver_port, api_port = free_port(), free_port()
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH_DIR / "delivery_throughput.py"), "--serve", str(receiver_port)
    )
    await migrate(settings)
    pool = await create_pool(settings, min_size=2, max_size=10)
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": REDIS_URL,
        "RELAY_ADMIN_TOKEN": TOKEN,
        "RELAY_SECRET_KEY": key,
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_LOG_FORMAT": "json",
    }
    api = listeners = None
    try:
        await asyncio.sleep(1.0)
        url = f"http://127.0.0.1:{receiver_port}/hook"
        sub, _ = await create_subscription(
            pool, Vault(settings.secret_keys), settings, url=url, event_types=["*"]
        )
        alone = []
        for run in range(args.runs):
            await seed_pending(pool, sub["id"], args.deliveries)
            alone.append(await run_dispatcher(pool, settings, args.deliveries))
            print(f"run {run + 1} without listeners: {alone[-1]:,.0f}/s", flush=True)

        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "api", "--port", str(api_port), env=env
        )
        api_url = f"http://127.0.0.1:{api_port}"
        await wait_http(api_url + "/healthz")
        listeners = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--listen",
            api_url,
            "--listeners",
            str(args.listeners),
            "--type",
            args.type,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert listeners.stdout is not None
        assert listeners.stdin is not None
        assert (await listeners.stdout.readline()).strip() == b"ready"
        loaded, catch_up = [], []
        for run in range(args.runs):
            started = time.perf_counter()
            await seed_pending(pool, sub["id"], args.deliveries)
            loaded.append(await run_dispatcher(pool, settings, args.deliveries))
            want = (run + 1) * args.deliveries if args.type in ("*", "document.*") else 0
            while True:
                line = (await listeners.stdout.readline()).decode()
                if int(line.split()[1]) >= want:
                    break
            catch_up.append(time.perf_counter() - started)
            got = f"; every listener had every event after {catch_up[-1]:.1f} s" if want else ""
            print(
                f"run {run + 1} with {args.listeners} listeners + 1 stalled: "
                f"{loaded[-1]:,.0f}/s{got}",
                flush=True,
            )
        ratio = statistics.median(b / a for a, b in zip(alone, loaded, strict=True))
        print(
            f"delivery ({args.deliveries:,} per run, median of {args.runs}): "
            f"{statistics.median(alone):,.0f}/s alone, {statistics.median(loaded):,.0f}/s with "
            f"{args.listeners} stream listeners + 1 stalled, median ratio {ratio:.2f}; "
            f"listeners' filter {args.type!r}"
            + (
                f": every listener had every event {statistics.median(catch_up):.1f} s after "
                "its run began (median), none lost"
                if args.type in ("*", "document.*")
                else " (they are sent nothing; the hub reads and matches every event)"
            )
        )
    finally:
        if listeners is not None and listeners.stdin is not None:
            listeners.stdin.close()
            await listeners.wait()
        if api is not None:
            api.terminate()
            await api.wait()
        await tear_down(pool, receiver, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--listeners", type=int, default=200)
    parser.add_argument(
        "--type",
        default="*",
        help="the listeners' `type` filter; the bench's events are all document.categorized, "
        "so e.g. client.health_changed measures listeners that are sent nothing (default *)",
    )
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.listen:
        asyncio.run(listen(parsed.listen, parsed.listeners, parsed.type))
    else:
        asyncio.run(main(parsed))
