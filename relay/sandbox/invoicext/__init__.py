"""The simulated InvoiceXT account and its `/api/v1` (invoicext-api.md).

- `account.py`   the account: invoices, reconciliations, ledgers, keys (each counted in the
                 shared rolling window, `relay.sandbox.ratelimit`), the month's usage, and the
                 simulation that runs when the clock is read
- `envelope.py`  the `{"success", "data" | "error", "meta"}` envelope and money as JSON numbers
- `edge.py`      InvoiceXT's `Gate` of the shared edge: keys, the hour and the month, scopes
- `control.py`   the shared control routes in InvoiceXT's JSON, and its own actions
- `api.py`       the contract's endpoints and the aiohttp application

Imports: the shared core (`relay.sandbox.*`) and the foundation of `relay/`; never
`relay.sandbox.dext`, never a stage of `relay/`.
"""
