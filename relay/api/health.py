"""Unauthenticated operational routes: liveness, readiness, Prometheus metrics, OpenAPI."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from relay.api import keys
from relay.api import metrics as deployment_metrics
from relay.api.keys import POOL, REDIS
from relay.api.openapi import build_openapi
from relay.api.routing import Input, Route, json_response
from relay.db import schema_is_current

# Readiness must answer quickly even when a store hangs, so a load balancer can act on it.
CHECK_TIMEOUT = 2.0

_READY: dict[str, Any] = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string"},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


async def healthz(request: web.Request, inp: Input) -> web.Response:
    return json_response({"status": "ok"})


async def _check_postgres(pool: asyncpg.Pool) -> dict[str, str]:
    try:
        current = await asyncio.wait_for(schema_is_current(pool), CHECK_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return {"postgres": f"unreachable ({type(exc).__name__})"}
    return {"postgres": "ok", "schema": "ok" if current else "outdated: run `relay migrate`"}


async def _check_redis(request: web.Request) -> dict[str, str]:
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), CHECK_TIMEOUT)
    except (OSError, TimeoutError, RedisError) as exc:
        return {"redis": f"unreachable ({type(exc).__name__})"}
    return {"redis": "ok"}


async def readyz(request: web.Request, inp: Input) -> web.Response:
    """200 when Postgres and Redis answer and the schema is current; 503 naming what failed."""
    pg, rd = await asyncio.gather(_check_postgres(request.app[POOL]), _check_redis(request))
    checks = {**pg, **rd}
    failed = [name for name, state in checks.items() if state != "ok"]
    if not failed:
        return json_response({"status": "ready", "checks": checks})
    message = "; ".join(f"{name}: {checks[name]}" for name in failed)
    return json_response(
        {
            "status": "unavailable",
            "checks": checks,
            "error": {"code": "not_ready", "message": message},
        },
        status=503,
    )


async def metrics(request: web.Request, inp: Input) -> web.Response:
    """The whole deployment: workers' counters from Redis, backlog gauges from Postgres."""
    body = await deployment_metrics.render(request.app[POOL], request.app[REDIS])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi(request: web.Request, inp: Input) -> web.Response:
    return json_response(build_openapi(request.app[keys.ROUTES]))


ROUTES = [
    Route(
        "GET",
        "/healthz",
        healthz,
        "Liveness: the process is up",
        "operations",
        {
            200: {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"type": "string"}},
            }
        },
    ),
    Route(
        "GET",
        "/readyz",
        readyz,
        "Readiness: Postgres and Redis reachable and the schema applied",
        "operations",
        {200: _READY, 503: _READY},
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics",
        "operations",
        {200: {"type": "string"}},
        content_type="text/plain",
    ),
    Route(
        "GET",
        "/openapi.json",
        openapi,
        "This document",
        "operations",
        {200: {"type": "object"}},
    ),
]
