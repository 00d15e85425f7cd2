"""Fixtures for the polling tests: a sandbox account and a poller with a test policy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from relay.http import create_client_session
from relay.poller import Poller
from relay.poller.plan import Policy
from relay.settings import Settings
from relay.sources import accounts
from relay.vault import Vault
from tests.plugins.sandbox import SandboxHandle

# The default policy with the sandbox's generous limit: every test pass is one budget window.
TEST_POLICY = replace(Policy(), rate_limit=10_000, lease_seconds=5.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    session = create_client_session(timeout=10.0)
    yield session
    await session.close()


@pytest.fixture
def vault(settings: Settings) -> Vault:
    return Vault(settings.secret_keys)


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
        source_options={"dext": {"backoff": 0.01, "backoff_cap": 0.05, "timeout": 5.0}},
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
        source_options={"invoicext": {"backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0}},
    )
