"""`GET /v1/events/stream`: every stored event as a server-sent event, as it is stored.

One `StreamHub` per API process tails the events table (woken by `NOTIFY relay_wake`, sent by
the events trigger or after an `events.outbox()` commit, with a short poll as the safety net)
and hands each event to every open stream through a bounded queue. A stream whose queue fills
(a slow reader) is dropped from the hub, not waited for: it goes on reading from Postgres at its
own pace from where it was, then rejoins. So one slow or stalled reader costs the server one
small buffer and never holds back the hub, the other readers or delivery (which runs in the
workers and never waits for a stream).

Positions are `(xid, seq)` (see `relay.events.read_stream`): reading below the transaction
horizon in that order never skips an event that committed late, which is what makes resuming
from `Last-Event-ID` (an event id) lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

from relay import events
from relay.api.keys import POOL, SETTINGS
from relay.api.middleware import error_response
from relay.api.routing import Input, Route
from relay.api.validation import DateTime, Query, String
from relay.db import listen
from relay.delivery.store import WAKE_CHANNEL
from relay.delivery.subscriptions import type_matches
from relay.errors import InvalidInput
from relay.events import StreamPosition
from relay.settings import Settings

log = structlog.get_logger("relay.api.stream")

_DB_ERRORS = (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError)
_MAX_EVENT_ID = 100


@dataclass(frozen=True)
class StreamOptions:
    """Tunables of the stream; tests shorten them."""

    heartbeat: float = 15.0  # seconds between `: heartbeat` comments on an idle stream
    write_timeout: float = 30.0  # a reader that takes no bytes for this long is disconnected
    buffer: int = 1000  # events queued per stream before it falls back to reading Postgres
    poll_interval: float = 0.5  # the hub's look at Postgres when no NOTIFY woke it
    page: int = 500  # events per read


@dataclass(frozen=True)
class StreamFilter:
    """The filters of `GET /v1/events`, applied to each event body."""

    type: str | None = None
    account_id: str | None = None
    client_id: str | None = None
    object_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, body: Mapping[str, Any]) -> bool:
        if self.type is not None and not type_matches([self.type], str(body.get("type", ""))):
            return False
        for name in ("account_id", "client_id", "object_id"):
            wanted = getattr(self, name)
            if wanted is not None and body.get(name) != wanted:
                return False
        if self.since is not None or self.until is not None:
            created = datetime.fromisoformat(str(body.get("created_at")))
            if self.since is not None and created < self.since:
                return False
            if self.until is not None and created >= self.until:
                return False
        return True


# (position, body, the body as one server-sent event): encoded once by the hub, for every
# stream. None: the server is shutting down.
Item = tuple[StreamPosition, dict[str, Any], bytes] | None


@dataclass(eq=False)
class Listener:
    """One open stream as the hub sees it: its filters, a bounded queue of the events that
    match them, and whether that queue overflowed."""

    filters: StreamFilter
    queue: asyncio.Queue[Item]
    overflowed: bool = False
    closed: bool = False


@dataclass
class StreamHub:
    """Tails the events table once per process and fans each event out to the open streams."""

    settings: Settings
    pool: asyncpg.Pool
    options: StreamOptions
    position: StreamPosition | None = None
    listeners: set[Listener] = field(default_factory=set)
    overflows: int = 0  # streams that fell behind and went back to reading Postgres
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _task: asyncio.Task[None] | None = None
    _conn: asyncpg.Connection | None = None
    _closing: bool = False

    async def subscribe(self, filters: StreamFilter) -> tuple[Listener, StreamPosition]:
        """Join the hub: every matching event after the returned position goes on the queue."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relay-stream-hub")
        async with self._lock:
            if self.position is None or not self.listeners:
                # Nobody was listening, so the hub did not read: start from the horizon.
                self.position, _ = await events.stream_start(self.pool)
            listener = Listener(filters, asyncio.Queue(maxsize=self.options.buffer))
            if self._closing:
                listener.closed = True
            self.listeners.add(listener)
            return listener, self.position

    def unsubscribe(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    async def close(self) -> None:
        """End every open stream and stop tailing (the app's shutdown)."""
        self._closing = True
        for listener in list(self.listeners):
            listener.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                listener.queue.put_nowait(None)
        self.listeners.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if payload == "events":
            self._wake.set()

    async def _listen(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        try:
            conn = await listen(self.settings, WAKE_CHANNEL, self._on_notify)
        except _DB_ERRORS as exc:
            log.warning("event_stream_listen_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self._conn = conn

    async def _run(self) -> None:
        while True:
            await self._listen()
            if self.listeners:
                try:
                    await self._drain()
                except _DB_ERRORS as exc:
                    log.warning("event_stream_read_failed", error=f"{type(exc).__name__}: {exc}")
                except Exception:
                    # A bug here must not end every stream of the process for good: log it
                    # and try again on the next wake-up (streams catch up from Postgres).
                    log.exception("event_stream_hub_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.poll_interval)
            self._wake.clear()

    async def _drain(self) -> None:
        async with self._lock:
            while self.listeners and self.position is not None:
                rows = await events.read_stream(self.pool, self.position, limit=self.options.page)
                self._publish(rows)
                if len(rows) < self.options.page:
                    return

    def _publish(self, rows: list[tuple[StreamPosition, dict[str, Any]]]) -> None:
        """Queue each event for the streams whose filters match it. Streams with the same
        filters (every console tab, most `relay listen`s) cost one match per event together,
        and an event is encoded once, however many streams take it."""
        groups: dict[StreamFilter, list[Listener]] = {}
        for listener in self.listeners:
            groups.setdefault(listener.filters, []).append(listener)
        for position, body in rows:
            self.position = position
            frame: bytes | None = None
            for filters, members in groups.items():
                if not filters.matches(body):
                    continue
                frame = frame or encode(body)
                for listener in members:
                    if listener.overflowed:
                        continue
                    try:
                        listener.queue.put_nowait((position, body, frame))
                    except asyncio.QueueFull:
                        # Not waited for: this stream reads Postgres from its own position.
                        listener.overflowed = True
                        self.overflows += 1
                        self.listeners.discard(listener)


STREAM_HUB = web.AppKey("stream_hub", StreamHub)
STREAM_OPTIONS = web.AppKey("stream_options", StreamOptions)


async def hub_context(app: web.Application) -> AsyncIterator[None]:
    """The hub lives as long as the app's pool (register after the pool's cleanup context)."""
    hub = StreamHub(app[SETTINGS], app[POOL], app.get(STREAM_OPTIONS) or StreamOptions())
    app[STREAM_HUB] = hub
    try:
        yield
    finally:
        await hub.close()


async def close_streams(app: web.Application) -> None:
    """On shutdown, end open streams so the server does not wait for them to time out."""
    hub = app.get(STREAM_HUB)
    if hub is not None:
        await hub.close()


def encode(body: Mapping[str, Any]) -> bytes:
    """One server-sent event: the event id as its `id` (for `Last-Event-ID`), its body as data."""
    return b"id: %s\ndata: %s\n\n" % (str(body["id"]).encode(), orjson.dumps(body))


async def start_position(
    pool: asyncpg.Pool, last_event_id: str | None, since: datetime | None
) -> tuple[StreamPosition, frozenset[str]]:
    """Where a stream begins: after `Last-Event-ID`, else at `since`, else from now on; and
    the ids of events after that position that were stored before the stream began."""
    if last_event_id is not None:
        last_event_id = last_event_id.strip()
        found = None
        if 0 < len(last_event_id) <= _MAX_EVENT_ID and last_event_id.isprintable():
            found = await events.stream_position_of(pool, last_event_id)
        if found is None:
            raise InvalidInput(
                "Last-Event-ID names no stored event; reconnect without it (or with `since`)",
                field="Last-Event-ID",
            )
        return found, frozenset()
    if since is not None:
        position = await events.stream_position_since(pool, since)
        if position is not None:
            return position, frozenset()
    return await events.stream_start(pool)


class _Gone(Exception):
    """The reader went away or stopped reading."""


async def serve_stream(
    request: web.Request, filters: StreamFilter, last_event_id: str | None
) -> web.StreamResponse:
    """Answer with a server-sent event stream of the stored events that match `filters`."""
    # config_dict: the console's sub-app serves streams from the same hub and pool.
    hub = request.config_dict[STREAM_HUB]
    pool = request.config_dict[POOL]
    options = hub.options
    cursor, stored_before = await start_position(pool, last_event_id, filters.since)

    def wanted(body: Mapping[str, Any]) -> bool:
        return filters.matches(body) and body.get("id") not in stored_before

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies must pass each event on at once
        }
    )
    await response.prepare(request)

    async def write(data: bytes) -> None:
        try:
            async with asyncio.timeout(options.write_timeout):
                await response.write(data)
        except TimeoutError:
            log.info("event_stream_reader_stalled", remote=request.remote)
            raise _Gone from None
        except (ConnectionError, RuntimeError) as exc:
            raise _Gone from exc

    log.info("event_stream_opened", remote=request.remote, resumed=last_event_id is not None)
    sent = 0
    try:
        await write(b"retry: 2000\n: stream open\n\n")
        while True:
            listener, _ = await hub.subscribe(filters)
            try:
                # Catch up from Postgres: everything after our position, up to the horizon,
                # one write per page.
                while True:
                    rows = await events.read_stream(pool, cursor, limit=options.page)
                    if rows:
                        cursor = rows[-1][0]
                    chunk = [encode(body) for _, body in rows if wanted(body)]
                    if chunk:
                        await write(b"".join(chunk))
                        sent += len(chunk)
                    if len(rows) < options.page:
                        break
                # Live: the hub's queue, skipping what the catch-up already sent. Whatever is
                # queued goes out in one write, so a busy stream costs one write per wake-up.
                while not listener.closed:
                    if listener.overflowed and listener.queue.empty():
                        break  # fell behind: back to reading Postgres from `cursor`
                    try:
                        async with asyncio.timeout(options.heartbeat):
                            item = await listener.queue.get()
                    except TimeoutError:
                        await write(b": heartbeat\n\n")
                        continue
                    chunk = []
                    while item is not None:
                        position, body, frame = item
                        if position > cursor:
                            cursor = position
                            if body.get("id") not in stored_before:  # the hub matched it
                                chunk.append(frame)
                        if listener.queue.empty():
                            break
                        item = listener.queue.get_nowait()
                    if chunk:
                        await write(b"".join(chunk))
                        sent += len(chunk)
                    if item is None:
                        break
                if listener.closed:
                    return response
            finally:
                hub.unsubscribe(listener)
    except _Gone:
        return response
    finally:
        log.info("event_stream_closed", remote=request.remote, sent=sent)


_ID = String(max_length=100)
STREAM_QUERY = Query(
    {
        "type": String(
            max_length=100, description="an event type, a prefix wildcard (`document.*`) or *"
        ),
        "account_id": _ID,
        "client_id": _ID,
        "object_id": _ID,
        "since": DateTime(description="start with the events created at or after (RFC 3339)"),
        "until": DateTime(description="only events created before (RFC 3339)"),
    }
)


async def stream_events(request: web.Request, inp: Input) -> web.StreamResponse:
    accept = request.headers.get("Accept", "")
    if "text/event-stream" not in accept:
        return error_response(
            406,
            "not_acceptable",
            "this route is a server-sent event stream; send `Accept: text/event-stream`",
        )
    return await serve_stream(
        request, StreamFilter(**inp.query), request.headers.get("Last-Event-ID")
    )


ROUTES = [
    Route(
        "GET",
        "/v1/events/stream",
        stream_events,
        "Follow new events as server-sent events",
        "events",
        {200: {"type": "string"}},
        query=STREAM_QUERY,
        content_type="text/event-stream",
        description="Send `Accept: text/event-stream` (a 406 otherwise). Each stored event that "
        "matches the filters is one message: `id` is the event id, `data` the event body as "
        "`GET /v1/events` shows it. Reconnect with `Last-Event-ID` to resume with nothing "
        "lost; without it the stream starts now, or at `since`. A `: heartbeat` comment "
        "comes every 15 s; a reader that takes nothing for 30 s is disconnected.",
    ),
]
