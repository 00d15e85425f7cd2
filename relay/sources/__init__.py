"""The sources: one module per upstream, and what the poller knows of any of them.

`source` is the protocol the poller calls (`Source` for an upstream with lists only,
`ScopedSource` for one whose objects live per client); `registry` opens an account's source by
its provider. Dext: `dext` (the client of its API) and `dext_source` (what the poller reads of
a practice, and why); InvoiceXT: `invoicext` and `invoicext_events` (its webhook body). Also
here: `models` (typed pages and contract checks), `ratelimit` and `ratelimit_rolling` (the
shared limiters) and `accounts` (the accounts table: logins, tokens, polling state).

The first stage after the foundation: it may import the foundation only (`relay.settings`,
`db`, `errors`, `logs`, `ids`, `vault`, `metrics`, `http`, `exactjson`), never a later stage.
"""
