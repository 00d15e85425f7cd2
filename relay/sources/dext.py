"""The Dext connector: authenticated, rate-limited, retrying calls that return checked JSON.

    client = DextClient(base_url, api_token, session=http, limiter=limiter)
    async for cost in (costs := client.iter_costs(client_id)):
        ...
    costs.complete   # every page agreed on the total and every item was seen once

What each failure becomes (all are `relay.errors.UpstreamError`):

- `invalid_token` (on /authenticate or any call): `UpstreamAuthError(code="invalid_token")` at
  once, no retry, and every later call of this client raises it without a request (no retry
  storm); build a new client when the token is replaced.
- `session_expired` (or any other 401): authenticate again and repeat the call once.
- 403 `UpstreamForbidden`, 404 `UpstreamNotFound`, other 4xx `UpstreamError`.
- 429: the limiter is told (every process sharing the token waits for the reset), then the call
  is repeated, at most `max_throttled` times, then `UpstreamRateLimited`.
- 500/502/503/504, timeouts, dropped connections: capped exponential backoff with jitter, at most
  `max_retries` retries, then `UpstreamUnavailable`.
- Malformed JSON, a page without its `data` list or `pagination`: `UpstreamProtocolError` for
  that call, with `detail` naming the first problem. A list item Relay cannot use (not an
  object, no id, a field it depends on of an impossible type) is set aside instead: the page
  comes back without it (`Page.set_aside`) and `set_aside`, the client's tally, counts it. A
  single object (`connections`, one item) that cannot be used is counted there too and is an
  `UpstreamProtocolError` for its call. Fields Relay does not depend on are never checked.

Every attempt, /authenticate included, first takes a slot from the shared `RateLimiter` and
feeds the response's rate-limit headers back to it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypedDict, Unpack
from urllib.parse import quote

import aiohttp
import orjson
import structlog

from relay.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from relay.sources import models
from relay.sources.models import (
    Check,
    CountingMetrics,
    ItemIterator,
    JsonObject,
    Page,
    SetAside,
    SetAsideTally,
    UpstreamMetrics,
)
from relay.sources.ratelimit import RateLimiter, RateLimitState

log = structlog.get_logger("relay.sources.dext")

RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
MAX_PER_PAGE = 100
MAX_ITEMS_PER_PAGE = 50  # /costs and /sales: their objects are large
# Each list endpoint: the check of its objects and its largest page.
_LISTS: dict[str, tuple[Check, int]] = {
    "/clients": (models.CLIENT, MAX_PER_PAGE),
    "/documents": (models.DOCUMENT, MAX_PER_PAGE),
    "/costs": (models.FULL_DOCUMENT, MAX_ITEMS_PER_PAGE),
    "/sales": (models.FULL_DOCUMENT, MAX_ITEMS_PER_PAGE),
    "/suppliers": (models.SUPPLIER, MAX_PER_PAGE),
    "/expense_reports": (models.EXPENSE_REPORT, MAX_PER_PAGE),
}


class DocumentFilters(TypedDict, total=False):
    """Filters of /documents, /costs and /sales (dates are document dates)."""

    status: str
    supplier: str  # partial name
    date_from: str | date
    date_to: str | date
    category: str  # code
    workspace: str  # costs | sales (only /documents)


@dataclass(frozen=True)
class _Session:
    token: str = field(repr=False)
    refresh_at: float  # unix seconds: re-authenticate before using it after this


class DextClient:
    """One Dext API token's view of the practice; safe to share between concurrent tasks.

    `session` is the process's shared aiohttp session (see `relay.http`); `limiter` the token's
    shared budget. `timeout` bounds each attempt; `limiter_wait` bounds each wait for a slot
    (then `UpstreamRateLimited`). Concurrent calls share one session token and authenticate
    one at a time.
    """

    def __init__(
        self,
        base_url: str,
        api_token: str,
        *,
        session: aiohttp.ClientSession,
        limiter: RateLimiter,
        timeout: float = 30.0,
        max_retries: int = 4,
        max_throttled: int = 5,
        backoff: float = 0.5,
        backoff_cap: float = 16.0,
        limiter_wait: float | None = 600.0,
        metrics: UpstreamMetrics | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_token = api_token
        self._http = session
        self.limiter = limiter
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_retries = max_retries
        self.max_throttled = max_throttled
        self._backoff = backoff
        self._backoff_cap = backoff_cap
        self._limiter_wait = limiter_wait
        self.metrics: UpstreamMetrics = metrics or CountingMetrics()
        self._session: _Session | None = None
        self._auth_lock = asyncio.Lock()
        self._auth_failure: tuple[str, str] | None = None  # (code, url) once the token is refused
        # Objects set aside since the poller last drained it (see SetAsideTally).
        self.set_aside = SetAsideTally()

    def __repr__(self) -> str:
        return f"DextClient({self.base_url!r}, token_id={self.limiter.token_id!r})"

    # -- practice level -----------------------------------------------------------------

    async def clients(self, *, page: int = 1, per_page: int = MAX_PER_PAGE) -> Page:
        """One page of the practice's clients (health_score, alert_level ...)."""
        return await self._page("/clients", {}, page, per_page)

    def iter_clients(self, *, per_page: int = MAX_PER_PAGE) -> ItemIterator:
        return self._iter("/clients", {}, per_page)

    async def connections(self, client_id: str) -> JsonObject:
        """The client's integrations: `main`, `additional`, default integrations."""
        body = await self._get("/connections", {"client_id": client_id}, "connections")
        return self._checked_object("/connections", _unwrap(body), models.CONNECTIONS)

    # -- documents ------------------------------------------------------------------------

    async def documents(
        self,
        client_id: str,
        *,
        page: int = 1,
        per_page: int = MAX_PER_PAGE,
        **filters: Unpack[DocumentFilters],
    ) -> Page:
        """One page of document summaries of both workspaces, newest first."""
        return await self._page("/documents", _document_params(client_id, filters), page, per_page)

    def iter_documents(
        self, client_id: str, *, per_page: int = MAX_PER_PAGE, **filters: Unpack[DocumentFilters]
    ) -> ItemIterator:
        return self._iter("/documents", _document_params(client_id, filters), per_page)

    async def costs(
        self,
        client_id: str,
        *,
        page: int = 1,
        per_page: int = MAX_ITEMS_PER_PAGE,
        **filters: Unpack[DocumentFilters],
    ) -> Page:
        """One page of full cost items (supplier, category, tax_rate, publish, approval ...)."""
        return await self._page("/costs", _document_params(client_id, filters), page, per_page)

    def iter_costs(
        self,
        client_id: str,
        *,
        per_page: int = MAX_ITEMS_PER_PAGE,
        **filters: Unpack[DocumentFilters],
    ) -> ItemIterator:
        return self._iter("/costs", _document_params(client_id, filters), per_page)

    async def sales(
        self,
        client_id: str,
        *,
        page: int = 1,
        per_page: int = MAX_ITEMS_PER_PAGE,
        **filters: Unpack[DocumentFilters],
    ) -> Page:
        """One page of full sales items (with `customer` where costs have `supplier`)."""
        return await self._page("/sales", _document_params(client_id, filters), page, per_page)

    def iter_sales(
        self,
        client_id: str,
        *,
        per_page: int = MAX_ITEMS_PER_PAGE,
        **filters: Unpack[DocumentFilters],
    ) -> ItemIterator:
        return self._iter("/sales", _document_params(client_id, filters), per_page)

    async def cost(self, item_id: str) -> JsonObject:
        """One full cost item; UpstreamNotFound when it is gone."""
        return await self._item("/costs", item_id)

    async def sale(self, item_id: str) -> JsonObject:
        """One full sales item; UpstreamNotFound when it is gone."""
        return await self._item("/sales", item_id)

    # -- suppliers and expense reports ------------------------------------------------------

    async def suppliers(
        self, client_id: str, *, page: int = 1, per_page: int = MAX_PER_PAGE
    ) -> Page:
        return await self._page("/suppliers", {"client_id": client_id}, page, per_page)

    def iter_suppliers(self, client_id: str, *, per_page: int = MAX_PER_PAGE) -> ItemIterator:
        return self._iter("/suppliers", {"client_id": client_id}, per_page)

    async def expense_reports(
        self, client_id: str, *, page: int = 1, per_page: int = MAX_PER_PAGE
    ) -> Page:
        return await self._page("/expense_reports", {"client_id": client_id}, page, per_page)

    def iter_expense_reports(self, client_id: str, *, per_page: int = MAX_PER_PAGE) -> ItemIterator:
        return self._iter("/expense_reports", {"client_id": client_id}, per_page)

    # -- writes -----------------------------------------------------------------------------

    async def create_document(
        self,
        client_id: str,
        *,
        workspace: str,
        type: str,
        filename: str,
        content: bytes,
        supplier_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> JsonObject:
        """Upload a document (status `processing`). Retries reuse one Idempotency-Key, so a
        retried upload is never a duplicate; pass your own key to make it safe across calls."""
        body: JsonObject = {
            "workspace": workspace,
            "type": type,
            "filename": filename,
            "content_base64": base64.b64encode(content).decode(),
        }
        if supplier_name is not None:
            body["supplier_name"] = supplier_name
        key = idempotency_key or str(uuid.uuid4())
        raw = await self._send(
            "POST",
            "/create_document",
            endpoint="create_document",
            params={"client_id": client_id},
            json_body=body,
            headers={"Idempotency-Key": key},
        )
        document = _unwrap(self._decode("/create_document", 201, raw))
        return self._checked_object("/create_document", document, models.DOCUMENT)

    async def authenticate(self) -> None:
        """Open a new session now (checks the token; UpstreamAuthError when it is refused)."""
        async with self._auth_lock:
            self._session = await self._authenticate()

    async def rate_limit_state(self) -> RateLimitState:
        return await self.limiter.state()

    # -- machinery ----------------------------------------------------------------------------

    def _iter(self, path: str, params: dict[str, str], per_page: int) -> ItemIterator:
        return ItemIterator(lambda page: self._page(path, params, page, per_page))

    async def _item(self, collection: str, item_id: str) -> JsonObject:
        path = f"{collection}/{quote(item_id, safe='')}"
        body = await self._get(path, {}, f"{collection.strip('/')}/{{id}}")
        return self._checked_object(path, _unwrap(body), models.FULL_DOCUMENT)

    async def _page(self, path: str, params: dict[str, str], page: int, per_page: int) -> Page:
        check, max_per_page = _LISTS[path]
        if page < 1 or not 1 <= per_page <= max_per_page:
            raise ValueError(f"{path}: page must be >= 1 and per_page 1..{max_per_page}")
        query = {**params, "page": str(page), "per_page": str(per_page)}
        body = await self._get(path, query, path.strip("/"))
        if not isinstance(body, dict):
            raise self._protocol_error(path, "expected an object with data and pagination")
        data, pagination = body.get("data"), body.get("pagination")
        if not isinstance(data, list):
            raise self._protocol_error(path, f"data: expected a list, got {type(data).__name__}")
        if problem := models.PAGINATION(pagination):
            raise self._protocol_error(path, f"pagination: {problem}")
        items: list[JsonObject] = []
        set_aside: list[SetAside] = []
        for index, item in enumerate(data):
            if unusable := self._unusable(f"{path} page {page} item {index}", item, check):
                set_aside.append(unusable)
            else:
                items.append(item)
        assert isinstance(pagination, dict)
        return Page(
            items=items,
            page=pagination["page"],
            per_page=pagination["per_page"],
            total=pagination["total"],
            total_pages=pagination["total_pages"],
            set_aside=tuple(set_aside),
        )

    def _unusable(
        self, where: str, item: Any, check: Check, *, has_id: bool = True
    ) -> SetAside | None:
        """None when `item` passes `check`; else the SetAside it becomes (and is counted as).

        The reason names where the object was, its id and the first problem, never another
        value: upstream text can hold anything, and the reason is shown on the account."""
        problem = check(item)
        if problem is None:
            return None
        if not isinstance(item, dict):
            kind, reason = "not_an_object", f"{where}: {problem}"
        elif has_id and (id_problem := models.ID(item.get("id"))) is not None:
            kind, reason = "missing_id", f"{where}: id: {id_problem}"
        else:
            ident = f" (id {str(item.get('id'))[:64]})" if has_id else ""
            kind, reason = "unusable_field", f"{where}{ident}: {problem}"
        found = SetAside(kind, reason)
        self.set_aside.add(found)
        log.debug("object_set_aside", base_url=self.base_url, kind=kind, reason=reason)
        return found

    def _checked_object(
        self, path: str, body: Any, check: Check, *, upstream_object: bool = True
    ) -> JsonObject:
        """`body` when it passes `check`; else an UpstreamProtocolError for the call, and an
        upstream object (not a session answer) is counted as set aside."""
        if upstream_object:
            unusable = self._unusable(path, body, check, has_id=check is not models.CONNECTIONS)
            if unusable is not None:
                raise self._protocol_error(path, unusable.reason.removeprefix(f"{path}: "))
        elif problem := check(body):
            raise self._protocol_error(path, problem)
        assert isinstance(body, dict)
        return body

    async def _get(self, path: str, params: dict[str, str], endpoint: str) -> Any:
        raw = await self._send("GET", path, endpoint=endpoint, params=params)
        return self._decode(path, 200, raw)

    def _decode(self, path: str, status: int, raw: bytes) -> Any:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise self._protocol_error(path, f"malformed JSON: {exc}", status=status) from exc

    def _protocol_error(
        self, path: str, detail: str, *, status: int | None = 200
    ) -> UpstreamProtocolError:
        url = f"{self.base_url}{path}"
        log.warning("upstream_protocol_error", url=url, status=status, detail=detail)
        self.metrics.count("protocol_error")
        return UpstreamProtocolError(
            f"{path} broke the Dext contract: {detail}", url=url, status=status, detail=detail
        )

    async def _session_token(self) -> str:
        self._raise_if_refused()
        session = self._session
        if session is None or time.time() >= session.refresh_at:
            async with self._auth_lock:
                self._raise_if_refused()
                session = self._session
                if session is None or time.time() >= session.refresh_at:
                    session = self._session = await self._authenticate()
        return session.token

    async def _authenticate(self) -> _Session:
        raw = await self._send(
            "POST",
            "/authenticate",
            endpoint="authenticate",
            json_body={"api_token": self._api_token},
            authenticated=False,
        )
        body = self._checked_object(
            "/authenticate",
            self._decode("/authenticate", 200, raw),
            models.SESSION,
            upstream_object=False,
        )
        now = time.time()
        ttl = 3000.0  # the contract promises 60 minutes; assume a bit less without expires_at
        if isinstance(body.get("expires_at"), str):
            with contextlib.suppress(ValueError):
                told = datetime.fromisoformat(body["expires_at"]).timestamp() - now
                # A clock far off ours would make every call re-authenticate: ignore it then.
                ttl = told if 0 < told <= 86400 else ttl
        log.info("upstream_authenticated", base_url=self.base_url, ttl=round(ttl, 1))
        # Renew a little before expiry so a long scan does not hit session_expired mid-page.
        return _Session(token=body["session_token"], refresh_at=now + ttl - min(60.0, ttl / 10))

    def _raise_if_refused(self) -> None:
        if self._auth_failure is not None:
            code, url = self._auth_failure
            raise UpstreamAuthError(f"Dext refused the API token ({code})", url=url, code=code)

    def _drop_session(self, token: str | None) -> None:
        if self._session is not None and self._session.token == token:
            self._session = None

    async def _send(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        params: Mapping[str, str] | None = None,
        json_body: JsonObject | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
    ) -> bytes:
        """The body of the first 2xx answer, after re-authentication, waits and retries."""
        url = f"{self.base_url}{path}"
        failures = throttled = 0
        reauthenticated = False
        while True:
            request_headers = dict(headers or {})
            token = None
            if authenticated:
                token = await self._session_token()
                request_headers["Authorization"] = f"Bearer {token}"
            await self._acquire(url)
            started = time.monotonic()
            try:
                async with self._http.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=request_headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as response:
                    raw = await response.read()
                    status = response.status
                    feedback = await self.limiter.observe(status, response.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.metrics.request_done(endpoint, None, time.monotonic() - started)
                failures += 1
                reason = type(exc).__name__
                if failures > self.max_retries:
                    log.warning("upstream_unavailable", url=url, reason=reason, attempts=failures)
                    raise UpstreamUnavailable(
                        f"{method} {path} failed {failures} times ({reason})", url=url
                    ) from exc
                await self._pause(url, failures, reason)
                continue
            elapsed = time.monotonic() - started
            self.metrics.request_done(endpoint, status, elapsed)
            log.debug(
                "upstream_request", method=method, path=path, status=status, ms=int(elapsed * 1000)
            )
            if 200 <= status < 300:
                return raw
            code = _error_code(raw)
            if status == 401 and authenticated and code != "invalid_token" and not reauthenticated:
                # Sessions expire (and a restarted upstream forgets them): one fresh session,
                # one repeat; a second refusal is not a session problem.
                reauthenticated = True
                self._drop_session(token)
                self.metrics.count("reauthenticated")
                log.info("upstream_session_expired", url=url, code=code)
                continue
            if status == 401:
                raise self._refused(url, code or "unauthorized")
            if status == 403:
                raise UpstreamForbidden(f"{method} {path}: access forbidden", url=url, status=403)
            if status == 404:
                raise UpstreamNotFound(f"{method} {path}: not found", url=url, status=404)
            if status == 429:
                throttled += 1
                self.metrics.count("throttled")
                if throttled > self.max_throttled:
                    retry_after = feedback.retry_after or 0.0
                    raise UpstreamRateLimited(
                        f"{method} {path} still rate limited after {throttled} tries",
                        url=url,
                        retry_after=retry_after,
                    )
                log.info("upstream_retry", url=url, reason="rate_limited", attempt=throttled)
                if feedback.retry_after is None and feedback.reset is None:
                    await asyncio.sleep(self._delay(throttled))  # no hint: do not hammer
                continue  # the limiter now holds every process until the window resets
            if status in RETRYABLE_STATUSES:
                failures += 1
                if failures > self.max_retries:
                    log.warning("upstream_unavailable", url=url, status=status, attempts=failures)
                    raise UpstreamUnavailable(
                        f"{method} {path} answered {status} {failures} times",
                        url=url,
                        status=status,
                    )
                await self._pause(url, failures, f"http_{status}")
                continue
            raise UpstreamError(f"{method} {path} answered {status} {code}", url=url, status=status)

    async def _acquire(self, url: str) -> None:
        try:
            await self.limiter.acquire(max_wait=self._limiter_wait)
        except TimeoutError:
            raise UpstreamRateLimited(
                f"no rate-limit slot within {self._limiter_wait} s",
                url=url,
                retry_after=self._limiter_wait or 0.0,
            ) from None

    def _delay(self, attempt: int) -> float:
        ceiling = min(self._backoff_cap, self._backoff * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _pause(self, url: str, attempt: int, reason: str) -> None:
        delay = self._delay(attempt)
        self.metrics.count("retry")
        log.info("upstream_retry", url=url, reason=reason, attempt=attempt, delay=round(delay, 3))
        await asyncio.sleep(delay)

    def _refused(self, url: str, code: str) -> UpstreamAuthError:
        self.metrics.count("auth_failed")
        log.warning("upstream_auth_failed", url=url, code=code, token_id=self.limiter.token_id)
        if code == "invalid_token":
            self._auth_failure = (code, url)
            self._session = None
        return UpstreamAuthError(f"Dext refused the API token ({code})", url=url, code=code)


def _document_params(client_id: str, filters: DocumentFilters) -> dict[str, str]:
    params = {"client_id": client_id}
    for key, value in filters.items():
        if value is not None:
            params[key] = value.isoformat() if isinstance(value, date) else str(value)
    return params


def _unwrap(body: Any) -> Any:
    """A single object, whether sent bare or as `{"data": {...}}`."""
    if isinstance(body, dict) and body.keys() == {"data"} and isinstance(body["data"], dict):
        return body["data"]
    return body


def _error_code(raw: bytes) -> str | None:
    """The `error.code` of a JSON error envelope, or None (HTML from the edge, garbage)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        return code if isinstance(code, str) else None
    return None


__all__ = [
    "CountingMetrics",
    "DextClient",
    "DocumentFilters",
    "ItemIterator",
    "Page",
    "UpstreamMetrics",
]
