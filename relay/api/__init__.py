"""The admin API: the app factory (`app`), middleware, routing and validation, routes by
resource (`accounts`, `subscriptions`, `events`, `deliveries`, `recovery`, `event_types`,
`stream`, `health`), the OpenAPI document, and the scrape side of `/metrics` (`metrics`).

A side stage over the pipeline: it may import the foundation and every stage before it
(`sources`, `poller`, `snapshots`, `events`, `delivery`), calling each table's owner for its
data rather than writing SQL of its own; it never imports `cli`, `sandbox` or `workers`. The
console (`relay.ui`) shares its keys and stream, and `relay.cli` starts it.
"""
