"""Accounts of a provider Relay cannot poll yet say so instead of sitting silently unpolled."""

from __future__ import annotations

import asyncpg

from relay import accounts
from relay.poller import UNSUPPORTED_PROVIDER, Poller
from relay.vault import Vault
from tests.plugins.sandbox import SandboxHandle


async def test_an_invoicext_account_shows_why_it_is_not_polled(
    pool: asyncpg.Pool, vault: Vault, poller: Poller, sandbox: SandboxHandle
) -> None:
    account = await accounts.create_account(
        pool, vault, provider="invoicext", name="ixt", base_url=sandbox.url, api_token="sk_test_x"
    )
    mark = len(sandbox.sandbox.access.requests)
    report = await poller.run_account(account.id, run_seconds=1.0, idle_exit=True)
    assert report.outcome == "gone"
    shown = await accounts.get_account(pool, account.id)
    assert shown.last_error == UNSUPPORTED_PROVIDER
    assert shown.status == "baselining"
    # Nothing was sent upstream on its behalf.
    assert len(sandbox.sandbox.access.requests) == mark
