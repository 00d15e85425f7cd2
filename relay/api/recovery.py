"""Admin routes for recovery: replay a window, backfill from snapshots, and job progress."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.api.keys import POOL
from relay.api.routing import Input, Route, json_response
from relay.api.validation import Body, DateTime, String, StringList
from relay.delivery import recovery
from relay.snapshots.rules import OBJECT_TYPES

_TIME = {"type": "string", "format": "date-time"}
_EVENT_TYPE = String(max_length=100, pattern=r"\*|[a-z][a-z_]*\.\*|[a-z][a-z_]*\.[a-z][a-z_]*")

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "subscription_id",
        "kind",
        "status",
        "total",
        "queued",
        "pending",
        "succeeded",
        "failed",
    ],
    "properties": {
        "id": {"type": "string", "pattern": "^job_"},
        "subscription_id": {"type": "string"},
        "kind": {"type": "string", "enum": ["replay", "backfill"]},
        "params": {"type": "object"},
        "status": {"type": "string", "enum": ["running", "done", "cancelled"]},
        "total": {"type": "integer", "description": "matching stored events or snapshots"},
        "queued": {"type": "integer", "description": "deliveries created so far"},
        "pending": {"type": "integer"},
        "succeeded": {"type": "integer", "description": "sent"},
        "failed": {"type": "integer"},
        "error": {"type": ["string", "null"]},
        "created_at": _TIME,
        "updated_at": _TIME,
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
    },
}

REPLAY_BODY = Body(
    {
        "since": DateTime(required=True, description="events stored at or after (RFC 3339)"),
        "until": DateTime(description="events stored before (RFC 3339)"),
        "event_types": StringList(
            item=_EVENT_TYPE,
            min_items=1,
            max_items=100,
            description="only these types (exact, `prefix.*` or `*`); default: all",
        ),
    }
)
BACKFILL_BODY = Body(
    {
        "account_ids": StringList(
            item=String(max_length=100),
            min_items=1,
            max_items=1000,
            description="only these accounts; default: the subscription's (or all)",
        ),
        "object_types": StringList(
            item=String(enum=OBJECT_TYPES),
            min_items=1,
            max_items=len(OBJECT_TYPES),
            description="only these object types; default: all",
        ),
    }
)


async def replay_window(request: web.Request, inp: Input) -> web.Response:
    job = await recovery.start_replay(request.app[POOL], inp.path["id"], **inp.body)
    return json_response(job, status=202)


async def backfill(request: web.Request, inp: Input) -> web.Response:
    job = await recovery.start_backfill(request.app[POOL], inp.path["id"], **inp.body)
    return json_response(job, status=202)


async def get_job(request: web.Request, inp: Input) -> web.Response:
    return json_response(await recovery.get_job(request.app[POOL], inp.path["id"]))


ROUTES = [
    Route(
        "POST",
        "/v1/subscriptions/{id}/replay",
        replay_window,
        "Replay every matching stored event of a window to this subscription alone",
        "subscriptions",
        {202: "Job", 409: "Error"},
        body=REPLAY_BODY,
        path_kind="subscription",
        description="Same `webhook-id`s, in stored order (and in `sequence` order per object "
        "for an ordered subscription). The answer is a job: `total` events of the window, "
        "`queued` so far (a small window is queued whole at once), and how many of those are "
        "pending, succeeded (sent) and failed; follow it with GET /v1/jobs/{id}. Large windows "
        f"are queued {recovery.BATCH} at a time while fewer than {recovery.WINDOW} wait, so "
        "live traffic is never stuck behind them. Concurrent calls: N replays. 409 when the "
        "subscription is disabled.",
    ),
    Route(
        "POST",
        "/v1/subscriptions/{id}/backfill",
        backfill,
        "Send the current state of every object Relay holds, as <object_type>.snapshot events",
        "subscriptions",
        {202: "Job", 409: "Error"},
        body=BACKFILL_BODY,
        path_kind="subscription",
        description="Built from Postgres snapshots, with no upstream request. Each snapshot "
        "event carries the `sequence` of the object's last event, so a receiver can tell it "
        "from the live changes that follow (a later `sequence`). Sent to this subscription "
        "alone, whatever its event types and filter (only of its clients when it names "
        "any); progress as for replay. Concurrent calls: N "
        "backfills. 409 when the subscription is disabled.",
    ),
    Route(
        "GET",
        "/v1/jobs/{id}",
        get_job,
        "A replay or backfill job and its progress",
        "subscriptions",
        {200: "Job"},
        path_kind="job",
    ),
]
SCHEMAS = {"Job": JOB_SCHEMA}
