"""The poller: runs an account's poll passes against its source and feeds snapshots and events.

It knows an upstream only through `relay.sources.source` (opened by `relay.sources.registry`),
so it may import the foundation, `relay.sources` and `relay.snapshots` (which it feeds), and
`relay.events` for the account's own events; never delivery, api, ui or cli.

One `Poller.run_account` call holds the account's Postgres lease (`state`) and runs the
account's source by its shape until `run_seconds` are up. A `ScopedSource` (Dext, described in
`relay.sources.dext_source`) is polled by planned tasks (`plan` says how often); what each task
kind does, with Dext's reads as the example:

- `clients`: every page of the scope list (/clients) -> client snapshots
  (client.health_changed); the list also creates or prunes the per-client tasks.
- `baseline` / `sweep`: a complete scan of the scan parts (every /costs then /sales page, full
  items, per_page 50), a few pages per run with the cursor kept in Postgres, recorded as one
  complete scan. At its end the scan's deletion candidates are confirmed one by one (the
  detail, `GET /costs/{id}` -> 404) and only those are reported deleted; a page that failed
  makes the scan partial, which deletes nothing. The first such scan of a client is its
  baseline (emits nothing unless the account backfills), also for a client that appears after
  the account's baseline: its backlog is history, not news. A first scan that skipped a page
  is no baseline; it starts again after `Policy.baseline_retry`, and the client's document
  polls wait for it.
- `head`: the head's page 1 (/documents, newest first, per_page 100) and the next pages while
  their tail is still unseen; full items are fetched only for new or changed summaries.
- `hot`: the status views: the `always` ones every page (Dext: ready), the `if_old` ones only
  when a stored item in that status is older than the head page reaches (processing, review:
  entered only from newer ones). A stored item missing from its status list changed: its
  detail is fetched. Then a one-item probe (archived): when its total differs from what is
  stored, that view is read to find what moved.
- the scope lists (`suppliers`, `expense_reports`, `connections`): read whole -> snapshots.

Errors: `invalid_token` marks the account broken and stores one `account.auth_failed`; the
next successful pass stores `account.recovered`. A malformed page is logged and skipped (the
scan becomes partial); an object on a page that cannot be used is set aside by the connector
(the page goes on, a scan with one deletes nothing, a client list with one prunes nothing) and
the run's set-asides become the account's `warnings` (`relay.poller.account_warnings`); an upstream
outage ends the pass and leaves the task due.

A lists-only `Source` (InvoiceXT) is polled by `lists`: each list's head often, its complete
scan (the only read that may delete) rarely, within the source's budget.

The package: `plan` (the pure planner: what to poll next within the budget), `state` (the
poll_tasks and poll_state tables: schedules, leases, which accounts are due), `runner` (the
`Poller`: one account's pass under its lease, and its auth bookkeeping), `tasks` (the
strategies of a scoped source's task kinds), `lists` (the lists-only pass), `pages` (reading
upstream lists page by page), `progress` (how far baselines are, for the account resource)
and `account_warnings` (what the connector set aside).
"""

from __future__ import annotations

from relay.errors import LeaseLost
from relay.poller.runner import UNSUPPORTED_PROVIDER, Poller, RunReport, default_holder

__all__ = [
    "UNSUPPORTED_PROVIDER",
    "LeaseLost",
    "Poller",
    "RunReport",
    "default_holder",
]
