"""`relay rekey`: re-encrypt every stored secret under the newest `RELAY_SECRET_KEY`.

Key rotation is: put the new key first in `RELAY_SECRET_KEY` (the old one after it) and restart,
run `relay rekey`, then drop the old key. What is encrypted at rest, and so rewritten here:
every account's upstream token (`accounts.api_token_enc`) and every subscription's signing
secrets (`secret_enc`, `previous_secret_enc` and each `older_secrets` entry), deleted rows too.

It works in short batches in id order, each its own transaction, and rewrites only values not
already under the newest key. A run that crashes or is killed half way leaves every finished
batch finished; running it again skips those rows (counted as already current) and does the
rest. A value no listed key decrypts is reported by id, never skipped silently: the run goes
on with the others and ends with a failure so the old key is not dropped yet.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import structlog

from relay.delivery.subscriptions import count_all_subscriptions, rekey_secrets
from relay.sources.accounts import count_all_accounts, rekey_tokens
from relay.vault import Vault

log = structlog.get_logger("relay.cli.rekey")

BATCH_SIZE = 200

Batch = Callable[[asyncpg.Pool, Vault, str, int], Awaitable[tuple[str | None, int, int, list[str]]]]
Count = Callable[[asyncpg.Pool], Awaitable[int]]
# What is rekeyed, in order: (table, the owning module's batch and count functions).
TABLES: tuple[tuple[str, Batch, Count], ...] = (
    ("accounts", rekey_tokens, count_all_accounts),
    ("subscriptions", rekey_secrets, count_all_subscriptions),
)


@dataclass
class TableCount:
    """One table's tally: rows looked at, rows rewritten, ids that could not be decrypted."""

    total: int = 0
    seen: int = 0
    rekeyed: int = 0
    unreadable: list[str] = field(default_factory=list)


# Called after every batch with the table's name and its tally so far (the CLI prints it).
Progress = Callable[[str, TableCount], None]


async def rekey(
    pool: asyncpg.Pool,
    vault: Vault,
    *,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
) -> dict[str, TableCount]:
    """Rewrite every stored secret under the newest key; returns the tally per table."""
    counts: dict[str, TableCount] = {}
    for table, batch, count_rows in TABLES:
        count = counts[table] = TableCount()
        count.total = await count_rows(pool)
        after = ""
        while True:
            last, seen, rekeyed, unreadable = await batch(pool, vault, after, batch_size)
            count.seen += seen
            count.rekeyed += rekeyed
            count.unreadable += unreadable
            if progress is not None:
                progress(table, count)
            if last is None or seen < batch_size:
                break
            after = last
        log.info(
            "rekey_table_done",
            table=table,
            seen=count.seen,
            rekeyed=count.rekeyed,
            unreadable=len(count.unreadable),
        )
    return counts
