"""Admin route for the event catalogue: every event type, what it means, an example body."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.api.catalog import CATALOGUE
from relay.api.events import EVENT_SCHEMA
from relay.api.routing import Input, Route, page_of, page_response

EVENT_TYPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "object_type", "providers", "description", "watches", "example"],
    "properties": {
        "type": {"type": "string", "description": "e.g. `document.approval_changed`"},
        "object_type": {"type": "string", "description": "the envelope's `object_type`"},
        "providers": {
            "type": "array",
            "items": {"type": "string", "enum": ["dext", "invoicext", "relay"]},
            "description": "which accounts emit it (`relay`: Relay itself)",
        },
        "description": {"type": "string", "description": "one line: when it is emitted"},
        "watches": {
            "type": "array",
            "items": {"type": "string"},
            "description": "the upstream fields whose change emits it (paths, as in the rules)",
        },
        "example": {
            **EVENT_SCHEMA,
            "description": "an example body as stored and listed by GET /v1/events (and, for "
            "Dext and Relay events, exactly the webhook body)",
        },
        "webhook_example": {
            "type": "object",
            "description": "InvoiceXT types: the webhook body in seed 004's format",
        },
        "invoicext_example": {
            **EVENT_SCHEMA,
            "description": "`connection.status_changed` of an InvoiceXT ledger",
        },
    },
}


async def list_event_types(request: web.Request, inp: Input) -> web.Response:
    return page_response(CATALOGUE, None)


ROUTES = [
    Route(
        "GET",
        "/v1/event-types",
        list_event_types,
        "List every event type, with a description and an example body",
        "events",
        {200: page_of("EventType")},
        description="The catalogue is generated from the rules that detect changes (the fields "
        "each type watches, and examples made by the same diff), so it always matches what "
        "this Relay emits. One page: `next_cursor` is always null.",
    ),
]
SCHEMAS = {"EventType": EVENT_TYPE_SCHEMA}
