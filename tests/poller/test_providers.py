"""Every provider the API accepts is polled: an InvoiceXT account baselines like a Dext one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from relay.poller import Poller
from relay.sources import accounts
from relay.vault import Vault
from tests.support.sandbox import IxtHandle


async def test_an_invoicext_account_is_polled(
    pool: asyncpg.Pool,
    vault: Vault,
    ixt_poller: Poller,
    ixt_factory: Callable[..., Awaitable[IxtHandle]],
) -> None:
    ixt = await ixt_factory()
    account = await accounts.create_account(
        pool, vault, provider="invoicext", name="ixt", base_url=ixt.url, api_token=ixt.token
    )
    report = await ixt_poller.run_account(account.id, run_seconds=5.0, idle_exit=True)
    assert report.outcome == "done"
    shown = await accounts.get_account(pool, account.id)
    assert shown.status == "active"
    assert shown.last_error is None
    stored = await pool.fetchval(
        "SELECT count(*) FROM snapshots WHERE account_id = $1 AND object_type = 'invoice'",
        account.id,
    )
    assert stored == len(ixt.box.invoices)
    assert ixt.box.requests  # the sandbox was asked
