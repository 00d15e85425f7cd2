"""Admin routes for accounts: register upstream logins, inspect and change them, poll now."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay import account_warnings, accounts
from relay.api.keys import POOL, REDIS, VAULT
from relay.api.routing import Input, Route, json_response, list_query, page_of, page_response
from relay.api.validation import Body, Boolean, String, Url
from relay.sources.models import SET_ASIDE_KINDS

_TIME = {"type": ["string", "null"], "format": "date-time"}

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
            },
        },
        "poll_requested_at": _TIME,
        "created_at": {"type": "string", "format": "date-time"},
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
            description="emit `*.created` events for the first scan too (default false)"
        ),
    }
)
UPDATE_BODY = Body({"name": _NAME, "base_url": _BASE_URL, "api_token": _TOKEN})


async def _shown(request: web.Request, items: list[accounts.Account]) -> list[dict[str, Any]]:
    """The accounts as the API shows them, each with its `warnings`."""
    found = await account_warnings.warnings_of(request.app[POOL], [a.id for a in items])
    return [{**a.public(), "warnings": found[a.id]} for a in items]


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
    return json_response({**account.public(), "warnings": []}, status=201)


async def list_accounts(request: web.Request, inp: Input) -> web.Response:
    items, next_cursor = await accounts.list_accounts(
        request.app[POOL], limit=inp.query["limit"], cursor=inp.query["cursor"]
    )
    return page_response(await _shown(request, items), next_cursor)


async def get_account(request: web.Request, inp: Input) -> web.Response:
    account = await accounts.get_account(request.app[POOL], inp.path["id"])
    return json_response((await _shown(request, [account]))[0])


async def update_account(request: web.Request, inp: Input) -> web.Response:
    account = await accounts.update_account(
        request.app[POOL], request.app[VAULT], inp.path["id"], **inp.body
    )
    return json_response((await _shown(request, [account]))[0])


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
        "baseline that emits nothing unless `backfill` is true.",
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
        description="`warnings` lists the upstream objects its polls had to set aside, by kind.",
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
        description="A new `api_token` clears `broken` and is tried at once.",
    ),
    Route(
        "DELETE",
        "/v1/accounts/{id}",
        delete_account,
        "Delete an account (polling stops; its events are kept)",
        "accounts",
        {204: None},
        path_kind="account",
    ),
    Route(
        "POST",
        "/v1/accounts/{id}/poll",
        poll_account,
        "Poll the account now: one full pass instead of waiting for the schedule",
        "accounts",
        {202: _QUEUED},
        path_kind="account",
    ),
]
SCHEMAS = {"Account": ACCOUNT_SCHEMA}
