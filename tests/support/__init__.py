"""What the tests share, one module per concern; test files import from here and nowhere else.

Plugins (registered in tests/conftest.py; their fixtures reach every test):
  stores.py    this run's Postgres database and Redis db, settings, vault; constants, the
               account-row factory, and the private stores the outage tests stop
  sandbox.py   the Dext and InvoiceXT sandboxes on loopback, and a tiny Dext client
  polling.py   the `http` session, the test policy, the change log's ground truth
  api.py       the admin API app and clients; the operator-command runner
Helpers (no fixtures; a folder's conftest.py builds its fixtures from them):
  delivery.py  the programmable webhook endpoint, event bodies, subscriptions, settling
  snapshots.py upstream objects in the shapes of dext-api.md, a diff helper
  outages.py   worker processes and their JSON logs, a recording receiver, outage checks
  workers.py   `relay worker` as a subprocess: its environment and start
  loopback.py  serving an aiohttp app on a free loopback port
"""
