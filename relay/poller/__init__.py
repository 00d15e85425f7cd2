"""The poller: runs an account's planned poll tasks against Dext and feeds snapshots and events.

One `Poller.run_account` call holds the account's Postgres lease, plans with
`relay.poller.plan` and runs tasks until nothing is due before `run_seconds` are up. What each
task kind does (the module docstring of `relay.poller.plan` says how often):

- `clients`: every /clients page -> client snapshots (client.health_changed); the list also
  creates or prunes the per-client tasks.
- `baseline` / `sweep`: every /costs then /sales page (full items, per_page 50), a few pages
  per run with the cursor kept in Postgres, recorded as one complete scan. At its end the scan's
  deletion candidates are confirmed one by one (`GET /costs/{id}` -> 404) and only those are
  reported deleted; a page that failed makes the scan partial, which deletes nothing. The
  first such scan of a client is its baseline (emits nothing unless the account backfills),
  also for a client that appears after the account's baseline: its backlog is history, not
  news. A first scan that skipped a page is no baseline; it starts again after
  `Policy.baseline_retry`, and the client's document polls wait for it.
- `head`: /documents page 1 (newest first, per_page 100) and the next pages while their tail
  is still unseen; full items are fetched only for new or changed summaries.
- `hot`: /documents?status=ready every page, and processing/review only when a stored item in
  that status is older than the head page reaches (those statuses are entered only from newer
  ones). A stored item missing from its status list changed: its detail is fetched. Then a
  one-item probe of status=archived: when its total differs from what is stored, the archived
  list is read to find what moved (published -> archived happens to old items).
- `suppliers`, `expense_reports`, `connections`: their lists -> snapshots.

Errors: `invalid_token` marks the account broken and stores one `account.auth_failed`; the
next successful pass stores `account.recovered`. A malformed page is logged and skipped (the
scan becomes partial); an object on a page that cannot be used is set aside by the connector
(the page goes on, a scan with one deletes nothing, a client list with one prunes nothing) and
the run's set-asides become the account's `warnings` (`relay.poller.account_warnings`); an upstream
outage ends the pass and leaves the task due.

An account of a lists-only source (InvoiceXT) is polled by `lists`, which knows it only through
the `relay.sources.source.Source` protocol (opened by `relay.sources.registry`): each list's
head often, its complete scan (the only read that may delete) rarely, within the source's
budget.

The package: `runner` (the `Poller`, its run loop under the lease, and the account's pass and
auth bookkeeping), `tasks` (what each Dext task kind does), `lists` (the source-generic pass),
`pages` (reading upstream lists page by page) and `progress` (how far baselines are, for the
account resource).
"""

from __future__ import annotations

from relay.errors import LeaseLost
from relay.poller.runner import UNSUPPORTED_PROVIDER, Poller, RunReport, default_holder
from relay.poller.tasks import (
    BASELINE_PAGES,
    HEAD_MAX_PAGES,
    HOT_ALWAYS,
    HOT_IF_OLD,
    PROBED,
    WORKSPACES,
)

__all__ = [
    "BASELINE_PAGES",
    "HEAD_MAX_PAGES",
    "HOT_ALWAYS",
    "HOT_IF_OLD",
    "PROBED",
    "UNSUPPORTED_PROVIDER",
    "WORKSPACES",
    "LeaseLost",
    "Poller",
    "RunReport",
    "default_holder",
]
