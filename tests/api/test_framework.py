"""The framework: auth, the error envelope, health, metrics and the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from relay.api.app import create_app, run_api
from relay.api.keys import ROUTES
from relay.api.routing import Input, Route
from relay.errors import ConfigError
from relay.settings import Settings
from tests.support.api import AUTH, ClientFactory, create_account, error_of
from tests.support.stores import TEST_ADMIN_TOKEN

V1_ROUTES = [
    ("GET", "/v1/accounts"),
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts/acc_x"),
    ("PATCH", "/v1/accounts/acc_x"),
    ("DELETE", "/v1/accounts/acc_x"),
    ("POST", "/v1/accounts/acc_x/poll"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/evt_x"),
    ("POST", "/v1/events/evt_x/replay"),
    ("GET", "/v1/subscriptions"),
    ("POST", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions/sub_x"),
    ("PATCH", "/v1/subscriptions/sub_x"),
    ("DELETE", "/v1/subscriptions/sub_x"),
    ("POST", "/v1/subscriptions/sub_x/rotate-secret"),
    ("POST", "/v1/subscriptions/sub_x/test"),
    ("GET", "/v1/deliveries"),
    ("POST", "/v1/deliveries/retry"),
    ("GET", "/v1/deliveries/dlv_x"),
    ("POST", "/v1/deliveries/dlv_x/retry"),
    ("GET", "/v1/nothing-here"),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}x"},
        {"Authorization": f"Basic {TEST_ADMIN_TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer caf\u00e9"},
    ],
)
@pytest.mark.usefixtures("all_logs")
async def test_every_v1_route_needs_the_admin_token(
    client: TestClient[Any, Any],
    anon: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    headers: dict[str, str],
) -> None:
    with capture_logs() as logs:
        for method, path in V1_ROUTES:
            response = await anon.request(method, client.make_url(path), headers=headers)
            error = await error_of(response, 401)
            assert error["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"
    failures = [e for e in logs if e["event"] == "admin_auth_failed"]
    assert len(failures) == len(V1_ROUTES)
    assert {e["path"] for e in failures} == {path for _, path in V1_ROUTES}
    assert all(e["remote"] == "127.0.0.1" for e in failures)
    assert all(TEST_ADMIN_TOKEN not in repr(e) for e in logs)
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 0


async def test_no_configured_token_refuses_everything(
    aiohttp_client: ClientFactory, settings: Settings, pool: asyncpg.Pool
) -> None:
    client = await aiohttp_client(create_app(settings.with_changes(admin_token=None)))
    await error_of(await client.get("/v1/accounts", headers=AUTH), 401)
    assert (await client.get("/healthz")).status == 200


def test_run_api_requires_the_admin_token(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="RELAY_ADMIN_TOKEN is required by `relay api`"):
        run_api(settings.with_changes(admin_token=None), port=0)


async def test_operational_routes_need_no_token(
    client: TestClient[Any, Any], anon: aiohttp.ClientSession
) -> None:
    health = await anon.get(client.make_url("/healthz"))
    assert health.status == 200
    assert await health.json() == {"status": "ok"}
    ready = await anon.get(client.make_url("/readyz"))
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "checks": {"postgres": "ok", "schema": "ok", "redis": "ok"},
    }
    metrics = await anon.get(client.make_url("/metrics"))
    assert metrics.status == 200
    assert metrics.content_type == "text/plain"
    assert "relay_api_requests_total" in await metrics.text()
    spec = await anon.get(client.make_url("/openapi.json"))
    assert spec.status == 200
    assert (await spec.json())["openapi"] == "3.1.0"


async def test_readyz_is_503_naming_an_outdated_schema(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    digest = await pool.fetchval("SELECT digest FROM relay_schema WHERE id = 1")
    await pool.execute("UPDATE relay_schema SET digest = 'stale' WHERE id = 1")
    try:
        response = await client.get("/readyz")
        assert response.status == 503
        body = await response.json()
        assert body["checks"]["schema"].startswith("outdated")
        assert body["checks"]["redis"] == "ok"
        assert "schema" in body["error"]["message"]
    finally:
        await pool.execute("UPDATE relay_schema SET digest = $1 WHERE id = 1", digest)
    assert (await client.get("/readyz")).status == 200


async def test_unknown_routes_and_wrong_methods_answer_in_the_envelope(
    client: TestClient[Any, Any],
) -> None:
    error = await error_of(await client.get("/v1/nothing-here"), 404)
    assert error["code"] == "not_found"
    await error_of(await client.get("/nothing"), 404)
    response = await client.put("/v1/accounts", json={})
    error = await error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(",")) == {"GET", "POST"}
    await error_of(await client.delete("/v1/deliveries/retry"), 405)
    await error_of(await client.post("/healthz"), 405)


async def test_unexpected_errors_are_logged_and_answered_without_detail(
    aiohttp_client: ClientFactory, settings: Settings, pool: asyncpg.Pool
) -> None:
    async def explode(request: web.Request, inp: Input) -> web.Response:
        raise RuntimeError("internal detail: password=hunter2")

    app = create_app(settings)
    app[ROUTES].add(app, [Route("GET", "/v1/explode", explode, "boom", "test", {200: None})])
    client = await aiohttp_client(app, headers=AUTH)
    with capture_logs() as logs:
        response = await client.get("/v1/explode")
        text = await response.text()
    error = await error_of(response, 500)
    assert error == {"code": "internal_error", "message": "internal error; see the server log"}
    assert "hunter2" not in text
    [logged] = [e for e in logs if e["event"] == "api_error"]
    assert logged["path"] == "/v1/explode"
    assert logged["log_level"] == "error"


@pytest.mark.usefixtures("all_logs")
async def test_requests_are_logged_without_secrets(client: TestClient[Any, Any]) -> None:
    with capture_logs() as logs:
        account = await create_account(client, api_token="upstream-token-abc")
        await client.patch(f"/v1/accounts/{account['id']}", json={"api_token": "second-token"})
        await client.post(f"/v1/accounts/{account['id']}/poll")
    lines = [e for e in logs if e["event"] == "api_request"]
    assert [(e["method"], e["status"]) for e in lines] == [
        ("POST", 201),
        ("PATCH", 200),
        ("POST", 202),
    ]
    for entry in logs:
        text = repr(entry)
        for secret in ("upstream-token-abc", "second-token", TEST_ADMIN_TOKEN):
            assert secret not in text


def _router_routes(app: web.Application) -> set[tuple[str, str]]:
    """Every API route the router serves; the console's HTML pages (`/ui`) are not API."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        if resource.canonical == "/ui" or resource.canonical.startswith("/ui/"):
            continue
        found.add((route.method, resource.canonical))
    return found


