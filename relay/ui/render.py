"""Rendering for the console: every page gets the session's CSRF token and the notice, and the
filters that show times, rates and latencies the same way everywhere."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from relay.ui.auth import SESSION

# Fixed sentences, looked up by the `notice` code of a redirect: never text from the URL.
NOTICES = {
    "poll": "Poll requested: a full pass over the account starts at once.",
    "token": "Token replaced; the account is tried with it at once.",
    "enabled": "Subscription enabled.",
    "disabled": "Subscription disabled: nothing is sent to it until it is enabled again.",
    "test": "Test event (relay.ping) queued for this subscription.",
    "retried": "Delivery queued to be sent again now, under the same webhook-id.",
    "busy": "That delivery is being sent right now; retry it once the attempt is recorded.",
    "bulk": "{n} failed deliveries queued to be sent again.",
    "replayed": "Event queued again for {n} matching subscriptions.",
    "signed_out": "Signed out.",
}


def render_page(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    session = request.get(SESSION)
    notice = NOTICES.get(request.query.get("notice", ""))
    if notice and "{n}" in notice:
        count = request.query.get("n", "0")
        notice = notice.format(n=int(count) if count.isdigit() and len(count) < 10 else 0)
    base = {"csrf": session.csrf if session else None, "notice": notice, "page": None}
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render_page(request, "error.html", {"status": status, "message": message}, status=status)


def _as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).astimezone(UTC)
        except ValueError:
            return None
    return None


def iso(value: Any) -> str:
    """Absolute time, to the second, in UTC."""
    at = _as_time(value)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else "-"


def machine_time(value: Any) -> str:
    """The `datetime` attribute of a `<time>` element (console.js keeps "ago" texts fresh)."""
    at = _as_time(value)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at else ""


def ago(value: Any) -> str:
    """Relative time ("3 min ago", "in 20 s"), for reading at a glance."""
    at = _as_time(value)
    if at is None:
        return "never"
    seconds = (datetime.now(UTC) - at).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "just now"


def percent(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def millis(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


FILTERS = {"iso": iso, "ago": ago, "percent": percent, "millis": millis, "machine": machine_time}
