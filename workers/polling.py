"""arq jobs for polling: one job per account (under its Postgres lease) and the seeding cron.

`schedule_polls` runs every few seconds on one worker (arq cron, unique per tick). It reads
Postgres, the source of truth, and enqueues `poll_account` for every pollable account with
work due, under the deterministic job id `relay:poll:<account id>:<lease period>`:
re-enqueueing within a period is harmless, and after a Redis FLUSHDB the next tick seeds
everything again. The period in the id matters when a worker dies mid-job: arq keeps that
job's id (and its in-progress mark) until the job timeout, but the next period's id is free,
so polling resumes as soon as the dead worker's Postgres lease expires. The lease in
`poll_state`, not Redis, keeps two workers off one account: a job that finds it taken ends at
once. `poll_account` keeps no result (`keep_result=0`) so its id is free once it ends.

A store outage ends a poll run as `unavailable` (its lease released, its tasks left due) and
makes a seeding tick a no-op, each logged once per incident; the first tick after the store
returns seeds again, so polling resumes within seconds without anyone restarting a worker.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import ClientSession
from arq import cron, func
from arq.connections import ArqRedis

from relay.db import store_outage
from relay.http import create_client_session
from relay.metrics import WorkerMetrics
from relay.poller import Poller, state
from relay.poller.plan import Policy
from relay.settings import Settings
from relay.sources import accounts
from relay.vault import Vault
from workers.outages import outage, recovered

log = structlog.get_logger("workers.polling")

JOB_PREFIX = "relay:poll:"
# Accounts whose next task is due within this many seconds are enqueued now.
LOOKAHEAD = 5.0


def _policy(ctx: dict[str, Any]) -> Policy:
    # Tests and benchmarks put a time-compressed policy in the worker's ctx; otherwise the
    # default, compressed as much as a development sandbox's clock is (RELAY_UPSTREAM_SPEED).
    policy = ctx.get("poll_policy")
    if isinstance(policy, Policy):
        return policy
    speed = ctx["settings"].upstream_speed
    return Policy().scaled(speed) if speed != 1.0 else Policy()


async def poll_account(ctx: dict[str, Any], account_id: str) -> str:
    """Poll one account for a while (see `relay.poller`); returns the run's outcome."""
    http = ctx.get("upstream_http")
    if http is None:  # a ctx built without the worker's startup hook (tests)
        async with create_client_session() as own:
            return await _poll_account(ctx, account_id, own)
    return await _poll_account(ctx, account_id, http)


async def _poll_account(ctx: dict[str, Any], account_id: str, http: ClientSession) -> str:
    settings: Settings = ctx["settings"]
    poller = Poller(
        pool=ctx["pool"],
        redis=ctx["redis_client"],
        http=http,
        vault=Vault(settings.secret_keys),
        policy=_policy(ctx),
    )
    # Counted once per run (not per request) into this worker's Redis metrics buffer.
    metrics: WorkerMetrics = ctx.get("metrics") or WorkerMetrics(ctx["redis_client"])
    try:
        report = await poller.run_account(account_id)
    except Exception as exc:
        service = store_outage(exc)
        if service is None:
            metrics.poll_run(account_id, "crashed", None)
            await metrics.flush()
            raise
        # Not a bug and not the upstream: the run stopped where it was, its lease is released
        # and its tasks stay due, so the first poll after the store returns carries on. One
        # line per interrupted run (one per account and outage), without a traceback.
        log.warning(
            "poll_interrupted",
            account_id=account_id,
            service=service,
            reason=f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
        )
        metrics.poll_run(account_id, "unavailable", None)
        await metrics.flush()  # never raises; kept for the next flush while Redis is down
        return "unavailable"
    metrics.poll_run(account_id, report.outcome, report.upstream)
    await metrics.flush()
    return report.outcome


async def schedule_polls(ctx: dict[str, Any]) -> int:
    """Enqueue a poll job for every pollable account with work due; returns how many.

    While Postgres or Redis is down a tick does nothing (one line per outage); Postgres keeps
    what is due, so the next tick after it returns enqueues it."""
    try:
        enqueued = await _schedule_polls(ctx)
    except Exception as exc:
        service = store_outage(exc)
        if service is None:
            raise
        outage(ctx, service, "scheduler").failed(exc)
        return 0
    recovered(ctx, "scheduler")
    return enqueued


async def _schedule_polls(ctx: dict[str, Any]) -> int:
    policy = _policy(ctx)
    pool = ctx["pool"]
    redis: ArqRedis = ctx["redis"]
    # A broken account is tried again after the policy's `broken_retry` (scaled with its clock).
    retry = timedelta(seconds=policy.broken_retry)
    pollable = await accounts.list_pollable_accounts(pool, broken_retry=retry)
    if not pollable:
        return 0
    wanted = await state.accounts_due(
        pool, [a.id for a in pollable], LOOKAHEAD * min(1.0, policy.window_seconds / 60.0)
    )
    # A poll request or a broken account's retry must not wait for a task to fall due.
    wanted |= {a.id for a in pollable if a.poll_requested_at is not None or a.status == "broken"}
    enqueued = 0
    period = int(time.time() // policy.lease_seconds)
    for account_id in sorted(wanted):
        job_id = f"{JOB_PREFIX}{account_id}:{period}"
        job = await redis.enqueue_job("poll_account", account_id, _job_id=job_id)
        enqueued += job is not None
    if enqueued:
        log.info("polls_enqueued", accounts=enqueued)
    return enqueued


def functions(policy: Policy | None = None) -> list[Any]:
    """The polling jobs for `worker_functions()`."""
    run = (policy or Policy()).run_seconds
    return [func(poll_account, name="poll_account", timeout=run + 180, keep_result=0, max_tries=1)]


def cron_jobs() -> list[Any]:
    """The seeding cron: every 2 seconds, and at worker startup."""
    return [
        cron(
            schedule_polls,
            name="schedule_polls",
            second=set(range(0, 60, 2)),
            run_at_startup=True,
            timeout=30,
        )
    ]
