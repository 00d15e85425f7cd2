"""Admin routes for accounts: register upstream logins, inspect and change them, poll now."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.api.keys import POOL, REDIS, SETTINGS, VAULT
from relay.api.routing import Input, Route, json_response, list_query, page_of, page_response
from relay.api.validation import Body, Boolean, String, Url
from relay.poller import account_warnings
from relay.poller.plan import Policy
from relay.poller.progress import baseline_progress
from relay.sources import accounts
from relay.sources.models import SET_ASIDE_KINDS

_TIME = {"type": ["string", "null"], "format": "date-time"}

BASELINE_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "Progress of the first scans while the account, or a client that "
    "appeared after its baseline, is baselining; null once done. The estimate spreads "
    "the requests left over the account's rate limit as last seen (less the safety "
    "margin), assuming the baseline gets the whole budget.",
    "required": [
        "clients_done",
        "clients_total",
        "items_seen",
        "items_total",
        "requests_left",
        "estimated_seconds_left",
    ],
    "properties": {
        "clients_done": {
            "type": "integer",
            "description": "clients whose documents, suppliers, expense reports and "
            "connections all have their baseline",
        },
        "clients_total": {
            "type": ["integer", "null"],
            "description": "clients being baselined (all while the account is; else "
            "the late ones); null until the client list has been read",
        },
        "items_seen": {"type": "integer", "description": "documents stored so far"},
        "items_total": {
            "type": ["integer", "null"],
            "description": "documents in all, from the pages' totals; null while a "
            "client's size is not known yet",
        },
        "requests_left": {
            "type": ["integer", "null"],
            "description": "upstream requests the baseline still needs (estimated "
            "for workspaces not reached yet); null while nothing is known",
        },
        "estimated_seconds_left": {
            "type": ["number", "null"],
            "description": "requests_left at the account's request budget",
        },
    },
}

ACCOUNT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "provider",
        "name",
        "base_url",
        "status",
        "baseline_completed_at",
        "last_poll_at",
        "last_error",
        "rate_limit",
        "created_at",
    ],
    "properties": {
        "id": {"type": "string", "pattern": "^acc_"},
        "provider": {"type": "string", "enum": list(accounts.PROVIDERS)},
        "name": {"type": "string"},
        "base_url": {"type": "string"},
        "status": {"type": "string", "enum": list(accounts.STATUSES)},
        "backfill": {"type": "boolean"},
        "baseline_completed_at": _TIME,
        "last_poll_at": _TIME,
        "last_error": {"type": ["string", "null"]},
        "rate_limit": {
            "type": "object",
            "required": ["limit", "remaining", "reset_at", "throttled_last_hour"],
            "properties": {
                "limit": {"type": ["integer", "null"]},
                "remaining": {"type": ["integer", "null"]},
                "reset_at": {"type": ["string", "null"]},
                "throttled_last_hour": {"type": "integer"},
                "window_seconds": {
                    "type": "number",
                    "description": "InvoiceXT: the rolling window `limit` counts in (3600)",
                },
                "monthly": {
                    "type": ["object", "null"],
                    "description": "InvoiceXT: the billing period as /usage/stats last said, "
                    "and the seconds between requests it affords",
                    "properties": {
                        "api_calls": {"type": "integer"},
                        "api_calls_limit": {"type": "integer"},
                        "period_ends_at": {"type": "string", "format": "date-time"},
                        "pace_seconds": {"type": "number"},
                    },
                },
                "missing_scopes": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "InvoiceXT: scopes the key lacks (those lists are not polled)",
                },
            },
        },
        "poll_requested_at": _TIME,
        "created_at": {"type": "string", "format": "date-time"},
        "baseline": BASELINE_SCHEMA,
        "warnings": {
            "type": "array",
            "description": "Upstream objects the account's polls had to set aside because they "
            "could not be used at all, one entry per kind. Their page, scan and account go on; "
            "a scan that set an object aside deletes nothing. Counts only grow: a kind whose "
            "`last_seen` is old has stopped happening.",
            "items": {
                "type": "object",
                "required": ["kind", "count", "first_seen", "last_seen", "example"],
                "properties": {
                    "kind": {
                        "type": "string",
                        "enum": list(SET_ASIDE_KINDS),
                        "description": "not_an_object, missing_id (no usable id) or "
                        "unusable_field (a watched or ordering field of an impossible type)",
                    },
                    "count": {"type": "integer", "minimum": 1},
                    "first_seen": {"type": "string", "format": "date-time"},
                    "last_seen": {"type": "string", "format": "date-time"},
                    "example": {
                        "type": "string",
                        "description": "the latest reason: endpoint, position, id and the "
                        "field's problem (never a value or a secret)",
                    },
                },
            },
        },
    },
}

_NAME = String(max_length=200, description="a label for people")
_BASE_URL = Url(description="the upstream API root, e.g. https://api.dext.com/v1")
_TOKEN = String(max_length=4096, description="the upstream API token; stored encrypted")

CREATE_BODY = Body(
    {
        "provider": String(required=True, enum=accounts.PROVIDERS),
        "name": String(required=True, max_length=200, description="a label for people"),
        "base_url": Url(required=True, description=_BASE_URL.description),
        "api_token": String(required=True, max_length=4096, description=_TOKEN.description),
        "backfill": Boolean(
            description="emit `*.created` events for the first scan too (default false); "
            "clients that appear after it are history either way"
        ),
    }
)
UPDATE_BODY = Body({"name": _NAME, "base_url": _BASE_URL, "api_token": _TOKEN})


async def _resources(request: web.Request, items: list[accounts.Account]) -> list[dict[str, Any]]:
    """The accounts as the API shows them: their public fields, their baseline progress and
    their `warnings`."""
    speed = request.app[SETTINGS].upstream_speed
    policy = Policy().scaled(speed) if speed != 1.0 else Policy()
    progress = await baseline_progress(request.app[POOL], items, policy)
    found = await account_warnings.warnings_of(request.app[POOL], [a.id for a in items])
    return [
        {
            **a.public(),
            "baseline": p.public() if (p := progress.get(a.id)) else None,
            "warnings": found[a.id],
        }
        for a in items
    ]


async def create_account(request: web.Request, inp: Input) -> web.Response:
    account = await accounts.create_account(
        request.app[POOL],
        request.app[VAULT],
        provider=inp.body["provider"],
        name=inp.body["name"],
        base_url=inp.body["base_url"],
        api_token=inp.body["api_token"],
        backfill=inp.body.get("backfill", False),
    )
    [resource] = await _resources(request, [account])
    return json_response(resource, status=201)


async def list_accounts(request: web.Request, inp: Input) -> web.Response:
    items, next_cursor = await accounts.list_accounts(
        request.app[POOL], limit=inp.query["limit"], cursor=inp.query["cursor"]
    )
    return page_response(await _resources(request, items), next_cursor)


async def get_account(request: web.Request, inp: Input) -> web.Response:
    account = await accounts.get_account(request.app[POOL], inp.path["id"])
    [resource] = await _resources(request, [account])
    return json_response(resource)


async def update_account(request: web.Request, inp: Input) -> web.Response:
    account = await accounts.update_account(
        request.app[POOL], request.app[VAULT], inp.path["id"], **inp.body
    )
    [resource] = await _resources(request, [account])
    return json_response(resource)


async def delete_account(request: web.Request, inp: Input) -> web.Response:
    await accounts.delete_account(request.app[POOL], inp.path["id"])
    return web.Response(status=204)


async def poll_account(request: web.Request, inp: Input) -> web.Response:
    await accounts.request_poll(request.app[POOL], request.app[REDIS], inp.path["id"])
    return json_response({"queued": True}, status=202)


_QUEUED = {
    "type": "object",
    "required": ["queued"],
    "properties": {"queued": {"type": "boolean"}},
}

ROUTES = [
    Route(
        "POST",
        "/v1/accounts",
        create_account,
        "Register an upstream account",
        "accounts",
        {201: "Account"},
        body=CREATE_BODY,
        description="The token is encrypted at rest and never returned. The first scan is a "
        "baseline that emits nothing unless `backfill` is true. Concurrent calls: each creates "
        "one account with its own id (nothing is de-duplicated).",
    ),
    Route(
        "GET",
        "/v1/accounts",
        list_accounts,
        "List accounts, newest first",
        "accounts",
        {200: page_of("Account")},
        query=list_query(),
    ),
    Route(
        "GET",
        "/v1/accounts/{id}",
        get_account,
        "Get an account",
        "accounts",
        {200: "Account"},
        path_kind="account",
        description="While the account, or a client that appeared after its baseline, is "
        "baselining, `baseline` shows how far it is and an estimate of the time left. "
        "`warnings` lists the upstream objects its polls had to set aside, by kind.",
    ),
    Route(
        "PATCH",
        "/v1/accounts/{id}",
        update_account,
        "Change an account's name, base URL or token",
        "accounts",
        {200: "Account"},
        body=UPDATE_BODY,
        path_kind="account",
        description="A new `api_token` clears `broken` and is tried at once. Concurrent calls: "
        "each is one conditional UPDATE of only the fields it names, so PATCHes of different "
        "fields all land and, of one field, the last to commit wins; a PATCH that a DELETE "
        "overtook answers 404 and changes nothing.",
    ),
    Route(
        "DELETE",
        "/v1/accounts/{id}",
        delete_account,
        "Delete an account (polling stops; its events are kept)",
        "accounts",
        {204: None},
        path_kind="account",
        description="Concurrent calls: exactly one answers 204, the others 404; a PATCH or "
        "poll request it overtook answers 404.",
    ),
    Route(
        "POST",
        "/v1/accounts/{id}/poll",
        poll_account,
        "Poll the account now: one full pass instead of waiting for the schedule",
        "accounts",
        {202: _QUEUED},
        path_kind="account",
        description="The request is stored in Postgres (`poll_requested_at`), so it survives a "
        "Redis flush. Concurrent or repeated calls coalesce: every request recorded before a "
        "full pass begins is answered by that one pass, and a request made during a pass gets "
        "a pass of its own.",
    ),
]
SCHEMAS = {"Account": ACCOUNT_SCHEMA}
