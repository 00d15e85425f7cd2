"""Subscriptions: the store behind /v1/subscriptions, secrets at rest, and event matching.

A subscription is a target URL (`kind` webhook or slack) plus what it wants: `event_types`
(exact types, `prefix.*` or `*`), optional `account_ids` / `client_ids` (null means any), and an
optional JMESPath `filter` evaluated on the event body. Secrets are Fernet-encrypted with the
vault; after a rotation the previous secret keeps signing for `ROTATION_OVERLAP`.

Store functions return plain dicts in the public shape (datetimes left as `datetime`, the API
renders them) and raise `NotFound` / `InvalidInput` for the API to map to 404 / 400. Deleting
is soft (`deleted_at`) so the delivery history of a deleted subscription stays readable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, TypeAlias

import asyncpg
import jmespath
import jmespath.exceptions
import jmespath.parser
import structlog

from relay.db import Executor
from relay.delivery.signing import generate_secret, secret_key
from relay.delivery.targets import validate_target_url
from relay.errors import ConfigError, Conflict, InvalidInput, NotFound
from relay.paging import check_limit, decode_cursor, encode_cursor
from relay.settings import Settings
from relay.vault import Vault

log = structlog.get_logger("relay.delivery.subscriptions")

# The delivery stage's name for relay.db.Executor (the pool, or a connection).
Querier: TypeAlias = Executor
KINDS = ("webhook", "slack")
# "object": the events of one object are delivered one at a time, in `sequence` order.
ORDERINGS = ("none", "object")
ROTATION_OVERLAP = timedelta(hours=24)
# The current secret and those still in their overlap: a bound on the signatures per webhook.
MAX_SIGNING_SECRETS = 10
MAX_EVENT_TYPES = 100
MAX_IDS = 1000
MAX_FILTER_LENGTH = 2000
MAX_DESCRIPTION_LENGTH = 1000
_EVENT_TYPE = re.compile(r"^(\*|[a-z][a-z_]*\.\*|[a-z][a-z_]*\.[a-z][a-z_]*)$")
_UPDATABLE = frozenset(
    {
        "url",
        "kind",
        "event_types",
        "account_ids",
        "client_ids",
        "filter",
        "description",
        "enabled",
        "ordering",
    }
)

_COLUMNS = (
    "id, url, kind, event_types, account_ids, client_ids, filter, description, enabled, "
    "disabled_reason, created_at, updated_at, secret_enc, previous_secret_enc, "
    "previous_secret_expires_at, ordering"
)


# ---- validation and matching -------------------------------------------------------------------


@lru_cache(maxsize=1024)
def compile_filter(expression: str) -> jmespath.parser.ParsedResult:
    """The compiled JMESPath filter; InvalidInput(field="filter") when it does not parse."""
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise InvalidInput(f"filter is not a valid JMESPath expression: {exc}", "filter") from None


def _check_event_types(value: object) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("event_types must be a non-empty list of event types", "event_types")
    if len(value) > MAX_EVENT_TYPES:
        raise InvalidInput(f"event_types takes at most {MAX_EVENT_TYPES} entries", "event_types")
    for item in value:
        if not isinstance(item, str) or not _EVENT_TYPE.match(item):
            raise InvalidInput(
                f"event_types entry {item!r} must be a type like 'document.created', "
                "a prefix wildcard like 'document.*', or '*'",
                "event_types",
            )
    return sorted(set(value))


def _check_ids(value: object, name: str) -> list[str] | None:
    """None or [] mean any; otherwise a list of id strings."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"{name} must be a list of non-empty id strings, or null", name)
    if len(value) > MAX_IDS:
        raise InvalidInput(f"{name} takes at most {MAX_IDS} ids", name)
    return sorted(set(value)) or None


