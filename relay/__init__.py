"""Relay: a webhook relay and change-detection daemon for bookkeeping platforms without webhooks.

The package is laid out as the pipeline one upstream change travels, stage by stage:

    sources/    one module per upstream (Dext, InvoiceXT), the rate limiters, the typed results
    poller/     which account and list to read next within the budget, and one account's pass
    snapshots/  what was last seen, the diff against it, and what counts as a change (rules)
    events.py   the outbox both halves share: one row per change, its webhook body
    delivery/   fan-out to subscriptions, the dispatcher, signing, retries, Slack, recovery
    api/, ui/   the admin API (and the /metrics scrape) and the operator console, on the side
    cli/        the `relay` command: every process, the operator commands, developer tools
    sandbox/    simulated upstreams for demos and tests
    retention   pruning of what the stores keep

Below them sits the foundation, which every stage may import and which imports no stage:
`settings`, `db`, `errors`, `logs`, `ids`, `vault`, `metrics` (worker side), `http`,
`exactjson`, `paging`. A stage imports the foundation and the stages before it, never a later
one; tests/test_layout.py checks that, and that each table's SQL stays in its owner module.
`workers/` (arq) hosts the jobs and imports `relay`, never the reverse.
"""

__version__ = "0.1.0"
