"""Fixtures of the sandbox's tests: a logged-in client of the default `sandbox`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.sandbox import Dext, SandboxHandle


@pytest.fixture
async def dext(sandbox: SandboxHandle) -> AsyncIterator[Dext]:
    async with aiohttp.ClientSession() as http:
        client = Dext(http, sandbox.url, sandbox.token)
        await client.login()
        yield client
