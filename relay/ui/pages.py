"""The console's pages (GET): overview, account, subscriptions, deliveries, events, event.

Each page reads through the same modules as the admin API routes (so the account resource
shown is `Account.public()`, fields added to it later show up here too) plus `relay.ui.data`
for the summaries no route serves. A page with live parts answers `?fragment=NAME` with just
that part, which `console.js` fetches when the event stream or its timer says to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from relay import events
from relay.api.keys import POOL
from relay.api.stream import StreamFilter, serve_stream
from relay.delivery import subscriptions
from relay.errors import InvalidInput
from relay.sources import accounts
from relay.ui import data
from relay.ui.render import render_page

_FRAGMENTS = {
    "overview": ("backlog", "accounts", "subscriptions", "events", "chart"),
    "deliveries": ("deliveries",),
    "events": ("events",),
    "event": ("deliveries",),
    "account": ("account", "events"),
    "subscriptions": ("subscriptions",),
}


def render(request: web.Request, page: str, context: dict[str, Any]) -> web.Response:
    """The page, or only the fragment `?fragment=` names (one of the page's live parts)."""
    fragment = request.query.get("fragment")
    if fragment is not None:
        if fragment not in _FRAGMENTS.get(page, ()):
            raise InvalidInput(f"no live part called {fragment!r} on this page", "fragment")
        return render_page(request, f"_{fragment}.html", context)
    return render_page(request, f"{page}.html", {**context, "page": page})


def _text(request: web.Request, name: str, max_length: int = 200) -> str | None:
    value = request.query.get(name, "").strip()
    if not value:
        return None
    if len(value) > max_length or not value.isprintable():
        raise InvalidInput(f"{name} is not a value this console uses", name)
    return value


def parse_time(value: str | None, name: str) -> datetime | None:
    """A time from a form: RFC 3339, or `datetime-local`'s `YYYY-MM-DDTHH:MM` read as UTC."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if len(text) <= 19 and "+" not in text and not text.endswith("Z"):
        text += "+00:00"
    return events.parse_time(text, name)


async def overview(request: web.Request) -> web.Response:
    pool = request.config_dict[POOL]
    found, _ = await accounts.list_accounts(pool, limit=200)
    subs, _ = await subscriptions.list_subscriptions(pool, limit=200)
    stats = await data.subscription_stats(pool)
    rows = [{**s, "stats": stats.get(s["id"], {})} for s in subs]
    # Failing first: most failed deliveries, then the lowest success rate.
    rows.sort(
        key=lambda s: (
            -int(s["stats"].get("failed", 0)),
            s["stats"].get("success_rate") if s["stats"].get("success_rate") is not None else 2,
        )
    )
    series = await data.attempts_per_minute(pool)
    recent = await events.list_events(pool, limit=10)
    return render(
        request,
        "overview",
        {
            "accounts": [a.public() for a in found],
            "backlog": await data.backlog(pool),
            "subscriptions": rows,
            "series": series,
            "peak": max([p["ok"] + p["failed"] for p in series] + [1]),
            "events": recent.data,
        },
    )


async def account(request: web.Request) -> web.Response:
    pool = request.config_dict[POOL]
    found = await accounts.get_account(pool, request.match_info["id"])
    errors = await events.list_events(pool, account_id=found.id, type="account.*", limit=10)
    recent = await events.list_events(pool, account_id=found.id, limit=20)
    return render(
        request,
        "account",
        {
            "account": found.public(),
            "account_events": errors.data,
            "events": recent.data,
        },
    )


async def subscriptions_page(request: web.Request) -> web.Response:
    pool = request.config_dict[POOL]
    subs, _ = await subscriptions.list_subscriptions(pool, limit=200)
    stats = await data.subscription_stats(pool)
    rows = [{**s, "stats": stats.get(s["id"], {})} for s in subs]
    return render(request, "subscriptions", {"subscriptions": rows})


def delivery_filters(request: web.Request) -> dict[str, Any]:
    status = _text(request, "status")
    if status is not None and status not in data.STATUS_FILTERS:
        raise InvalidInput("status must be failed, retrying, pending or succeeded", "status")
    return {
        "status": status,
        "subscription_id": _text(request, "subscription_id", 100),
        "event_id": _text(request, "event_id", 100),
        "since": parse_time(request.query.get("since"), "since"),
        "until": parse_time(request.query.get("until"), "until"),
    }


async def deliveries_page(request: web.Request) -> web.Response:
    pool = request.config_dict[POOL]
    filters = delivery_filters(request)
    rows = await data.deliveries_failed_first(pool, **filters)
    subs, _ = await subscriptions.list_subscriptions(pool, limit=200)
    return render(
        request,
        "deliveries",
        {
            "deliveries": rows,
            "filters": filters,
            "subscriptions": subs,
            "statuses": data.STATUS_FILTERS,
            "query": request.query_string,
        },
    )


async def events_page(request: web.Request) -> web.Response:
    pool = request.config_dict[POOL]
    filters: dict[str, Any] = {
        "type": _text(request, "type", 100),
        "account_id": _text(request, "account_id", 100),
        "client_id": _text(request, "client_id", 100),
        "object_id": _text(request, "object_id", 100),
        "since": parse_time(request.query.get("since"), "since"),
        "until": parse_time(request.query.get("until"), "until"),
    }
    found = await events.list_events(
        pool, **filters, limit=50, cursor=_text(request, "cursor", 500)
    )
    older = None
    if found.next_cursor:
        params = {k: v for k, v in request.query.items() if k not in ("cursor", "fragment")}
        older = {**params, "cursor": found.next_cursor}
    return render(
        request,
        "events",
        {"events": found.data, "filters": filters, "older": older},
    )


async def event_page(request: web.Request) -> web.Response:
    pool = request.config_dict[POOL]
    body = await events.get_event(pool, request.match_info["id"])
    rows = await data.deliveries_failed_first(pool, event_id=body["id"])
    return render(
        request,
        "event",
        {
            "event": body,
            # Pretty-printed for reading; the autoescaping template shows it as text.
            "pretty": orjson.dumps(body, option=orjson.OPT_INDENT_2).decode(),
            "deliveries": rows,
        },
    )


async def stream(request: web.Request) -> web.StreamResponse:
    """The console's live feed: the admin event stream, authenticated by the session cookie."""
    return await serve_stream(
        request,
        StreamFilter(type=_text(request, "type", 100)),
        request.headers.get("Last-Event-ID"),
    )
