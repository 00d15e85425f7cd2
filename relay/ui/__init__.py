"""The operator console: a web UI at `/ui/` served by `relay api` itself.

Server-rendered Jinja2 templates (autoescaping on, so upstream and endpoint text is always
text) with one small script of our own for the live parts; no CDN, no inline script, no build
step. It sits beside the admin API, on top of the pipeline: like the API it may import the
foundation and every stage before it (`sources`, `poller`, `snapshots`, `events`, `delivery`),
reading through each table's owner (its own `console_sessions` live in `auth`), and
`relay.api`'s keys and stream; it never imports `cli`, `sandbox` or `workers`, and nothing
imports it but the app factory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from relay.api.keys import POOL
from relay.errors import Conflict, InvalidInput, NotFound
from relay.ui import actions, auth, pages
from relay.ui.render import FILTERS, error_page

log = structlog.get_logger("relay.ui")

_PUBLIC = ("/ui/login", "/ui/static/")
_ID = "{id:[a-z]+_[^/]*}"


def _headers(response: web.StreamResponse, request: web.Request) -> None:
    response.headers.update(auth.SECURITY_HEADERS)
    if not request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "no-store"


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sessions, CSRF and security headers for every console response; errors as pages."""
    try:
        if not request.path.startswith(_PUBLIC):
            session = await auth.find_session(
                request.config_dict[POOL], request.cookies.get(auth.COOKIE)
            )
            if session is None:
                if request.method == "GET" and "fragment" not in request.query:
                    response: web.StreamResponse = actions.redirect("/ui/login")
                else:
                    response = error_page(request, 401, NOTICE_EXPIRED)
                _headers(response, request)
                return response
            request[auth.SESSION] = session
            if request.method == "POST":
                form = await request.post()
                if not auth.same_site(request) or not auth.csrf_ok(session, form):
                    log.warning("console_csrf_refused", remote=request.remote, path=request.path)
                    response = actions._refused(request)
                    _headers(response, request)
                    return response
        response = await handler(request)
    except InvalidInput as exc:
        response = error_page(request, 400, str(exc))
    except NotFound as exc:
        response = error_page(request, 404, str(exc))
    except Conflict as exc:
        response = error_page(request, 409, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_page(request, exc.status, exc.reason)
    if not response.prepared:  # a stream has sent its headers already
        _headers(response, request)
    return response


NOTICE_EXPIRED = "Your session has ended. Reload the page to sign in again."


async def _to_console(request: web.Request) -> web.Response:
    return actions.redirect("/ui/")


def create_console() -> web.Application:
    """The console sub-app; mount it at `/ui` on the admin API app (`add_console`)."""
    console = web.Application(middlewares=[console_middleware])
    templates = Path(str(files("relay.ui") / "templates"))
    env = aiohttp_jinja2.setup(
        console,
        loader=jinja2.FileSystemLoader(templates),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(FILTERS)
    router = console.router
    router.add_get("/login", actions.login_page)
    router.add_post("/login", actions.login)
    router.add_post("/logout", actions.logout)
    router.add_get("/", pages.overview)
    router.add_get(f"/accounts/{_ID}", pages.account)
    router.add_post(f"/accounts/{_ID}/poll", actions.poll_account)
    router.add_post(f"/accounts/{_ID}/token", actions.replace_token)
    router.add_get("/subscriptions", pages.subscriptions_page)
    router.add_post(f"/subscriptions/{_ID}/{{action:enable|disable}}", actions.set_enabled)
    router.add_post(f"/subscriptions/{_ID}/rotate", actions.rotate_secret)
    router.add_post(f"/subscriptions/{_ID}/test", actions.send_test)
    router.add_get("/deliveries", pages.deliveries_page)
    router.add_post("/deliveries/retry/preview", actions.retry_preview)
    router.add_post("/deliveries/retry", actions.retry_all)
    router.add_post(f"/deliveries/{_ID}/retry", actions.retry_delivery)
    router.add_get("/events", pages.events_page)
    router.add_get(f"/events/{_ID}", pages.event_page)
    router.add_post(f"/events/{_ID}/replay", actions.replay_event)
    router.add_get("/stream", pages.stream)
    router.add_static("/static", Path(str(files("relay.ui") / "static")))
    return console


def add_console(app: web.Application) -> None:
    """Serve the console at `/ui/` (and send `/ui` there)."""
    app.router.add_get("/ui", _to_console)
    app.add_subapp("/ui", create_console())
