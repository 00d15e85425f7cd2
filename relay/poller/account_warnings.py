"""The account_warnings store: upstream objects an account's polls had to set aside, per kind.

A poll run drains its connector's `SetAsideTally` into `record_set_aside` once, at its end: one
upsert per kind (the count grows, `last_seen` moves, the example is the latest reason), one log
line per kind, however many objects there were. `warnings_of` reads them for the account
resource (`GET /v1/accounts/{id}`), oldest kind first. Reasons name an endpoint, a position, an
id and a field's problem; they never carry a value from the upstream, nor a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from relay.db import Executor
from relay.sources.models import SetAsideTally

log = structlog.get_logger("relay.poller.account_warnings")

# An example longer than this is cut: it is for a person to read, not a record of the object.
MAX_EXAMPLE = 500

_UPSERT = """
INSERT INTO account_warnings AS w (account_id, kind, count, example)
SELECT $1, kind, n, example FROM unnest($2::text[], $3::bigint[], $4::text[]) AS t(kind, n, example)
ON CONFLICT (account_id, kind) DO UPDATE
SET count = w.count + excluded.count, last_seen = now(), example = excluded.example
"""


async def record_set_aside(db: Executor, account_id: str, tally: SetAsideTally) -> None:
    """Add one poll run's set-aside objects to the account's warnings and log each kind once."""
    kinds = sorted(kind for kind, n in tally.counts.items() if n > 0)
    if not kinds:
        return
    examples = [tally.examples.get(kind, "")[:MAX_EXAMPLE] for kind in kinds]
    counts = [tally.counts[kind] for kind in kinds]
    await db.execute(_UPSERT, account_id, kinds, counts, examples)
    for kind, count, example in zip(kinds, counts, examples, strict=True):
        log.warning(
            "upstream_objects_set_aside",
            account_id=account_id,
            kind=kind,
            count=count,
            example=example,
        )


async def warnings_of(db: Executor, account_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Each account's warnings as the API shows them: kind, count, first_seen, last_seen and
    an example reason; an account without any maps to an empty list."""
    rows = await db.fetch(
        "SELECT account_id, kind, count, first_seen, last_seen, example FROM account_warnings "
        "WHERE account_id = ANY($1::text[]) ORDER BY account_id, first_seen, kind",
        list(account_ids),
    )
    out: dict[str, list[dict[str, Any]]] = {account_id: [] for account_id in account_ids}
    for row in rows:
        out[row["account_id"]].append(
            {
                "kind": row["kind"],
                "count": row["count"],
                "first_seen": row["first_seen"],
                "last_seen": row["last_seen"],
                "example": row["example"],
            }
        )
    return out
