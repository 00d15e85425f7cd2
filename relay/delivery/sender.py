"""One HTTP attempt: the worker's shared session, the request, and what came back (bounded)."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from relay.delivery.signing import webhook_headers
from relay.delivery.slack import slack_message
from relay.delivery.targets import GuardedResolver, TargetRefused, check_target_host
from relay.http import parse_retry_after
from relay.settings import Settings

# Only this much of a response is read (and stored as its excerpt): an endless or huge body
# must neither hang a worker nor bloat the database.
EXCERPT_BYTES = 1024
USER_AGENT = "Relay-Webhooks/0.1 (+https://standardwebhooks.com)"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt did; `attempted` is False when nothing was sent (e.g. disabled)."""

    delivery_id: str
    at: datetime
    status_code: int | None = None
    latency_ms: int = 0
    error: str | None = None
    response_excerpt: str | None = None
    retry_after: float | None = None
    attempted: bool = True

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """The one ClientSession a worker process delivers with (open at startup, close at shutdown).

    Unless private targets are allowed, every name is resolved through `GuardedResolver`, so the
    SSRF check happens after DNS on every new connection.
    """
    connector = aiohttp.TCPConnector(
        limit=max(1, settings.delivery_concurrency),
        limit_per_host=0,
        resolver=None if settings.allow_private_targets else GuardedResolver(),
        ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=settings.delivery_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),  # one endpoint's cookies must not reach another
        headers={"user-agent": USER_AGENT},
        auto_decompress=False,  # the excerpt is for people; never inflate a compression bomb
        # and so never ask for compression: aiohttp's default `Accept-Encoding: gzip, deflate`
        # let an endpoint compress its answer into an unreadable excerpt.
        skip_auto_headers=("Accept-Encoding",),
    )


def request_body(
    kind: str,
    event_body: dict[str, Any],
    client_name: str | None = None,
    payload: bytes | None = None,
) -> bytes:
    """The bytes to send: the event itself for webhooks (or its provider's own format, stored
    with it as `payload`: InvoiceXT's), a Slack message for slack (which names the client by
    `client_name`, from its snapshot, where there is one)."""
    if kind == "slack":
        return orjson.dumps(slack_message(event_body, client_name))
    if payload is not None:
        return bytes(payload)
    return orjson.dumps(event_body)


def request_headers(kind: str, keys: list[bytes], event_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers, signed now; Slack gets JSON with no signature to check."""
    if kind == "slack":
        return {"content-type": "application/json"}
    return webhook_headers(keys, event_id, body)


@functools.lru_cache(maxsize=4096)
def _host_refusal(url: str) -> tuple[str, str] | None:
    """(host, reason) when the URL's host is refused; cached, as the verdict depends on the
    URL's text alone and parsing it is a good part of an attempt's own CPU."""
    host = urlsplit(url).hostname or ""
    try:
        check_target_host(host)
    except TargetRefused as exc:
        return exc.host, exc.reason
    return None


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> URL:
    """The parsed URL of a subscription's endpoint. aiohttp parses a URL given as text on every
    request: with 200 subscriptions that was a tenth of a worker's aiohttp CPU (py-spy on the
    users' shape, bench/delivery_shape.py); a `URL` it takes as it is."""
    return URL(url)


def _refusal(exc: BaseException) -> TargetRefused | None:
    """The SSRF refusal buried in an aiohttp connection error, if that is what it was."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, TargetRefused):
            return seen
        inner = getattr(seen, "os_error", None)
        if isinstance(inner, TargetRefused):
            return inner
        seen = seen.__cause__ or seen.__context__
    return None


async def _read_excerpt(response: aiohttp.ClientResponse) -> str:
    content = response.content
    if content.at_eof():
        return ""
    # The usual short answer ("ok", "{}") arrives whole with its headers: one read takes it.
    data = await content.read(EXCERPT_BYTES)
    if data and len(data) < EXCERPT_BYTES and not content.at_eof():
        chunks = [data]
        size = len(data)
        while size < EXCERPT_BYTES and not content.at_eof():
            chunk = await content.read(EXCERPT_BYTES - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    # Postgres text cannot hold NUL; an endpoint's bytes must not break the recording of them.
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


async def post(
    session: aiohttp.ClientSession,
    delivery_id: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    check_host: bool,
) -> AttemptResult:
    """POST once without following redirects; never raises for anything the target does."""
    at = datetime.now(UTC)
    started = time.perf_counter()
    status: int | None = None
    excerpt: str | None = None
    retry_after: float | None = None
    error: str | None = None
    try:
        if check_host:
            # aiohttp does not resolve literal IPs, so GuardedResolver never sees them.
            refusal = _host_refusal(url)
            if refusal is not None:
                raise TargetRefused(*refusal)
        async with session.post(
            _target(url), data=body, headers=headers, allow_redirects=False
        ) as resp:
            status = resp.status
            excerpt = await _read_excerpt(resp)
            if not resp.content.at_eof():
                resp.close()  # drop the connection rather than drain an endless body
            if not 200 <= status < 300:
                retry_after = parse_retry_after(resp.headers.get("retry-after"), now=at.timestamp())
                if 300 <= status < 400:
                    location = resp.headers.get("location", "")[:200]
                    error = f"HTTP {status}: redirect to {location!r} not followed"
                else:
                    error = f"HTTP {status}"
    except TargetRefused as exc:
        error = str(exc)
    except TimeoutError:
        error = f"timed out after {session.timeout.total} s"
    except aiohttp.ClientError as exc:
        refused = _refusal(exc)
        error = str(refused) if refused else f"connection error: {type(exc).__name__}: {exc}"
    except (OSError, ValueError) as exc:
        error = f"connection error: {type(exc).__name__}: {exc}"
    if status is not None and error is None and excerpt is not None and not excerpt:
        excerpt = None
    return AttemptResult(
        delivery_id=delivery_id,
        at=at,
        status_code=status,
        latency_ms=int((time.perf_counter() - started) * 1000),
        error=error[:1000].replace("\x00", "\ufffd") if error else None,
        response_excerpt=excerpt or None,
        retry_after=retry_after,
    )


async def close_session(session: aiohttp.ClientSession) -> None:
    await session.close()
    # Let the connector's transports finish closing before the loop moves on (aiohttp advice).
    await asyncio.sleep(0)
