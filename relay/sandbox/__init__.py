"""Simulated upstreams (`dext/`, `invoicext/`) whose practice changes over time, over a shared
clock, rate limits, faults and control surface, for demos, tests and benchmarks.

It stands where the real upstream would: it imports only the foundation of `relay` (settings,
errors, logs, exactjson, ...), never a stage, so it cannot lean on how Relay reads it. Only
`relay.cli` (`relay sandbox`) and the tests start it.
"""
