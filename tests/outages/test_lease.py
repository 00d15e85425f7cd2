"""A poll that Postgres ends releases its account's lease as soon as Postgres is back.

Before, the release in the run's `finally` failed with the store and the account was skipped
as `leased` until the lease expired: a minute of no polling after a quarter-second restart.
"""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from relay.db import create_pool
from relay.poller import Poller
from relay.poller.plan import Policy
from relay.settings import Settings
from relay.vault import Vault
from tests.support.outages import Receiver, setup_relay, wait_for
from tests.support.sandbox import SandboxHandle
from tests.support.stores import PrivateStores


async def _holder(pool: asyncpg.Pool, account_id: str) -> str | None:
    holder = await pool.fetchval(
        "SELECT lease_holder FROM poll_state WHERE account_id = $1", account_id
    )
    return None if holder is None else str(holder)


async def test_a_poll_ended_by_postgres_releases_its_lease_when_it_returns(
    osettings: Settings,
    opool: asyncpg.Pool,
    stores: PrivateStores,
    receiver: Receiver,
    upstream: SandboxHandle,
) -> None:
    account_id = await setup_relay(opool, osettings, upstream, receiver)
    redis = aioredis.Redis.from_url(osettings.redis_url)
    run_pool = await create_pool(osettings, min_size=1, max_size=4)
    try:
        async with aiohttp.ClientSession() as http:
            poller = Poller(
                pool=run_pool, redis=redis, http=http, vault=Vault(osettings.secret_keys),
                policy=Policy().scaled(60.0),
            )  # fmt: skip
            run = asyncio.create_task(poller.run_account(account_id, run_seconds=60))

            async def leased() -> bool:
                return await _holder(opool, account_id) == poller.holder

            await wait_for(leased, 20, "the poll to hold its lease")
            await stores.postgres.stop()
            await asyncio.sleep(2.0)  # the run meets the outage at its next statement
            await stores.postgres.start()
            with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                await asyncio.wait_for(run, 20)  # ended by Postgres, not by the upstream
    finally:
        await run_pool.close()
        await redis.aclose()
    await opool.expire_connections()
    assert await _holder(opool, account_id) is None  # free for the next poll at once
