"""The console's actions (POST): sign-in and out, and every change an operator can make.

Each action calls the function the matching admin route calls, so the console can do nothing
the API would refuse and does it the same way. The session middleware has already checked the
session and the CSRF token. After a change the browser is sent back (303) with a notice code;
notices are fixed sentences looked up by code, never text taken from the URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from relay.api.keys import POOL, REDIS, SETTINGS, VAULT
from relay.delivery import fanout, subscriptions
from relay.delivery import store as deliveries
from relay.errors import Conflict, InvalidInput
from relay.sources import accounts
from relay.ui import auth, data
from relay.ui.pages import parse_time
from relay.ui.render import render_page

log = structlog.get_logger("relay.ui")


def redirect(location: str, **params: Any) -> web.Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return web.Response(status=303, headers={"Location": location + ("?" + query if query else "")})


async def _form(request: web.Request) -> Any:
    return await request.post()


def _field(form: Any, name: str, max_length: int = 200) -> str | None:
    value = form.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    if len(value) > max_length:
        raise InvalidInput(f"{name} is too long", name)
    return value.strip()


# ---- sign-in ------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    return render_page(request, "login.html", {})


async def login(request: web.Request) -> web.Response:
    remote = request.remote or "unknown"
    redis = request.config_dict[REDIS]
    if not auth.same_site(request):
        log.warning("console_csrf_refused", remote=remote, path=request.path)
        return _refused(request)
    if await auth.sign_in_blocked(redis, remote):
        log.warning("console_sign_in_limited", remote=remote)
        return render_page(
            request,
            "login.html",
            {"error": "Too many wrong tokens from this address; try again in 15 minutes."},
            status=429,
        )
    form = await _form(request)
    token = form.get("token")
    if not isinstance(token, str) or not auth.token_matches(
        token.strip(), request.config_dict[SETTINGS].admin_token
    ):
        await auth.count_failure(redis, remote)
        log.warning("console_sign_in_failed", remote=remote)
        return render_page(
            request, "login.html", {"error": "That is not the admin token."}, status=401
        )
    cookie, _ = await auth.create_session(request.config_dict[POOL])
    log.info("console_signed_in", remote=remote)
    response = redirect("/ui/")
    auth.set_cookie(request, response, cookie)
    return response


async def logout(request: web.Request) -> web.Response:
    await auth.end_session(request.config_dict[POOL], request[auth.SESSION])
    log.info("console_signed_out", remote=request.remote)
    response = redirect("/ui/login", notice="signed_out")
    auth.clear_cookie(response)
    return response


def _refused(request: web.Request) -> web.Response:
    return render_page(
        request,
        "error.html",
        {
            "status": 403,
            "message": "Refused: this request did not come from a Relay console page "
            "(cross-site request, or the page is stale). Reload the page and try again.",
        },
        status=403,
    )


# ---- accounts -----------------------------------------------------------------------------


async def poll_account(request: web.Request) -> web.Response:
    account_id = request.match_info["id"]
    await accounts.request_poll(request.config_dict[POOL], request.config_dict[REDIS], account_id)
    return redirect(f"/ui/accounts/{account_id}", notice="poll")


async def replace_token(request: web.Request) -> web.Response:
    account_id = request.match_info["id"]
    token = _field(await _form(request), "api_token", 4096)
    if token is None:
        raise InvalidInput("paste the new upstream token first", "api_token")
    await accounts.update_account(
        request.config_dict[POOL], request.config_dict[VAULT], account_id, api_token=token
    )
    return redirect(f"/ui/accounts/{account_id}", notice="token")


# ---- subscriptions ------------------------------------------------------------------------


async def set_enabled(request: web.Request) -> web.Response:
    sub_id = request.match_info["id"]
    enabled = request.match_info["action"] == "enable"
    await subscriptions.update_subscription(
        request.config_dict[POOL], request.config_dict[SETTINGS], sub_id, {"enabled": enabled}
    )
    return redirect("/ui/subscriptions", notice="enabled" if enabled else "disabled")


async def rotate_secret(request: web.Request) -> web.Response:
    record, secret = await subscriptions.rotate_secret(
        request.config_dict[POOL], request.config_dict[VAULT], request.match_info["id"]
    )
    log.info("console_secret_rotated", subscription_id=record["id"])
    # Shown once, in this response only (never in a URL); the old secret signs for 24 h more.
    return render_page(
        request, "secret.html", {"subscription": record, "secret": secret, "page": "subscriptions"}
    )


async def send_test(request: web.Request) -> web.Response:
    await fanout.send_test_event(request.config_dict[POOL], request.match_info["id"])
    return redirect("/ui/subscriptions", notice="test")


# ---- deliveries and events ----------------------------------------------------------------


async def retry_delivery(request: web.Request) -> web.Response:
    delivery_id = request.match_info["id"]
    try:
        await deliveries.retry_delivery(request.config_dict[POOL], delivery_id)
    except Conflict:
        return redirect("/ui/deliveries", notice="busy")
    return redirect("/ui/deliveries", notice="retried")


def _bulk_filters(form: Any) -> dict[str, Any]:
    return {
        "subscription_id": _field(form, "subscription_id", 100),
        "since": parse_time(_field(form, "since", 40), "since"),
        "until": parse_time(_field(form, "until", 40), "until"),
    }


async def retry_preview(request: web.Request) -> web.Response:
    """Step one of "retry all failed since T": say how many, and ask to confirm."""
    form = await _form(request)
    filters = _bulk_filters(form)
    count = await data.count_failed(request.config_dict[POOL], **filters)
    return render_page(
        request,
        "retry_confirm.html",
        {
            "count": count,
            "filters": filters,
            "form": {k: _field(form, k, 100) or "" for k in ("subscription_id", "since", "until")},
            "page": "deliveries",
        },
    )


async def retry_all(request: web.Request) -> web.Response:
    filters = _bulk_filters(await _form(request))
    queued = await deliveries.retry_failed(request.config_dict[POOL], **filters)
    log.info("console_bulk_retry", queued=queued)
    return redirect("/ui/deliveries", notice="bulk", n=queued)


async def replay_event(request: web.Request) -> web.Response:
    event_id = request.match_info["id"]
    queued = await fanout.replay_event(request.config_dict[POOL], event_id)
    return redirect(f"/ui/events/{event_id}", notice="replayed", n=queued)
