"""What stands in front of the contract's handlers: auth, the rate limit, faults, the request log.

Order for every contract request: find the api token (from the /authenticate body or the
session), fire the armed faults, count the request in its token's window (every request of a
known token counts, whatever happens next), refuse with 429 when over the limit, then play the
faults, then check the session, then run the handler and spoil its answer if a fault says so.
Requests without a known token count against nothing and carry no rate-limit headers.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Final

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from relay.sandbox.dext.access import Session, Token
from relay.sandbox.dext.contract import TOKEN, ApiError
from relay.sandbox.dext.state import SANDBOX, Sandbox
from relay.sandbox.faults import AFTER, BEFORE, Fault

log = structlog.get_logger("relay.sandbox")
CONTROL_PREFIX: Final = "/_sandbox"
_EDGE_HTML: Final = (
    "<html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}"
    "</h1></center><hr><center>cloudfront</center></body></html>"
)
_TERMINAL: Final = ("502", "503", "drop", "session_expired", "processing_error")


class Dropped(Exception):
    """The connection was closed on purpose; there is no response to send."""


def _identify(
    sandbox: Sandbox, request: web.Request, body: bytes | None
) -> tuple[Token | None, Session | None]:
    access = sandbox.access
    if body is not None:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "validation_error", "body must be JSON") from None
        value = parsed.get("api_token") if isinstance(parsed, dict) else None
        if not isinstance(value, str) or not value:
            raise ApiError(400, "validation_error", "api_token is required")
        mfa = parsed.get("mfa_code")
        if mfa is not None and not isinstance(mfa, str):
            raise ApiError(400, "validation_error", "mfa_code must be a string")
        token = access.tokens.get(value)
        if token is None:
            raise ApiError(401, "invalid_token", "unknown api token")
        return token, None
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <session_token>")
    session = access.sessions.get(credential.strip())
    if session is None:
        raise ApiError(401, "session_expired", "unknown or expired session; authenticate again")
    return session.token, session


def _rate_limited(token: Token, reset: int) -> tuple[web.Response, dict[str, str]]:
    """The 429 answer, with Retry-After on every other one (the contract's "sometimes")."""
    token.rejections += 1
    error = ApiError(429, "rate_limit_exceeded", f"over {token.rate_limit} requests in this window")
    headers = {}
    if token.rejections % 2 == 1:
        headers["Retry-After"] = str(max(1, math.ceil(reset - time.time())))
    return error.response(), headers


def _edge_page(status: int) -> web.Response:
    reason = "Bad Gateway" if status == 502 else "Service Unavailable"
    text = _EDGE_HTML.format(status=status, reason=reason)
    return web.Response(text=text, status=status, content_type="text/html")


def _spoil(response: web.Response, faults: list[Fault]) -> web.Response:
    """Apply the answer-spoiling faults to a successful JSON answer."""
    assert isinstance(response.body, bytes)
    body = response.body
    for fault in faults:
        if fault.kind == "malformed_json":
            body = body[: max(1, len(body) // 2)]
            continue
        data = orjson.loads(body)
        objects = data["data"] if isinstance(data, dict) and "data" in data else [data]
        for obj in objects:
            if not isinstance(obj, dict):
                continue
            if fault.kind == "extra_fields":
                obj["x_sandbox_unknown"] = {"note": "an unknown field; ignore it"}
                obj["x_sandbox_flag"] = True
            else:
                _wrong_types(obj)
        body = orjson.dumps(data)
    out = web.Response(body=body, status=response.status, content_type="application/json")
    return out


def _wrong_types(obj: dict[str, Any]) -> None:
    """Put a string where the contract promises an object (or a number)."""
    for key, value in obj.items():
        if isinstance(value, dict):
            obj[key] = f"<{key}>"
            return
    for key, value in obj.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            obj[key] = str(value)
            return


async def _serve(
    request: web.Request, handler: Handler, sandbox: Sandbox, entry: dict[str, Any]
) -> tuple[web.StreamResponse, dict[str, str]]:
    headers: dict[str, str] = {}
    body = await request.read() if request.path == "/authenticate" else None
    token: Token | None = None
    session: Session | None = None
    auth_error: ApiError | None = None
    try:
        token, session = _identify(sandbox, request, body)
    except ApiError as exc:
        auth_error = exc
    fired = sandbox.faults.fire(request.path, BEFORE)
    for fault in fired:
        if fault.kind == "consume_budget":
            sandbox.access.consume(token or sandbox.token, fault.amount, time.time())
    if token is not None:
        quota = sandbox.access.count(token, time.time())
        headers = quota.headers()
        entry.update(
            token_id=token.token_id, window_start=quota.window_start, window_count=quota.count
        )
        if quota.exceeded:
            response, extra = _rate_limited(token, quota.reset)
            return response, {**headers, **extra}
    entry["fault"] = ",".join(f.kind for f in fired) or None
    for fault in fired:
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
    terminal = next((f.kind for f in fired if f.kind in _TERMINAL), None)
    if terminal in ("502", "503"):
        return _edge_page(int(terminal or 0)), headers
    if terminal == "drop":
        raise Dropped
    if terminal == "session_expired":
        return ApiError(401, "session_expired", "session expired").response(), headers
    if terminal == "processing_error":
        return ApiError(500, "processing_error", "processing failed").response(), headers
    if auth_error is not None:
        return auth_error.response(), headers
    assert token is not None
    if token.revoked:
        return ApiError(401, "invalid_token", "the api token was revoked").response(), headers
    if session is not None and session.expires_at <= time.time():
        return ApiError(401, "session_expired", "session expired").response(), headers
    request[TOKEN] = token
    try:
        answer = await handler(request)
    except ApiError as exc:
        return exc.response(), headers
    except web.HTTPException as exc:
        # aiohttp's own 404/405: answered in the contract's envelope.
        code = "not_found" if exc.status == 404 else "validation_error"
        return ApiError(exc.status, code, exc.reason).response(), headers
    if (
        answer.status == 200
        and isinstance(answer, web.Response)
        and sandbox.drift.applies(request.path)
    ):
        assert isinstance(answer.body, bytes)
        drifted = sandbox.drift.apply(request.path, orjson.loads(answer.body))
        answer = web.Response(
            body=orjson.dumps(drifted), status=200, content_type="application/json"
        )
    if answer.status in (200, 201) and isinstance(answer, web.Response):
        spoilers = sandbox.faults.fire(request.path, AFTER)
        if spoilers:
            entry["fault"] = ",".join(f.kind for f in spoilers)
            return _spoil(answer, spoilers), headers
    return answer, headers


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    sandbox = request.app[SANDBOX]
    sandbox.sync()
    entry: dict[str, Any] = {
        "real_at": time.time(),
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "token_id": None,
        "status": None,
        "window_start": None,
        "window_count": None,
        "fault": None,
    }
    try:
        response, headers = await _serve(request, handler, sandbox, entry)
    except ApiError as exc:
        response, headers = exc.response(), {}
    except Dropped:
        entry["status"] = 0
        sandbox.access.record(entry)
        # Close the connection without a byte of response; aiohttp then finds nothing to write
        # to and treats it as a premature disconnection (quietly).
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)
    response.headers.update(headers)
    entry["status"] = response.status
    sandbox.access.record(entry)
    log.debug("sandbox_request", path=request.path, status=response.status)
    return response
