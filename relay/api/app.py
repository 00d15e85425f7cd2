"""The admin API's app factory and server: `create_app` for tests, `run_api` for `relay api`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from relay.api import (
    accounts,
    deliveries,
    event_types,
    events,
    health,
    recovery,
    stream,
    subscriptions,
)
from relay.api.keys import POOL, REDIS, ROUTES, SETTINGS, VAULT
from relay.api.middleware import auth_middleware, error_middleware
from relay.api.routing import MAX_BODY_BYTES, RouteTable
from relay.db import create_pool, create_redis
from relay.errors import ConfigError
from relay.settings import Settings
from relay.ui import add_console
from relay.vault import Vault

log = structlog.get_logger("relay.api")


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """Open the pool, the Redis client and the vault for the app's lifetime; close on exit."""
    settings = app[SETTINGS]
    app[VAULT] = Vault(settings.secret_keys)
    pool = await create_pool(settings)
    try:
        redis = await create_redis(settings)
    except BaseException:
        await pool.close()
        raise
    app[POOL] = pool
    app[REDIS] = redis
    try:
        yield
    finally:
        try:
            await redis.aclose()
        finally:
            await pool.close()  # even if closing Redis timed out


def create_app(settings: Settings) -> web.Application:
    """The admin API application; its stores open on startup and close on cleanup."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware, auth_middleware]
    )
    app[SETTINGS] = settings
    table = RouteTable()
    table.add(app, health.ROUTES)
    table.add(app, accounts.ROUTES, **accounts.SCHEMAS)
    table.add(app, events.ROUTES, **events.SCHEMAS)
    table.add(app, stream.ROUTES)
    table.add(app, subscriptions.ROUTES, **subscriptions.SCHEMAS)
    table.add(app, deliveries.ROUTES, **deliveries.SCHEMAS)
    table.add(app, recovery.ROUTES, **recovery.SCHEMAS)
    table.add(app, event_types.ROUTES, **event_types.SCHEMAS)
    app[ROUTES] = table
    add_console(app)
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(stream.hub_context)
    app.on_shutdown.append(stream.close_streams)
    return app


def run_api(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the admin API until interrupted (`relay api`)."""
    if not settings.admin_token:
        raise ConfigError("RELAY_ADMIN_TOKEN is required by `relay api`")
    Vault(settings.secret_keys)  # fail with one clear line before binding the port
    log.info("api_starting", host=host, port=port)
    web.run_app(create_app(settings), host=host, port=port, print=None, access_log=None)
