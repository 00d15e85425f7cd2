"""The planner's decisions against a fake clock (its Postgres state: test_state.py)."""

from __future__ import annotations

from collections import Counter

from relay.poller.plan import (
    ACCOUNT_LEVEL,
    CLIENT_KINDS,
    Policy,
    Task,
    TaskKind,
    WindowBudget,
    after_run,
    new_task,
    plan_window,
    rank,
)

POLICY = Policy()
T0 = 1_800_000_000.0


def practice(clients: int, now: float = T0, policy: Policy = POLICY) -> list[Task]:
    tasks = [new_task("acc_1", ACCOUNT_LEVEL, TaskKind.CLIENTS, now, policy)]
    for n in range(clients):
        tasks += [new_task("acc_1", f"c{n}", kind, now, policy) for kind in CLIENT_KINDS]
    return tasks


# True cost of one run of each kind in the simulated practice (sweep slices: 5 pages + detail).
TRUE_COST = {
    TaskKind.BASELINE: 40,
    TaskKind.HEAD: 1,
    TaskKind.HOT: 3,
    TaskKind.CLIENTS: 1,
    TaskKind.EXPENSE_REPORTS: 1,
    TaskKind.SUPPLIERS: 1,
    TaskKind.CONNECTIONS: 1,
    TaskKind.SWEEP: 5,
}


def simulate(
    tasks: list[Task], windows: int, policy: Policy, changes: set[TaskKind] = frozenset()
) -> tuple[Counter[TaskKind], list[int]]:
    """Run the planner window after window; each planned task costs its true cost.

    Returns runs per kind and the requests spent in each window. Baselines finish in one
    run; sweeps take four slices. Costs are learnt: the first runs may overspend a window,
    and the next window pays that debt.
    """
    runs: Counter[TaskKind] = Counter()
    spent: list[int] = []
    by_key = {t.key: t for t in tasks}
    budget = WindowBudget(policy.budget, policy.window_seconds)
    for w in range(windows):
        now = T0 + w * policy.window_seconds
        window_spent = 0
        for task in plan_window(list(by_key.values()), now, policy, budget.left(now)):
            cost = TRUE_COST[task.kind]
            window_spent += cost
            budget.spend(cost)
            slices = task.cursor.get("slice", 0) + 1
            finished = task.kind is not TaskKind.SWEEP or slices >= 4
            done = after_run(
                task, now, policy, changed=int(task.kind in changes), cost=cost, finished=finished
            )
            if not finished:
                done.cursor = {"slice": slices}
            by_key[task.key] = done
            runs[task.kind] += 1
        spent.append(window_spent)
    return runs, spent


def test_a_window_never_plans_more_than_the_budget() -> None:
    policy = Policy(rate_limit=60, safety_margin=2)
    tasks = practice(50)
    for t in tasks:
        if t.kind is TaskKind.BASELINE:
            t.baselined = True
    _, spent = simulate(tasks, windows=240, policy=policy)
    assert max(spent) <= policy.budget
    # ... and the budget is used, not left idle, while work is due.
    assert sum(spent[:30]) / 30 >= policy.budget * 0.9


def test_an_underestimated_task_is_paid_back_in_the_next_window() -> None:
    policy = Policy(rate_limit=60, safety_margin=2)
    tasks = practice(50)
    for t in tasks:
        if t.kind is TaskKind.BASELINE:
            t.baselined = True
        if t.kind is TaskKind.SWEEP:
            t.est_cost = 2  # first slices cost 5: every first sweep run overspends
    _, spent = simulate(tasks, windows=120, policy=policy)
    assert max(spent) > policy.budget  # the estimates were wrong in some windows ...
    total = 0
    for n, requests in enumerate(spent, start=1):
        total += requests
        # ... but every overspend is repaid by the next window: the running total never gets
        # more than one window's estimation error (3 per sweep, 10 sweeps) above the budget
        assert total <= n * policy.budget + 30
    # ... and the budget is used, not left idle, while work is due.
    assert sum(spent[:30]) / 30 >= policy.budget * 0.9


def test_the_cost_estimate_learns_from_what_runs_spend() -> None:
    task = new_task("acc_1", "c1", TaskKind.SUPPLIERS, T0, POLICY)
    for n in range(6):
        task = after_run(task, T0 + n, POLICY, changed=0, cost=9)
    assert task.est_cost == 9
    cheap = new_task("acc_1", "c2", TaskKind.CONNECTIONS, T0, POLICY)
    later = T0 + 1e6  # both long overdue
    assert set(map(id, plan_window([task, cheap], later, POLICY, budget=10))) == {
        id(task),
        id(cheap),
    }
    # a 9-request task does not fit in the 5 requests left in a window: the cheap one does
    assert plan_window([task, cheap], later, POLICY, budget=5) == [cheap]
    # a task bigger than a whole window runs alone in a fresh window, or waits for one
    task.est_cost = 90
    cheap.due_at = later
    assert plan_window([task, cheap], later, POLICY, budget=POLICY.budget) == [task]
    assert plan_window([task, cheap], later, POLICY, budget=POLICY.budget - 1) == []


