"""The simulated Dext practice: its contract (dext-api.md), the practice that changes over
simulated time, drift switches, and its part of the control surface under `/_sandbox/`.

- `catalog.py`, `generate.py`  the practice's vocabulary and how its objects are made
- `practice.py`  the objects and their change log; `simulation.py` what changes, when
- `state.py`     the `Sandbox` one app serves (`app[SANDBOX]`); `access.py` tokens, sessions,
                 the fixed window (shared `relay.sandbox.ratelimit`) and the request log
- `contract.py`  the contract's endpoints; `edge.py` Dext's `Gate` of the shared edge
- `drift.py`     answers that drift as the contract allows
- `control.py`   the shared control routes in Dext's envelope, and Dext's own actions
- `app.py`       the aiohttp application

Imports: the shared core (`relay.sandbox.*`) and the foundation of `relay/`; never
`relay.sandbox.invoicext`, never a stage of `relay/`.
"""
