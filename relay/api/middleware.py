"""The admin API's two middlewares: errors into one JSON envelope, and bearer-token auth."""

from __future__ import annotations

import hmac
import time
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter, Histogram

from relay.api.keys import SETTINGS
from relay.api.routing import json_response
from relay.db import store_outage
from relay.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable

log = structlog.get_logger("relay.api")

REQUESTS = Counter(
    "relay_api_requests_total", "Admin API requests answered", ["method", "route", "status"]
)
LATENCY = Histogram("relay_api_request_seconds", "Admin API request latency", ["route"])

# aiohttp's own HTTP errors (unknown route, wrong method, body too large) keep their status and
# get a stable code instead of aiohttp's HTML/plain-text body.
# Seconds a client is asked to wait when a store is unreachable: a restart takes about that long,
# and `/readyz` tells load balancers meanwhile.
RETRY_AFTER_SECONDS = 5
_STORE_NAMES = {"Postgres": "the database (Postgres)", "Redis": "Redis"}

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(
    status: int, code: str, message: str, *, field: str | None = None
) -> web.Response:
    error: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return json_response({"error": error}, status=status)


def unavailable_response(service: str) -> web.Response:
    """503 `service_unavailable` with `Retry-After`: a store failed under the request; the
    client should try again once it is back (`/readyz` says when)."""
    name = _STORE_NAMES.get(service, service)
    response = error_response(
        503, "service_unavailable", f"{name} is unreachable; retry in {RETRY_AFTER_SECONDS} s"
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _route_name(request: web.Request) -> str:
    # The route template, not the concrete path, so metric labels stay few.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    status = exc.status
    code = _HTTP_CODES.get(status, HTTPStatus(status).phrase.lower().replace(" ", "_"))
    if status == 404:
        message = "no such route"
    elif status == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"method not allowed; this route allows {allowed}"
    elif status == 413:
        message = "request body is too large"
    else:
        message = exc.text or exc.reason
    response = error_response(status, code, message)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn Relay's typed errors and aiohttp's HTTP errors into `{"error": {code, message}}`.

    A store that cannot be reached (Postgres or Redis down or restarting) is a 503 with
    `Retry-After`, logged once per request as `api_service_unavailable` without a traceback.
    Anything else unexpected is logged as `api_error` and answered with a 500 that carries no
    detail: such a 5xx is a bug, and its traceback belongs in the log, not in the response.
    """
    started = time.perf_counter()
    try:
        response = await handler(request)
    except InvalidInput as exc:
        response = error_response(400, "invalid_request", str(exc), field=exc.field)
    except NotFound as exc:
        response = error_response(404, "not_found", str(exc))
    except Conflict as exc:
        response = error_response(409, "conflict", str(exc))
    except ServiceUnavailable as exc:
        log.warning("api_service_unavailable", service=exc.service, reason=exc.reason)
        response = unavailable_response(exc.service)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and 2xx raised as exceptions pass through untouched
        response = _from_http_exception(exc)
    except Exception as exc:
        service = store_outage(exc)
        if service is None:
            log.exception("api_error", method=request.method, path=request.path)
            response = error_response(500, "internal_error", "internal error; see the server log")
        else:
            log.warning(
                "api_service_unavailable",
                service=service,
                path=request.path,
                reason=f"{type(exc).__name__}: {exc}".splitlines()[0],
            )
            response = unavailable_response(service)
    elapsed = time.perf_counter() - started
    route = _route_name(request)
    REQUESTS.labels(request.method, route, str(response.status)).inc()
    LATENCY.labels(route).observe(elapsed)
    log.info(
        "api_request",
        method=request.method,
        path=request.path,
        status=response.status,
        duration_ms=round(elapsed * 1000, 2),
    )
    return response


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require `Authorization: Bearer $RELAY_ADMIN_TOKEN` on everything under `/v1`.

    The comparison is constant-time so response timing reveals nothing about the token; with no
    token configured every `/v1` request is refused (fail closed).
    """
    if request.path == "/v1" or request.path.startswith("/v1/"):
        expected = request.app[SETTINGS].admin_token
        given = _bearer(request)
        if (
            expected is None
            or given is None
            or not hmac.compare_digest(given.encode(errors="surrogateescape"), expected.encode())
        ):
            log.warning("admin_auth_failed", remote=request.remote, path=request.path)
            response = error_response(
                401, "unauthorized", "missing or wrong `Authorization: Bearer` admin token"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
    return await handler(request)
