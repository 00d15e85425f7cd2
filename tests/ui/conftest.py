"""Fixtures for the console tests: the real admin API app (console included) on loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.api.app import create_app
from relay.settings import Settings
from tests.conftest import TEST_ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def app(settings: Settings, pool: asyncpg.Pool, redis_client: aioredis.Redis) -> web.Application:
    """The admin API app with its console; depending on the stores empties both first."""
    return create_app(settings)


@pytest.fixture
async def browser(aiohttp_client: ClientFactory, app: web.Application) -> TestClient[Any, Any]:
    """A cookie-keeping client of the served app that sends no bearer token by itself."""
    return await aiohttp_client(app)


async def create_account(client: TestClient[Any, Any], **overrides: Any) -> dict[str, Any]:
    """An account through the admin API, as an operator would add it."""
    body = {
        "provider": "dext",
        "name": "Practice",
        "base_url": "https://api.dext.example/v1",
        "api_token": "upstream-secret-token",
        **overrides,
    }
    response = await client.post("/v1/accounts", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    data: dict[str, Any] = await response.json()
    return data
