"""The `relay` command: the parser and every process it starts (`main`), the operator commands
over the admin API (`operator` runs them; one module per group: `accounts`, `subscriptions`,
`events`, `deliveries`, `jobs`; built from `commands`, sent by `client`, printed by `output`),
and the developer tools (`receiver`, `listen`, `demo`, `rekey`, `progress`).

The top floor of the house: it may import every stage of `relay` (the api, the sandbox and
retention included), and nothing in `relay` or `workers` imports it.
"""
