"""The accounts store: upstream logins, their encrypted tokens and their polling state.

An account moves `baselining` -> `active` once its first full scan is stored
(`complete_baseline`), to `broken` when the upstream rejects its token (`mark_broken`), and back
(`mark_recovered`, or a new token through `update_account`). Deleting is soft (`deleted_at`):
polling stops, the account's events stay, and the account answers 404 from then on.

The poll scheduler reads this module only: `list_pollable_accounts` says what to poll,
`account_token` decrypts the credential, and the `record_*` / `mark_*` functions write back
what a poll saw. `request_poll` records "poll now" durably in `poll_requested_at`; the scheduler
clears it with `clear_poll_request` once a full pass that started after the request is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from relay.db import Executor
from relay.errors import ConfigError, InvalidInput, NotFound
from relay.paging import check_limit, decode_cursor, encode_cursor
from relay.vault import Vault

log = structlog.get_logger("relay.sources.accounts")

PROVIDERS = ("dext", "invoicext")
STATUSES = ("baselining", "active", "broken")
# Redis channel told about "poll now" requests; a wake-up only, Postgres holds the request.
POLL_CHANNEL = "relay:poll-requested"
# A broken account is retried this often in case the token works again upstream.
BROKEN_RETRY = timedelta(minutes=15)
# `window_seconds`, `monthly` and `missing_scopes`: InvoiceXT's rolling hour, its billing period
# (calls used and allowed, when it ends, the pace it affords) and the scopes its key lacks.
_RATE_LIMIT_KEYS = (
    "limit",
    "remaining",
    "reset_at",
    "throttled_last_hour",
    "window_seconds",
    "monthly",
    "missing_scopes",
)

_COLUMNS = (
    "id, provider, name, base_url, api_token_enc, backfill, status, baseline_completed_at, "
    "last_poll_at, last_error, broken_at, rate_limit, poll_requested_at, created_at"
)


@dataclass(frozen=True)
class Account:
    """One account row; `api_token_enc` is ciphertext and never leaves this process."""

    id: str
    provider: str
    name: str
    base_url: str
    api_token_enc: str = field(repr=False)
    backfill: bool
    status: str
    baseline_completed_at: datetime | None
    last_poll_at: datetime | None
    last_error: str | None
    broken_at: datetime | None
    rate_limit: dict[str, Any]
    poll_requested_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Account:
        return cls(**dict(row))

    def public(self) -> dict[str, Any]:
        """The account as the admin API shows it (relay.md); the token is never part of it."""
        return {
            "id": self.id,
            "provider": self.provider,
            "name": self.name,
            "base_url": self.base_url,
            "status": self.status,
            "backfill": self.backfill,
            "baseline_completed_at": self.baseline_completed_at,
            "last_poll_at": self.last_poll_at,
            "last_error": self.last_error,
            "rate_limit": {
                "limit": self.rate_limit.get("limit"),
                "remaining": self.rate_limit.get("remaining"),
                "reset_at": self.rate_limit.get("reset_at"),
                "throttled_last_hour": self.rate_limit.get("throttled_last_hour") or 0,
                # InvoiceXT: the rolling window, the billing period, the scopes the key lacks.
                **{
                    key: self.rate_limit[key]
                    for key in ("window_seconds", "monthly", "missing_scopes")
                    if key in self.rate_limit
                },
            },
            "poll_requested_at": self.poll_requested_at,
            "created_at": self.created_at,
        }


async def create_account(
    pool: asyncpg.Pool,
    vault: Vault,
    *,
    provider: str,
    name: str,
    base_url: str,
    api_token: str,
    backfill: bool = False,
) -> Account:
    """Store a new account, its token encrypted; it starts `baselining` (nothing emitted)."""
    if provider not in PROVIDERS:
        raise InvalidInput(f"provider must be one of {', '.join(PROVIDERS)}", "provider")
    row = await pool.fetchrow(
        f"INSERT INTO accounts (provider, name, base_url, api_token_enc, backfill) "
        f"VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
        provider,
        name,
        base_url,
        vault.encrypt(api_token),
        backfill,
    )
    assert row is not None
    account = Account.from_row(row)
    log.info("account_created", account_id=account.id, provider=provider)
    return account


async def get_account(db: Executor, account_id: str) -> Account:
    """The live account with this id, or NotFound (also for a deleted one)."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM accounts WHERE id = $1 AND deleted_at IS NULL", account_id
    )
    if row is None:
        raise NotFound("account", account_id)
    return Account.from_row(row)


def _after(cursor: str) -> tuple[datetime, str]:
    created_at, account_id = decode_cursor(cursor, str, str)
    try:
        when = datetime.fromisoformat(created_at)
    except ValueError:
        raise InvalidInput("cursor is not a cursor this API returned", "cursor") from None
    if when.tzinfo is None:
        raise InvalidInput("cursor is not a cursor this API returned", "cursor")
    return when, account_id


