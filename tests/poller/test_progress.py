"""Baseline progress: its arithmetic on known task states, and the account resource showing it
while a real poller baselines a real sandbox through its rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import re
import socket
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp.test_utils import TestClient

from relay.api.app import create_app
from relay.poller import Poller
from relay.poller.plan import Policy, TaskKind
from relay.poller.progress import baseline_progress, compute_progress
from relay.poller.state import BaselineRow
from relay.settings import Settings
from relay.sources import accounts
from relay.sources.dext_source import DextSource
from relay.vault import Vault
from tests.support.polling import TEST_POLICY, last_seq, settle
from tests.support.sandbox import SandboxFactory
from tests.support.stores import TEST_ADMIN_TOKEN

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LISTS = (TaskKind.SUPPLIERS, TaskKind.EXPENSE_REPORTS, TaskKind.CONNECTIONS)


def _row(
    cid: str,
    kind: TaskKind,
    *,
    done: bool = False,
    cursor: dict[str, Any] | None = None,
    created: datetime = T0,
    cost: float = 1.0,
) -> BaselineRow:
    return BaselineRow("acc_x", cid, kind, T0 if done else None, created, cursor or {}, cost)


def _client(
    cid: str, *, scan: dict[str, Any] | None = None, done: bool = False
) -> list[BaselineRow]:
    rows = [_row(cid, kind, done=done) for kind in LISTS]
    return [*rows, _row(cid, TaskKind.BASELINE, done=done, cursor=scan)]


POLICY = replace(Policy(), rate_limit=60, window_seconds=60.0)
# Dext's complete scan: /costs then /sales, 50 items a page.
DEXT_SCAN: dict[str, Any] = {
    "scan_parts": DextSource.scan_parts,
    "scan_per_page": DextSource.scan_per_page,
}


def test_nothing_read_yet_is_unknown_not_a_guess() -> None:
    progress = compute_progress(
        [_row("", TaskKind.CLIENTS)],
        {},
        account_baselined_at=None,
        rate_limit=60,
        policy=POLICY,
        **DEXT_SCAN,
    )
    assert progress is not None
    assert progress.public() == {
        "clients_done": 0,
        "clients_total": None,
        "items_seen": 0,
        "items_total": None,
        "requests_left": None,
        "estimated_seconds_left": None,
    }


def test_requests_left_counts_unread_pages_and_lists_at_the_budget() -> None:
    rows = [
        _row("", TaskKind.CLIENTS, done=True),
        # done: 230 costs and 40 sales items stored
        *_client("c1", done=True, scan={"totals": {"costs": 230, "sales": 40}}),
        # on costs page 3 of 420 items (9 pages: 7 left), sales unknown -> the mean, 40 (1 page)
        *_client("c2", scan={"scan_id": 7, "ws": "costs", "page": 3, "totals": {"costs": 420}}),
        # not started: costs mean (230 + 420) / 2 = 325 (7 pages), sales 40 (1 page)
        *_client("c3"),
    ]
    stored = {"c1": 270, "c2": 100}
    progress = compute_progress(
        rows, stored, account_baselined_at=None, rate_limit=60, policy=POLICY, **DEXT_SCAN
    )
    assert progress is not None
    # c2: 7 + 1 pages and 3 lists; c3: 7 + 1 pages and 3 lists
    assert progress.requests_left == (7 + 1 + 3) + (7 + 1 + 3)
    assert progress.estimated_seconds_left == round(22 * 60 / 58, 1)
    assert progress.clients_done == 1
    assert progress.clients_total == 3
    assert progress.items_seen == 370
    assert progress.items_total is None  # c2's sales and all of c3 are not known yet
    # Half the limit, twice the time: the estimate is the budget's.
    slower = compute_progress(
        rows, stored, account_baselined_at=None, rate_limit=31, policy=POLICY, **DEXT_SCAN
    )
    assert slower is not None
    assert slower.estimated_seconds_left == round(22 * 60 / 29, 1)


SIZES = {"costs": 80, "sales": 120}


def test_items_total_once_every_size_is_known() -> None:
    rows = [
        _row("", TaskKind.CLIENTS, done=True),
        *_client("c1", done=True),
        *_client(
            "c2",
            scan={"scan_id": 9, "ws": "sales", "page": 2, "totals": {"costs": 80, "sales": 120}},
        ),
    ]
    progress = compute_progress(
        rows,
        {"c1": 55, "c2": 90},
        account_baselined_at=None,
        rate_limit=60,
        policy=POLICY,
        **DEXT_SCAN,
    )
    assert progress is not None
    assert progress.items_total == 55 + 200
    assert progress.requests_left == 3 - 1 + 3  # sales pages 2..3, and c2's three lists


def test_late_clients_are_counted_apart_and_done_is_none() -> None:
    later = T0 + timedelta(days=3)
    old = [_row("", TaskKind.CLIENTS, done=True), *_client("c1", done=True)]
    late = [
        replace(r, created_at=later)
        for r in [*_client("n1", done=True), *_client("n2", scan={"totals": {"costs": 10}})]
    ]
    progress = compute_progress(
        old + late,
        {"c1": 500, "n1": 20},
        account_baselined_at=T0,
        rate_limit=60,
        policy=POLICY,
        **DEXT_SCAN,
    )
    assert progress is not None
    assert (progress.clients_done, progress.clients_total) == (1, 2)
    assert progress.items_seen == 20
    done = [replace(r, baselined_at=later) for r in late]
    assert (
        compute_progress(
            old + done, {}, account_baselined_at=T0, rate_limit=60, policy=POLICY, **DEXT_SCAN
        )
        is None
    )


async def test_progress_rises_to_done_at_the_real_budget(
    pool: asyncpg.Pool,
    poller: Poller,
    vault: Vault,
    settings: Settings,
    sandbox_factory: SandboxFactory,
    aiohttp_client: Any,
) -> None:
    # A practice whose baseline needs many windows of 12 requests in half a second, each client
    # three baseline slices (10 pages of 50 each): the pass is seen in steps, even when a run
    # that ends one client's slice early has the time to start the next one's (with two
    # slices a client, whether it did depended on where the windows fell: 2 steps, not 3).
    box = await sandbox_factory(clients=2, items=1100, rate_limit=12, window_seconds=0.5)
    tight = replace(poller, policy=replace(TEST_POLICY, rate_limit=12, window_seconds=0.5))
    account = await accounts.create_account(
        pool, vault, provider="dext", name="big", base_url=box.url, api_token=box.token
    )
    api: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings.with_changes(upstream_speed=120.0)),
        headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"},
    )

    async def shown() -> dict[str, Any]:
        response = await api.get(f"/v1/accounts/{account.id}")
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        listed = await (await api.get("/v1/accounts")).json()
        assert [a["baseline"] for a in listed["data"] if a["id"] == account.id] == [
            body["baseline"]
        ]
        return body

    practice = box.sandbox.practice
    truth = {
        cid: [sum(1 for d in docs.values() if d["workspace"] == ws) for ws in ("costs", "sales")]
        for cid, docs in practice.documents.items()
    }
    first = (await shown())["baseline"]
    assert first["clients_done"] == 0
    assert first["items_seen"] == 0
    seen: list[dict[str, Any]] = []
    for _ in range(40):
        await tight.run_account(account.id, run_seconds=0.2)
        body = await shown()
        if body["baseline"] is None:
            break
        progress = body["baseline"]
        seen.append(progress)
        assert body["status"] == "baselining"
        assert progress["clients_total"] in (None, 2)
        if progress["requests_left"] is not None:
            # The sandbox's limit (12, from its X-RateLimit-Limit) less the margin, per window
            # of 0.5 s (60 s / RELAY_UPSTREAM_SPEED 120).
            assert body["rate_limit"]["limit"] == 12
            budget = 12 - TEST_POLICY.safety_margin
            expected = round(progress["requests_left"] * 0.5 / budget, 1)
            assert progress["estimated_seconds_left"] == expected
        if progress["items_total"] is not None:
            assert progress["items_total"] == sum(map(sum, truth.values()))
    else:
        raise AssertionError(f"the baseline did not finish: {seen[-1:]}")
    assert len(seen) >= 3, "the baseline was seen in several steps"
    for before, after in itertools.pairwise(seen):
        assert after["clients_done"] >= before["clients_done"]
        assert after["items_seen"] >= before["items_seen"]
    # At least once the estimate was made while a scan ran, and it was close to the truth.
    estimates = [p for p in seen if p["requests_left"] is not None and p["clients_done"] < 2]
    assert estimates
    stored = await pool.fetchval("SELECT count(*) FROM snapshots WHERE object_type = 'document'")
    assert stored == sum(map(sum, truth.values()))
    done = await accounts.get_account(pool, account.id)
    assert done.status == "active"
    assert await last_seq(pool) == 0
    pages = sum(math.ceil(n / 50) or 1 for sizes in truth.values() for n in sizes)
    assert max(p["requests_left"] or 0 for p in seen) <= pages + 2 * 3 + 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _relay(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


async def test_relay_accounts_show_draws_the_baseline_as_a_bar(
    pool: asyncpg.Pool,
    poller: Poller,
    vault: Vault,
    settings: Settings,
    sandbox_factory: SandboxFactory,
) -> None:
    box = await sandbox_factory(clients=2, items=600, rate_limit=12, window_seconds=0.5)
    tight = replace(poller, policy=replace(TEST_POLICY, rate_limit=12, window_seconds=0.5))
    account = await accounts.create_account(
        pool, vault, provider="dext", name="big", base_url=box.url, api_token=box.token
    )
    # Poll until one client is done and an estimate can be made: a baseline half-way.
    for _ in range(20):
        await tight.run_account(account.id, run_seconds=0.2)
        fresh = await accounts.get_account(pool, account.id)
        [progress] = (await baseline_progress(pool, [fresh], tight.policy)).values()
        assert progress is not None
        if progress.clients_done == 1 and progress.requests_left is not None:
            break
    else:
        raise AssertionError("the baseline was never seen half-way")

    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RELAY_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "RELAY_SECRET_KEY": ",".join(settings.secret_keys),
        "RELAY_UPSTREAM_SPEED": "120",
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_API_URL": f"http://127.0.0.1:{port}",
    }
    api = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "api", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"{env['RELAY_API_URL']}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("relay api did not start")
        code, out, err = await _relay(env, "accounts", "show", account.id)
        assert code == 0, err
        [bar] = [line for line in out.splitlines() if line.startswith("baseline  [")]
        assert re.fullmatch(
            r"baseline  \[#+\.+\] 1/2 clients, [\d,]+ (of [\d,]+ )?items, ~\d+ s left", bar
        ), bar
        assert f"{progress.items_seen:,} " in bar
        code, out, err = await _relay(env, "accounts", "show", account.id, "--json")
        assert code == 0, err
        assert orjson.loads(out)["baseline"] == progress.public()

        await settle(tight, account.id)
        code, out, err = await _relay(env, "accounts", "show", account.id)
        assert code == 0, err
        assert "active" in out
        assert "baseline  [" not in out
    finally:
        api.terminate()
        await api.wait()
