"""Typed keys for what the admin API keeps on its `web.Application`."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from relay.api.routing import RouteTable
from relay.settings import Settings
from relay.vault import Vault

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
VAULT = web.AppKey("vault", Vault)
ROUTES = web.AppKey("routes", RouteTable)
