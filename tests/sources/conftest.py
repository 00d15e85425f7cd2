"""Fixtures for the connector tests: a DextClient on the sandbox with fast retries."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from relay.sources.dext import CountingMetrics, DextClient
from relay.sources.ratelimit import RateLimiter
from tests.support.polling import MakeClient
from tests.support.sandbox import SandboxHandle


@pytest.fixture
def make_client(http: aiohttp.ClientSession, redis_client: aioredis.Redis) -> MakeClient:
    """`make_client(handle, **client_options)`: a DextClient for a sandbox, short backoffs."""

    def make(
        handle: SandboxHandle,
        *,
        token: str | None = None,
        limit: int = 10_000,
        window_seconds: float = 60.0,
        **options: Any,
    ) -> DextClient:
        api_token = token or handle.token
        limiter = RateLimiter(redis_client, api_token, limit=limit, window_seconds=window_seconds)
        defaults: dict[str, Any] = {
            "backoff": 0.01,
            "backoff_cap": 0.05,
            "timeout": 5.0,
            "metrics": CountingMetrics(),
        }
        return DextClient(
            handle.url, api_token, session=http, limiter=limiter, **defaults | options
        )

    return make


@pytest.fixture
def dext(sandbox: SandboxHandle, make_client: MakeClient) -> DextClient:
    return make_client(sandbox)
