"""What Dext puts in front of the contract's handlers: its part of the shared edge.

`relay.sandbox.edge.play` runs the order; Dext's parts: the api token is found from the
/authenticate body or the session, `consume_budget` faults spend the token's window, the
request is counted in its token's fixed window and refused with 429 when over the limit
(before the faults play), `session_expired` and `processing_error` faults answer in the
contract's envelope, then the token and session are checked, and the answer is drifted.
Requests without a known token count against nothing and carry no rate-limit headers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from relay.sandbox.control import PREFIX as CONTROL_PREFIX
from relay.sandbox.dext.access import Session, Token
from relay.sandbox.dext.contract import TOKEN, ApiError
from relay.sandbox.dext.state import SANDBOX, Sandbox
from relay.sandbox.edge import Dropped, drop, play
from relay.sandbox.faults import Fault

log = structlog.get_logger("relay.sandbox")
_EDGE_HTML: Final = (
    "<html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}"
    "</h1></center><hr><center>cloudfront</center></body></html>"
)
_REASONS: Final = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class Caller:
    token: Token | None = None
    session: Session | None = None
    auth_error: ApiError | None = None


def _identify(sandbox: Sandbox, request: web.Request, body: bytes | None) -> Caller:
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
        return Caller(token)
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <session_token>")
    session = access.sessions.get(credential.strip())
    if session is None:
        raise ApiError(401, "session_expired", "unknown or expired session; authenticate again")
    return Caller(session.token, session)


def _rate_limited(token: Token, reset: float) -> tuple[web.Response, dict[str, str]]:
    """The 429 answer, with Retry-After on every other one (the contract's "sometimes")."""
    token.rejections += 1
    error = ApiError(429, "rate_limit_exceeded", f"over {token.rate_limit} requests in this window")
    headers = {}
    if token.rejections % 2 == 1:
        headers["Retry-After"] = str(max(1, math.ceil(reset - time.time())))
    return error.response(), headers


class DextGate:
    """Dext's part of the shared edge (`relay.sandbox.edge.Gate`) for one request."""

    def __init__(self, sandbox: Sandbox, entry: dict[str, Any]) -> None:
        self.sandbox = sandbox
        self.faults = sandbox.faults
        self.entry = entry

    def identify(self, request: web.Request, body: bytes | None) -> Caller:
        try:
            return _identify(self.sandbox, request, body)
        except ApiError as exc:
            return Caller(auth_error=exc)

    def count(
        self, caller: Caller, fired: list[Fault]
    ) -> tuple[dict[str, str], web.Response | None]:
        access = self.sandbox.access
        for fault in fired:
            if fault.kind == "consume_budget":
                access.consume(caller.token or self.sandbox.token, fault.amount, time.time())
        if caller.token is None:
            return {}, None
        quota = access.count(caller.token, time.time())
        headers = quota.headers()
        self.entry.update(
            token_id=caller.token.token_id,
            window_start=quota.window_start,
            window_count=quota.count,
        )
        if quota.exceeded:
            response, extra = _rate_limited(caller.token, quota.reset)
            return {**headers, **extra}, response
        return headers, None

    def edge_page(self, status: int) -> web.Response:
        text = _EDGE_HTML.format(status=status, reason=_REASONS[status])
        return web.Response(text=text, status=status, content_type="text/html")

    def fault_answer(self, kind: str) -> web.Response | None:
        if kind == "session_expired":
            return ApiError(401, "session_expired", "session expired").response()
        if kind == "processing_error":
            return ApiError(500, "processing_error", "processing failed").response()
        return None

    def admit(self, request: web.Request, caller: Caller) -> web.Response | None:
        if caller.auth_error is not None:
            return caller.auth_error.response()
        assert caller.token is not None
        if caller.token.revoked:
            return ApiError(401, "invalid_token", "the api token was revoked").response()
        if caller.session is not None and caller.session.expires_at <= time.time():
            return ApiError(401, "session_expired", "session expired").response()
        request[TOKEN] = caller.token
        return None

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            answer = await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            # aiohttp's own 404/405: answered in the contract's envelope.
            code = "not_found" if exc.status == 404 else "validation_error"
            return ApiError(exc.status, code, exc.reason).response()
        drift = self.sandbox.drift
        path = request.path
        if answer.status == 200 and isinstance(answer, web.Response) and drift.applies(path):
            assert isinstance(answer.body, bytes)
            drifted = drift.apply(path, orjson.loads(answer.body))
            return web.Response(
                body=orjson.dumps(drifted), status=200, content_type="application/json"
            )
        return answer


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
    body = await request.read() if request.path == "/authenticate" else None
    try:
        outcome = await play(request, handler, DextGate(sandbox, entry), request.path, body)
    except ApiError as exc:
        response: web.StreamResponse = exc.response()
        headers: dict[str, str] = {}
    except Dropped as exc:
        entry["fault"], entry["status"] = exc.faults, 0
        sandbox.access.record(entry)
        return drop(request)
    else:
        response, headers = outcome.response, outcome.headers
        entry["fault"] = outcome.faults
    response.headers.update(headers)
    entry["status"] = response.status
    sandbox.access.record(entry)
    log.debug("sandbox_request", path=request.path, status=response.status)
    return response
