"""The Poller: one account's run under its lease, the planned tasks in turn, and the pass's
bookkeeping (poll requests, baseline completion, auth failure and recovery)."""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis
import structlog

from relay.db import POSTGRES_OUTAGE_ERRORS, Backoff
from relay.errors import LeaseLost, NotFound, UpstreamAuthError, UpstreamError
from relay.events import insert_event
from relay.poller import account_warnings
from relay.poller.lists import ListPoller
from relay.poller.pages import _connection
from relay.poller.plan import (
    Policy,
    Task,
    TaskKind,
    WindowBudget,
    after_run,
    all_baselined,
    claim_lease,
    defer_sweep,
    ensure_tasks,
    force_full_pass,
    hurry_sweep,
    load_tasks,
    next_due_at,
    plan_window,
    release_lease,
    renew_lease,
    save_task,
)
from relay.poller.tasks import PollTasks
from relay.sources import accounts
from relay.sources.dext import CountingMetrics, DextClient
from relay.sources.ratelimit import RateLimiter
from relay.sources.registry import SOURCES
from relay.sources.source import Budget, Source
from relay.vault import Vault

log = structlog.get_logger("relay.poller")

# A provider without a source in `relay.sources.registry` (the API accepts none such today).
UNSUPPORTED_PROVIDER = "this version of Relay cannot poll this provider"


