"""The dispatcher: claims due deliveries in batches, sends them concurrently, records in batches.

One long-running `Dispatcher.run()` per worker process. Its cycle:
1. fan out newly stored events (woken by `NOTIFY relay_wake`, which the events trigger or an
   `events.outbox()` commit sends, by the sweeper, or by its own poll timer, so a flushed Redis
   or a lost NOTIFY only ever delays, never loses);
2. claim due deliveries with one `UPDATE ... FOR UPDATE SKIP LOCKED ... RETURNING` that also
   returns each event body and subscription. A claim sets `leased_until` to the end of a
   lease, so a delivery held by a worker that died is simply claimable again when the lease
   ends; no two live workers ever hold the same delivery;
3. send each claimed delivery from one of `delivery_concurrency` long-lived lanes, at most
   `delivery_endpoint_concurrency` at once per subscription. Claims run a few rounds ahead (queued
   here, started the moment a send ends, subscriptions served in turn); an endpoint holding
   its share of claims is left out of the next ones, so a slow or dead endpoint never holds
   back healthy ones, and claims still in the queue at shutdown are handed back;
4. record outcomes in batches: one statement updates the deliveries and inserts their attempts,
   fenced by the claim's lease token so a late result never overwrites a newer claim. The
   same transaction keeps each subscription's failure streak and disables dead endpoints
   (a streak, or 410 Gone): `endpoints.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import structlog

from relay.db import Outage, connect, listen, store_outage
from relay.delivery.endpoints import disable_endpoint, lock_streaks, record_streaks, streaks
from relay.delivery.fanout import Handoff, fan_out_events
from relay.delivery.policy import retry_delay
from relay.delivery.recovery import advance_jobs
from relay.delivery.sender import AttemptResult, post, request_body, request_headers
from relay.delivery.store import (
    CLAIM_SESSION,
    RECORD_SESSION,
    WAKE_CHANNEL,
    claim_on,
    event_texts,
    promote,
    record,
    release,
    release_unanswered,
)
from relay.delivery.subscriptions import MatcherCache, signing_keys, signing_keys_change_at
from relay.metrics import WorkerMetrics
from relay.settings import Settings
from relay.vault import Vault

log = structlog.get_logger("relay.delivery")

# Postgres or the network failing must slow the dispatcher down, never stop it.
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
_RECORD_BATCH = 1000
_RECORD_EAGER = 200
_RECORD_WAIT = 0.05
_JOBS_INTERVAL = 0.1
_SHORT_CLAIM_RECHECK = 0.05
_BODY_CACHE = 256  # rendered bodies kept, by event (a claim of 256 spans a few)
# Decrypted signing keys kept, by secret. Above the subscriptions a practice has: at 10,000 it
# was cleared every few seconds by 10,200 subscriptions (bench/delivery_shape.py
# --latency-subscriptions 10000), and every delivery paid a Fernet decryption (3% of a worker).
# An entry is a few hundred bytes.
_KEY_CACHE = 100_000
# Attempt counters reach Redis at most this often (and at shutdown): a flush per recorded batch
# was a Redis transaction every few milliseconds, 3% of a worker at 1,000 events/s
# (bench/delivery_shape.py). Scrapes come every 15 s or so; a crash loses at most this much.
_METRICS_EVERY = 0.5


@dataclass(slots=True)
class Job:
    """One claimed delivery, ready to send."""

    id: str
    event_id: str
    subscription_id: str
    attempt_count: int
    token: uuid.UUID
    url: str
    kind: str
    body: bytes
    keys: list[bytes]
    live: bool
    disabled_reason: str | None
    order_key: str | None = None  # set for an ordered subscription: the event's object


@dataclass(slots=True)
class Outcome:
    job: Job
    result: AttemptResult
    status: str
    next_at: datetime | None


class Dispatcher:
    """Delivers due webhooks until stopped; see the module docstring for the cycle."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        session: aiohttp.ClientSession,
        vault: Vault,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._settings = settings
        self._session = session
        self._vault = vault
        self._capacity = max(1, settings.delivery_concurrency)
        self._endpoint_cap = max(1, min(settings.delivery_endpoint_concurrency, self._capacity))
        self._batch = max(1, settings.delivery_batch_size)
        # A claim must outlive the request it covers (bounded by the timeout) plus recording.
        self._lease = max(settings.delivery_lease, settings.delivery_timeout + 1.0)
        self._check_host = not settings.allow_private_targets
        # Claims run ahead of the sends: up to `depth` rounds of each cap are held (claimed), the
        # rest queued here, so a send that ends starts the next at once instead of waiting for
        # a claim round trip, and claims come in few big statements. A queued delivery waits at
        # most depth - 1 rounds of full timeouts, which the lease still covers.
        depth = max(1, min(4, int(self._lease // (settings.delivery_timeout + 1.0)) - 1))
        self._hold_cap = self._endpoint_cap * depth
        self._hold_capacity = self._capacity * depth
        # Claim again once this many sends finished, so one completion is not one query.
        self._claim_threshold = max(1, min(self._batch, self._hold_cap) // 2)
        self._inflight: dict[str, int] = {}
        self._inflight_total = 0
        self._held: dict[str, int] = {}  # in flight + queued, per subscription
        self._held_total = 0
        self._queued: dict[str, deque[Job]] = {}
        # Subscriptions with queued jobs and room under their own cap: only the total capacity
        # holds them back; served in turn, so a busy endpoint cannot starve the others.
        self._ready: deque[str] = deque()
        self._ready_set: set[str] = set()
        self._freed = 0
        # One long-lived lane per unit of capacity sends one delivery after another: a task
        # per delivery cost a tenth of the dispatcher's CPU. Idle lanes wait on a future.
        self._lanes: list[asyncio.Task[None]] = []
        self._idle_lanes: deque[asyncio.Future[Job | None]] = deque()
        self._outcomes: list[Outcome] = []
        self._wake = asyncio.Event()
        self._recorded = asyncio.Event()
        self._record_wake = asyncio.Event()
        self._stopping = False
        self._fan_out_due = True
        # Whether a claim must look: not after a wake-up that only announced events whose
        # deliveries the fan-out then took itself (one claim round trip per stored batch).
        self._claim_due = True
        self._maybe_more = False
        self._next_due: float | None = None
        self._jobs_due = 0.0
        self._keys: dict[tuple[Any, ...], tuple[list[bytes], datetime | None]] = {}
        self._bodies: dict[tuple[str, str, str | None], bytes] = {}
        self._matchers = MatcherCache()
        self._listener: asyncpg.Connection | None = None
        # Claims run on a connection of their own, one statement each: through the pool a claim
        # was five round trips, and with the worker's loop busy sending, a claim of 256 took
        # 30-90 ms, during which the lanes ran dry (bench/delivery_shape.py). Fan-out runs its
        # transactions there too (`_fan_out_on_claimer`).
        self._claimer = _OwnConnection(settings, CLAIM_SESSION)
        # Records run on one too, for the same reason: through the pool each batch paid the
        # acquire, the release's reset and a `SET LOCAL` on top of its BEGIN, statements and
        # COMMIT (a batch is ten deliveries or fewer when events trickle in).
        self._recorder = _OwnConnection(settings, RECORD_SESSION)
        self._metrics_due = 0.0
        self._metrics_armed = False
        self._listener_retry_at = 0.0
        # Postgres down: one line when it starts and one when it ends, not one per retry.
        self._db_outage = Outage("Postgres", settings.database_url, "dispatcher")
        # Tokens of claims that failed on their way back: their rows, if the claim committed,
        # are leased to nobody until they are handed back.
        self._unanswered: set[uuid.UUID] = set()

    def _db_failed(self, event: str, exc: BaseException) -> None:
        if store_outage(exc) is not None:
            self._db_outage.failed(exc)
        else:
            log.warning(event, error=f"{type(exc).__name__}: {exc}")

    @property
    def matchers(self) -> MatcherCache:
        """The live subscriptions' matchers this dispatcher's fan-out keeps (the sweeper's
        fan-out in the same process uses them too)."""
        return self._matchers

    # ---- control ----------------------------------------------------------------------------

    def wake(self, *, fan_out: bool = True) -> None:
        """Look for work now (the sweeper, arq wake-up jobs and NOTIFY all land here):
        `fan_out` for newly stored events, else for deliveries made due elsewhere."""
        if fan_out:
            self._fan_out_due = True
        else:
            self._claim_due = True
        self._wake.set()

    def stop(self) -> None:
        """Ask `run()` to finish: stop claiming, let sends in flight end, record them, return."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until `stop()` (or cancellation); in-flight sends are finished and recorded."""
        recorder = asyncio.create_task(self._record_loop(), name="delivery-recorder")
        self._lanes = [
            asyncio.create_task(self._lane(), name=f"delivery-lane-{n}")
            for n in range(self._capacity)
        ]
        log.info("dispatcher_started", capacity=self._capacity, endpoint_cap=self._endpoint_cap)
        try:
            while not self._stopping:
                self._wake.clear()
                await self._ensure_listener()
                try:
                    await self.step()
                except _DB_ERRORS as exc:
                    self._db_failed("dispatcher_step_failed", exc)
                    await asyncio.sleep(self._settings.delivery_poll_interval)
                    continue
                except Exception:
                    # A bug in one pass must not leave this worker silently without delivery;
                    # Postgres still holds everything, so the next pass simply tries again.
                    log.exception("dispatcher_step_crashed")
                    await asyncio.sleep(self._settings.delivery_poll_interval)
                    continue
                self._db_outage.recovered()
                await self._idle()
        finally:
            await self._drain(recorder)
            log.info("dispatcher_stopped")

    async def step(self) -> int:
        """One pass: fan out pending events, then claim and start as much as there is room for."""
        if self._fan_out_due:
            self._fan_out_due = False
            if await self._fan_out():
                self._claim_due = True  # deliveries it could not take are due for a claim
        # Replay and backfill jobs queue their next batch when their window has room; a few
        # looks a second are plenty (a batch is 1,000), and keep a busy pass at its one claim.
        if time.monotonic() >= self._jobs_due:
            self._jobs_due = time.monotonic() + _JOBS_INTERVAL
            await advance_jobs(self._pool)
        if self._unanswered:
            await self._release_unanswered()
        claimed = 0
        if not self._claim_due:
            return claimed
        self._claim_due = False
        while not self._stopping:
            room = min(self._batch, self._hold_capacity - self._held_total)
            if room <= 0:
                self._maybe_more = True  # full: look again once sends free room
                break
            # Caps can cut a claim short of what is due (a subscription holding its share is
            # left out, or filled to its share by this claim), so a short claim proves
            # nothing then either.
            capped = bool(self._held)
            jobs = await self._claim(room)
            for job in jobs:
                self._hold(job)
            self._pump()
            claimed += len(jobs)
            # With nothing held before it, a claim that filled one busy subscription's share
            # came back short of its room: taken as "nothing more is due", the rest of that
            # subscription's backlog waited for the short-claim look 50 ms later, once per
            # share (one hot endpoint: 2,300/s where its sends ran at 15,000/s).
            capped = capped or any(
                self._held.get(job.subscription_id, 0) >= self._hold_cap for job in jobs
            )
            self._maybe_more = len(jobs) == room or capped
            if len(jobs) < room:
                if jobs:
                    # A short claim is not proof that nothing is left: another worker's claim
                    # running at the same moment locks the same head of the queue, and SKIP
                    # LOCKED leaves this one the few rows it did not reach. Ending there left
                    # the second worker idle until the next poll (two workers were slower than
                    # one). Look again shortly rather than at once: an immediate second claim
                    # would sit in every pass of a trickle, between an event and its send.
                    self._look_again_in(_SHORT_CLAIM_RECHECK)
                break
        return claimed

    async def _fan_out(self) -> int:
        """Fan out what was stored, taking the new deliveries this dispatcher has room for
        straight from the fan-out's commit (`Handoff`): a trickled event's first attempt then
        follows one transaction, not a fan-out and a claim. Returns how many deliveries it
        created and left for claims."""
        room = self._hold_capacity - self._held_total
        if room <= 0 or self._stopping:
            return await self._fan_out_on_claimer(None)
        handoff = Handoff(lease=self._lease, room=room, cap=self._hold_cap, held=self._held)
        try:
            created = await self._fan_out_on_claimer(handoff)
            return created - sum(len(rows) for _, rows in handoff.taken)
        finally:
            self._unanswered.update(handoff.unanswered)
            if handoff.taken:
                now = datetime.now(UTC)
                for token, rows in handoff.taken:
                    texts = event_texts(rows)
                    for row in rows:
                        self._hold(self._job(row, token, now, texts))
                self._pump()

    async def _fan_out_on_claimer(self, handoff: Handoff | None) -> int:
        """`fan_out_events` on the claims' connection: its session already plans with index
        scans only, so each batch is BEGIN, the statements and COMMIT, without a pool acquire
        (and its reset) or a `SET LOCAL` round trip. Claims and fan-out take turns in `step`,
        so they never share it at once. Dropped on any failure, as a claim drops it."""
        try:
            return await fan_out_events(
                await self._claimer.get(), handoff=handoff, matchers=self._matchers
            )
        except BaseException:
            self._claimer.drop()
            raise

    async def _release_unanswered(self) -> None:
        for token in sorted(self._unanswered):
            released = await release_unanswered(self._pool, token)
            self._unanswered.discard(token)
            if released:
                log.info("delivery_claim_released", deliveries=released, reason="answer_lost")

    # ---- waiting ----------------------------------------------------------------------------

    def _look_again_in(self, seconds: float) -> None:
        due = time.monotonic() + seconds
        if self._next_due is None or due < self._next_due:
            self._next_due = due

    async def _idle(self) -> None:
        timeout = self._settings.delivery_poll_interval
        if self._next_due is not None:
            timeout = min(timeout, max(0.0, self._next_due - time.monotonic()))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            # The safety net: look for stored-but-unsent events and deliveries due elsewhere.
            self._fan_out_due = True
            self._claim_due = True
        if self._next_due is not None and self._next_due <= time.monotonic():
            self._next_due = None
            self._claim_due = True

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        if time.monotonic() < self._listener_retry_at:
            return
        try:
            conn = await listen(self._settings, WAKE_CHANNEL, self._on_notify)
        except _DB_ERRORS as exc:
            # Soon after an outage, not 5 s later: NOTIFY is what makes delivery immediate.
            self._listener_retry_at = time.monotonic() + 1.0
            self._db_failed("dispatcher_listen_failed", exc)
            return
        self._listener = conn
        self._fan_out_due = True  # anything stored while we were not listening

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self.wake(fan_out=payload == "events")

    # ---- claiming and sending ---------------------------------------------------------------

    async def _claim(self, room: int) -> list[Job]:
        cap = self._hold_cap
        saturated = [s for s, n in self._held.items() if n >= cap]
        partial = [(s, cap - n) for s, n in self._held.items() if 0 < n < cap]
        token = uuid.uuid4()
        try:
            rows = await claim_on(
                await self._claimer.get(),
                room=room,
                lease=self._lease,
                saturated=saturated,
                partial=partial,
                cap=cap,
                token=token,
            )
        except BaseException:
            # The claim may have committed with its answer lost on the way back: hand its
            # rows back once Postgres answers again (`_release_unanswered`). The connection is
            # dropped: whatever broke it, the next claim starts on a fresh one.
            self._unanswered.add(token)
            self._claimer.drop()
            raise
        now = datetime.now(UTC)
        if self._metrics is not None:
            self._metrics.recovered("lease_expired", sum(1 for row in rows if row["expired"]))
        texts = event_texts(rows)
        return [self._job(row, token, now, texts) for row in rows]

    def _job(
        self,
        row: asyncpg.Record,
        token: uuid.UUID,
        now: datetime,
        texts: dict[str, tuple[str, bytes | None]],
    ) -> Job:
        keys: list[bytes] = []
        if row["live"] and row["kind"] == "webhook":
            older = row["older_secrets"]
            cache_key = (
                row["secret_enc"],
                row["previous_secret_enc"],
                row["previous_secret_expires_at"],
                *(o["secret_enc"] for o in older),
            )
            expires = row["previous_secret_expires_at"]
            cached = self._keys.get(cache_key)
            if cached is None or (cached[1] is not None and cached[1] <= now):
                cached = (
                    signing_keys(
                        self._vault,
                        row["secret_enc"],
                        row["previous_secret_enc"],
                        expires,
                        now,
                        older,
                    ),
                    signing_keys_change_at(expires, older, now),
                )
                if len(self._keys) >= _KEY_CACHE:
                    del self._keys[next(iter(self._keys))]  # the oldest, not all of them
                self._keys[cache_key] = cached
            keys = cached[0]
        return Job(
            id=row["id"],
            event_id=row["event_id"],
            subscription_id=row["subscription_id"],
            attempt_count=row["attempt_count"],
            token=token,
            url=row["url"],
            kind=row["kind"],
            body=self._body(row, texts) if row["live"] else b"",
            keys=keys,
            live=row["live"],
            disabled_reason=row["disabled_reason"],
            order_key=row["order_key"],
        )

    def _body(self, row: asyncpg.Record, texts: dict[str, tuple[str, bytes | None]]) -> bytes:
        """The request body of a claimed row, rendered once per event (and Slack client
        name): a replay or a fan-out sends one event to every subscription, and a claim's
        rows share a few events. Events never change once stored. `texts`: the event's
        stored text and payload, which the statement sends once per event."""
        key = (row["event_id"], row["kind"], row["client_name"])
        body = self._bodies.get(key)
        if body is None:
            text, payload = texts[row["event_id"]]
            body = request_body(row["kind"], orjson.loads(text), row["client_name"], payload)
            if len(self._bodies) >= _BODY_CACHE:
                self._bodies.clear()
            self._bodies[key] = body
        return body

    def _hold(self, job: Job) -> None:
        sub = job.subscription_id
        self._held[sub] = self._held.get(sub, 0) + 1
        self._held_total += 1
        queue = self._queued.get(sub)
        if queue is None:
            queue = self._queued[sub] = deque()
        queue.append(job)
        self._mark_ready(sub)

    def _mark_ready(self, sub: str) -> None:
        if (
            sub not in self._ready_set
            and sub in self._queued
            and self._inflight.get(sub, 0) < self._endpoint_cap
        ):
            self._ready_set.add(sub)
            self._ready.append(sub)

    def _pump(self) -> None:
        """Hand queued jobs to idle lanes, one subscription after another."""
        idle = self._idle_lanes
        while idle and self._ready and not self._stopping:
            lane = idle.popleft()
            if not lane.done():
                lane.set_result(self._take())

    def _take(self) -> Job | None:
        """The next job to send (subscriptions in turn, each under its cap), now in flight."""
        ready = self._ready
        if not ready or self._inflight_total >= self._capacity or self._stopping:
            return None
        sub = ready.popleft()
        self._ready_set.discard(sub)
        queue = self._queued[sub]
        job = queue.popleft()
        if not queue:
            del self._queued[sub]
        self._inflight[sub] = self._inflight.get(sub, 0) + 1
        self._inflight_total += 1
        self._mark_ready(sub)
        return job

    async def _lane(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            job = self._take()
            if job is None:
                waiter: asyncio.Future[Job | None] = loop.create_future()
                self._idle_lanes.append(waiter)
                job = await waiter
                if job is None:
                    continue
            await self._send(job)

    def _unhold(self, sub: str) -> None:
        left = self._held[sub] - 1
        if left:
            self._held[sub] = left
        else:
            del self._held[sub]
        self._held_total -= 1

    async def _send(self, job: Job) -> None:
        try:
            if not job.live:
                result = AttemptResult(
                    delivery_id=job.id,
                    at=datetime.now(UTC),
                    error=f"not sent: subscription disabled ({job.disabled_reason or 'disabled'})",
                    attempted=False,
                )
            else:
                headers = request_headers(job.kind, job.keys, job.event_id, job.body)
                result = await post(
                    self._session, job.id, job.url, job.body, headers, check_host=self._check_host
                )
        finally:
            sub = job.subscription_id
            left = self._inflight[sub] - 1
            if left:
                self._inflight[sub] = left
            else:
                del self._inflight[sub]
            self._inflight_total -= 1
            self._unhold(sub)
            self._mark_ready(sub)
            self._pump()
            self._freed += 1
            if self._freed >= self._claim_threshold or self._held_total == 0:
                self._freed = 0
                if self._maybe_more:  # the last claim filled its room: more may be due
                    self._claim_due = True
                    self._wake.set()
        self._outcomes.append(self._decide(job, result))
        self._record_wake.set()

    def _decide(self, job: Job, result: AttemptResult) -> Outcome:
        if result.ok:
            return Outcome(job, result, "succeeded", None)
        if not result.attempted or result.status_code == 410:
            return Outcome(job, result, "failed", None)
        delay = retry_delay(
            job.attempt_count + 1, self._settings.retry_schedule, result.retry_after
        )
        if delay is None:
            return Outcome(job, result, "failed", None)
        due = time.monotonic() + delay
        if self._next_due is None or due < self._next_due:
            self._next_due = due
        return Outcome(job, result, "pending", result.at + timedelta(seconds=delay))

    # ---- recording --------------------------------------------------------------------------

    async def _record_loop(self) -> None:
        while True:
            await self._record_wake.wait()
            self._record_wake.clear()
            if len(self._outcomes) < _RECORD_EAGER and not self._stopping:
                # Let more outcomes join this batch: one statement for many attempts. The wait
                # delays only the bookkeeping; the requests have already been sent.
                await asyncio.sleep(_RECORD_WAIT)
            while self._outcomes:
                batch = self._outcomes[:_RECORD_BATCH]
                try:
                    await self._record(batch)
                except _DB_ERRORS as exc:
                    # Kept for the next try; if this process dies first, the lease expires and
                    # the deliveries are sent again under the same webhook-id (at-least-once).
                    self._db_failed("delivery_record_failed", exc)
                    await asyncio.sleep(self._settings.delivery_poll_interval)
                    continue
                except Exception:
                    # The recorder must outlive anything one batch meets: asyncpg can raise its
                    # InternalClientError on a connection cut mid-statement by a Postgres
                    # restart, and a dead recorder would leave every later send unrecorded (and
                    # sent again once its lease ends). The batch is kept for the next try.
                    log.exception("delivery_record_crashed", outcomes=len(batch))
                    await asyncio.sleep(self._settings.delivery_poll_interval)
                    continue
                del self._outcomes[: len(batch)]
            await self._flush_metrics()
            self._recorded.set()

    async def _flush_metrics(self) -> None:
        """Add the counted attempts to Redis if the last flush is `_METRICS_EVERY` old, else
        wake the recorder when it will be (so the last batch of a burst is not left unflushed
        until the next one)."""
        if self._metrics is None:
            return
        now = time.monotonic()
        if now < self._metrics_due:
            if not self._metrics_armed:
                self._metrics_armed = True
                loop = asyncio.get_running_loop()
                loop.call_later(self._metrics_due - now, self._record_wake.set)
            return
        self._metrics_due = now + _METRICS_EVERY
        self._metrics_armed = False
        await self._metrics.flush()

    async def _record(self, batch: list[Outcome]) -> None:
        conn = await self._recorder.get()
        try:
            promoted = await self._record_on(conn, batch)
        except BaseException:
            # Whatever broke the batch (it is kept for the next try), the next one starts on a
            # fresh connection.
            self._recorder.drop()
            raise
        if promoted:
            self._claim_due = True
            self._wake.set()
        self._log(batch)
        if self._metrics is not None:
            for o in batch:
                self._metrics.delivery_attempt(_metric_outcome(o), _sent_seconds(o.result))

    async def _record_on(self, conn: asyncpg.Connection, batch: list[Outcome]) -> int:
        """One batch's transaction; returns how many ordered deliveries it made due."""
        columns: list[list[Any]] = [[] for _ in range(10)]
        for o in batch:
            r = o.result
            values = (
                o.job.id,
                o.job.token,
                r.attempted,
                r.at,
                r.status_code,
                r.latency_ms,
                r.error,
                r.response_excerpt,
                o.status,
                o.next_at,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        gone = sorted({o.job.subscription_id for o in batch if o.result.status_code == 410})
        # Ordered queues whose head settled: the next delivery of each is due in this commit.
        settled = [
            (o.job.subscription_id, o.job.order_key)
            for o in batch
            if o.job.order_key is not None and o.status != "pending"
        ]
        batch_streaks = streaks(
            (o.job.subscription_id, o.result.attempted, o.result.ok, o.result.at) for o in batch
        )
        promoted = 0
        async with conn.transaction():
            # Subscription rows before delivery rows, in every writer (endpoints.py says why).
            locked = await lock_streaks(
                conn,
                [s.subscription_id for s in batch_streaks],
                [s.subscription_id for s in batch_streaks if s.failures],
            )
            await record(conn, columns)
            if locked:
                await record_streaks(
                    conn,
                    batch_streaks,
                    locked,
                    disable_after=self._settings.endpoint_disable_after,
                )
            for subscription_id in gone:
                reason = f"endpoint answered 410 Gone at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
                await disable_endpoint(conn, subscription_id, reason)
            if settled:
                promoted = await promote(conn, settled)
        return promoted

    def _log(self, batch: list[Outcome]) -> None:
        """One info line per recorded batch; each success only at debug (thousands a second
        would drown the log), each failure on its own line at info or warning."""
        succeeded = 0
        debug = log.is_enabled_for(logging.DEBUG)
        for o in batch:
            if o.status == "succeeded":
                succeeded += 1
                if not debug:
                    continue
            r = o.result
            data = {
                "delivery_id": o.job.id,
                "event_id": o.job.event_id,
                "subscription_id": o.job.subscription_id,
                "attempt": o.job.attempt_count + (1 if r.attempted else 0),
                "status_code": r.status_code,
                "latency_ms": r.latency_ms,
            }
            if o.status == "succeeded":
                log.debug("delivery_succeeded", **data)
            elif o.status == "pending":
                log.info(
                    "delivery_retry_scheduled", error=r.error, next_attempt_at=o.next_at, **data
                )
            else:
                log.warning("delivery_failed", error=r.error, **data)
        log.info("deliveries_recorded", attempts=len(batch), succeeded=succeeded)

    async def _release_queued(self) -> None:
        """Hand claimed-but-unsent deliveries back (due now) so another worker sends them at
        once; should this fail, their leases simply expire."""
        jobs = [job for queue in self._queued.values() for job in queue]
        self._queued.clear()
        self._ready.clear()
        self._ready_set.clear()
        for job in jobs:
            self._unhold(job.subscription_id)
        if not jobs:
            return
        try:
            await release(self._pool, [job.id for job in jobs], [job.token for job in jobs])
        except _DB_ERRORS as exc:
            log.warning("delivery_release_failed", error=f"{type(exc).__name__}: {exc}")

    async def _drain(self, recorder: asyncio.Task[None]) -> None:
        """Finish sends in flight (each is bounded by the delivery timeout), record, clean up."""
        self._stopping = True
        await self._release_queued()
        while self._idle_lanes:
            waiter = self._idle_lanes.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self._lanes:
            await asyncio.wait(self._lanes, timeout=self._settings.delivery_timeout + 1.0)
            for lane in self._lanes:
                lane.cancel()
            await asyncio.wait(self._lanes)
            self._lanes = []
        if self._outcomes:
            self._recorded.clear()
            self._record_wake.set()
            try:
                await asyncio.wait_for(self._recorded.wait(), timeout=5.0)
            except TimeoutError:
                log.warning("delivery_record_abandoned", outcomes=len(self._outcomes))
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder  # it catches everything but its cancellation
        if self._metrics is not None:
            await self._metrics.flush()  # never raises; what the last batches counted
        await self._claimer.close()
        await self._recorder.close()
        if self._listener is not None:
            await _close(self._listener)
            self._listener = None


class _OwnConnection:
    """A connection of the dispatcher's own for one kind of statement (claims and fan-out, or
    records), opened on first use with its session `setup`, and dropped on any failure of the
    caller's: whatever broke it, the next use starts on a fresh one."""

    def __init__(self, settings: Settings, setup: str) -> None:
        self._settings = settings
        self._setup = setup
        self._conn: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self._settings, setup=self._setup)
        return self._conn

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        if self._conn is not None:
            await _close(self._conn)
            self._conn = None


async def _close(conn: asyncpg.Connection) -> None:
    """Close politely, or cut it off if Postgres does not answer."""
    try:
        await conn.close(timeout=2)
    except _DB_ERRORS:
        conn.terminate()


def _metric_outcome(o: Outcome) -> str:
    if o.status == "succeeded":
        return "succeeded"
    if not o.result.attempted:
        return "refused"
    return "failed_retrying" if o.status == "pending" else "failed_final"


def _sent_seconds(result: AttemptResult) -> float | None:
    return result.latency_ms / 1000 if result.attempted else None
