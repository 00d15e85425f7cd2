"""The poll planner: which (client, task kind) to poll next within an account's request budget.

Pure: no SQL and no I/O (`relay.poller.state` keeps the tasks in Postgres, `relay.poller.tasks`
runs them against a `relay.sources.source.ScopedSource`). The reads named below are Dext's, the
scoped source the default policy is tuned for: Dext offers no `updated_since` and allows 60
requests a minute per token, so every request is spent on purpose.

Work is cut into tasks, one per (account, client, kind); the account-level
`/clients` list has client_id "". Each task has an adaptive interval, a due time and a cost
estimate in requests, all kept in Postgres (`poll_tasks`) so a restart resumes where it was.

Policy (seconds of real time; `Policy.scaled(k)` divides every duration for a sandbox that runs
k times faster than real time):

| kind | what one run fetches | interval start [min, max] | weight |
| --- | --- | --- | --- |
| baseline | `/costs` + `/sales` every page (first pass; emits nothing) | once | 50 |
| head | `/documents` page 1 (per_page 100), on while its tail is unseen | 60 [20, 300] | 8 |
| hot | `/documents?status=` processing, review, ready (per_page 100) | 120 [45, 600] | 5 |
| clients | `/clients` every page | 600 [300, 3600] | 2 |
| expense_reports | `/expense_reports` every page | 600 [300, 3600] | 2 |
| suppliers | `/suppliers` every page | 900 [600, 3600] | 1 |
| connections | `/connections` | 1800 [900, 7200] | 1 |
| sweep | all `/documents` pages, detail refresh, deletions; sliced | 1800 [1800, 21600] | 1 |

A baseline whose scan had to skip a page is not done (the items on that page would later look
new): it starts a fresh scan after `baseline_retry`, and the client's document kinds wait.

Documents are read as cheap summaries; the full `/costs|/sales` item is fetched only for ids
that are new or whose summary changed (and, on a sweep, for items whose detail-only fields may
still change). `head`, `hot` and `sweep` of a client wait for its `baseline`.

Choosing: a task is eligible once due. Its score is `weight * (1 + lateness / interval)`, so a
late task climbs steadily and nothing starves; a forced task (`POST /v1/accounts/{id}/poll`)
gets 100x. `plan_window` fills one rate-limit window (limit minus `safety_margin`) greedily by
score with each task's estimated cost, reserving `cold_share` of the window for cold kinds
(sweep, suppliers, connections, clients, expense reports) whenever any is due, so a busy
practice whose head polls could eat the whole budget still sweeps. A run that found changes
halves the interval (down to min); a quiet run multiplies it by 1.5 (up to max): busy clients
are polled sooner, quiet ones back off, within bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class TaskKind(StrEnum):
    BASELINE = "baseline"
    HEAD = "head"
    HOT = "hot"
    CLIENTS = "clients"
    EXPENSE_REPORTS = "expense_reports"
    SUPPLIERS = "suppliers"
    CONNECTIONS = "connections"
    SWEEP = "sweep"


# The account-level task lives under this client id (Postgres primary keys cannot hold NULL).
ACCOUNT_LEVEL = ""
# Kinds that read a client's documents after its baseline (documents snapshots must exist).
DOCUMENT_KINDS = frozenset({TaskKind.HEAD, TaskKind.HOT, TaskKind.SWEEP})
COLD_KINDS = frozenset(
    {
        TaskKind.SWEEP,
        TaskKind.SUPPLIERS,
        TaskKind.CONNECTIONS,
        TaskKind.CLIENTS,
        TaskKind.EXPENSE_REPORTS,
    }
)
CLIENT_KINDS = (
    TaskKind.BASELINE,
    TaskKind.HEAD,
    TaskKind.HOT,
    TaskKind.EXPENSE_REPORTS,
    TaskKind.SUPPLIERS,
    TaskKind.CONNECTIONS,
    TaskKind.SWEEP,
)
FORCED_BOOST = 100.0


@dataclass(frozen=True)
class KindPolicy:
    """How often one kind of task runs: a start interval, its bounds and its relative value."""

    interval: float
    min_interval: float
    max_interval: float
    weight: float
    cost: float  # initial estimate of requests per run, refined from what runs really cost


DEFAULT_KINDS: Mapping[TaskKind, KindPolicy] = {
    TaskKind.BASELINE: KindPolicy(0.0, 0.0, 0.0, 50.0, 10.0),
    TaskKind.HEAD: KindPolicy(60.0, 20.0, 300.0, 8.0, 1.0),
    TaskKind.HOT: KindPolicy(120.0, 45.0, 600.0, 5.0, 3.0),
    TaskKind.CLIENTS: KindPolicy(600.0, 300.0, 3600.0, 2.0, 1.0),
    TaskKind.EXPENSE_REPORTS: KindPolicy(600.0, 300.0, 3600.0, 2.0, 1.0),
    TaskKind.SUPPLIERS: KindPolicy(900.0, 600.0, 3600.0, 1.0, 1.0),
    TaskKind.CONNECTIONS: KindPolicy(1800.0, 900.0, 7200.0, 1.0, 1.0),
    TaskKind.SWEEP: KindPolicy(1800.0, 1800.0, 21600.0, 1.0, 5.0),
}


@dataclass(frozen=True)
class Policy:
    """The planner's numbers; see the module docstring for what each one means."""

    kinds: Mapping[TaskKind, KindPolicy] = field(default_factory=lambda: dict(DEFAULT_KINDS))
    speedup: float = 0.5  # interval factor after a run that found changes
    backoff: float = 1.5  # interval factor after a quiet run
    safety_margin: int = 2  # requests per window left unused, for other tools on the token
    cold_share: float = 0.2  # share of a window kept for cold kinds when any is due
    window_seconds: float = 60.0
    rate_limit: int = 60
    broken_retry: float = 900.0  # a broken account is tried again at most this often
    baseline_retry: float = 300.0  # an incomplete baseline scan is started again after this
    lease_seconds: float = 60.0  # a worker that dies frees its account after this
    run_seconds: float = 120.0  # one poll job works this long, then lets the cron re-enqueue
    sweep_pages: int = 5  # /documents pages per sweep slice
    detail_batch: int = 3  # changed ids of one (workspace, status) fetched as a filtered page

    def scaled(self, factor: float) -> Policy:
        """This policy for a clock running `factor` times faster (the time-compressed sandbox)."""
        kinds = {
            kind: replace(
                p,
                interval=p.interval / factor,
                min_interval=p.min_interval / factor,
                max_interval=p.max_interval / factor,
            )
            for kind, p in self.kinds.items()
        }
        return replace(
            self,
            kinds=kinds,
            window_seconds=self.window_seconds / factor,
            broken_retry=self.broken_retry / factor,
            baseline_retry=self.baseline_retry / factor,
        )

    @property
    def budget(self) -> int:
        """Requests the scheduler plans per window."""
        return max(1, self.rate_limit - self.safety_margin)


