"""Admin routes for subscriptions: create, list, read, change, delete, rotate, test."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.api.keys import POOL, SETTINGS, VAULT
from relay.api.routing import Input, Route, json_response, list_query, page_of, page_response
from relay.api.validation import Body, Boolean, String, StringList, Url
from relay.delivery import fanout, subscriptions
from relay.delivery import store as deliveries

_TIME = {"type": "string", "format": "date-time"}
# What the store accepts as an entry of `event_types`: an exact type, `prefix.*` or `*`.
_EVENT_TYPE = String(max_length=100, pattern=r"\*|[a-z][a-z_]*\.\*|[a-z][a-z_]*\.[a-z][a-z_]*")
_IDS = {"type": ["array", "null"], "items": {"type": "string"}}

SUBSCRIPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "url",
        "kind",
        "event_types",
        "account_ids",
        "client_ids",
        "filter",
        "description",
        "enabled",
        "disabled_reason",
        "created_at",
    ],
    "properties": {
        "id": {"type": "string", "pattern": "^sub_"},
        "url": {"type": "string"},
        "kind": {"type": "string", "enum": list(subscriptions.KINDS)},
        "event_types": {"type": "array", "items": {"type": "string"}},
        "account_ids": _IDS,
        "client_ids": _IDS,
        "filter": {"type": ["string", "null"]},
        "description": {"type": ["string", "null"]},
        "enabled": {"type": "boolean"},
        "disabled_reason": {
            "type": ["string", "null"],
            "description": "why it is off: an operator, `410 Gone`, or every attempt failing "
            "for RELAY_ENDPOINT_DISABLE_AFTER (at least 10 attempts)",
        },
        "ordering": {"type": "string", "enum": list(subscriptions.ORDERINGS)},
        "created_at": _TIME,
        "updated_at": _TIME,
    },
}
WITH_SECRET_SCHEMA: dict[str, Any] = {
    "allOf": [
        {"$ref": "#/components/schemas/Subscription"},
        {
            "type": "object",
            "required": ["secret"],
            "properties": {"secret": {"type": "string", "pattern": "^whsec_"}},
        },
    ]
}

_FIELDS = {
    "url": Url(description="where webhooks are POSTed (http or https)"),
    "kind": String(enum=subscriptions.KINDS, description="webhook (default) or slack"),
    "event_types": StringList(
        item=_EVENT_TYPE,
        min_items=1,
        max_items=subscriptions.MAX_EVENT_TYPES,
        description="exact types, prefix wildcards (`document.*`) or `*`",
    ),
    "account_ids": StringList(
        item=String(max_length=100),
        max_items=subscriptions.MAX_IDS,
        nullable=True,
        description="only events of these accounts (null: any)",
    ),
    "client_ids": StringList(
        item=String(max_length=100),
        max_items=subscriptions.MAX_IDS,
        nullable=True,
        description="only events of these clients (null: any)",
    ),
    "filter": String(
        max_length=subscriptions.MAX_FILTER_LENGTH,
        nullable=True,
        description="a JMESPath expression on the event body; delivered only where truthy",
    ),
    "description": String(
        min_length=0, max_length=subscriptions.MAX_DESCRIPTION_LENGTH, nullable=True
    ),
    "ordering": String(
        enum=subscriptions.ORDERINGS,
        description="none (default) or object: the events of one object one at a time, in "
        "`sequence` order; a later one waits while an earlier one is retried, no other object "
        "waits, and a failed (exhausted) one releases the next. A change applies to what is "
        "queued from then on; turning it off releases every waiting delivery at once",
    ),
}
CREATE_BODY = Body(
    {
        **_FIELDS,
        "url": Url(required=True, description=_FIELDS["url"].description),
        "event_types": StringList(
            item=_EVENT_TYPE,
            min_items=1,
            max_items=subscriptions.MAX_EVENT_TYPES,
            required=True,
            description=_FIELDS["event_types"].description,
        ),
    }
)
UPDATE_BODY = Body(
    {
        **_FIELDS,
        "enabled": Boolean(
            description="false pauses deliveries; true clears `disabled_reason` and the failure "
            "count that may have disabled it (then `POST /v1/deliveries/retry` finds its "
            "failed deliveries)"
        ),
    }
)


async def create_subscription(request: web.Request, inp: Input) -> web.Response:
    record, secret = await subscriptions.create_subscription(
        request.app[POOL], request.app[VAULT], request.app[SETTINGS], **inp.body
    )
    return json_response({**record, "secret": secret}, status=201)


async def list_subscriptions(request: web.Request, inp: Input) -> web.Response:
    items, next_cursor = await subscriptions.list_subscriptions(request.app[POOL], **inp.query)
    return page_response(items, next_cursor)


async def get_subscription(request: web.Request, inp: Input) -> web.Response:
    return json_response(await subscriptions.get_subscription(request.app[POOL], inp.path["id"]))


async def update_subscription(request: web.Request, inp: Input) -> web.Response:
    record = await subscriptions.update_subscription(
        request.app[POOL], request.app[SETTINGS], inp.path["id"], inp.body
    )
    if inp.body.get("ordering") == "none":
        await deliveries.release_order(request.app[POOL], inp.path["id"])
    return json_response(record)


async def delete_subscription(request: web.Request, inp: Input) -> web.Response:
    await subscriptions.delete_subscription(request.app[POOL], inp.path["id"])
    return web.Response(status=204)


async def rotate_secret(request: web.Request, inp: Input) -> web.Response:
    record, secret = await subscriptions.rotate_secret(
        request.app[POOL], request.app[VAULT], inp.path["id"]
    )
    return json_response({**record, "secret": secret})


async def test_subscription(request: web.Request, inp: Input) -> web.Response:
    delivery = await fanout.send_test_event(request.app[POOL], inp.path["id"])
    return json_response(delivery, status=202)


ROUTES = [
    Route(
        "POST",
        "/v1/subscriptions",
        create_subscription,
        "Create a subscription",
        "subscriptions",
        {201: "SubscriptionWithSecret"},
        body=CREATE_BODY,
        description="The `secret` (`whsec_...`) is shown only here and by rotate-secret. "
        "Concurrent calls: each creates one subscription with its own id and secret.",
    ),
    Route(
        "GET",
        "/v1/subscriptions",
        list_subscriptions,
        "List subscriptions, newest first",
        "subscriptions",
        {200: page_of("Subscription")},
        query=list_query(),
    ),
    Route(
        "GET",
        "/v1/subscriptions/{id}",
        get_subscription,
        "Get a subscription",
        "subscriptions",
        {200: "Subscription"},
        path_kind="subscription",
    ),
    Route(
        "PATCH",
        "/v1/subscriptions/{id}",
        update_subscription,
        "Change a subscription",
        "subscriptions",
        {200: "Subscription"},
        body=UPDATE_BODY,
        path_kind="subscription",
        description="Concurrent calls: each is one conditional UPDATE of only the fields it "
        "names, so PATCHes of different fields all land and, of one field, the last to commit "
        "wins; a PATCH that a DELETE overtook answers 404 and cannot re-enable it.",
    ),
    Route(
        "DELETE",
        "/v1/subscriptions/{id}",
        delete_subscription,
        "Delete a subscription (its deliveries stay readable)",
        "subscriptions",
        {204: None},
        path_kind="subscription",
        description="Concurrent calls: exactly one answers 204, the others 404. Deliveries "
        "still queued when it commits (a replay or test that committed first) are recorded "
        "`failed` with `not sent: subscription disabled (deleted)` when they come due; one "
        "being sent at that moment finishes its attempt.",
    ),
    Route(
        "POST",
        "/v1/subscriptions/{id}/rotate-secret",
        rotate_secret,
        "Rotate the signing secret; the old one keeps signing for 24 h",
        "subscriptions",
        {200: "SubscriptionWithSecret", 409: "Error"},
        path_kind="subscription",
        description="Rotations run one at a time per subscription, and every secret a rotation "
        "replaces keeps signing for 24 h from that rotation, however many overlap: two "
        "rotations at once sign with three secrets (one signature each) until the first "
        "overlap ends. At most ten secrets sign at once; a rotation that would need more is a "
        "409 naming when the oldest one expires.",
    ),
    Route(
        "POST",
        "/v1/subscriptions/{id}/test",
        test_subscription,
        "Send a relay.ping to this subscription",
        "subscriptions",
        {202: "Delivery", 409: "Error"},
        path_kind="subscription",
        description="Each call stores and queues a ping of its own: N concurrent calls are N "
        "pings. 409 when the subscription is disabled (the ping could not be sent); a DELETE "
        "or disabling PATCH racing it either comes first (404 or 409) or the ping is queued "
        "first and recorded as not sent, with the reason.",
    ),
]
SCHEMAS = {"Subscription": SUBSCRIPTION_SCHEMA, "SubscriptionWithSecret": WITH_SECRET_SCHEMA}
