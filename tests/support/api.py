"""Admin API fixtures, a pytest plugin registered in tests/conftest.py: the real app on
loopback over real Postgres and Redis, for tests/api, tests/cli and tests/ui."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.api.app import create_app
from relay.cli.main import build_parser
from relay.cli.operator import run_operator_command
from relay.logs import configure_logging
from relay.settings import Settings
from tests.support.stores import AUTH, TEST_ADMIN_TOKEN

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def all_logs() -> Iterator[None]:
    """Let every log level through for the test (the suite runs at `warning`), then restore."""
    configure_logging("console", "debug", cache=False)
    yield
    configure_logging("console", "warning", cache=False)


@pytest.fixture
def app(settings: Settings, pool: asyncpg.Pool, redis_client: aioredis.Redis) -> web.Application:
    """The admin API app; depending on `pool` and `redis_client` empties both stores first."""
    return create_app(settings)


@pytest.fixture
async def client(aiohttp_client: ClientFactory, app: web.Application) -> TestClient[Any, Any]:
    """A client of the served app that sends the admin token on every request."""
    return await aiohttp_client(app, headers=AUTH)


@pytest.fixture
async def anon(client: TestClient[Any, Any]) -> AsyncIterator[aiohttp.ClientSession]:
    """A session with no admin token, for the same server (use `client.make_url`)."""
    async with aiohttp.ClientSession() as session:
        yield session


async def create_account(client: TestClient[Any, Any], **overrides: Any) -> dict[str, Any]:
    """An account through the admin API, as an operator would add it (the admin token is sent
    with the request, so a client without one, like the console's `browser`, works too)."""
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


@dataclass
class CliResult:
    """What one `relay ...` operator command did: its exit code and what it printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


def run_cli(argv: Sequence[str], settings: Settings) -> CliResult:
    """Run `relay ARGV...` (an operator command) in this thread with `settings`, capturing
    stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_operator_command(build_parser().parse_args(list(argv)), settings)
    return CliResult(code, out.getvalue(), err.getvalue())


async def answer(request: Awaitable[aiohttp.ClientResponse]) -> tuple[int, Any]:
    """(status, JSON body or None) of one request."""
    response = await request
    try:
        if response.content_type != "application/json":
            return response.status, None
        return response.status, await response.json()
    finally:
        response.release()


async def error_of(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """Assert the status and the error envelope; return the inner error object."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) >= {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str)
    assert error["code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


@pytest.fixture
def api_env(client: TestClient[Any, Any], settings: Settings) -> dict[str, str]:
    """The environment a `relay` subprocess needs to run operator commands against `client`."""
    import os

    return {
        **os.environ,
        "RELAY_API_URL": str(client.make_url("")).rstrip("/"),
        "RELAY_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "RELAY_LOG_LEVEL": "warning",
    }
