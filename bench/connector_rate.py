"""Connector rate: requests per window that 4 processes sharing one token get from the sandbox.

Run from the repo root: `.venv/bin/python bench/connector_rate.py [--rate-limit 60]
[--window 5] [--windows 6] [--processes 4] [--tasks 3]`.

It starts the Dext sandbox in this process (limit `--rate-limit` per window, the window
time-compressed to `--window` real seconds: one window stands for Dext's real minute), claims a
free Redis db (15 down to 1, the test fixtures' claim keys in db 0) and flushes it at the end,
then starts `--processes` worker processes, each running `--tasks` concurrent DextClient loops
on one token through the shared Redis limiter. All begin on a window boundary and run for
`--windows` whole windows. From the sandbox's own request log it prints the requests counted
in each whole window (median, min, max), the most in any window, and the 429s.
Goal: at least limit - 2 used per window (58 of 60), never more than the limit, zero 429s;
the ratio is the median used per window against the limit, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REDIS_SERVER, claim_redis_db, release_redis_db
from relay.http import create_client_session
from relay.logs import configure_logging
from relay.sandbox.server import SANDBOX, SandboxOptions, create_sandbox_app
from relay.sources.dext import DextClient
from relay.sources.ratelimit import RateLimiter
from tests.support.loopback import serve

SCRIPT = str(Path(__file__).resolve())
CLAIM_TTL = 600
BUSY = "all Redis dbs 1-15 are claimed; try again when the tests are done"


async def worker(args: argparse.Namespace) -> None:
    """One worker process: say ready, read the start time, call the API until the end."""
    configure_logging("json", "warning")
    client_redis = aioredis.from_url(args.redis_url)
    async with create_client_session(timeout=10) as http:
        limiter = RateLimiter(
            client_redis, args.token, limit=args.rate_limit, window_seconds=args.window
        )
        client = DextClient(args.url, args.token, session=http, limiter=limiter)
        print("ready", flush=True)
        start = float(await asyncio.to_thread(sys.stdin.readline))
        stop = start + args.windows * args.window
        await asyncio.sleep(max(start - time.time(), 0))

        async def loop() -> int:
            done = 0
            while time.time() < stop:
                await client.clients(per_page=1)
                done += 1
            return done

        print(sum(await asyncio.gather(*(loop() for _ in range(args.tasks)))), flush=True)
    await client_redis.aclose()


async def run(args: argparse.Namespace) -> None:
    configure_logging("console", "warning")
    options = SandboxOptions(
        port=0,
        clients=3,
        items=30,
        rate_limit=args.rate_limit,
        window_seconds=args.window,
        simulate=False,
    )
    app = create_sandbox_app(options)
    runner, url = await serve(app, access_log=None)
    sandbox = app[SANDBOX]
    number, claim = claim_redis_db(range(15, 0, -1), ttl=CLAIM_TTL, busy=BUSY)
    procs: list[asyncio.subprocess.Process] = []
    try:
        command = [
            sys.executable,
            SCRIPT,
            "--worker",
            "--url",
            url,
            "--token",
            sandbox.token.api_token,
            "--redis-url",
            f"{REDIS_SERVER}/{number}",
            *("--rate-limit", str(args.rate_limit), "--window", repr(args.window)),
            *("--windows", str(args.windows), "--tasks", str(args.tasks)),
        ]
        for _ in range(args.processes):
            procs.append(
                await asyncio.create_subprocess_exec(
                    *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if line != b"ready\n":
                raise SystemExit(f"a worker failed to start: {line!r}")
        start = math.ceil((time.time() + 0.3) / args.window) * args.window
        outputs = await asyncio.gather(*(p.communicate(f"{start!r}\n".encode()) for p in procs))
        if any(p.returncode != 0 for p in procs):
            raise SystemExit("a worker process failed")
        calls = [int(out.split()[-1]) for out, _ in outputs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        release_redis_db(number, claim, flush=True)
        summary = sandbox.access.summary()["tokens"].get(sandbox.token.token_id, {})
        await runner.cleanup()

    per_window = {w["start"]: w["count"] for w in summary.get("windows", [])}
    used = [per_window.get(start + i * args.window, 0) for i in range(args.windows)]
    median = statistics.median(used)
    max_any = summary.get("max_in_window", 0)
    throttled = summary.get("rate_limited", 0)
    limit = args.rate_limit
    print(
        f"connector_rate: {args.processes} processes x {args.tasks} tasks, one token, "
        f"limit {limit} per window"
    )
    print(
        f"  time-compressed: 1 window = {args.window:g} s real, standing for Dext's 60 s; "
        f"all figures are requests per window ({args.windows} whole windows)"
    )
    print(f"  used per window:   {used}")
    spread = f"median {median:g}, min {min(used)}, max {max(used)}"
    print(f"  {spread} (ratio to the limit {median / limit:.3f})")
    print(f"  max in any window: {max_any} (incl. the partial windows at start and end)")
    print(f"  429 responses:     {throttled}")
    print(f"  calls per process: {calls}")
    met = min(used) >= limit - 2 and max_any <= limit and throttled == 0
    print(
        f"  goal (>= {limit - 2} per window, <= {limit}, zero 429s): {'met' if met else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-limit", type=int, default=60)
    parser.add_argument("--window", type=float, default=5.0, help="real seconds per window")
    parser.add_argument("--windows", type=int, default=6, help="whole windows to measure")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=3, help="concurrent calls per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(worker(args) if args.worker else run(args))


if __name__ == "__main__":
    main()
