"""Admin routes for deliveries: list and read them with every attempt, and retry."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.api.events import QUEUED_COUNT
from relay.api.keys import POOL
from relay.api.routing import Input, Route, json_response, list_query, page_of, page_response
from relay.api.validation import Body, DateTime, Integer, String
from relay.delivery import store as deliveries

_ID = String(max_length=100)

DELIVERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "event_id",
        "subscription_id",
        "status",
        "attempt_count",
        "next_attempt_at",
        "created_at",
        "attempts",
    ],
    "properties": {
        "id": {"type": "string", "pattern": "^dlv_"},
        "event_id": {"type": "string"},
        "subscription_id": {"type": "string"},
        "status": {"type": "string", "enum": list(deliveries.STATUSES)},
        "attempt_count": {"type": "integer", "minimum": 0},
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "generation": {"type": "integer"},
        "last_error": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "attempts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["at", "status_code", "latency_ms", "error", "response_excerpt"],
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "status_code": {"type": ["integer", "null"]},
                    "latency_ms": {"type": ["number", "null"]},
                    "error": {"type": ["string", "null"]},
                    "response_excerpt": {"type": ["string", "null"]},
                },
            },
        },
    },
}

LIST_QUERY = list_query(
    status=String(enum=deliveries.STATUSES),
    subscription_id=_ID,
    event_id=_ID,
)
BULK_RETRY_BODY = Body(
    {
        "status": String(
            required=True, enum=("failed",), description="only failed deliveries are retried"
        ),
        "subscription_id": _ID,
        "since": DateTime(description="created at or after (RFC 3339)"),
        "until": DateTime(description="created before (RFC 3339)"),
        "limit": Integer(
            minimum=1,
            maximum=100_000,
            description="queue at most this many, oldest first (default: all); repeat the "
            "call while `queued` equals it to go in steps",
        ),
    }
)


async def list_deliveries(request: web.Request, inp: Input) -> web.Response:
    items, next_cursor = await deliveries.list_deliveries(request.app[POOL], **inp.query)
    return page_response(items, next_cursor)


async def get_delivery(request: web.Request, inp: Input) -> web.Response:
    return json_response(await deliveries.get_delivery(request.app[POOL], inp.path["id"]))


async def retry_delivery(request: web.Request, inp: Input) -> web.Response:
    delivery = await deliveries.retry_delivery(request.app[POOL], inp.path["id"])
    return json_response(delivery, status=202)


async def retry_deliveries(request: web.Request, inp: Input) -> web.Response:
    body = inp.body
    queued = await deliveries.retry_failed(
        request.app[POOL],
        subscription_id=body.get("subscription_id"),
        since=body.get("since"),
        until=body.get("until"),
        limit=body.get("limit"),
    )
    return json_response({"queued": queued}, status=202)


ROUTES = [
    Route(
        "GET",
        "/v1/deliveries",
        list_deliveries,
        "List deliveries, newest first, with their attempts",
        "deliveries",
        {200: page_of("Delivery")},
        query=LIST_QUERY,
    ),
    Route(
        "POST",
        "/v1/deliveries/retry",
        retry_deliveries,
        "Retry failed deliveries in bulk",
        "deliveries",
        {202: QUEUED_COUNT},
        body=BULK_RETRY_BODY,
        description="`queued` is how many deliveries this call made due now. Concurrent bulk "
        "retries lock the deliveries in id order, so each failed delivery is queued by exactly "
        "one of them and their `queued` counts add up to the deliveries queued.",
    ),
    Route(
        "GET",
        "/v1/deliveries/{id}",
        get_delivery,
        "Get a delivery with every attempt",
        "deliveries",
        {200: "Delivery"},
        path_kind="delivery",
    ),
    Route(
        "POST",
        "/v1/deliveries/{id}/retry",
        retry_delivery,
        "Retry one delivery now (same webhook-id)",
        "deliveries",
        {202: "Delivery", 409: "Error"},
        path_kind="delivery",
        description="409 when the delivery is being sent right now: retry it once that attempt "
        "is recorded, if it failed. A delivery already due and not yet taken by a worker is "
        "left as it is (202 with it unchanged): concurrent retries of one delivery join one "
        "attempt, so it is sent once.",
    ),
]
SCHEMAS = {"Delivery": DELIVERY_SCHEMA}
