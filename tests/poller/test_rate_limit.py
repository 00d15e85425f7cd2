"""The upstream budget is stored while a poll run works, not only when the run ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from relay.poller import Poller
from relay.sources import accounts
from relay.vault import Vault
from tests.support.sandbox import IxtHandle, SandboxHandle

RUN_SECONDS = 4.0


async def _seen_while_running(pool: asyncpg.Pool, poller: Poller, account_id: str) -> Any:
    """The stored `rate_limit` as first seen during a run, and whether the run was still going.

    A worker's run lasts `Policy.run_seconds` (two minutes); `relay demo` and the console showed
    "not seen yet" for all of it because the limiter's view was stored in its `finally` only."""
    run = asyncio.create_task(poller.run_account(account_id, run_seconds=RUN_SECONDS))
    deadline = time.monotonic() + RUN_SECONDS + 5.0
    try:
        while time.monotonic() < deadline:
            stored = (await accounts.get_account(pool, account_id)).rate_limit
            if stored.get("limit") is not None:
                return stored, not run.done()
            await asyncio.sleep(0.05)
        raise AssertionError("no rate limit was stored")
    finally:
        await run


async def test_a_dext_run_stores_its_rate_limit_before_it_ends(
    pool: asyncpg.Pool, poller: Poller, account: accounts.Account, sandbox: SandboxHandle
) -> None:
    stored, running = await _seen_while_running(pool, poller, account.id)
    assert running, "the rate limit was stored only when the run ended"
    assert stored["limit"] == sandbox.sandbox.options.rate_limit
    assert isinstance(stored["remaining"], int)


async def test_an_invoicext_run_stores_its_rate_limit_before_it_ends(
    pool: asyncpg.Pool,
    vault: Vault,
    ixt_poller: Poller,
    ixt_factory: Callable[..., Awaitable[IxtHandle]],
) -> None:
    ixt = await ixt_factory(monthly_limit=100_000)
    account = await accounts.create_account(
        pool, vault, provider="invoicext", name="ixt", base_url=ixt.url, api_token=ixt.token
    )
    stored, running = await _seen_while_running(pool, ixt_poller, account.id)
    assert running, "the rate limit was stored only when the run ended"
    assert stored["limit"] == 100_000
    assert stored["monthly"]["api_calls_limit"] == 100_000