async def list_accounts(
    pool: asyncpg.Pool, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[Account], str | None]:
    """Live accounts newest first, keyset-paginated on (created_at, id); a bad cursor is a 400."""
    after = _after(cursor) if cursor else None
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM accounts WHERE deleted_at IS NULL "
        "AND ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2)) "
        "ORDER BY created_at DESC, id DESC LIMIT $3",
        after[0] if after else None,
        after[1] if after else "",
        check_limit(limit) + 1,
    )
    accounts = [Account.from_row(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = accounts[-1]
        next_cursor = encode_cursor(last.created_at.isoformat(), last.id)
    return accounts, next_cursor


async def update_account(
    pool: asyncpg.Pool,
    vault: Vault,
    account_id: str,
    *,
    name: str | None = None,
    base_url: str | None = None,
    api_token: str | None = None,
) -> Account:
    """Change name, base URL or token. A new token clears `broken` and asks for a poll at once."""
    token_enc = vault.encrypt(api_token) if api_token is not None else None
    row = await pool.fetchrow(
        f"""
        UPDATE accounts SET
            name = coalesce($2, name),
            base_url = coalesce($3, base_url),
            api_token_enc = coalesce($4, api_token_enc),
            status = CASE WHEN $4::text IS NOT NULL AND status = 'broken'
                          THEN CASE WHEN baseline_completed_at IS NULL
                                    THEN 'baselining' ELSE 'active' END
                          ELSE status END,
            broken_at = CASE WHEN $4::text IS NOT NULL THEN NULL ELSE broken_at END,
            last_error = CASE WHEN $4::text IS NOT NULL THEN NULL ELSE last_error END,
            poll_requested_at = CASE WHEN $4::text IS NOT NULL THEN now()
                                     ELSE poll_requested_at END,
            updated_at = now()
        WHERE id = $1 AND deleted_at IS NULL
        RETURNING {_COLUMNS}
        """,
        account_id,
        name,
        base_url,
        token_enc,
    )
    if row is None:
        raise NotFound("account", account_id)
    log.info(
        "account_updated",
        account_id=account_id,
        fields=[
            k
            for k, v in (("name", name), ("base_url", base_url), ("api_token", api_token))
            if v is not None
        ],
    )
    return Account.from_row(row)


async def delete_account(pool: asyncpg.Pool, account_id: str) -> None:
    """Soft-delete: polling stops and the account answers 404; its events are kept."""
    done = await pool.fetchval(
        "UPDATE accounts SET deleted_at = now(), updated_at = now() "
        "WHERE id = $1 AND deleted_at IS NULL RETURNING id",
        account_id,
    )
    if done is None:
        raise NotFound("account", account_id)
    log.info("account_deleted", account_id=account_id)


async def request_poll(pool: asyncpg.Pool, redis: aioredis.Redis, account_id: str) -> datetime:
    """Ask for a full poll of the account now; returns when the request was recorded.

    The request lives in Postgres (`poll_requested_at`) so it survives a Redis flush; the
    publish on `POLL_CHANNEL` only wakes a scheduler early, and its failure loses nothing.
    """
    requested_at = await pool.fetchval(
        "UPDATE accounts SET poll_requested_at = now() "
        "WHERE id = $1 AND deleted_at IS NULL RETURNING poll_requested_at",
        account_id,
    )
    if requested_at is None:
        raise NotFound("account", account_id)
    try:
        await redis.publish(POLL_CHANNEL, account_id)
    except (RedisError, OSError) as exc:
        log.warning("poll_wakeup_failed", account_id=account_id, error=type(exc).__name__)
    log.info("poll_requested", account_id=account_id)
    assert isinstance(requested_at, datetime)
    return requested_at


# --- what the poll scheduler calls -------------------------------------------------------------


async def list_pollable_accounts(
    pool: asyncpg.Pool, *, broken_retry: timedelta = BROKEN_RETRY
) -> list[Account]:
    """Accounts a scheduler should poll now, oldest poll first.

    Every live account, except a `broken` one whose last failure is more recent than
    `broken_retry` (15 minutes) and which has no poll request newer than that failure: a revoked
    token is retried now and then, not hammered. `poll_requested_at` on the returned accounts
    says a full pass was asked for; `backfill` and `baseline_completed_at` say whether this
    pass is the baseline and whether it emits.
    """
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM accounts WHERE deleted_at IS NULL AND ("
        "status <> 'broken' OR broken_at IS NULL OR broken_at <= now() - $1::interval "
        "OR poll_requested_at > broken_at) "
        "ORDER BY last_poll_at ASC NULLS FIRST, id",
        broken_retry,
    )
    return [Account.from_row(row) for row in rows]


def account_token(vault: Vault, account: Account) -> str:
    """The account's upstream token in clear: pass it to the connector, never log it."""
    return vault.decrypt(account.api_token_enc)


async def clear_poll_request(conn: Executor, account_id: str, started_at: datetime) -> None:
    """Forget a poll request once a full pass that began at `started_at` has finished.

    Only requests made before the pass began are cleared, so a "poll now" arriving mid-pass
    still gets a pass of its own.
    """
    await conn.execute(
        "UPDATE accounts SET poll_requested_at = NULL WHERE id = $1 AND poll_requested_at <= $2",
        account_id,
        started_at,
    )


async def mark_broken(conn: Executor, account_id: str, error: str) -> bool:
    """The upstream rejected the token: stop regular polling; True if it was not broken yet.

    The return value lets the caller emit `account.auth_failed` exactly once per breakage.
    """
    was_healthy = await conn.fetchval(
        "WITH old AS (SELECT status FROM accounts WHERE id = $1 FOR UPDATE) "
        "UPDATE accounts SET status = 'broken', broken_at = now(), last_error = $2, "
        "updated_at = now() FROM old WHERE accounts.id = $1 RETURNING old.status <> 'broken'",
        account_id,
        error,
    )
    return bool(was_healthy)


async def mark_recovered(conn: Executor, account_id: str) -> bool:
    """The token works again: back to `active` (or `baselining`); True if it was broken.

    The return value lets the caller emit `account.recovered` exactly once.
    """
    was_broken = await conn.fetchval(
        "UPDATE accounts SET status = CASE WHEN baseline_completed_at IS NULL "
        "THEN 'baselining' ELSE 'active' END, broken_at = NULL, last_error = NULL, "
        "updated_at = now() WHERE id = $1 AND status = 'broken' RETURNING id",
        account_id,
    )
    return was_broken is not None


async def record_poll_success(conn: Executor, account_id: str) -> None:
    """A poll finished without error: set `last_poll_at` and clear `last_error`."""
    await conn.execute(
        "UPDATE accounts SET last_poll_at = now(), "
        "last_error = CASE WHEN status = 'broken' THEN last_error END WHERE id = $1",
        account_id,
    )


async def record_poll_error(conn: Executor, account_id: str, error: str) -> None:
    """A poll failed for a reason other than the token (upstream down, protocol error)."""
    await conn.execute(
        "UPDATE accounts SET last_error = $2 WHERE id = $1", account_id, error[:1000]
    )


async def record_rate_limit(conn: Executor, account_id: str, state: dict[str, Any]) -> None:
    """Store the limiter's view `{limit, remaining, reset_at, throttled_last_hour}` for the API.

    Other keys are ignored; `reset_at` may be a datetime or an RFC 3339 string.
    """
    kept = {key: state[key] for key in _RATE_LIMIT_KEYS if key in state}
    if isinstance(kept.get("reset_at"), datetime):
        kept["reset_at"] = kept["reset_at"].isoformat().replace("+00:00", "Z")
    await conn.execute(
        "UPDATE accounts SET rate_limit = rate_limit || $2::jsonb WHERE id = $1",
        account_id,
        kept,
    )


async def complete_baseline(conn: Executor, account_id: str) -> None:
    """The first full scan is stored: from now on changes emit events (`active`)."""
    await conn.execute(
        "UPDATE accounts SET baseline_completed_at = coalesce(baseline_completed_at, now()), "
        "status = CASE WHEN status = 'baselining' THEN 'active' ELSE status END, "
        "updated_at = now() WHERE id = $1",
        account_id,
    )


async def rekey_tokens(
    pool: asyncpg.Pool, vault: Vault, after: str, limit: int
) -> tuple[str | None, int, int, list[str]]:
    """One `relay rekey` batch: the next `limit` accounts after id `after` (deleted ones too,
    their tokens are ciphertext all the same), each token re-encrypted under the newest key.

    Rows are locked for the batch's short transaction, so a concurrent PATCH of the token waits
    and then writes its own (newest-key) value. Returns (last id, rows seen, rows rewritten,
    ids no listed key decrypts)."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT id, api_token_enc FROM accounts WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE",
            after,
            limit,
        )
        changed: list[tuple[str, str]] = []
        unreadable: list[str] = []
        for row in rows:
            try:
                new = vault.rekeyed(row["api_token_enc"])
            except ConfigError:
                unreadable.append(row["id"])
                continue
            if new is not None:
                changed.append((row["id"], new))
        await conn.executemany("UPDATE accounts SET api_token_enc = $2 WHERE id = $1", changed)
    return (rows[-1]["id"] if rows else None), len(rows), len(changed), unreadable


async def rate_limits_by_account(conn: Executor) -> list[asyncpg.Record]:
    """(id, status, rate_limit) of every live account, for the /metrics gauges."""
    return await conn.fetch("SELECT id, status, rate_limit FROM accounts WHERE deleted_at IS NULL")


async def count_all_accounts(db: Executor) -> int:
    """Every account row, deleted ones too (what `relay rekey` goes through)."""
    return int(await db.fetchval("SELECT count(*) FROM accounts"))
