"""Fixtures for the console tests: a browser-like client of the admin API app (tests/support/api.py
serves the app, console included)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.api import ClientFactory


@pytest.fixture
async def browser(aiohttp_client: ClientFactory, app: web.Application) -> TestClient[Any, Any]:
    """A cookie-keeping client of the served app that sends no bearer token by itself."""
    return await aiohttp_client(app)