@dataclass
class RunReport:
    """What one `run_account` did."""

    account_id: str
    outcome: str = "done"  # done | leased (another worker has it) | gone | broken | error
    tasks: int = 0
    requests: int = 0
    changes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    # Every upstream request of the run, by endpoint and status, for the deployment's metrics.
    upstream: CountingMetrics | None = None


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass
class Poller(PollTasks):
    """Polls accounts: shared pool, Redis (the limiter), HTTP session and vault of a worker."""

    pool: asyncpg.Pool
    redis: aioredis.Redis
    http: aiohttp.ClientSession
    vault: Vault
    policy: Policy = field(default_factory=Policy)
    clock: Callable[[], float] = time.time
    holder: str = field(default_factory=default_holder)
    client_options: Mapping[str, Any] = field(default_factory=dict)
    # Options of the lists-only sources' clients (tests shorten backoffs).
    source_options: Mapping[str, Any] = field(default_factory=dict)

    def make_client(self, account: accounts.Account) -> tuple[DextClient, CountingMetrics]:
        token = accounts.account_token(self.vault, account)
        limiter = RateLimiter(
            self.redis,
            token,
            limit=self.policy.rate_limit,
            window_seconds=self.policy.window_seconds,
            margin=self.policy.safety_margin,
        )
        metrics = CountingMetrics()
        client = DextClient(
            account.base_url,
            token,
            session=self.http,
            limiter=limiter,
            metrics=metrics,
            **self.client_options,
        )
        return client, metrics

    async def run_account(
        self, account_id: str, *, run_seconds: float | None = None, idle_exit: bool = False
    ) -> RunReport:
        """Poll one account for up to `run_seconds` (policy default) under its lease; with
        `idle_exit`, return as soon as nothing is due (tests and benchmarks settle this way)."""
        report = RunReport(account_id)
        lease = self.policy.lease_seconds
        if not await claim_lease(self.pool, account_id, self.holder, lease):
            report.outcome = "leased"
            return report
        try:
            await self._run(account_id, report, run_seconds or self.policy.run_seconds, idle_exit)
        except LeaseLost:
            log.warning("poll_lease_lost", account_id=account_id)
            report.outcome = "error"
        finally:
            await self._release_lease(account_id)
        log.info(
            "account_polled",
            account_id=account_id,
            outcome=report.outcome,
            tasks=report.tasks,
            requests=report.requests,
            changes=report.changes,
        )
        return report

    async def _release_lease(self, account_id: str) -> None:
        """Free the account for the next poll, even when Postgres is what just failed.

        A run that Postgres ended (a restart, an outage) used to leave its lease held, and the
        account skipped every poll as `leased` until the lease expired: 60 s of nothing after a
        0.25 s restart. So a release that cannot reach Postgres is tried again with capped
        backoff until it succeeds or the lease would have expired by itself anyway.
        """
        deadline = self.clock() + self.policy.lease_seconds
        backoff = Backoff(first=0.05, cap=1.0)
        while True:
            try:
                await release_lease(self.pool, account_id, self.holder)
                return
            except POSTGRES_OUTAGE_ERRORS as exc:
                delay = backoff.next()
                if self.clock() + delay >= deadline:
                    log.warning("poll_lease_release_failed", account_id=account_id, error=repr(exc))
                    return
                await asyncio.sleep(delay)

    async def _run(
        self, account_id: str, report: RunReport, run_seconds: float, idle_exit: bool
    ) -> None:
        try:
            account = await accounts.get_account(self.pool, account_id)
        except NotFound:
            report.outcome = "gone"
            return
        if account.provider != "dext":
            if account.provider not in SOURCES:
                # Say so on the account rather than leave it silently unpolled.
                await accounts.record_poll_error(self.pool, account.id, UNSUPPORTED_PROVIDER)
                report.outcome = "gone"
                return
            # A source with lists only (InvoiceXT): the source-generic pass of `poller.lists`.
            await self._run_source(account, report, run_seconds, idle_exit)
            return
        client, metrics = self.make_client(account)
        deadline = self.clock() + run_seconds
        budget = WindowBudget(self.policy.budget, self.policy.window_seconds)
        request_seen = await self._honour_poll_request(account)
        if not await load_tasks(self.pool, account_id):
            await ensure_tasks(self.pool, account_id, [], self.clock(), self.policy, prune=False)
        shared_at = -math.inf  # when the limiter's view was last stored
        try:
            while self.clock() < deadline:
                now = self.clock()
                # A "poll now" or a deletion while this job runs is seen within a second.
                fresh = await accounts.get_account(self.pool, account_id)
                if fresh.poll_requested_at != account.poll_requested_at:
                    account = fresh
                    request_seen = await self._honour_poll_request(account) or request_seen
                tasks = await load_tasks(self.pool, account_id)
                plan = plan_window(tasks, now, self.policy, budget.left(now))
                if not plan:
                    # Idle: what ran so far is a pass (records it, clears a done poll request).
                    await self._after_pass(account, request_seen)
                    due = await next_due_at(self.pool, account_id)
                    wake = deadline if due is None else due
                    if wake <= now:  # due, but this window's budget is spent
                        wake = budget.next_window()
                    elif idle_exit:
                        break
                    if wake >= deadline:
                        break
                    await asyncio.sleep(min(max(0.0, wake - self.clock()) + 0.01, 1.0))
                    continue
                for task in plan:
                    if self.clock() >= deadline:
                        break
                    if not await renew_lease(
                        self.pool, account_id, self.holder, self.policy.lease_seconds
                    ):
                        raise LeaseLost(account_id)
                    before = _requests(metrics)
                    # `backfill` asks for the account's first scan as events; a client that
                    # appears after it is history all the same (relay.md, "Events").
                    backfill = account.backfill and account.baseline_completed_at is None
                    emit = backfill or _emits(task, tasks)
                    run = await self._run_task(client, account, task, emit)
                    cost = _requests(metrics) - before
                    budget.spend(cost)
                    done = after_run(
                        task,
                        self.clock(),
                        self.policy,
                        changed=run.changed,
                        cost=cost,
                        finished=run.finished,
                        cursor=run.cursor,
                    )
                    if run.failed:
                        # Nothing usable, or an incomplete first read: the task stays as it was
                        # (no baseline yet) and is tried again later, not at once in this pass.
                        # A baseline (interval 0) starts a fresh scan after `baseline_retry`.
                        wait = task.interval or self.policy.baseline_retry
                        done = dc_replace(
                            task,
                            due_at=self.clock() + wait,
                            forced=False,
                            cursor=task.cursor if run.cursor is None else run.cursor,
                        )
                    await save_task(self.pool, done)
                    if self.clock() - shared_at >= self.policy.window_seconds:
                        # A run lasts `run_seconds` (2 min): the console should not wait for
                        # its end to see the upstream budget, so it is shared once a window.
                        state = await client.rate_limit_state()
                        await accounts.record_rate_limit(self.pool, account_id, state.to_json())
                        shared_at = self.clock()
                    if run.suspect_deletion:
                        await hurry_sweep(self.pool, account_id, task.client_id)
                    if task.kind is TaskKind.BASELINE and run.finished:
                        # The baseline was a complete scan: the first sweep can wait its turn.
                        await defer_sweep(self.pool, account_id, task.client_id, self.clock())
                    if not task.baselined and run.finished and not run.failed:
                        account = await self._complete_baseline(account)
                    report.tasks += 1
                    report.requests += cost
                    report.changes += run.changed
                    report.by_kind[task.kind.value] = report.by_kind.get(task.kind.value, 0) + 1
                    if task.kind is TaskKind.CLIENTS or task.kind is TaskKind.BASELINE:
                        break  # the task list changed: plan again
            await self._after_pass(account, request_seen)
        except NotFound:
            report.outcome = "gone"  # deleted while polling: stop
        except UpstreamAuthError as exc:
            report.outcome = "broken"
            await self._auth_failed(account, exc)
        except UpstreamError as exc:
            report.outcome = "error"
            log.warning("poll_failed", account_id=account_id, error=str(exc), status=exc.status)
            await accounts.record_poll_error(self.pool, account_id, str(exc))
        finally:
            set_aside = client.set_aside.drain()
            metrics.set_aside.update(set_aside.counts)
            await account_warnings.record_set_aside(self.pool, account_id, set_aside)
            report.requests = _requests(metrics)
            report.upstream = metrics
            state = await client.rate_limit_state()
            await accounts.record_rate_limit(self.pool, account_id, state.to_json())

    def make_source(self, account: accounts.Account) -> tuple[Source, CountingMetrics]:
        """The `Source` of a lists-only account (`relay.sources.registry`); its clock, the
        hour and the month compress with the policy's window like Dext's minute."""
        return SOURCES[account.provider](
            account.base_url,
            accounts.account_token(self.vault, account),
            http=self.http,
            redis=self.redis,
            speed=60.0 / self.policy.window_seconds,
            options=self.source_options,
        )

    async def _run_source(
        self, account: accounts.Account, report: RunReport, run_seconds: float, idle_exit: bool
    ) -> None:
        """Cycles of the account's source until `run_seconds` are up (one with `idle_exit`)."""
        client, metrics = self.make_source(account)
        deadline = self.clock() + run_seconds
        lists = ListPoller(self.pool, client, account, self.clock)
        request_seen = await self._honour_poll_request(account)
        budget: Budget | None = None
        try:
            while self.clock() < deadline:
                client.max_wait = max(deadline - self.clock(), 0.05)
                if not await renew_lease(
                    self.pool, account.id, self.holder, self.policy.lease_seconds
                ):
                    raise LeaseLost(account.id)
                budget = await client.budget()
                emit = account.backfill or account.baseline_completed_at is not None
                cycle = await lists.cycle(emit, budget.pace_seconds)
                report.tasks += 1
                report.changes += cycle.changed
                # A list the key may not read is no gap of the baseline (it is shown instead).
                if account.baseline_completed_at is None and not cycle.gaps:
                    await accounts.complete_baseline(self.pool, account.id)
                    log.info("baseline_completed", account_id=account.id)
                # Stored after every cycle, not only when the run ends (see the Dext path).
                await self._record_source_rate_limit(account.id, client, budget, lists)
                account = await accounts.get_account(self.pool, account.id)
                await self._after_pass(account, request_seen)
                if cycle.forbidden:
                    missing = ", ".join(sorted(cycle.forbidden))
                    await accounts.record_poll_error(
                        self.pool, account.id, f"the API key lacks the scope {missing}"
                    )
                if idle_exit:
                    break
        except NotFound:
            report.outcome = "gone"
        except UpstreamAuthError as exc:
            report.outcome = "broken"
            await self._auth_failed(account, exc)
        except UpstreamError as exc:
            report.outcome = "error"
            log.warning("poll_failed", account_id=account.id, error=str(exc), status=exc.status)
            await accounts.record_poll_error(self.pool, account.id, str(exc))
        finally:
            report.requests = _requests(metrics)
            report.upstream = metrics
            await self._record_source_rate_limit(account.id, client, budget, lists)

    async def _record_source_rate_limit(
        self, account_id: str, client: Source, budget: Budget | None, lists: ListPoller
    ) -> None:
        """Store a source's limiter view, its window and month, and the scopes it lacks."""
        state = (await client.rate_limit_state()).to_json()
        if budget is not None:
            state["window_seconds"] = budget.window_seconds
            state["monthly"] = budget.monthly
        state["missing_scopes"] = sorted(lists.forbidden)
        await accounts.record_rate_limit(self.pool, account_id, state)

    async def _honour_poll_request(self, account: accounts.Account) -> Any:
        """Turn a new `POST /v1/accounts/{id}/poll` into forced tasks, once per request."""
        requested = account.poll_requested_at
        if requested is None:
            return None
        seen = await self.pool.fetchval(
            "UPDATE poll_state SET poll_request_seen_at = $2 WHERE account_id = $1 "
            "AND (poll_request_seen_at IS NULL OR poll_request_seen_at < $2) RETURNING 1",
            account.id,
            requested,
        )
        if seen:
            forced = await force_full_pass(self.pool, account.id)
            log.info("full_pass_requested", account_id=account.id, tasks=forced)
        return requested

    async def _complete_baseline(self, account: accounts.Account) -> accounts.Account:
        """Once every object set has its first run, the account's baseline is complete."""
        if account.baseline_completed_at is not None:
            return account
        if not await all_baselined(self.pool, account.id):
            return account
        await accounts.complete_baseline(self.pool, account.id)
        log.info("baseline_completed", account_id=account.id)
        return await accounts.get_account(self.pool, account.id)

    async def _after_pass(self, account: accounts.Account, request_seen: Any) -> None:
        async with _connection(self.pool) as conn:
            await accounts.record_poll_success(conn, account.id)
            if request_seen is not None:
                forced_left = await conn.fetchval(
                    "SELECT count(*) FROM poll_tasks WHERE account_id = $1 AND forced",
                    account.id,
                )
                if not forced_left:
                    await accounts.clear_poll_request(conn, account.id, request_seen)
            async with conn.transaction():
                recovered = await conn.fetchval(
                    "UPDATE poll_state SET auth_failed_at = NULL WHERE account_id = $1 "
                    "AND auth_failed_at IS NOT NULL RETURNING 1",
                    account.id,
                )
                was_broken = await accounts.mark_recovered(conn, account.id)
                if recovered or was_broken:
                    await insert_event(
                        conn,
                        "account.recovered",
                        account_id=account.id,
                        object_id=account.id,
                        object=_account_object(account, "active"),
                    )
                    log.info("account_recovered", account_id=account.id)

    async def _auth_failed(self, account: accounts.Account, exc: UpstreamAuthError) -> None:
        log.warning("account_auth_failed", account_id=account.id, code=exc.code)
        async with _connection(self.pool) as conn, conn.transaction():
            newly = await accounts.mark_broken(
                conn, account.id, f"upstream refused the token: {exc.code}"
            )
            first = await conn.fetchval(
                "UPDATE poll_state SET auth_failed_at = now(), auth_tried_at = now() "
                "WHERE account_id = $1 AND auth_failed_at IS NULL RETURNING 1",
                account.id,
            )
            if newly or first:
                await insert_event(
                    conn,
                    "account.auth_failed",
                    account_id=account.id,
                    object_id=account.id,
                    object={**_account_object(account, "broken"), "error": exc.code},
                )


# -- helpers ---------------------------------------------------------------------------------


def _requests(metrics: CountingMetrics) -> int:
    return sum(metrics.requests.values())


def _emits(task: Task, tasks: Sequence[Task]) -> bool:
    """A task's runs emit once its object set has a baseline: documents after the client's
    baseline scan, every other kind after its own first complete run."""
    if task.kind is TaskKind.BASELINE:
        return False
    if task.kind in (TaskKind.HEAD, TaskKind.HOT, TaskKind.SWEEP):
        return True  # planned only after the client's baseline
    return task.baselined


def _account_object(account: accounts.Account, status: str) -> dict[str, Any]:
    return {"id": account.id, "provider": account.provider, "name": account.name, "status": status}