@dataclass
class Task:
    """One unit of polling work and its adaptive schedule (a row of `poll_tasks`)."""

    account_id: str
    client_id: str
    kind: TaskKind
    interval: float
    due_at: float  # unix seconds
    est_cost: float
    last_run_at: float | None = None
    baselined: bool = False
    forced: bool = False
    cursor: dict[str, Any] = field(default_factory=dict)
    runs: int = 0
    changes: int = 0

    @property
    def key(self) -> tuple[str, str, TaskKind]:
        return (self.account_id, self.client_id, self.kind)


def new_task(account_id: str, client_id: str, kind: TaskKind, now: float, policy: Policy) -> Task:
    """A task never run: due at once (its first run is its baseline)."""
    p = policy.kinds[kind]
    return Task(account_id, client_id, kind, p.interval, now, p.cost)


def eligible(task: Task, now: float, baselined_clients: set[str]) -> bool:
    """Due, and (for document kinds) its client's documents baseline is done."""
    if task.kind is TaskKind.BASELINE and task.baselined:
        return False
    if task.kind in DOCUMENT_KINDS and task.client_id not in baselined_clients:
        return False
    return task.forced or task.due_at <= now


def score(task: Task, now: float, policy: Policy) -> float:
    """Staleness-weighted value: weight * (1 + lateness / interval), boosted when forced."""
    p = policy.kinds[task.kind]
    lateness = max(0.0, now - task.due_at)
    value = p.weight * (1.0 + lateness / max(task.interval, 1e-9))
    return value * FORCED_BOOST if task.forced else value


