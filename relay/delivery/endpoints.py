"""Dead endpoints: each subscription's failure streak, and disabling it (streak or 410 Gone).

Why in the dispatcher's record transaction rather than a sweeper: the streak changes only when
an attempt is recorded, and that transaction already holds what decides it. Each recorded batch
adds its attempts to `subscriptions.failing_since` / `failed_attempts` with one set-based
statement, and disables in the same commit, so no scan of `delivery_attempts` is ever needed
and a streak can never disagree with the attempts it counts. A healthy batch (all successes,
no streak stored) writes nothing: one primary-key read of its subscriptions finds that out.
The statements are `subscriptions`' (the table's owner); the rule is here.

With several workers: the rows of subscriptions a batch will write are locked first, in id
order (`FOR NO KEY UPDATE`), before any delivery row, so two recorders, or a recorder and a
disabling, queue on the subscription instead of deadlocking over each other's deliveries.
`disable_subscription` only turns off what is still enabled, so exactly one transaction
disables a subscription and stores its one `subscription.disabled` event.

A subscription with no attempts at all (nothing to deliver) is never disabled by time alone:
the rule is about attempts, and one with nothing to send costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import structlog

from relay.delivery.store import fail_pending_deliveries
from relay.delivery.subscriptions import (
    Querier,
    add_failure_streaks,
    disable_subscription,
    endpoint_summary,
    lock_streak_rows,
)
from relay.events import format_time, insert_event

log = structlog.get_logger("relay.delivery")

# Svix's rule: at least this many attempts, all failed, spanning the configured time.
MIN_FAILED_ATTEMPTS = 10
DISABLED_EVENT = "subscription.disabled"


@dataclass(frozen=True, slots=True)
class Streak:
    """What one recorded batch says about one subscription's run of failures.

    `reset`: the batch holds a success, so the stored streak ends and only the failures after
    the batch's last success count; otherwise `failures` extend the stored streak.
    """

    subscription_id: str
    reset: bool
    failures: int
    first_failed_at: datetime | None


def streaks(outcomes: Iterable[tuple[str, bool, bool, datetime]]) -> list[Streak]:
    """Per subscription, from (subscription_id, attempted, ok, at) of each recorded attempt.

    Attempts not sent (refused: the subscription was already disabled) say nothing about the
    endpoint and are left out.
    """
    state: dict[str, list[Any]] = {}  # id -> [reset, failures, first_failed_at]
    for subscription_id, attempted, ok, at in sorted(outcomes, key=lambda o: o[3]):
        if not attempted:
            continue
        entry = state.setdefault(subscription_id, [False, 0, None])
        if ok:
            entry[:] = [True, 0, None]
        else:
            entry[1] += 1
            entry[2] = entry[2] or at
    return [Streak(s, bool(e[0]), int(e[1]), e[2]) for s, e in sorted(state.items())]


async def lock_streaks(
    conn: Querier, subscription_ids: Sequence[str], failing: Sequence[str]
) -> list[str]:
    """Lock (in id order) the subscriptions whose streak this batch will write: those with
    failures in it and those with a stored streak a success may end. Call it first in the
    record transaction; an empty answer means there is nothing to write."""
    return await lock_streak_rows(conn, subscription_ids, failing)


async def record_streaks(
    conn: Querier,
    batch: Sequence[Streak],
    locked: Sequence[str],
    *,
    disable_after: float,
) -> list[str]:
    """Write the batch's streaks of the `locked` subscriptions; disable each that is now dead.
    Returns the ids disabled by this call."""
    wanted = set(locked)
    todo = [s for s in batch if s.subscription_id in wanted]
    if not todo:
        return []
    rows = await add_failure_streaks(
        conn,
        [s.subscription_id for s in todo],
        [s.reset for s in todo],
        [s.failures for s in todo],
        [s.first_failed_at for s in todo],
        disable_after=disable_after,
        min_failed_attempts=MIN_FAILED_ATTEMPTS,
    )
    disabled = []
    for row in rows:
        if not row["dead"]:
            continue
        reason = (
            f"every attempt failed since {format_time(row['failing_since'])} "
            f"({row['failed_attempts']} attempts without a success)"
        )
        if await disable_endpoint(conn, row["id"], reason):
            disabled.append(row["id"])
    return disabled


async def disable_endpoint(conn: Querier, subscription_id: str, reason: str) -> bool:
    """Disable a subscription for a dead endpoint, in the caller's transaction: its pending
    deliveries become `failed` (re-enable it and a bulk retry brings them back) and one
    `subscription.disabled` event is stored for the other subscriptions that ask for it.
    False (and nothing done) when it was already disabled."""
    if not await disable_subscription(conn, subscription_id, reason):
        return False
    stopped = await fail_pending_deliveries(
        conn, subscription_id, f"not sent: subscription disabled ({reason})"
    )
    row = await endpoint_summary(conn, subscription_id)
    if row is not None:
        await insert_event(
            conn,  # type: ignore[arg-type]
            DISABLED_EVENT,
            account_id=None,
            object_id=subscription_id,
            object=disabled_object(row, reason, stopped),
            previous={"enabled": True, "disabled_reason": None},
        )
    log.warning(
        "subscription_disabled",
        subscription_id=subscription_id,
        reason=reason,
        pending_failed=stopped,
    )
    return True


def disabled_object(row: Any, reason: str, pending_failed: int) -> dict[str, Any]:
    """The `data.object` of a `subscription.disabled` event. The URL is reduced to its host:
    a Slack incoming-webhook URL (or a token in a query) is a credential, and this event goes
    to other endpoints."""
    failing_since = row["failing_since"]
    return {
        "id": row["id"],
        "kind": row["kind"],
        "host": urlsplit(row["url"]).hostname or "",
        "event_types": list(row["event_types"]),
        "description": row["description"],
        "enabled": False,
        "disabled_reason": reason,
        "disabled_at": format_time(datetime.now(UTC)),
        "failing_since": format_time(failing_since) if failing_since else None,
        "failed_attempts": row["failed_attempts"],
        "pending_failed": pending_failed,
    }