def test_hot_tasks_run_more_often_than_cold_ones() -> None:
    tasks = practice(5)
    runs, _ = simulate(tasks, windows=240, policy=POLICY)  # four hours of minutes
    assert runs[TaskKind.HEAD] > runs[TaskKind.HOT] > runs[TaskKind.EXPENSE_REPORTS]
    assert runs[TaskKind.EXPENSE_REPORTS] >= runs[TaskKind.SUPPLIERS] >= runs[TaskKind.CONNECTIONS]
    assert runs[TaskKind.CLIENTS] >= 4
    assert runs[TaskKind.BASELINE] == 5  # once per client, never again


def test_sweeps_are_not_starved_by_a_saturating_hot_load() -> None:
    # 200 clients: head polls alone at their minimum interval would need 600 requests a minute.
    tasks = practice(200)
    for t in tasks:
        if t.kind is TaskKind.BASELINE:
            t.baselined = True
    runs, spent = simulate(tasks, windows=180, policy=POLICY, changes={TaskKind.HEAD})
    assert max(spent) <= POLICY.budget
    assert runs[TaskKind.SWEEP] >= 0.15 * sum(spent) / TRUE_COST[TaskKind.SWEEP] * 0.5
    assert runs[TaskKind.HEAD] > runs[TaskKind.SWEEP]


def test_changes_speed_a_task_up_and_quiet_runs_back_off_within_bounds() -> None:
    p = POLICY.kinds[TaskKind.HEAD]
    task = new_task("acc_1", "c1", TaskKind.HEAD, T0, POLICY)
    assert task.interval == p.interval
    busy = after_run(task, T0, POLICY, changed=3, cost=1)
    assert busy.interval == p.interval * POLICY.speedup
    assert busy.due_at == T0 + busy.interval
    for _ in range(10):
        busy = after_run(busy, T0, POLICY, changed=1, cost=1)
    assert busy.interval == p.min_interval
    quiet = after_run(task, T0, POLICY, changed=0, cost=1)
    assert quiet.interval == p.interval * POLICY.backoff
    for _ in range(20):
        quiet = after_run(quiet, T0, POLICY, changed=0, cost=1)
    assert quiet.interval == p.max_interval
    assert quiet.changes == 0
    assert busy.changes == 13


def test_a_sliced_run_keeps_its_cursor_and_stays_due() -> None:
    sweep = new_task("acc_1", "c1", TaskKind.SWEEP, T0, POLICY)
    sweep.cursor = {"page": 6}
    part = after_run(sweep, T0 + 5, POLICY, changed=0, cost=5, finished=False)
    assert part.cursor == {"page": 6}
    assert part.due_at == sweep.due_at
    assert not part.baselined
    done = after_run(part, T0 + 9, POLICY, changed=0, cost=5)
    assert done.cursor == {}
    assert done.baselined
    assert done.due_at == T0 + 9 + sweep.interval


def test_document_tasks_wait_for_their_clients_baseline() -> None:
    tasks = practice(2)
    kinds = {(t.client_id, t.kind) for t in rank(tasks, T0, POLICY)}
    assert ("c0", TaskKind.BASELINE) in kinds
    assert ("c0", TaskKind.HEAD) not in kinds
    assert ("c0", TaskKind.SUPPLIERS) in kinds
    for t in tasks:
        if t.client_id == "c0" and t.kind is TaskKind.BASELINE:
            t.baselined = True
    kinds = {(t.client_id, t.kind) for t in rank(tasks, T0, POLICY)}
    assert ("c0", TaskKind.HEAD) in kinds
    assert ("c1", TaskKind.HEAD) not in kinds
    assert ("c0", TaskKind.BASELINE) not in kinds


def test_a_forced_task_goes_first_and_a_late_one_climbs() -> None:
    head = after_run(new_task("a", "c1", TaskKind.HEAD, T0, POLICY), T0, POLICY, changed=0, cost=1)
    base = after_run(
        new_task("a", "c1", TaskKind.BASELINE, T0, POLICY), T0, POLICY, changed=0, cost=40
    )
    conn = new_task("a", "c1", TaskKind.CONNECTIONS, T0, POLICY)
    conn = after_run(conn, T0, POLICY, changed=0, cost=1)
    now = conn.due_at + 1
    assert rank([conn, head, base], now, POLICY)[0].kind is TaskKind.HEAD
    conn.forced = True
    assert rank([conn, head, base], T0 + 1, POLICY)[0].kind is TaskKind.CONNECTIONS
    conn.forced = False
    # a connections task left 60 intervals late outranks a head poll that is just due
    later = conn.due_at + 60 * conn.interval
    head.due_at = later
    assert rank([conn, head, base], later, POLICY)[0].kind is TaskKind.CONNECTIONS


def test_scaled_policy_divides_every_duration() -> None:
    fast = POLICY.scaled(20)
    assert fast.window_seconds == 3.0
    assert fast.kinds[TaskKind.HEAD].interval == POLICY.kinds[TaskKind.HEAD].interval / 20
    assert fast.broken_retry == 45.0
    assert fast.budget == POLICY.budget