def _check_text(value: object, name: str, max_length: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length or "\x00" in value:
        raise InvalidInput(f"{name} must be text of at most {max_length} characters", name)
    return value


def _check_filter(value: object) -> str | None:
    text = _check_text(value, "filter", MAX_FILTER_LENGTH)
    if text is None or not text.strip():
        return None
    compile_filter(text)
    return text


def _check_kind(value: object) -> str:
    if value not in KINDS:
        raise InvalidInput("kind must be 'webhook' or 'slack'", "kind")
    return str(value)


def _check_ordering(value: object) -> str:
    if value not in ORDERINGS:
        raise InvalidInput("ordering must be none or object", "ordering")
    return str(value)


def type_matches(patterns: Sequence[str], event_type: str) -> bool:
    """True when `event_type` is one of `patterns` (exact, `prefix.*` or `*`)."""
    prefix = event_type.split(".", 1)[0] + ".*"
    return any(p in ("*", event_type, prefix) for p in patterns)


@dataclass(frozen=True)
class Matcher:
    """What fan-out needs to decide whether one subscription wants one event."""

    id: str
    event_types: tuple[str, ...]
    account_ids: frozenset[str] | None
    client_ids: frozenset[str] | None
    filter: str | None
    ordering: str = "none"

    def matches(
        self, event_type: str, account_id: str | None, client_id: str | None, body: Any
    ) -> bool:
        if not type_matches(self.event_types, event_type):
            return False
        if self.account_ids is not None and account_id not in self.account_ids:
            return False
        if self.client_ids is not None and client_id not in self.client_ids:
            return False
        if self.filter is None:
            return True
        try:
            return bool(compile_filter(self.filter).search(body))
        except Exception as exc:
            # A filter that errors on one body (jmespath raises TypeError comparing a string
            # with a number, among others) does not match it. Letting it raise would stall the
            # fan-out of every event behind this one.
            log.warning(
                "subscription_filter_failed",
                subscription_id=self.id,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False


class MatcherIndex:
    """Matchers grouped by the client and the event type they can match, so fan-out asks only
    the subscriptions that could want an event instead of every one for every event.

    Profiled at 2,000 events/s over 200 subscriptions filtered to a client each, fan-out
    matching was 39% of the worker's CPU (every event checked against all 200). Each
    candidate still runs its full `Matcher.matches`, so what matches is unchanged: the index
    only leaves out subscriptions whose client list or event types cannot contain the event's.

    `MatcherCache` keeps one per load of the matchers, with the candidates it has worked out:
    built for every fan-out pass, it cost 11 ms of a worker's CPU per ten-event pass with
    10,000 subscriptions (0.15 ms with 200), more than a core at a hundred passes a second.
    """

    # Distinct (event type, client) pairs remembered; beyond it the memo starts again, so a
    # practice with endless clients cannot grow a worker's memory without bound.
    MEMO = 4096

    def __init__(self, matchers: Sequence[Matcher]) -> None:
        self.ordered = frozenset(m.id for m in matchers if m.ordering == "object")
        self._any_client: list[tuple[int, Matcher]] = []
        self._by_client: dict[str, list[tuple[int, Matcher]]] = {}
        for position, matcher in enumerate(matchers):
            if matcher.client_ids is None:
                self._any_client.append((position, matcher))
            else:
                for client_id in matcher.client_ids:
                    self._by_client.setdefault(client_id, []).append((position, matcher))
        self._candidates: dict[tuple[str, str | None], list[Matcher]] = {}

    def candidates(self, event_type: str, client_id: str | None) -> list[Matcher]:
        """The matchers (in their original order) whose types and clients admit the event."""
        key = (event_type, client_id)
        found = self._candidates.get(key)
        if found is None:
            pairs = self._any_client
            if client_id is not None and client_id in self._by_client:
                pairs = sorted(pairs + self._by_client[client_id], key=lambda p: p[0])
            found = [m for _, m in pairs if type_matches(m.event_types, event_type)]
            if len(self._candidates) >= self.MEMO:
                self._candidates.clear()
            self._candidates[key] = found
        return found


def _matcher(r: asyncpg.Record) -> Matcher:
    return Matcher(
        id=r["id"],
        event_types=tuple(r["event_types"]),
        account_ids=frozenset(r["account_ids"]) if r["account_ids"] is not None else None,
        client_ids=frozenset(r["client_ids"]) if r["client_ids"] is not None else None,
        filter=r["filter"],
        ordering=r["ordering"],
    )


# The version of what decides matching (schema.sql: a trigger changes it in every commit that
# may change it); null only while its row is missing, until the next change makes it again.
_VERSION = "SELECT version FROM subscription_matching WHERE id = 1"
# The live subscriptions' matchers with that version, from one snapshot. The version comes from
# a one-row derived table, so the answer has a row even with no subscriptions (then one with a
# null id) and never depends on the version's row being there.
_MATCHERS_VERSIONED = (
    "SELECT v.version, s.id, s.event_types, s.account_ids, s.client_ids, s.filter, s.ordering "
    f"FROM (SELECT ({_VERSION}) AS version) AS v "
    "LEFT JOIN subscriptions AS s ON s.enabled AND s.deleted_at IS NULL"
)


class MatcherCache:
    """The live subscriptions' matchers, kept by a long-running fan-out (the dispatcher's)
    and read again only when what decides matching changed.

    Loading every subscription for every fan-out pass cost a worker O(subscriptions) per
    stored batch: 200 rows each of 200 passes a second at 2,000 events/s (bench/
    delivery_shape.py), 10,000 rows a pass with 10,000 subscriptions. So did folding a stamp
    from those rows (11-27 ms of Postgres a pass with 10,000). Each pass now reads one version
    row, in the pass's own transaction, so it sees every change committed before that
    statement; a different version reloads the matchers with their version from one
    statement, so the cache is never labelled newer than what it holds. Without the row (lost
    to a TRUNCATE), every pass reloads until a change makes it again.
    """

    def __init__(self) -> None:
        self._version: int | None = None
        self._matchers: list[Matcher] = []
        self._index: MatcherIndex | None = None
        self.loads = 0

    async def matchers(self, conn: Querier) -> list[Matcher]:
        version = await conn.fetchval(_VERSION)
        if version is None or version != self._version:
            rows = await conn.fetch(_MATCHERS_VERSIONED)
            self._matchers = [_matcher(r) for r in rows if r["id"] is not None]
            self._version = rows[0]["version"]
            self._index = None
            self.loads += 1
        return self._matchers

    async def index(self, conn: Querier) -> MatcherIndex:
        """`matchers` as fan-out asks them, indexed (`MatcherIndex`): built once per load."""
        matchers = await self.matchers(conn)
        if self._index is None:
            self._index = MatcherIndex(matchers)
        return self._index


async def load_matchers(
    conn: Querier, ids: Sequence[str] | None = None, *, lock: bool = False
) -> list[Matcher]:
    """Matchers of the enabled, live subscriptions (all, or only `ids`).

    `lock` reads them `FOR SHARE` (in id order, so two lockers never deadlock) for a caller
    whose answer must not be overtaken by a concurrent PATCH or DELETE before it commits.
    """
    rows = await conn.fetch(
        "SELECT id, event_types, account_ids, client_ids, filter, ordering FROM subscriptions "
        "WHERE enabled AND deleted_at IS NULL AND ($1::text[] IS NULL OR id = ANY($1))"
        + (" ORDER BY id FOR SHARE" if lock else ""),
        None if ids is None else list(ids),
    )
    return [_matcher(r) for r in rows]


# ---- the store ---------------------------------------------------------------------------------


def _record(row: asyncpg.Record) -> dict[str, Any]:
    """The public shape of a subscription (never its secret)."""
    return {
        "id": row["id"],
        "url": row["url"],
        "kind": row["kind"],
        "event_types": list(row["event_types"]),
        "account_ids": list(row["account_ids"]) if row["account_ids"] is not None else None,
        "client_ids": list(row["client_ids"]) if row["client_ids"] is not None else None,
        "filter": row["filter"],
        "description": row["description"],
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "ordering": row["ordering"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def create_subscription(
    pool: asyncpg.Pool,
    vault: Vault,
    settings: Settings,
    *,
    url: str,
    kind: str = "webhook",
    event_types: list[str],
    account_ids: list[str] | None = None,
    client_ids: list[str] | None = None,
    filter: str | None = None,
    description: str | None = None,
    ordering: str = "none",
) -> tuple[dict[str, Any], str]:
    """Create a subscription; returns (record, secret). The secret is shown only here.

    Raises InvalidInput for a bad URL (including internal targets unless
    `settings.allow_private_targets`), kind, event type, id list or JMESPath filter.
    """
    checked_url = validate_target_url(url, allow_private=settings.allow_private_targets)
    secret = generate_secret()
    row = await pool.fetchrow(
        f"INSERT INTO subscriptions (url, kind, event_types, account_ids, client_ids, filter, "
        f"description, secret_enc, ordering) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        f"RETURNING {_COLUMNS}",
        checked_url,
        _check_kind(kind),
        _check_event_types(event_types),
        _check_ids(account_ids, "account_ids"),
        _check_ids(client_ids, "client_ids"),
        _check_filter(filter),
        _check_text(description, "description", MAX_DESCRIPTION_LENGTH),
        vault.encrypt(secret),
        _check_ordering(ordering),
    )
    assert row is not None
    return _record(row), secret


async def get_subscription(pool: Querier, id: str) -> dict[str, Any]:
    """One live subscription; NotFound when it does not exist or was deleted."""
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE id = $1 AND deleted_at IS NULL", id
    )
    if row is None:
        raise NotFound("subscription", id)
    return _record(row)


async def list_subscriptions(
    pool: asyncpg.Pool, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Live subscriptions newest first: (page, next_cursor or None)."""
    after = decode_cursor(cursor, str)[0] if cursor else None
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE deleted_at IS NULL "
        "AND ($1::text IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        after,
        check_limit(limit) + 1,
    )
    page = [_record(r) for r in rows[:limit]]
    return page, encode_cursor(page[-1]["id"]) if len(rows) > limit else None


async def update_subscription(
    pool: asyncpg.Pool, settings: Settings, id: str, changes: Mapping[str, Any]
) -> dict[str, Any]:
    """Apply a PATCH: any of url, kind, event_types, account_ids, client_ids, filter,
    description, enabled, ordering. Enabling clears `disabled_reason` and the failure streak
    that may have disabled it (relay/delivery/endpoints.py); disabling sets it to
    "disabled by an operator". Pending deliveries of a disabled subscription are failed
    when they come due (and can be retried once it is enabled again). A change of `ordering`
    applies to deliveries queued from then on (the caller releases parked ones when it is
    turned off: relay.delivery.ordering).
    """
    unknown = set(changes) - _UPDATABLE
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidInput(f"{name} cannot be changed", name)
    values: dict[str, Any] = {}
    if "url" in changes:
        values["url"] = validate_target_url(
            changes["url"], allow_private=settings.allow_private_targets
        )
    if "kind" in changes:
        values["kind"] = _check_kind(changes["kind"])
    if "event_types" in changes:
        values["event_types"] = _check_event_types(changes["event_types"])
    for name in ("account_ids", "client_ids"):
        if name in changes:
            values[name] = _check_ids(changes[name], name)
    if "filter" in changes:
        values["filter"] = _check_filter(changes["filter"])
    if "description" in changes:
        values["description"] = _check_text(
            changes["description"], "description", MAX_DESCRIPTION_LENGTH
        )
    if "ordering" in changes:
        values["ordering"] = _check_ordering(changes["ordering"])
    if "enabled" in changes:
        if not isinstance(changes["enabled"], bool):
            raise InvalidInput("enabled must be true or false", "enabled")
        values["enabled"] = changes["enabled"]
        values["disabled_reason"] = None if changes["enabled"] else "disabled by an operator"
        if changes["enabled"]:
            # A fresh start: the failure streak that may have disabled it no longer counts.
            values["failing_since"] = None
            values["failed_attempts"] = 0
    if not values:
        return await get_subscription(pool, id)
    names = list(values)
    assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
    row = await pool.fetchrow(
        f"UPDATE subscriptions SET {assignments}, updated_at = now() "
        f"WHERE id = $1 AND deleted_at IS NULL RETURNING {_COLUMNS}",
        id,
        *(values[name] for name in names),
    )
    if row is None:
        raise NotFound("subscription", id)
    return _record(row)


async def delete_subscription(pool: asyncpg.Pool, id: str) -> None:
    """Soft-delete: nothing more is sent to it; its deliveries stay readable."""
    done = await pool.fetchval(
        "UPDATE subscriptions SET deleted_at = now(), enabled = false, "
        "disabled_reason = 'deleted', updated_at = now() "
        "WHERE id = $1 AND deleted_at IS NULL RETURNING id",
        id,
    )
    if done is None:
        raise NotFound("subscription", id)


async def rotate_secret(pool: asyncpg.Pool, vault: Vault, id: str) -> tuple[dict[str, Any], str]:
    """A new secret; the one it replaces keeps signing alongside it for 24 hours.

    Rotations of one subscription run one at a time (the row is locked `FOR UPDATE`), and each
    keeps its promise even when they overlap: two rotations at once give secrets S0 -> S1 ->
    S2, and S0 (the one receivers have) signs until 24 h after the first, S1 (the one the first
    caller was given) until 24 h after the second, S2 from now on. Every webhook carries one
    signature per secret still in its overlap. At most `MAX_SIGNING_SECRETS` sign at once: a
    rotation that would need more is a Conflict naming when the oldest one expires.
    """
    secret = generate_secret()
    async with pool.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(
            "SELECT now() AS now, previous_secret_enc, previous_secret_expires_at, "
            "older_secrets FROM subscriptions WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
            id,
        )
        if current is None:
            raise NotFound("subscription", id)
        now: datetime = current["now"]
        older = [o for o in current["older_secrets"] if _expiry(o) > now]
        if current["previous_secret_enc"] and current["previous_secret_expires_at"] > now:
            older.append(
                {
                    "secret_enc": current["previous_secret_enc"],
                    "expires_at": current["previous_secret_expires_at"].isoformat(),
                }
            )
        if len(older) + 2 > MAX_SIGNING_SECRETS:
            soonest = min(_expiry(o) for o in older)
            raise Conflict(
                f"subscription {id!r} already signs with {len(older) + 1} secrets, each kept for "
                f"24 h after its rotation; the oldest expires at {soonest:%Y-%m-%dT%H:%M:%SZ}, "
                "rotate again after that"
            )
        row = await conn.fetchrow(
            "UPDATE subscriptions SET older_secrets = $4, previous_secret_enc = secret_enc, "
            "previous_secret_expires_at = now() + $3::interval, secret_enc = $2, "
            f"updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
            id,
            vault.encrypt(secret),
            ROTATION_OVERLAP,
            older,
        )
    assert row is not None
    log.info("subscription_secret_rotated", subscription_id=id, signing_secrets=len(older) + 2)
    return _record(row), secret


def _expiry(older: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(older["expires_at"])


def signing_keys(
    vault: Vault,
    secret_enc: str,
    previous_secret_enc: str | None,
    previous_expires_at: datetime | None,
    now: datetime,
    older_secrets: Sequence[Mapping[str, Any]] = (),
) -> list[bytes]:
    """HMAC keys to sign with: the current secret, plus every replaced one still in its
    overlap (the previous one, then `older_secrets` newest first)."""
    keys = [secret_key(vault.decrypt(secret_enc))]
    for enc, expires_at in _replaced(previous_secret_enc, previous_expires_at, older_secrets):
        if expires_at > now:
            keys.append(secret_key(vault.decrypt(enc)))
    return keys


def signing_keys_change_at(
    previous_expires_at: datetime | None,
    older_secrets: Sequence[Mapping[str, Any]],
    now: datetime,
) -> datetime | None:
    """When the keys `signing_keys` gives now next change (a replaced secret's overlap ends);
    None when only the current secret signs. Lets a caller cache the decrypted keys."""
    ends = [_expiry(o) for o in older_secrets]
    if previous_expires_at is not None:
        ends.append(previous_expires_at)
    return min((e for e in ends if e > now), default=None)


def _replaced(
    previous_secret_enc: str | None,
    previous_expires_at: datetime | None,
    older_secrets: Sequence[Mapping[str, Any]],
) -> list[tuple[str, datetime]]:
    found = [(o["secret_enc"], _expiry(o)) for o in reversed(older_secrets)]
    if previous_secret_enc and previous_expires_at is not None:
        found.insert(0, (previous_secret_enc, previous_expires_at))
    return found


async def disable_subscription(conn: Querier, id: str, reason: str) -> bool:
    """Turn a subscription off with a reason (e.g. its endpoint answered 410 Gone)."""
    done = await conn.fetchval(
        "UPDATE subscriptions SET enabled = false, disabled_reason = $2, updated_at = now() "
        "WHERE id = $1 AND enabled RETURNING id",
        id,
        reason,
    )
    return done is not None


async def rekey_secrets(
    pool: asyncpg.Pool, vault: Vault, after: str, limit: int
) -> tuple[str | None, int, int, list[str]]:
    """One `relay rekey` batch: the next `limit` subscriptions after id `after` (deleted ones
    too), with the current secret, the previous one and every `older_secrets` entry
    re-encrypted under the newest key (expired ones as well: they are ciphertext under a key
    about to be dropped, and rewriting them costs nothing).

    Rows are locked for the batch's short transaction, so a rotation running at the same time
    waits and then builds its lists from the rewritten values. Returns (last id, rows seen,
    rows rewritten, ids of which some secret no listed key decrypts)."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT id, secret_enc, previous_secret_enc, older_secrets FROM subscriptions "
            "WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE",
            after,
            limit,
        )
        changed: list[tuple[str, str, str | None, list[dict[str, Any]]]] = []
        unreadable: list[str] = []
        for row in rows:
            try:
                secret = vault.rekeyed(row["secret_enc"])
                previous = row["previous_secret_enc"]
                new_previous = vault.rekeyed(previous) if previous else None
                older = [dict(o) for o in row["older_secrets"]]
                new_older = [vault.rekeyed(o["secret_enc"]) for o in older]
            except ConfigError:
                unreadable.append(row["id"])
                continue
            if secret is None and new_previous is None and not any(new_older):
                continue
            for entry, new in zip(older, new_older, strict=True):
                if new is not None:
                    entry["secret_enc"] = new
            kept_secret = secret or row["secret_enc"]
            changed.append((row["id"], kept_secret, new_previous or previous, older))
        await conn.executemany(
            "UPDATE subscriptions SET secret_enc = $2, previous_secret_enc = $3, "
            "older_secrets = $4 WHERE id = $1",
            changed,
        )
    return (rows[-1]["id"] if rows else None), len(rows), len(changed), unreadable


async def count_all_subscriptions(db: Querier) -> int:
    """Every subscription row, deleted ones too (what `relay rekey` goes through)."""
    return int(await db.fetchval("SELECT count(*) FROM subscriptions"))


# ---- for fan-out, recovery and dead endpoints: the subscriptions statements they run ----------


async def share_subscription(conn: Querier, id: str) -> asyncpg.Record | None:
    """A live (not deleted) subscription's state, read `FOR SHARE`: a DELETE or a disabling
    PATCH racing the caller's transaction either came first or waits until it commits. None
    when there is no such subscription."""
    return await conn.fetchrow(
        "SELECT id, enabled, disabled_reason, ordering, account_ids, client_ids FROM subscriptions "
        "WHERE id = $1 AND deleted_at IS NULL FOR SHARE",
        id,
    )


_LOCK_STREAKS = """
SELECT id FROM subscriptions
WHERE id = ANY($1::text[]) AND (id = ANY($2::text[]) OR failing_since IS NOT NULL
                                 OR failed_attempts > 0)
ORDER BY id FOR NO KEY UPDATE
"""

_ADD_STREAKS = """
WITH s AS (
    SELECT * FROM unnest($1::text[], $2::bool[], $3::int[], $4::timestamptz[])
        AS s(id, reset, failures, first_failed_at)
)
UPDATE subscriptions AS t SET
    failing_since = CASE WHEN s.reset OR t.failing_since IS NULL THEN s.first_failed_at
                         ELSE t.failing_since END,
    failed_attempts = CASE WHEN s.reset THEN s.failures ELSE t.failed_attempts + s.failures END
FROM s
WHERE t.id = ANY($1::text[]) AND t.id = s.id
RETURNING t.id, t.failing_since, t.failed_attempts,
    t.enabled AND t.deleted_at IS NULL AND t.failed_attempts >= $6
    AND t.failing_since <= now() - make_interval(secs => $5) AS dead
"""


async def lock_streak_rows(
    conn: Querier, subscription_ids: Sequence[str], failing: Sequence[str]
) -> list[str]:
    """Lock, in id order (`FOR NO KEY UPDATE`), those of `subscription_ids` that are in
    `failing` or have a stored failure streak; returns their ids."""
    rows = await conn.fetch(_LOCK_STREAKS, list(subscription_ids), list(failing))
    return [row["id"] for row in rows]


async def add_failure_streaks(
    conn: Querier,
    ids: Sequence[str],
    resets: Sequence[bool],
    failures: Sequence[int],
    first_failed_at: Sequence[datetime | None],
    *,
    disable_after: float,
    min_failed_attempts: int,
) -> list[asyncpg.Record]:
    """Per subscription, end its stored streak (`reset`) or extend it by `failures`; returns
    (id, failing_since, failed_attempts, dead): `dead` when it is enabled, live, has at least
    `min_failed_attempts` failures and has been failing for `disable_after` seconds."""
    return await conn.fetch(
        _ADD_STREAKS,
        list(ids),
        list(resets),
        list(failures),
        list(first_failed_at),
        disable_after,
        min_failed_attempts,
    )


async def endpoint_summary(conn: Querier, id: str) -> asyncpg.Record | None:
    """What a `subscription.disabled` event reports of a subscription (deleted ones too)."""
    return await conn.fetchrow(
        "SELECT id, kind, url, event_types, description, failing_since, failed_attempts "
        "FROM subscriptions WHERE id = $1",
        id,
    )
