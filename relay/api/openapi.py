"""The OpenAPI 3.1 document, rendered from the same `Route` declarations the router serves."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from relay.api.routing import ID_PATTERN, Route, RouteTable

_PATH_PARAM = re.compile(r"\{(\w+)\}")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the offending input, when known"},
            },
        }
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _content(route: Route, schema: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    return {route.content_type: {"schema": schema}}


def _operation(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, schema in route.responses.items():
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if schema is not None:
            response["content"] = _content(route, schema)
        responses[str(status)] = response
    path_params = _PATH_PARAM.findall(route.path)
    if route.needs_auth:
        responses.setdefault("400", _error("invalid input: the message and `field` say what"))
        responses.setdefault("401", _error("missing or wrong admin token"))
    if path_params:
        responses.setdefault("404", _error(f"no such {route.path_kind or 'resource'}"))
    if route.body is not None:
        responses.setdefault("413", _error("request body larger than 1 MB"))
    if route.needs_auth:
        unavailable = _error(
            "Postgres (or Redis) is unreachable; retry after `Retry-After` seconds"
        )
        unavailable["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "schema": {"type": "integer"},
            }
        }
        responses.setdefault("503", unavailable)
    responses["default"] = _error("any other error, in the same envelope")

    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "responses": responses,
        "security": [{"bearerAuth": []}] if route.needs_auth else [],
    }
    if route.description:
        operation["description"] = route.description
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
        }
        for name in path_params
    ]
    if route.query is not None:
        parameters += route.query.parameters()
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": any(spec.required for spec in route.body.fields.values()),
            "content": {"application/json": {"schema": route.body.json_schema()}},
        }
    return operation


def _link_created(table: RouteTable, paths: dict[str, dict[str, Any]]) -> None:
    """Link each 201 "create" to the operations on what it created (`{path}/{id}...`).

    The links tell clients and fuzzers (schemathesis) where a new resource's id goes.
    """
    for route in table.routes:
        if 201 not in route.responses:
            continue
        links = {
            other.operation_id: {
                "operationId": other.operation_id,
                "parameters": {"id": "$response.body#/id"},
            }
            for other in table.routes
            if other.path.startswith(route.path + "/{id}")
        }
        if links:
            paths[route.path][route.method.lower()]["responses"]["201"]["links"] = links


def build_openapi(table: RouteTable) -> dict[str, Any]:
    """The whole document: every declared route, its inputs, responses and component schemas."""
    paths: dict[str, dict[str, Any]] = {}
    for route in table.routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    _link_created(table, paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Relay admin API",
            "version": "1",
            "description": "Webhooks for Dext and InvoiceXT: accounts, events, subscriptions "
            "and deliveries. Everything under /v1 needs `Authorization: Bearer "
            "$RELAY_ADMIN_TOKEN`. Lists are newest first with cursor pagination. Every event "
            "type, with a description and an example body, is listed by "
            "`GET /v1/event-types` (operation `list_event_types`; `relay event-types`).",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, **table.schemas},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
