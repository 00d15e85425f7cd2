"""Admin routes for events: list and read them in the webhook body shape, and replay one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay import events
from relay.api.keys import POOL
from relay.api.routing import Input, Route, json_response, list_query, page_of, page_response
from relay.api.validation import Body, DateTime, String, StringList
from relay.delivery import fanout

_ID = String(max_length=100)

EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Exactly the body of the webhook request that delivers this event.",
    "required": [
        "id",
        "type",
        "created_at",
        "account_id",
        "client_id",
        "object_type",
        "object_id",
        "data",
    ],
    "properties": {
        "id": {"type": "string", "pattern": "^evt_"},
        "type": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "account_id": {"type": ["string", "null"]},
        "client_id": {"type": ["string", "null"]},
        "object_type": {"type": "string"},
        "object_id": {"type": "string"},
        "data": {
            "type": "object",
            "required": ["object", "previous"],
            "properties": {"object": {"type": "object"}, "previous": {"type": "object"}},
        },
    },
}

LIST_QUERY = list_query(
    type=String(max_length=100, description="an event type, a prefix wildcard (`document.*`) or *"),
    account_id=_ID,
    client_id=_ID,
    object_id=_ID,
    since=DateTime(description="created at or after (RFC 3339)"),
    until=DateTime(description="created before (RFC 3339)"),
)
REPLAY_BODY = Body(
    {
        "subscription_ids": StringList(
            item=_ID,
            min_items=1,
            description="only these subscriptions (default: every matching one)",
        )
    }
)


async def list_events(request: web.Request, inp: Input) -> web.Response:
    page = await events.list_events(request.app[POOL], **inp.query)
    return page_response(page.data, page.next_cursor)


async def get_event(request: web.Request, inp: Input) -> web.Response:
    return json_response(await events.get_event(request.app[POOL], inp.path["id"]))


async def replay_event(request: web.Request, inp: Input) -> web.Response:
    queued = await fanout.replay_event(
        request.app[POOL], inp.path["id"], inp.body.get("subscription_ids")
    )
    return json_response({"queued": queued}, status=202)


QUEUED_COUNT = {
    "type": "object",
    "required": ["queued"],
    "properties": {"queued": {"type": "integer", "minimum": 0}},
}

ROUTES = [
    Route(
        "GET",
        "/v1/events",
        list_events,
        "List events, newest first",
        "events",
        {200: page_of("Event")},
        query=LIST_QUERY,
    ),
    Route(
        "GET",
        "/v1/events/{id}",
        get_event,
        "Get an event, in the webhook body shape",
        "events",
        {200: "Event"},
        path_kind="event",
    ),
    Route(
        "POST",
        "/v1/events/{id}/replay",
        replay_event,
        "Deliver an event again (same webhook-id) to matching subscriptions",
        "events",
        {202: QUEUED_COUNT},
        body=REPLAY_BODY,
        path_kind="event",
        description="`queued` is how many deliveries were created: one per matching enabled "
        "subscription, each a new generation. Concurrent replays are never coalesced: N "
        "replays, all at once, are N deliveries per matching subscription (each replay locks "
        "the event while it reads the generation). A replay of an event not fanned out yet "
        "creates the delivery fan-out would have made: that one send is both.",
    ),
]
SCHEMAS = {"Event": EVENT_SCHEMA}
