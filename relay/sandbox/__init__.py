"""Simulated upstreams (`dext/`, `invoicext/`) whose practice changes over time, over a shared
clock, rate limits, faults and control surface, for demos, tests and benchmarks.

One subfolder per upstream over the shared core, so a second provider is a sibling, not a fork:

- `clock.py`      the simulated clock: real time scaled by a speed, plus manual advances
- `ratelimit.py`  the rate-limit windows in real seconds: fixed (Dext) or rolling (InvoiceXT)
- `faults.py`     one `Fault` model, its parser and the armed set (each provider names its kinds)
- `edge.py`       the one injection path in front of a provider's handlers (auth, counting,
                  faults, spoiling), with the provider's parts behind a `Gate`
- `records.py`    the ground-truth change log and the log of requests served
- `control.py`    the `/_sandbox` routes both serve (state, clock, changes, faults, requests),
                  subclassed by each provider for its JSON and its own actions
- `wire.py`       the JSON type, RFC 3339 times, JSON answers
- `options.py`    `SandboxOptions`: `relay sandbox`'s flags for either provider
- `server.py`     builds the app for `--provider dext|invoicext` and serves it
- `dext/`         the Dext practice (dext-api.md); `invoicext/` the InvoiceXT account
                  (invoicext-api.md)

It stands where the real upstream would: it imports only the foundation of `relay` (settings,
errors, logs, exactjson, ...), never a stage, so it cannot lean on how Relay reads it. A
provider imports the shared core, never the other provider; the shared core imports no
provider (only `server.py`, which assembles them). Only `relay.cli` (`relay sandbox`) and the
tests start it.
"""