def baselined_clients(tasks: Iterable[Task]) -> set[str]:
    return {t.client_id for t in tasks if t.kind is TaskKind.BASELINE and t.baselined}


def rank(tasks: Sequence[Task], now: float, policy: Policy) -> list[Task]:
    """Eligible tasks, best first (ties broken by due time, then key, so the order is stable)."""
    ready = baselined_clients(tasks)
    due = [t for t in tasks if eligible(t, now, ready)]
    return sorted(due, key=lambda t: (-score(t, now, policy), t.due_at, t.client_id, t.kind))


def plan_window(tasks: Sequence[Task], now: float, policy: Policy, budget: int) -> list[Task]:
    """The tasks to run in one window of `budget` requests, in order.

    Greedy by score with estimated costs. `cold_share` of the budget is first offered to cold
    kinds (best first) so they are never starved by hot ones; then every task by score. A task
    whose estimate exceeds what is left is skipped for a cheaper one, except that a task bigger
    than a whole window runs alone in a fresh one (the limiter spreads it over the next).
    """
    if budget <= 0:
        return []
    ranked = rank(tasks, now, policy)
    if ranked and ranked[0].est_cost > policy.budget:
        # Bigger than any window (a large baseline slice): it runs alone in a fresh window.
        return ranked[:1] if budget >= policy.budget else []
    chosen: list[Task] = []
    left = float(budget)
    cold_budget = math.floor(budget * policy.cold_share)
    for task in ranked:
        if task.kind in COLD_KINDS and task.est_cost <= cold_budget:
            chosen.append(task)
            cold_budget -= math.ceil(task.est_cost)
            left -= math.ceil(task.est_cost)
    for task in ranked:
        if task in chosen:
            continue
        cost = math.ceil(task.est_cost)
        if cost <= left:
            chosen.append(task)
            left -= cost
        if left <= 0:
            break
    chosen.sort(key=lambda t: -score(t, now, policy))
    return chosen


@dataclass
class WindowBudget:
    """The requests this scheduler may still plan in the current rate-limit window.

    Windows are aligned to multiples of `window_seconds` since the epoch, like Dext's. A task
    that spent more than planned (estimates are estimates) leaves a debt the next window pays,
    so the spend averaged over windows stays within the budget; the shared limiter enforces
    the hard cap per request.
    """

    budget: int
    window_seconds: float
    window_start: float = 0.0
    spent: int = 0

    def roll(self, now: float) -> None:
        start = math.floor(now / self.window_seconds) * self.window_seconds
        if start > self.window_start:
            self.spent = max(0, self.spent - self.budget) if self.window_start else 0
            self.window_start = start

    def left(self, now: float) -> int:
        self.roll(now)
        return self.budget - self.spent

    def spend(self, requests: int) -> None:
        self.spent += requests

    def next_window(self) -> float:
        return self.window_start + self.window_seconds


def after_run(
    task: Task,
    now: float,
    policy: Policy,
    *,
    changed: int,
    cost: int,
    finished: bool = True,
    cursor: dict[str, Any] | None = None,
) -> Task:
    """The task's schedule after a run that found `changed` objects and spent `cost` requests.

    `finished` is False for a sliced run (sweep, baseline) with pages still to go: it stays due
    (at its normal weight) and keeps its cursor. `cursor` is what the task keeps for its next
    run (where a sliced scan is; what a head poll last saw); a finished run without one starts
    afresh.
    """
    p = policy.kinds[task.kind]
    est = cost if task.runs == 0 else 0.5 * task.est_cost + 0.5 * cost
    if not finished:
        return replace(
            task,
            est_cost=max(est, 1.0),
            last_run_at=now,
            runs=task.runs + 1,
            changes=task.changes + changed,
            cursor=task.cursor if cursor is None else cursor,
        )
    if changed:
        interval = max(p.min_interval, task.interval * policy.speedup)
    else:
        interval = min(p.max_interval, task.interval * policy.backoff)
    if task.kind is TaskKind.SWEEP:
        interval = p.interval  # sweeps run on a fixed cadence: their job is the cold data
    return replace(
        task,
        interval=interval,
        due_at=now + interval,
        est_cost=max(est, 1.0),
        last_run_at=now,
        baselined=True,
        forced=False,
        cursor=cursor or {},
        runs=task.runs + 1,
        changes=task.changes + changed,
    )
