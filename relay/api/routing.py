"""Route declarations: one `Route` per endpoint feeds both the aiohttp router and OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from relay.api.validation import NO_BODY, Body, Integer, Query, String
from relay.errors import NotFound
from relay.paging import DEFAULT_LIMIT, MAX_LIMIT

# A path parameter longer than this, or holding characters no id has, cannot name anything.
_MAX_ID_LENGTH = 100
# Every public id is a prefix and an underscore (`acc_...`); matching only such segments keeps
# `/v1/deliveries/retry` from also being read as "the delivery called retry".
ID_PATTERN = "[a-z]+_[^/]*"
MAX_BODY_BYTES = 1024 * 1024
_NO_QUERY = Query({})


@dataclass(frozen=True)
class Input:
    """What a handler receives, already validated against its route's declaration."""

    body: dict[str, Any]
    query: dict[str, Any]
    path: dict[str, str]


Handler = Callable[[web.Request, Input], Awaitable[web.StreamResponse]]
# A response schema: a component name (rendered as a $ref), an inline schema, or None (no body).
ResponseSchema = str | dict[str, Any] | None


@dataclass(frozen=True)
class Route:
    """One endpoint: method, path, handler, its inputs and the responses it documents."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    responses: Mapping[int, ResponseSchema]
    body: Body | None = None
    query: Query | None = None
    path_kind: str = ""  # what the `{id}` path parameter names, for 404 messages
    description: str = ""
    content_type: str = "application/json"

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.lstrip("_")

    @property
    def needs_auth(self) -> bool:
        return self.path.startswith("/v1")


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response; datetimes render as RFC 3339 with `Z`, like the webhook bodies."""
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_UTC_Z),
        status=status,
        content_type="application/json",
    )


def page_response(items: Sequence[Any], next_cursor: str | None) -> web.Response:
    return json_response({"data": list(items), "next_cursor": next_cursor})


def page_of(component: str) -> dict[str, Any]:
    """The schema of a list response holding `component` items."""
    return {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{component}"}},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


def list_query(**filters: Any) -> Query:
    """The query of a list route: its filters plus `limit` (1-200, default 50) and `cursor`;
    the stores check both again (relay.paging), so a caller other than the API gets the same."""
    return Query(
        {
            **filters,
            "limit": Integer(
                minimum=1,
                maximum=MAX_LIMIT,
                default=DEFAULT_LIMIT,
                description=f"page size (default {DEFAULT_LIMIT})",
            ),
            "cursor": String(
                max_length=500, description="`next_cursor` of the previous page (opaque)"
            ),
        }
    )


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= _MAX_ID_LENGTH and value.isascii() and value.isprintable()


def _wrap(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    body_schema = route.body or NO_BODY
    reads_body = route.method in ("POST", "PATCH", "PUT")

    async def endpoint(request: web.Request) -> web.StreamResponse:
        path = dict(request.match_info)
        for value in path.values():
            if not _valid_id(value):
                raise NotFound(route.path_kind or "resource", value)
        # Routes without declared parameters still reject stray ones, by name.
        query = (route.query or _NO_QUERY).parse(request.query)
        body = body_schema.parse(await request.read()) if reads_body else {}
        return await route.handler(request, Input(body=body, query=query, path=path))

    endpoint.__name__ = route.operation_id
    return endpoint


@dataclass
class RouteTable:
    """Every declared route of an app, in registration order (OpenAPI renders this)."""

    routes: list[Route] = field(default_factory=list)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, app: web.Application, routes: Sequence[Route], **schemas: Any) -> None:
        for route in routes:
            path = route.path.replace("{id}", "{id:" + ID_PATTERN + "}")
            app.router.add_route(route.method, path, _wrap(route))
            self.routes.append(route)
        self.schemas.update(schemas)
