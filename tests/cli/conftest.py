"""Fixtures for the `relay` command's tests: operator commands run against the served API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.settings import Settings
from tests.support.api import CliResult, run_cli

Cli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
async def cli(client: TestClient[Any, Any], settings: Settings) -> Cli:
    """Run `relay ARGS...` in a thread against the served API, capturing what it prints;
    keyword arguments alter the CLI's settings for that one call (token, API URL)."""
    cli_settings = settings.with_changes(api_url=str(client.make_url("")).rstrip("/"))

    async def run(*argv: str, **changes: Any) -> CliResult:
        return await asyncio.to_thread(run_cli, argv, cli_settings.with_changes(**changes))

    return run
