"""The `relay` command: the parser and every process it starts (`main`), the operator commands
over the admin API (`operator`, `jobs`), and the developer tools (`receiver`, `listen`, `demo`,
`rekey`).

The top floor of the house: it may import any stage of `relay`, and nothing imports it.
"""
