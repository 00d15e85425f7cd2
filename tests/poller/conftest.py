"""Fixtures for the polling tests: a sandbox account and a poller with a test policy."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from relay.poller import Poller
from relay.sources import accounts
from relay.vault import Vault
from tests.support.polling import TEST_POLICY
from tests.support.sandbox import SandboxHandle


@pytest.fixture
async def account(pool: asyncpg.Pool, vault: Vault, sandbox: SandboxHandle) -> accounts.Account:
    return await accounts.create_account(
        pool, vault, provider="dext", name="practice", base_url=sandbox.url, api_token=sandbox.token
    )


@pytest.fixture
def poller(
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    http: aiohttp.ClientSession,
    vault: Vault,
) -> Poller:
    return Poller(
        pool=pool,
        redis=redis_client,
        http=http,
        vault=vault,
        policy=TEST_POLICY,
        client_options={"backoff": 0.01, "backoff_cap": 0.05, "timeout": 5.0},
    )


@pytest.fixture
def ixt_poller(
    pool: asyncpg.Pool, redis_client: aioredis.Redis, http: aiohttp.ClientSession, vault: Vault
) -> Poller:
    """A poller whose clock is compressed like the sandbox's (an hour is one real second)."""
    return Poller(
        pool=pool,
        redis=redis_client,
        http=http,
        vault=vault,
        policy=replace(TEST_POLICY, window_seconds=60.0 / 3600.0),
        source_options={"backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0},
    )