def _spec_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, methods in spec["paths"].items() for method in methods}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_openapi_describes_exactly_the_registered_routes(
    client: TestClient[Any, Any], app: web.Application
) -> None:
    spec = await (await client.get("/openapi.json")).json()
    registered = _router_routes(app)
    assert _spec_routes(spec) == registered
    assert len(registered) >= 24
    for path, methods in spec["paths"].items():
        params = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in methods.items():
            assert operation["operationId"]
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == params, (method, path)
            assert "security" in operation
            assert bool(operation["security"]) == path.startswith("/v1")
            assert "default" in operation["responses"]
    schemas = spec["components"]["schemas"]
    for ref in _refs(spec):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref
    ids = [op["operationId"] for methods in spec["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))


async def test_openapi_follows_the_declarations(client: TestClient[Any, Any]) -> None:
    spec = await (await client.get("/openapi.json")).json()
    create = spec["paths"]["/v1/accounts"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False
    assert set(body["required"]) == {"provider", "name", "base_url", "api_token"}
    assert body["properties"]["provider"]["enum"] == ["dext", "invoicext"]
    listing = spec["paths"]["/v1/events"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 200,
        "default": 50,
        "description": "page size (default 50)",
    }
    names = {p["name"] for p in listing["parameters"]}
    assert names == {"type", "account_id", "client_id", "object_id", "since", "until"} | {
        "limit",
        "cursor",
    }
